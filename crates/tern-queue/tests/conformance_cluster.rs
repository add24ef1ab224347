//! The conformance suites (the queue's, the message history's, the MTA-STS policy cache's and the TLS-RPT
//! counters') against a real 3-master Redis Cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tern_queue::{HistoryStore, PolicyStore, Queue, RedisQueueOptions, TlsReportStore, conformance};
use tern_testkit::redis::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis_cluster() {
    let cluster = RedisCluster::start(3).expect("start a 3-master cluster");
    let urls = cluster.urls_comma();
    let factory: conformance::Factory = Arc::new(move |name: String| {
        let urls = urls.clone();
        Box::pin(async move { common::queue(common::cluster(&urls, &name)).await })
    });
    conformance::run_all(factory).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_store_conformance_redis_cluster() {
    let cluster = RedisCluster::start(3).expect("start a 3-master cluster");
    let urls = cluster.urls_comma();
    let factory: conformance::sts::Factory = Arc::new(move |name: String| {
        let urls = urls.clone();
        Box::pin(
            async move { common::redis_queue(common::cluster(&urls, &name)).await as Arc<dyn PolicyStore> },
        )
    });
    conformance::sts::run_all(factory).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_report_store_conformance_redis_cluster() {
    let cluster = RedisCluster::start(3).expect("start a 3-master cluster");
    let urls = cluster.urls_comma();
    let factory: conformance::tls_report::Factory = Arc::new(move |name: String| {
        let urls = urls.clone();
        Box::pin(async move {
            common::redis_queue(common::cluster(&urls, &name)).await as Arc<dyn TlsReportStore>
        })
    });
    conformance::tls_report::run_all(factory).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_conformance_redis_cluster() {
    let cluster = RedisCluster::start(3).expect("start a 3-master cluster");
    let urls = cluster.urls_comma();
    let factory: conformance::history::Factory = Arc::new(move |name: String, retention: Duration| {
        let urls = urls.clone();
        Box::pin(async move {
            let opts = RedisQueueOptions {
                history: retention,
                ..common::cluster(&urls, &name)
            };
            let store = common::redis_queue(opts).await;
            conformance::history::Stores {
                queue: Arc::clone(&store) as Arc<dyn Queue>,
                history: store as Arc<dyn HistoryStore>,
            }
        })
    });
    conformance::history::run_all(factory).await;
    drop(cluster);
}
