//! Why a repeated queue write is harmless, against a real redis-server: ingest repeats a write whose outcome
//! it does not know, and the first may have been applied, even delivered, by then.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tern_core::{Envelope, Recipient, ReversePath};
use tern_ingest::enqueue::{self, Bounds, EnqueueRetry};
use tern_queue::{NewMessage, Outcome, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::RedisServer;

fn message() -> NewMessage {
    let env = Envelope::new(
        ReversePath::Mailbox("sender@src.test".parse().unwrap()),
        vec![Recipient::new("r@dest.test".parse().unwrap())],
    );
    let mut m = NewMessage::new(env, b"Subject: once\r\n\r\nhi\r\n".to_vec());
    m.id = Some(tern_core::MessageId::new());
    m
}

/// Writes `m`, delivers it (claim and complete), then writes the same message (same id) again, as a repeat
/// after a lost reply arriving late would; how many jobs that second write made.
async fn jobs_made_by_a_late_repeat(queue: &dyn Queue, retry: EnqueueRetry) -> u64 {
    let m = message();
    let first = enqueue::enqueue(queue, m.clone(), &retry, &Bounds::default())
        .await
        .unwrap();
    let claim = queue
        .claim("worker", 10, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the job is due");
    assert_eq!(claim.jobs.len(), 1);
    assert_eq!(claim.jobs[0].job.id.message, first.message);
    queue
        .complete("worker", &claim.jobs[0].lease, Outcome::delivered())
        .await
        .unwrap();
    assert_eq!(queue.counts().await.unwrap().total, 0, "delivered and gone");
    let again = enqueue::enqueue(queue, m, &retry, &Bounds::default())
        .await
        .unwrap();
    assert_eq!(again.message, first.message);
    queue.counts().await.unwrap().total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_the_message_was_delivered_queues_nothing() {
    let redis = RedisServer::start().expect("start redis-server");
    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        key_prefix: "repeat".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let made = jobs_made_by_a_late_repeat(&queue, EnqueueRetry::default()).await;
    assert_eq!(made, 0, "the repeat queued the delivered message again");
}

/// Why ingest gives its messages an idempotency key: without one (no repeats, so no key), a message of one
/// domain takes the queue's fast path, which forgets a message once its job has finished, and the same
/// write made again queues it again. If this ever passes with 0, the queue remembers ids on its own and the
/// internal key can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_internal_key_a_late_repeat_would_deliver_twice() {
    let redis = RedisServer::start().expect("start redis-server");
    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        key_prefix: "nokey".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let no_repeats = EnqueueRetry {
        window: Duration::ZERO,
    };
    let made = jobs_made_by_a_late_repeat(&queue, no_repeats).await;
    assert_eq!(made, 1, "the queue's fast path changed: see the test's doc");
}
