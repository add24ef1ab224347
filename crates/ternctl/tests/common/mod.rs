//! Shared by ternctl's tests: a gRPC server of tern's running in the test over a real redis-server, and the
//! output of a `ternctl` run.
#![allow(dead_code)] // each test binary uses its own part of this module
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::process::Output;
use std::sync::Arc;

use tern_ingest::CancellationToken;
use tern_queue::{Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;

/// A server running in the test (ingest or control), its queue, and its URL; dropping it stops the server.
pub struct Server {
    pub redis: RedisServer,
    pub queue: Arc<dyn Queue>,
    pub url: String,
    pub stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A fresh redis-server and a queue on it with `shards` shards.
pub async fn redis_queue(shards: u16) -> (RedisServer, Arc<dyn Queue>) {
    let redis = RedisServer::start().unwrap();
    let options = RedisQueueOptions {
        url: redis.url(),
        shards,
        ..RedisQueueOptions::default()
    };
    let queue: Arc<dyn Queue> = Arc::new(RedisQueue::connect(options).await.unwrap());
    (redis, queue)
}

/// What a ternctl run printed on stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a ternctl run printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
