//! The Redis backend's memory of fast-path messages against repeats (issue #14): how long a message is
//! remembered, and that a queue whose writers never repeat keeps nothing. The behaviour itself (a late
//! repeat makes nothing) is a conformance case.
#![allow(clippy::expect_used)]

mod common;

use std::time::Duration;

use tern_core::MessageId;
use tern_queue::conformance::message;
use tern_queue::{Outcome, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;

/// The repeat sets of the queue with key prefix `prefix` (one shard).
fn repeat_sets(server: &RedisServer, prefix: &str) -> Vec<String> {
    server
        .cli(&["KEYS", &format!("{{{prefix}:s00}}:seen:*")])
        .expect("KEYS")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Enqueues a message with a fixed id on the fast path, delivers it, and enqueues it again; how many jobs
/// the repeat made.
async fn jobs_made_by_a_late_repeat(q: &RedisQueue) -> u64 {
    let mut m = message(&["r@repeat.test"]);
    m.id = Some(MessageId::new());
    q.enqueue(m.clone()).await.expect("enqueue");
    let claim = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("due");
    q.complete("w", &claim.jobs[0].lease, Outcome::delivered())
        .await
        .expect("complete");
    q.enqueue(m).await.expect("the repeat");
    q.counts().await.expect("counts").total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_path_message_is_remembered_for_the_repeat_window_and_a_calls_time() {
    let server = RedisServer::start().expect("redis-server");
    let opts = RedisQueueOptions {
        shards: 1,
        repeat_window: Duration::from_secs(60),
        ..common::single(&server.url(), "window")
    };
    let prefix = opts.key_prefix.clone();
    // common::single: connect 1 s and response 2 s, so a call takes at most 3 s.
    let q = RedisQueue::connect(opts).await.expect("connect");
    assert_eq!(jobs_made_by_a_late_repeat(&q).await, 0);
    let sets = repeat_sets(&server, &prefix);
    assert_eq!(sets.len(), 1, "{sets:?}");
    let ttl: u64 = server
        .cli(&["PTTL", &sets[0]])
        .expect("PTTL")
        .trim()
        .parse()
        .expect("a TTL");
    assert!((55_000..=63_000).contains(&ttl), "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_that_never_repeat_leave_nothing_to_remember() {
    let server = RedisServer::start().expect("redis-server");
    let opts = RedisQueueOptions {
        shards: 1,
        repeat_window: Duration::ZERO,
        ..common::single(&server.url(), "never")
    };
    let prefix = opts.key_prefix.clone();
    let q = RedisQueue::connect(opts).await.expect("connect");
    // Nothing remembered: a late repeat is a new message (the window is the writer's promise not to send one).
    assert_eq!(jobs_made_by_a_late_repeat(&q).await, 1);
    assert_eq!(repeat_sets(&server, &prefix), Vec::<String>::new());
}
