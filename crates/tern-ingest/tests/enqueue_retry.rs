//! Why a repeated queue write is harmless, against a real redis-server: ingest repeats a write whose outcome
//! it does not know, and the first may have been applied, even delivered, by then.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_stall;

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

/// A message without an idempotency key, all of it in one shard, takes the queue's fast path (ingest gives it
/// no key of its own any more): the queue remembers its id for its repeat window, which the binary sets to
/// `ingest.enqueue_retry_for`, so a repeat arriving after the message was delivered and removed makes no
/// second delivery (issue #14).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_repeat_on_the_fast_path_makes_no_second_delivery() {
    let redis = RedisServer::start().expect("start redis-server");
    let retry = EnqueueRetry::default();
    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        key_prefix: "fast".into(),
        shards: 1,
        repeat_window: retry.window,
        ..Default::default()
    })
    .await
    .unwrap();
    let made = jobs_made_by_a_late_repeat(&queue, retry).await;
    assert_eq!(made, 0, "the repeat queued the delivered message again");
    assert!(
        queue
            .claim("worker", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "a second delivery"
    );
    // It was the fast path: no idempotency key, no intake record or marker; the id is in a repeat set.
    let keys = |pattern: &str| redis.cli(&["KEYS", pattern]).unwrap().trim().to_string();
    assert_eq!(keys("{fast:s00}:idem:*"), "");
    assert_eq!(keys("{fast:s00}:mat:*"), "");
    assert!(keys("{fast:s00}:seen:*").starts_with("{fast:s00}:seen:"));
}

/// A write that stalls is repeated; the stalled first write is applied when Redis resumes, and the repeat
/// that then finds it answers for the client's one request: queued, not a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_that_finds_its_own_earlier_write_is_no_duplicate() {
    let redis = RedisServer::start().expect("start redis-server");
    let queue = RedisQueue::new(RedisQueueOptions {
        url: redis.url(),
        key_prefix: "own".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        // One connection, made below: the stalled write goes over it and is applied on resuming.
        pool_size: 1,
        ..Default::default()
    })
    .unwrap();
    let retry = EnqueueRetry::default();
    enqueue::enqueue(&queue, message(), &retry, &Bounds::default())
        .await
        .unwrap();
    let m = message();
    let id = m.id;
    let bounds = Bounds::default();
    let mut stall = redis_stall::Stall::start(&redis);
    let (receipt, ()) = tokio::join!(enqueue::enqueue(&queue, m, &retry, &bounds), async {
        // Past the queue's reply timeout (2 s): the first attempt has failed and repeats are going on.
        tokio::time::sleep(Duration::from_secs(4)).await;
        stall.resume();
    });
    let receipt = receipt.expect("queued once Redis is back");
    assert_eq!(Some(receipt.message), id);
    assert!(!receipt.duplicate, "{receipt:?}");
    assert_eq!(queue.counts().await.unwrap().total, 2, "each message once");
}

/// A Redis that accepts connections and then stalls: the first write finds no connection it can set up in
/// time (`NotSent`: nothing was sent). That is a stall, not a Redis plainly down, so the write is repeated
/// and ends in a receipt once Redis resumes within the window, instead of a refusal. (A refused connection is
/// answered at once: `a_single_redis_that_refuses_connections_answers_that_nothing_was_queued_at_once`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_not_sent_because_redis_stalls_is_repeated_until_it_resumes() {
    let redis = RedisServer::start().expect("start redis-server");
    let queue = RedisQueue::new(RedisQueueOptions {
        url: redis.url(),
        key_prefix: "stalled-connect".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        pool_size: 1,
        ..Default::default()
    })
    .unwrap();
    let retry = EnqueueRetry::default();
    let bounds = Bounds::default();
    // Stalled before the pool made its first connection: setting it up times out, nothing is sent.
    let mut stall = redis_stall::Stall::start(&redis);
    let probe = queue.enqueue(message()).await;
    assert!(
        matches!(probe, Err(tern_queue::QueueError::NotSent(_))),
        "a write while Redis stalls before any connection: {probe:?}"
    );
    let m = message();
    let id = m.id;
    let (receipt, ()) = tokio::join!(enqueue::enqueue(&queue, m, &retry, &bounds), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stall.resume();
    });
    let receipt = receipt.expect("queued once Redis is back, not refused");
    assert_eq!(Some(receipt.message), id);
    assert_eq!(queue.counts().await.unwrap().total, 1, "the message once");
}
