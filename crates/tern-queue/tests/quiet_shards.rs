//! The worker's claims (`claim_next`) skip the shards where they last found nothing, against a real server:
//! no call goes to them until a wake token from the shard reaches the handle, the handle itself enqueues
//! there, or the bound passes; a claim after a token that finds nothing where it looked looks everywhere;
//! `claim` and `claim_holding` always do. Counted with Redis's own `INFO commandstats`, so a skipped shard is
//! one that got no call.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_core::time::now_ms;
use tern_queue::conformance::message;
use tern_queue::{ClaimOutcome, Outcome, Queue, RedisQueue, RedisQueueOptions, Wakeup};
use tern_testkit::redis::RedisServer;

/// Longer than any of these tests: a shard marked quiet stays so unless something ends it.
const LONG_BOUND: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(60);

/// Two handles on one server and one key prefix, as a worker and an ingest process are, the worker's
/// shards quiet at most `bound`.
async fn worker_and_ingest(server: &RedisServer, bound: Duration) -> (Arc<RedisQueue>, Arc<RedisQueue>) {
    let opts = common::single(&server.url(), "quiet");
    let worker = RedisQueueOptions {
        quiet_shard_bound: bound,
        ..opts.clone()
    };
    (common::redis_queue(worker).await, common::redis_queue(opts).await)
}

/// Function calls Redis has run so far.
fn function_calls(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]).expect("INFO");
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

async fn claim_next(q: &RedisQueue) -> ClaimOutcome {
    q.claim_next("w", 10, LEASE, &[]).await.expect("claim")
}

