//! Opening the queue named by `[queue]`: the embedded store (no URL, or `embedded:///dir`) or Redis.

use std::path::PathBuf;
use std::sync::Arc;

use tern_config::{Config, QueueBackend, QueueConfig};
use tern_queue::{
    Coalescing, CoalescingOptions, EmbeddedQueue, EmbeddedQueueOptions, HistoryStore, PolicyStore, Queue,
    QueueError, RedisQueue, RedisQueueOptions, RouteStore, TlsReportStore, TraceBus,
};

/// Connections of the telemetry's own Redis handle (the probe and the sampler).
const TELEMETRY_CONNECTIONS: usize = 2;

/// The Redis backend's options for a configuration: the `[queue]` section, and the cluster-wide per-domain
/// connection limit of `[delivery]`, which the queue enforces. What neither names keeps the backend's default.
pub fn redis_options(config: &Config) -> RedisQueueOptions {
    let cfg = &config.queue;
    RedisQueueOptions {
        default_domain_concurrency: config.delivery.connections_per_domain,
        repeat_window: config.ingest.enqueue_retry_for.get(),
        history: config.queue.history.get(),
        url: cfg.url.clone(),
        cluster: cfg.cluster,
        shards: cfg.shards,
        lease: cfg.lease.get(),
        key_prefix: cfg.key_prefix.clone(),
        wait_replicas: cfg.wait_replicas,
        ..RedisQueueOptions::default()
    }
}

/// The embedded store's options for a configuration: its directory from `queue.url`, the lease, the
/// per-domain connection limit and ingest's repeat window, as for Redis.
pub fn embedded_options(config: &Config) -> anyhow::Result<EmbeddedQueueOptions> {
    let path = embedded_path(&config.queue)?;
    Ok(EmbeddedQueueOptions {
        path,
        lease: config.queue.lease.get(),
        default_domain_concurrency: config.delivery.connections_per_domain,
        repeat_window: config.ingest.enqueue_retry_for.get(),
        history: config.queue.history.get(),
        ..EmbeddedQueueOptions::default()
    })
}

/// The embedded store's directory that `queue.url` names (`./tern-data` for none).
fn embedded_path(cfg: &QueueConfig) -> anyhow::Result<PathBuf> {
    match tern_queue::embedded::path_from_url(&cfg.url) {
        Some(Ok(path)) => Ok(path),
        Some(Err(e)) => anyhow::bail!("queue.url {}: {e}", cfg.url),
        None => anyhow::bail!("queue.url {} does not name an embedded store", cfg.url),
    }
}

/// The group-commit options of `[queue]`, or `None` when `group_commit` is off. What the section does not
/// name keeps the wrapper's default.
pub fn group_commit_options(config: &Config) -> Option<CoalescingOptions> {
    let cfg = &config.queue;
    cfg.group_commit.then(|| CoalescingOptions {
        max_batch: usize::try_from(cfg.group_commit_max).unwrap_or(usize::MAX),
        completion_linger: cfg.completion_linger.get(),
        ..CoalescingOptions::default()
    })
}

/// Checks the `[queue]` section as opening it would, without connecting or opening a store: the URL and the
/// options.
pub fn check(config: &Config) -> anyhow::Result<()> {
    match config.queue.backend() {
        QueueBackend::Embedded => {
            embedded_path(&config.queue)?;
        }
        QueueBackend::Redis => {
            RedisQueue::new(redis_options(config)).map_err(|e| {
                anyhow::anyhow!(
                    "queue.url {}: {e}",
                    tern_config::redact::redact_url_passwords(&config.queue.url)
                )
            })?;
        }
    }
    Ok(())
}

/// Where the process's queue lives, for the startup banner.
pub fn describe(config: &Config) -> String {
    match config.queue.backend() {
        QueueBackend::Embedded => match embedded_path(&config.queue) {
            Ok(path) => {
                let absolute = std::path::absolute(&path).unwrap_or(path);
                format!("embedded store in {}", absolute.display())
            }
            Err(e) => e.to_string(),
        },
        QueueBackend::Redis => {
            let url = tern_config::redact::redact_url_passwords(&config.queue.url);
            if config.queue.cluster {
                format!("Redis Cluster {url}")
            } else {
                format!("Redis {url}")
            }
        }
    }
}

/// The queue of a running process: the handle the roles share, and the one telemetry reads through.
pub struct OpenedQueue {
    /// The handle every role and the reaper use.
    pub shared: Arc<dyn Queue>,
    /// The handle of the readiness probe and the gauges' sampler: for Redis its own connections, so that it
    /// never takes a connection the roles are waiting for (above all while Redis stalls); for the embedded
    /// store the store itself, which one process opens once.
    pub telemetry: Arc<dyn Queue>,
    /// The MTA-STS policy table of the same store (the backend itself: policies need no group commit).
    pub policies: Arc<dyn PolicyStore>,
    /// The TLS-RPT counters of the same store (the backend itself, as `policies`).
    pub reports: Arc<dyn TlsReportStore>,
    /// Messages' history, queued and finished (the backend itself).
    pub history: Arc<dyn HistoryStore>,
    /// Operators' domain routes (the backend itself).
    pub routes: Arc<dyn RouteStore>,
    /// The live SMTP trace bus (the backend itself).
    pub traces: Arc<dyn TraceBus>,
}

