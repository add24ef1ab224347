//! Opening the queue named by `[queue]`.

use std::sync::Arc;

use tern_config::{Config, QueueConfig};
use tern_queue::{Coalescing, CoalescingOptions, Queue, QueueError, RedisQueue, RedisQueueOptions};

/// The Redis backend's options for a configuration: the `[queue]` section, and the cluster-wide per-domain
/// connection limit of `[delivery]`, which the queue enforces. What neither names keeps the backend's default.
pub fn redis_options(config: &Config) -> RedisQueueOptions {
    let cfg = &config.queue;
    RedisQueueOptions {
        default_domain_concurrency: config.delivery.connections_per_domain,
        repeat_window: config.ingest.enqueue_retry_for.get(),
        url: cfg.url.clone(),
        cluster: cfg.cluster,
        shards: cfg.shards,
        lease: cfg.lease.get(),
        key_prefix: cfg.key_prefix.clone(),
        wait_replicas: cfg.wait_replicas,
        ..RedisQueueOptions::default()
    }
}

/// The group-commit options of `[queue]`, or `None` when `group_commit` is off. What the section does not
/// name keeps the wrapper's default.
pub fn group_commit_options(config: &Config) -> Option<CoalescingOptions> {
    let cfg = &config.queue;
    cfg.group_commit.then(|| CoalescingOptions {
        max_batch: usize::try_from(cfg.group_commit_max).unwrap_or(usize::MAX),
        ..CoalescingOptions::default()
    })
}

/// Checks the `[queue]` section as opening it would, without connecting: the URL and the options.
pub fn check(config: &Config) -> anyhow::Result<()> {
    RedisQueue::new(redis_options(config)).map_err(|e| {
        anyhow::anyhow!(
            "queue.url {}: {e}",
            tern_config::redact::redact_url_passwords(&config.queue.url)
        )
    })?;
    Ok(())
}

/// Opens the queue. Redis being down is not an error here: a stateless role starts anyway, answers clients
/// with a temporary failure, and recovers by itself when Redis returns. A bad URL is an error.
///
/// With `queue.group_commit` (the default) the backend is wrapped in [`Coalescing`], once per process: every
/// role shares the returned handle, so the enqueues of SMTP sessions, gRPC calls and DSNs, and the
/// completions of every delivery connection, are gathered into shared calls.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn Queue>> {
    let cfg: &QueueConfig = &config.queue;
    let queue = RedisQueue::new(redis_options(config)).map_err(|e| {
        anyhow::anyhow!(
            "queue.url {}: {e}",
            tern_config::redact::redact_url_passwords(&cfg.url)
        )
    })?;
    // The first call also checks the Redis version and loads tern's function library on every master.
    match queue.ping().await {
        Ok(()) => tracing::info!(cluster = cfg.cluster, shards = cfg.shards, "queue reachable"),
        Err(QueueError::Unavailable(e) | QueueError::NotSent(e)) => {
            tracing::warn!(error = %e, "queue unreachable at startup; will keep trying")
        }
        // A Redis too old for functions, or one that refuses the library, will not get better by waiting.
        Err(e) => anyhow::bail!(
            "queue.url {}: {e}",
            tern_config::redact::redact_url_passwords(&cfg.url)
        ),
    }
    let queue: Arc<dyn Queue> = Arc::new(queue);
    Ok(match group_commit_options(config) {
        Some(options) => Arc::new(Coalescing::new(queue, options)),
        None => queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_key_reaches_the_backend() {
        let mut config = Config::default();
        config.delivery.connections_per_domain = 3;
        config.queue = QueueConfig {
            url: "redis://h:1/2".into(),
            cluster: false,
            shards: 4,
            lease: tern_core::HumanDuration::from_secs(90),
            key_prefix: "x".into(),
            wait_replicas: 1,
            group_commit: true,
            group_commit_max: 32,
        };
        let o = redis_options(&config);
        assert_eq!(o.default_domain_concurrency, 3);
        assert_eq!(o.url, "redis://h:1/2");
        assert_eq!(o.shards, 4);
        assert_eq!(o.lease, std::time::Duration::from_secs(90));
        assert_eq!(o.key_prefix, "x");
        assert_eq!(o.wait_replicas, 1);
        assert!(!o.cluster);
        let group = group_commit_options(&config).expect("group commit on");
        assert_eq!(group.max_batch, 32);
        assert_eq!(group.max_pending, CoalescingOptions::default().max_pending);
        config.queue.group_commit = false;
        assert_eq!(group_commit_options(&config), None);
    }
}
