//! The conformance suite against the group-commit wrapper ([`Coalescing`]) over one real redis-server: the
//! wrapper answers every case as the bare backend does.

mod common;

use std::sync::Arc;

use tern_queue::conformance;
use tern_queue::{Coalescing, CoalescingOptions, Queue};
use tern_testkit::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_coalesced_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::Factory = Arc::new(move |name: String| {
        let url = url.clone();
        Box::pin(async move {
            let inner = common::queue(common::single(&url, &name)).await;
            Arc::new(Coalescing::new(inner, CoalescingOptions::default())) as Arc<dyn Queue>
        })
    });
    conformance::run_all(factory).await;
    drop(server);
}
