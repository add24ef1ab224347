//! The conformance suites of operators' domain routes ([`RouteStore`]) and the trace bus ([`TraceBus`])
//! against every backend: the embedded store (each case in a fresh directory), one real redis-server, and a
//! real 3-master Redis Cluster.
// Test helpers: a store that does not open is a failed test.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;

use tern_queue::{RouteStore, TraceBus, conformance};
use tern_testkit::redis::{RedisCluster, RedisServer};

#[cfg(feature = "embedded")]
mod embedded {
    use super::*;
    use tern_queue::{EmbeddedQueue, EmbeddedQueueOptions};

    fn open(path: std::path::PathBuf) -> Arc<EmbeddedQueue> {
        Arc::new(
            EmbeddedQueue::open(EmbeddedQueueOptions {
                path,
                ..Default::default()
            })
            .expect("open the embedded store"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn route_store_conformance_embedded() {
        let root = Arc::new(tempfile::tempdir().expect("temp dir"));
        let dirs = Arc::clone(&root);
        let factory: conformance::routes::Factory = Arc::new(move |name: String| {
            let path = dirs.path().join(name);
            Box::pin(async move { open(path) as Arc<dyn RouteStore> })
        });
        conformance::routes::run_all(factory).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trace_bus_conformance_embedded() {
        let root = Arc::new(tempfile::tempdir().expect("temp dir"));
        let dirs = Arc::clone(&root);
        let factory: conformance::trace::Factory = Arc::new(move |name: String| {
            let path = dirs.path().join(name);
            Box::pin(async move { open(path) as Arc<dyn TraceBus> })
        });
        conformance::trace::run_all(factory).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_store_conformance_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::routes::Factory = Arc::new(move |name: String| {
        let url = url.clone();
        Box::pin(async move { common::redis_queue(common::single(&url, &name)).await as Arc<dyn RouteStore> })
    });
    conformance::routes::run_all(factory).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_bus_conformance_single_redis() {
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let factory: conformance::trace::Factory = Arc::new(move |name: String| {
        let url = url.clone();
        Box::pin(async move { common::redis_queue(common::single(&url, &name)).await as Arc<dyn TraceBus> })
    });
    conformance::trace::run_all(factory).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_store_and_trace_bus_conformance_redis_cluster() {
    let cluster = RedisCluster::start(3).expect("start a 3-master cluster");
    let urls = cluster.urls_comma();
    let route_urls = urls.clone();
    let routes: conformance::routes::Factory = Arc::new(move |name: String| {
        let urls = route_urls.clone();
        Box::pin(
            async move { common::redis_queue(common::cluster(&urls, &name)).await as Arc<dyn RouteStore> },
        )
    });
    conformance::routes::run_all(routes).await;
    let traces: conformance::trace::Factory = Arc::new(move |name: String| {
        let urls = urls.clone();
        Box::pin(async move { common::redis_queue(common::cluster(&urls, &name)).await as Arc<dyn TraceBus> })
    });
    conformance::trace::run_all(traces).await;
    drop(cluster);
}
