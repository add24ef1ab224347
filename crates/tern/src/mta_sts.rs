//! The process's MTA-STS policy cache (`[delivery.mta_sts]`): one per process, shared by its workers and its
//! control plane, over the queue store's policy table, so that a policy fetched by one worker serves the
//! whole cluster. And its TLS reporter (`[delivery.tls_rpt]`): the daily report run of a worker process, and
//! the control plane's `Report` and `SendReports`.

use std::sync::Arc;

use tern_config::Config;
use tern_dkim::SharedSigners;
use tern_mta_sts::{CacheOptions, FetchOptions, HickoryDns, PolicyCache, ReporterOptions, TlsReporter};
use tern_queue::{PolicyStore, Queue, TlsReportStore};

/// The cache for `config`, or `None` when `delivery.mta_sts.enabled` is off. `owner` names this process in
/// the store's per-domain refresh lock (unique in the cluster).
pub fn policy_cache(
    config: &Config,
    store: Arc<dyn PolicyStore>,
    owner: String,
) -> anyhow::Result<Option<PolicyCache>> {
    let delivery = &config.delivery;
    let sts = &delivery.mta_sts;
    if !sts.enabled {
        return Ok(None);
    }
    let dns = HickoryDns::from_servers(&delivery.dns_servers)
        .map_err(|e| anyhow::anyhow!("delivery.dns_servers: {e}"))?;
    let fetch_timeout = sts.fetch_timeout.get();
    let fetch = FetchOptions {
        timeout: fetch_timeout,
        https_port: sts.https_port,
        extra_ca_file: delivery.extra_ca_file.clone(),
    };
    let options = CacheOptions {
        memory_ttl: sts.memory_ttl.get(),
        ..CacheOptions::for_fetch_timeout(fetch_timeout)
    };
    let cache = PolicyCache::with_dns(store, dns, fetch, owner, options)
        .map_err(|e| anyhow::anyhow!("delivery.mta_sts: {e}"))?;
    Ok(Some(cache))
}

/// The TLS reporter for `config`, or `None` when `delivery.tls_rpt.enabled` is off: it reads the counters in
/// `store` (the raw backend), queues report mails into `queue` (the handle the roles share), asks
/// `delivery.dns_servers` for the `_smtp._tls` records and the collectors' addresses, and trusts
/// `delivery.extra_ca_file` besides the web PKI roots. Report mails are DKIM-signed with `dkim`'s keys of
/// the reporting address's domain (RFC 8460 §3), when there are any. `owner` names this process in the
/// day's report lock.
pub fn tls_reporter(
    config: &Config,
    store: Arc<dyn TlsReportStore>,
    queue: Arc<dyn Queue>,
    dkim: Option<Arc<SharedSigners>>,
    owner: String,
) -> anyhow::Result<Option<TlsReporter>> {
    let delivery = &config.delivery;
    let rpt = &delivery.tls_rpt;
    if !rpt.enabled {
        return Ok(None);
    }
    let dns = HickoryDns::from_servers(&delivery.dns_servers)
        .map_err(|e| anyhow::anyhow!("delivery.dns_servers: {e}"))?;
    let options = ReporterOptions {
        send_at: rpt.send_at.get(),
        extra_ca_file: delivery.extra_ca_file.clone(),
        ..ReporterOptions::new(
            rpt.organization_name.trim(),
            rpt.contact_info.trim(),
            rpt.report_from.trim(),
            owner,
        )
    };
    let reporter = TlsReporter::with_dns(store, queue, dns, options)
        .map_err(|e| anyhow::anyhow!("delivery.tls_rpt: {e}"))?;
    Ok(Some(match dkim {
        Some(keys) => reporter.with_dkim(keys),
        None => reporter,
    }))
}
