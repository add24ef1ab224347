//! The conformance suites (the queue's, the MTA-STS policy cache's, the TLS-RPT counters' and the message
//! history's) against the embedded store, each case in a fresh directory.
#![cfg(feature = "embedded")]

use std::sync::Arc;

use tern_queue::conformance;
use tern_queue::{EmbeddedQueue, EmbeddedQueueOptions, HistoryStore, PolicyStore, Queue, TlsReportStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_embedded() {
    let root = Arc::new(tempfile::tempdir().expect("temp dir"));
    let dirs = Arc::clone(&root);
    let factory: conformance::Factory = Arc::new(move |name: String| {
        let path = dirs.path().join(name);
        Box::pin(async move {
            let queue = EmbeddedQueue::open(EmbeddedQueueOptions {
                path,
                ..Default::default()
            })
            .expect("open the embedded store");
            Arc::new(queue) as Arc<dyn Queue>
        })
    });
    conformance::run_all(factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_store_conformance_embedded() {
    let root = Arc::new(tempfile::tempdir().expect("temp dir"));
    let dirs = Arc::clone(&root);
    let factory: conformance::sts::Factory = Arc::new(move |name: String| {
        let path = dirs.path().join(name);
        Box::pin(async move {
            let store = EmbeddedQueue::open(EmbeddedQueueOptions {
                path,
                ..Default::default()
            })
            .expect("open the embedded store");
            Arc::new(store) as Arc<dyn PolicyStore>
        })
    });
    conformance::sts::run_all(factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_report_store_conformance_embedded() {
    let root = Arc::new(tempfile::tempdir().expect("temp dir"));
    let dirs = Arc::clone(&root);
    let factory: conformance::tls_report::Factory = Arc::new(move |name: String| {
        let path = dirs.path().join(name);
        Box::pin(async move {
            let store = EmbeddedQueue::open(EmbeddedQueueOptions {
                path,
                ..Default::default()
            })
            .expect("open the embedded store");
            Arc::new(store) as Arc<dyn TlsReportStore>
        })
    });
    conformance::tls_report::run_all(factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_store_conformance_embedded() {
    let root = Arc::new(tempfile::tempdir().expect("temp dir"));
    let dirs = Arc::clone(&root);
    let factory: conformance::history::Factory = Arc::new(move |name: String, history| {
        let path = dirs.path().join(name);
        Box::pin(async move {
            let store = Arc::new(
                EmbeddedQueue::open(EmbeddedQueueOptions {
                    path,
                    history,
                    ..Default::default()
                })
                .expect("open the embedded store"),
            );
            conformance::history::Stores {
                queue: Arc::clone(&store) as Arc<dyn Queue>,
                history: store as Arc<dyn HistoryStore>,
            }
        })
    });
    conformance::history::run_all(factory).await;
}
