//! What a claim asks of a real redis-server: it reads which shards have due domains first (one round trip
//! over every shard), then calls `claim` only where work is due. It used to call `claim` shard after shard
//! until one had work, and each claim started at the shard after the last one that had work, so a queue
//! with mail for one domain paid up to 16 `claim` calls per claim, and a claim that found nothing 16.
#![allow(clippy::expect_used)]

mod common;

use std::time::Duration;

use tern_queue::conformance::message;
use tern_queue::{ClaimOutcome, Outcome};
use tern_testkit::redis::RedisServer;

/// How many times Redis ran `command` since it started.
fn calls_of(server: &RedisServer, command: &str) -> u64 {
    let text = server.cli(&["INFO", "commandstats"]).expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_call_the_claim_function_only_in_the_shard_with_due_work() {
    let server = RedisServer::start().expect("redis-server");
    let q = common::queue(common::single(&server.url(), "claims")).await;
    for _ in 0..5 {
        q.enqueue(message(&["r@one.test"])).await.expect("enqueue");
    }
    for n in 1..=5 {
        let before = calls_of(&server, "fcall");
        let outcome = q
            .claim_next("w", 1, Duration::from_secs(60), &[])
            .await
            .expect("claim");
        assert_eq!(
            calls_of(&server, "fcall") - before,
            1,
            "function calls of claim {n}"
        );
        let ClaimOutcome::Claimed(claim) = outcome else {
            panic!("claim {n} found nothing: {outcome:?}");
        };
        q.complete("w", &claim.jobs[0].lease, Outcome::delivered())
            .await
            .expect("complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_with_nothing_due_anywhere_calls_no_claim_function_and_names_the_next_due_time() {
    let server = RedisServer::start().expect("redis-server");
    let q = common::queue(common::single(&server.url(), "nothing")).await;
    let before = calls_of(&server, "fcall");
    let outcome = q
        .claim_next("w", 10, Duration::from_secs(60), &[])
        .await
        .expect("claim");
    assert!(
        matches!(outcome, ClaimOutcome::Nothing { next_due_ms: None }),
        "{outcome:?}"
    );
    assert_eq!(
        calls_of(&server, "fcall"),
        before,
        "no claim call on an empty queue"
    );
}
