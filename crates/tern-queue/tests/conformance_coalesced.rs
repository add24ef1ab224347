//! The conformance suites of the queue and of the message history against the group-commit wrapper
//! ([`Coalescing`]) over one real redis-server: the wrapper answers every case as the bare backend does,
//! and what it records shows in the backend's history.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tern_queue::conformance;
use tern_queue::{Coalescing, CoalescingOptions, HistoryStore, Queue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;

/// The wrapper as tern runs it: completions wait `queue.completion_linger`'s default before each call.
fn production_options() -> CoalescingOptions {
    CoalescingOptions {
        completion_linger: Duration::from_millis(1),
        ..CoalescingOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_coalesced_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::Factory = Arc::new(move |name: String| {
        let url = url.clone();
        Box::pin(async move {
            let inner = common::queue(common::single(&url, &name)).await;
            Arc::new(Coalescing::new(inner, production_options())) as Arc<dyn Queue>
        })
    });
    conformance::run_all(factory).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_conformance_coalesced_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::history::Factory = Arc::new(move |name: String, retention: Duration| {
        let url = url.clone();
        Box::pin(async move {
            let opts = RedisQueueOptions {
                history: retention,
                ..common::single(&url, &name)
            };
            let store = common::redis_queue(opts).await;
            let queue = Arc::new(Coalescing::new(
                Arc::clone(&store) as Arc<dyn Queue>,
                production_options(),
            ));
            conformance::history::Stores {
                queue,
                history: store as Arc<dyn HistoryStore>,
            }
        })
    });
    conformance::history::run_all(factory).await;
    drop(server);
}