fn is_nothing(outcome: &ClaimOutcome) -> bool {
    matches!(outcome, ClaimOutcome::Nothing { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_skips_the_shards_it_found_empty_until_a_wake_names_one() {
    let server = RedisServer::start().expect("redis-server");
    let (worker, ingest) = worker_and_ingest(&server, LONG_BOUND).await;
    assert!(is_nothing(&claim_next(&worker).await), "an empty queue");
    let before = function_calls(&server);
    assert!(is_nothing(&claim_next(&worker).await));
    assert_eq!(function_calls(&server), before, "every shard skipped: no call");

    // Another process's enqueue pushes a token; the worker's wait takes it, and the shard is looked at.
    ingest.enqueue(message(&["r@woken.test"])).await.expect("enqueue");
    let started = Instant::now();
    assert_eq!(worker.wait_for_work(Duration::from_secs(20)).await, Wakeup::Woken);
    assert!(started.elapsed() < Duration::from_secs(5));
    let before = function_calls(&server);
    match claim_next(&worker).await {
        ClaimOutcome::Claimed(c) => assert_eq!(c.domain, "woken.test"),
        ClaimOutcome::Nothing { .. } => panic!("the woken shard was skipped"),
    }
    assert_eq!(
        function_calls(&server),
        before + 1,
        "one claim call, to the woken shard alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_named_a_shard_without_work_makes_the_claim_look_everywhere() {
    // A shard's list holds at most 8 tokens: new work there may come with none while old ones wait in
    // other shards' lists (their work taken by claims that did not wait for them).
    let server = RedisServer::start().expect("redis-server");
    let (worker, ingest) = worker_and_ingest(&server, LONG_BOUND).await;
    let prefix = ingest.options().key_prefix.clone();
    assert!(is_nothing(&claim_next(&worker).await), "every shard quiet");
    ingest
        .enqueue(message(&["r@tokenless.test"]))
        .await
        .expect("enqueue");
    let lists = |pattern: &str| -> Vec<String> {
        let keys = server.cli(&["KEYS", pattern]).expect("KEYS");
        keys.lines()
            .map(str::to_string)
            .filter(|k| !k.is_empty())
            .collect()
    };
    let with_token = lists(&format!("{{{prefix}:s*}}:wake"));
    assert_eq!(with_token.len(), 1, "the enqueue's token: {with_token:?}");
    server.cli(&["DEL", &with_token[0]]).expect("DEL");
    let other = if with_token[0].contains(":s00}") { 1 } else { 0 };
    server
        .cli(&["RPUSH", &format!("{{{prefix}:s{other:02}}}:wake"), "1"])
        .expect("RPUSH");
    assert_eq!(worker.wait_for_work(Duration::from_secs(20)).await, Wakeup::Woken);
    match claim_next(&worker).await {
        ClaimOutcome::Claimed(c) => assert_eq!(c.domain, "tokenless.test"),
        ClaimOutcome::Nothing { .. } => panic!("the shard without a token was skipped"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handles_own_enqueue_ends_the_quiet_at_once() {
    // `tern all`: ingest and the worker share one handle, and the worker claims without waiting.
    let server = RedisServer::start().expect("redis-server");
    let (worker, _) = worker_and_ingest(&server, LONG_BOUND).await;
    assert!(is_nothing(&claim_next(&worker).await));
    worker.enqueue(message(&["r@own.test"])).await.expect("enqueue");
    match claim_next(&worker).await {
        ClaimOutcome::Claimed(c) => assert_eq!(c.domain, "own.test"),
        ClaimOutcome::Nothing { .. } => panic!("the handle's own enqueue was not seen"),
    }
    // A message due later sends no token, but the enqueue was this handle's: its time is named at once.
    assert!(is_nothing(&claim_next(&worker).await));
    let later = now_ms() + 60_000;
    worker
        .enqueue(message(&["r@later.test"]).not_before(later))
        .await
        .expect("enqueue");
    match claim_next(&worker).await {
        ClaimOutcome::Nothing { next_due_ms } => {
            let due = next_due_ms.expect("the delayed message's time");
            assert!(due <= later && due > now_ms(), "{due} vs {later}");
        }
        ClaimOutcome::Claimed(c) => panic!("claimed a message due later: {c:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_waits_finds_new_work_once_the_bound_passed() {
    // The token of the new work waits in Redis for a wait that does not come (the worker keeps claiming):
    // the bound alone brings the shard back.
    let server = RedisServer::start().expect("redis-server");
    let bound = Duration::from_millis(300);
    let (worker, ingest) = worker_and_ingest(&server, bound).await;
    assert!(is_nothing(&claim_next(&worker).await));
    let queued = Instant::now();
    ingest.enqueue(message(&["r@busy.test"])).await.expect("enqueue");
    loop {
        if let ClaimOutcome::Claimed(c) = claim_next(&worker).await {
            assert_eq!(c.domain, "busy.test");
            break;
        }
        assert!(
            queued.elapsed() < Duration::from_secs(10),
            "the quiet shard was never looked at again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And a message due later, queued by the other process, is named once the bound passed.
    assert!(is_nothing(&claim_next(&worker).await));
    let later = now_ms() + 60_000;
    ingest
        .enqueue(message(&["r@later.test"]).not_before(later))
        .await
        .expect("enqueue");
    tokio::time::sleep(bound + Duration::from_millis(50)).await;
    match claim_next(&worker).await {
        ClaimOutcome::Nothing { next_due_ms } => {
            assert_eq!(next_due_ms.map(|d| d <= later), Some(true), "{next_due_ms:?}")
        }
        ClaimOutcome::Claimed(c) => panic!("claimed a message due later: {c:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_other_than_the_workers_look_at_every_shard() {
    let server = RedisServer::start().expect("redis-server");
    let (worker, ingest) = worker_and_ingest(&server, LONG_BOUND).await;
    assert!(is_nothing(&claim_next(&worker).await));
    ingest.enqueue(message(&["r@plain.test"])).await.expect("enqueue");
    let claim = worker
        .claim("w", 10, LEASE)
        .await
        .expect("claim")
        .expect("the job, whatever the marks");
    assert_eq!(claim.domain, "plain.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_taken_makes_the_worker_look_at_the_held_domain_again() {
    // A domain at its limit is pushed back, and its shard left quiet; the batch's connection goes idle and
    // keeps the slot as a hold, which sends no token: the held domain's next job is this worker's to take.
    let server = RedisServer::start().expect("redis-server");
    let (worker, ingest) = worker_and_ingest(&server, LONG_BOUND).await;
    worker
        .set_domain_concurrency("held.test", Some(1))
        .await
        .expect("limit");
    for i in 0..2 {
        ingest
            .enqueue(message(&[&format!("r{i}@held.test")]))
            .await
            .expect("enqueue");
    }
    let ClaimOutcome::Claimed(first) = worker.claim_next("w", 1, LEASE, &[]).await.expect("claim") else {
        panic!("the first job");
    };
    assert!(
        is_nothing(&worker.claim_next("w", 1, LEASE, &[]).await.expect("claim")),
        "at its limit"
    );
    let hold = worker
        .hold_slot("held.test", &first.claim_id, LEASE)
        .await
        .expect("hold")
        .expect("the claim's slot kept");
    worker
        .complete("w", &first.jobs[0].lease, Outcome::delivered())
        .await
        .expect("complete");
    match worker
        .claim_next("w", 1, LEASE, std::slice::from_ref(&hold))
        .await
        .expect("claim")
    {
        ClaimOutcome::Claimed(c) => {
            assert_eq!(c.domain, "held.test");
            assert!(c.took_hold.is_some(), "over the hold");
        }
        ClaimOutcome::Nothing { .. } => panic!("the held domain's shard was skipped"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferral_recorded_by_the_worker_names_its_retry_time() {
    // The retry sends no token; the worker, which recorded it, learns its time at its next claim.
    let server = RedisServer::start().expect("redis-server");
    let (worker, ingest) = worker_and_ingest(&server, LONG_BOUND).await;
    ingest.enqueue(message(&["r@retry.test"])).await.expect("enqueue");
    let ClaimOutcome::Claimed(claim) = claim_next(&worker).await else {
        panic!("the job");
    };
    assert!(is_nothing(&claim_next(&worker).await), "drained: the shard quiet");
    let retry_at = now_ms() + 60_000;
    worker
        .complete(
            "w",
            &claim.jobs[0].lease,
            Outcome::defer(retry_at, "451 4.3.0 try later"),
        )
        .await
        .expect("complete");
    match claim_next(&worker).await {
        ClaimOutcome::Nothing { next_due_ms } => {
            assert_eq!(next_due_ms, Some(retry_at), "the retry's time")
        }
        ClaimOutcome::Claimed(c) => panic!("claimed before its retry time: {c:?}"),
    }
}
