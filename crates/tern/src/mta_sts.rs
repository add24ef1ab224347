//! The process's MTA-STS policy cache (`[delivery.mta_sts]`): one per process, shared by its workers and its
//! control plane, over the queue store's policy table, so that a policy fetched by one worker serves the
//! whole cluster.

use std::sync::Arc;

use tern_config::Config;
use tern_mta_sts::{CacheOptions, FetchOptions, HickoryDns, PolicyCache};
use tern_queue::PolicyStore;

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