/// Opens the queue.
///
/// Redis: being down is not an error here: a stateless role starts anyway, answers clients with a
/// temporary failure, and recovers by itself when Redis returns. A bad URL is an error. With
/// `queue.group_commit` (the default) the backend is wrapped in [`Coalescing`], once per process: every role
/// shares the returned handle, so the enqueues of SMTP sessions, gRPC calls and DSNs, and the completions of
/// every delivery connection, are gathered into shared calls.
///
/// Embedded: the store in its directory, opened (and locked) once; another process holding it is an error
/// that names it. It gathers concurrent writes into one sync by itself, so it is not wrapped.
pub async fn open(config: &Config) -> anyhow::Result<OpenedQueue> {
    match config.queue.backend() {
        QueueBackend::Embedded => open_embedded(config).await,
        QueueBackend::Redis => open_redis(config).await,
    }
}

async fn open_embedded(config: &Config) -> anyhow::Result<OpenedQueue> {
    let options = embedded_options(config)?;
    let path = options.path.clone();
    // Opening reads the whole queue into memory: off the async threads.
    let queue = tokio::task::spawn_blocking(move || EmbeddedQueue::open(options))
        .await
        .map_err(|e| anyhow::anyhow!("opening the embedded store: {e}"))?
        .map_err(|e| match e {
            // These name the store's directory themselves.
            QueueError::Config(text) => anyhow::anyhow!(text),
            other => anyhow::anyhow!("queue store {}: {other}", path.display()),
        })?;
    let queue = Arc::new(queue);
    Ok(OpenedQueue {
        shared: queue.clone(),
        telemetry: queue.clone(),
        policies: queue.clone(),
        reports: queue.clone(),
        history: queue.clone(),
        routes: queue.clone(),
        traces: queue,
    })
}

async fn open_redis(config: &Config) -> anyhow::Result<OpenedQueue> {
    let cfg: &QueueConfig = &config.queue;
    let url_error = |e: QueueError| {
        anyhow::anyhow!(
            "queue.url {}: {e}",
            tern_config::redact::redact_url_passwords(&cfg.url)
        )
    };
    let queue = RedisQueue::new(redis_options(config)).map_err(url_error)?;
    // The first call also checks the Redis version and loads tern's function library on every master.
    match queue.ping().await {
        Ok(()) => tracing::info!(cluster = cfg.cluster, shards = cfg.shards, "queue reachable"),
        Err(QueueError::Unavailable(e) | QueueError::NotSent(e)) => {
            tracing::warn!(error = %e, "queue unreachable at startup; will keep trying")
        }
        // A Redis too old for functions, or one that refuses the library, will not get better by waiting.
        Err(e) => return Err(url_error(e)),
    }
    let queue = Arc::new(queue);
    let policies: Arc<dyn PolicyStore> = queue.clone();
    let reports: Arc<dyn TlsReportStore> = queue.clone();
    let history: Arc<dyn HistoryStore> = queue.clone();
    let routes: Arc<dyn RouteStore> = queue.clone();
    let traces: Arc<dyn TraceBus> = queue.clone();
    let shared: Arc<dyn Queue> = match group_commit_options(config) {
        Some(options) => Arc::new(Coalescing::new(queue, options)),
        None => queue,
    };
    let telemetry_options = RedisQueueOptions {
        pool_size: TELEMETRY_CONNECTIONS,
        ..redis_options(config)
    };
    let telemetry: Arc<dyn Queue> = Arc::new(
        RedisQueue::new(telemetry_options).map_err(|e| anyhow::anyhow!("queue for telemetry: {e}"))?,
    );
    Ok(OpenedQueue {
        shared,
        telemetry,
        policies,
        reports,
        history,
        routes,
        traces,
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
            completion_linger: tern_core::HumanDuration(std::time::Duration::from_millis(3)),
            history: tern_core::HumanDuration::from_secs(3600),
        };
        let o = redis_options(&config);
        assert_eq!(o.default_domain_concurrency, 3);
        assert_eq!(o.history, std::time::Duration::from_secs(3600));
        assert_eq!(o.url, "redis://h:1/2");
        assert_eq!(o.shards, 4);
        assert_eq!(o.lease, std::time::Duration::from_secs(90));
        assert_eq!(o.key_prefix, "x");
        assert_eq!(o.wait_replicas, 1);
        assert!(!o.cluster);
        let group = group_commit_options(&config).expect("group commit on");
        assert_eq!(group.max_batch, 32);
        assert_eq!(group.completion_linger, std::time::Duration::from_millis(3));
        assert_eq!(group.max_pending, CoalescingOptions::default().max_pending);
        config.queue.group_commit = false;
        assert_eq!(group_commit_options(&config), None);
    }

    #[test]
    fn the_embedded_store_gets_the_same_lease_limit_and_repeat_window() {
        let mut config = Config::default();
        config.delivery.connections_per_domain = 3;
        config.queue.lease = tern_core::HumanDuration::from_secs(90);
        config.queue.url = "embedded:///var/lib/tern".into();
        let o = embedded_options(&config).expect("an embedded URL");
        assert_eq!(o.path, PathBuf::from("/var/lib/tern"));
        assert_eq!(o.lease, std::time::Duration::from_secs(90));
        assert_eq!(o.default_domain_concurrency, 3);
        assert_eq!(o.history, config.queue.history.get());
        assert_eq!(o.repeat_window, config.ingest.enqueue_retry_for.get());
        config.queue.url = String::new();
        assert_eq!(
            embedded_options(&config).expect("no URL").path,
            PathBuf::from("./tern-data")
        );
    }
}
