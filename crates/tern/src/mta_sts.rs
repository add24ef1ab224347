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
/// `delivery.extra_ca_file` besides the web PKI roots. Report mails are DKIM-signed (RFC 8460 §3) with the
/// keys of the reporting address's domain: see [`report_signers`]. `owner` names this process in the day's
/// report lock.
pub fn tls_reporter(
    config: &Config,
    store: Arc<dyn TlsReportStore>,
    queue: Arc<dyn Queue>,
    owner: String,
) -> anyhow::Result<Option<TlsReporter>> {
    let dkim = report_signers(config);
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

/// The header fields of a report mail that collectors route on (RFC 8460 §5.3): signed besides the key's own
/// list, so that they cannot be changed without breaking the signature.
const REPORT_HEADERS: [&str; 2] = ["TLS-Report-Domain", "TLS-Report-Submitter"];

/// The DKIM keys report mail is signed with: the `[[dkim]]` keys of `report_from`'s domain (or of a parent
/// domain), each also signing [`REPORT_HEADERS`]. Only those keys: a worker or control process that sends
/// reports needs no other domain's key file. A key that cannot be loaded is logged and the reports go
/// unsigned: a missing report key must not keep a worker from delivering mail. Read at start (SIGHUP reloads
/// ingest's keys, not these).
pub fn report_signers(config: &Config) -> Option<Arc<SharedSigners>> {
    let from = &config.delivery.tls_rpt.report_from;
    let domain = from
        .rsplit_once('@')
        .map_or(from.as_str(), |(_, d)| d)
        .to_ascii_lowercase();
    let keys: Vec<_> = config
        .dkim
        .iter()
        .filter(|key| {
            let signing = key.normalized_domain();
            domain == signing || domain.ends_with(&format!(".{signing}"))
        })
        .map(|key| {
            let mut key = key.clone();
            for name in REPORT_HEADERS {
                if !key.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    key.headers.push(name.to_string());
                }
            }
            key
        })
        .collect();
    if keys.is_empty() {
        tracing::info!(
            from_domain = %domain,
            "no [[dkim]] key for the reporting domain: TLS report mails go unsigned"
        );
        return None;
    }
    match SharedSigners::load(&keys) {
        Ok(signers) => Some(Arc::new(signers)),
        Err(e) => {
            tracing::warn!(
                domain = %domain,
                error = %e,
                "TLS reports go unsigned: the DKIM key of the reporting domain cannot be loaded"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_config::sections::dkim::DkimConfig;

    fn config(report_from: &str, keys: Vec<DkimConfig>) -> Config {
        let mut config = Config::default();
        config.delivery.tls_rpt.report_from = report_from.to_string();
        config.dkim = keys;
        config
    }

    #[test]
    fn report_keys_of_other_domains_are_never_read() {
        // The key file does not exist: reading it would fail. It is another domain's, so it is not read.
        let other = DkimConfig::new("shop.test", "s1", "/nonexistent/shop.test.key");
        assert!(report_signers(&config("tlsrpt@reports.test", vec![other])).is_none());
    }

    #[test]
    fn an_unreadable_report_key_leaves_reports_unsigned_instead_of_failing() {
        let broken = DkimConfig::new("reports.test", "s1", "/nonexistent/reports.test.key");
        assert!(report_signers(&config("tlsrpt@mail.reports.test", vec![broken])).is_none());
    }

    #[test]
    fn report_keys_sign_the_headers_collectors_route_on() {
        let dir = tempfile::tempdir().unwrap();
        let generated = tern_dkim::keygen::GeneratedKey::ed25519().unwrap();
        let path = dir.path().join("reports.key");
        std::fs::write(&path, &generated.private_key_pem).unwrap();
        let mut key = DkimConfig::new("reports.test", "s1", &path);
        key.algorithm = generated.algorithm;
        let signers = report_signers(&config("tlsrpt@reports.test", vec![key])).expect("signers");
        let message = b"From: tlsrpt@reports.test\r\nTo: rua@collector.test\r\nSubject: Report Domain: a.test\r\nTLS-Report-Domain: a.test\r\nTLS-Report-Submitter: reports.test\r\n\r\nreport\r\n";
        let signed = signers
            .current()
            .sign(message)
            .unwrap()
            .expect("a signature for reports.test");
        let header = String::from_utf8_lossy(&signed.headers).to_ascii_lowercase();
        let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(compact.contains("tls-report-domain"), "{header}");
        assert!(compact.contains("tls-report-submitter"), "{header}");
    }
}
