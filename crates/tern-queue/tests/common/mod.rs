//! Shared helpers of the integration tests: queues on real redis-server processes.
#![allow(dead_code, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tern_queue::{Queue, RedisQueue, RedisQueueOptions};

static PREFIX: AtomicU32 = AtomicU32::new(0);

/// A unique key prefix, so that cases sharing a server do not see each other's keys.
pub fn prefix(name: &str) -> String {
    format!("t{}-{}", PREFIX.fetch_add(1, Ordering::Relaxed), name)
}

/// Options for a single server at `url`.
pub fn single(url: &str, name: &str) -> RedisQueueOptions {
    RedisQueueOptions {
        url: url.to_string(),
        key_prefix: prefix(name),
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Options for a cluster with seeds `urls` (comma-separated).
pub fn cluster(urls: &str, name: &str) -> RedisQueueOptions {
    RedisQueueOptions {
        cluster: true,
        ..single(urls, name)
    }
}

/// A connected queue.
pub async fn queue(opts: RedisQueueOptions) -> Arc<dyn Queue> {
    Arc::new(RedisQueue::connect(opts).await.expect("connect to redis"))
}

/// A connected queue, as its concrete type (for the traits beside [`Queue`], such as the MTA-STS cache).
pub async fn redis_queue(opts: RedisQueueOptions) -> Arc<RedisQueue> {
    Arc::new(RedisQueue::connect(opts).await.expect("connect to redis"))
}
