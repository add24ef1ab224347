//! The conformance suites (the queue's, the message history's, the MTA-STS policy cache's and the TLS-RPT
//! counters') against one real redis-server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tern_queue::{HistoryStore, PolicyStore, Queue, RedisQueueOptions, TlsReportStore, conformance};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_store_conformance_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::sts::Factory = Arc::new(move |name: String| {
        let url = url.clone();
        Box::pin(
            async move { common::redis_queue(common::single(&url, &name)).await as Arc<dyn PolicyStore> },
        )
    });
    conformance::sts::run_all(factory).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_report_store_conformance_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::tls_report::Factory = Arc::new(move |name: String| {
        let url = url.clone();
        Box::pin(
            async move { common::redis_queue(common::single(&url, &name)).await as Arc<dyn TlsReportStore> },
        )
    });
    conformance::tls_report::run_all(factory).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_conformance_single_redis() {
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
            conformance::history::Stores {
                queue: Arc::clone(&store) as Arc<dyn Queue>,
                history: store as Arc<dyn HistoryStore>,
            }
        })
    });
    conformance::history::run_all(factory).await;
    drop(server);
}
