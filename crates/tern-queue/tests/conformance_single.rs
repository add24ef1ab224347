//! The conformance suite against one real redis-server.

mod common;

use std::sync::Arc;

use tern_queue::conformance;
use tern_testkit::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::Factory = Arc::new(move |name: String| {
        let url = url.clone();
        Box::pin(async move { common::queue(common::single(&url, &name)).await })
    });
    conformance::run_all(factory).await;
    drop(server);
}
