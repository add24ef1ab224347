//! The conformance suite against the embedded store, each case in a fresh directory.
#![cfg(feature = "embedded")]

use std::sync::Arc;

use tern_queue::conformance;
use tern_queue::{EmbeddedQueue, EmbeddedQueueOptions, Queue};

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
