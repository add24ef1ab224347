//! Calls that reach Redis twice (a client that resent a call after losing its reply, as the cluster client
//! does on a dropped connection) answer and change what the first one did, and the reaper keeps an intake
//! record it cannot read. The functions are called with `FCALL`, exactly as the queue calls them, to repeat a
//! call byte for byte.
// Test helpers: a failed Redis call is a failed test.
#![allow(clippy::expect_used)]

mod common;

use std::time::Duration;

use tern_core::time::now_ms;

use tern_queue::RedisQueue;
use tern_queue::conformance::message;
use tern_testkit::redis::RedisServer;

/// The shard tag (`{<prefix>:sNN}`) whose keys match `pattern` (after the tag).
fn tag_of(server: &RedisServer, prefix: &str, pattern: &str) -> String {
    let keys = server
        .cli(&["--scan", "--pattern", &format!("{{{prefix}:*}}:{pattern}")])
        .expect("scan");
    keys.lines()
        .next()
        .and_then(|k| k.split_once("}:").map(|(t, _)| format!("{t}}}")))
        .unwrap_or_else(|| panic!("no key matches {pattern}"))
}

/// Calls the queue's function `operation` on the shard `tag` with the operation's own arguments `args`.
fn fcall(server: &RedisServer, operation: &str, tag: &str, args: &[&str]) -> String {
    let function = format!("{}_{operation}", RedisQueue::function_library());
    let now = now_ms();
    let (key, prefix, minute) = (
        format!("{tag}:domains"),
        format!("{tag}:"),
        (now / 60_000).to_string(),
    );
    let now = now.to_string();
    // The calling convention: a key of the shard, its prefix, the clock, the events cap, the minute.
    let mut all = vec![
        "FCALL",
        function.as_str(),
        "1",
        key.as_str(),
        prefix.as_str(),
        now.as_str(),
        "100000",
        minute.as_str(),
    ];
    all.extend_from_slice(args);
    server.cli(&all).expect("fcall")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_claim_takes_nothing_more() {
    let server = RedisServer::start().expect("start redis-server");
    let opts = common::single(&server.url(), "reclaim");
    let prefix = opts.key_prefix.clone();
    let q = common::queue(opts).await;
    for i in 0..3 {
        q.enqueue(message(&[&format!("r{i}@again.test")]))
            .await
            .expect("enqueue");
    }
    let tag = tag_of(&server, &prefix, "due:again.test");
    let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    // owner, max batch, lease deadline, default limit, claim id, domains to scan, pushed back until, next
    // turn, held domains first, no holds.
    let now = now_ms();
    let (lease, pushed_back, next_turn) = (
        (now + 60_000).to_string(),
        (now + 250).to_string(),
        (now + 1).to_string(),
    );
    let args = [
        "w",
        "1",
        &lease,
        "10",
        id,
        "10",
        &pushed_back,
        &next_turn,
        "1",
        "0",
    ];
    let first = fcall(&server, "claim", &tag, &args);
    assert!(first.contains("again.test"), "first claim: {first:?}");
    let second = fcall(&server, "claim", &tag, &args);
    assert_eq!(second.trim(), "", "the repeat took jobs: {second:?}");
    let count = server.cli(&["HGET", &format!("{tag}:claims"), id]).expect("hget");
    assert_eq!(count.trim(), "1", "the claim's job count");
    // The other two jobs are still there for everyone else.
    let c = q
        .claim("w2", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("work");
    assert_eq!(c.jobs.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_intake_with_an_idempotency_key_is_not_a_duplicate_of_itself() {
    let server = RedisServer::start().expect("start redis-server");
    let opts = common::single(&server.url(), "reintake");
    let prefix = opts.key_prefix.clone();
    let q = common::queue(opts).await;
    // Any message makes the shard's keys; the intake below goes to the same shard.
    q.enqueue(message(&["a@intake.test"])).await.expect("enqueue");
    let tag = tag_of(&server, &prefix, "due:intake.test");
    let args = ["01ARZ3NDEKTSV4RRFFQ69G5FAW", "{}", "body", "key-1", "86400"];
    let first = fcall(&server, "intake", &tag, &args);
    let second = fcall(&server, "intake", &tag, &args);
    assert_eq!(first.lines().next(), Some("ok"), "first: {first:?}");
    assert_eq!(second, first, "the repeat answered differently");
    let other = fcall(
        &server,
        "intake",
        &tag,
        &["01ARZ3NDEKTSV4RRFFQ69G5FAX", "{}", "body", "key-1", "86400"],
    );
    assert_eq!(
        other.lines().collect::<Vec<_>>(),
        vec!["dup", "01ARZ3NDEKTSV4RRFFQ69G5FAW"],
        "another message with the same key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_keeps_an_unreadable_intake_record_and_drives_the_rest() {
    let server = RedisServer::start().expect("start redis-server");
    let opts = common::single(&server.url(), "badintake");
    let prefix = opts.key_prefix.clone();
    let q = common::queue(opts).await;
    q.enqueue(message(&["a@bad.test"])).await.expect("enqueue");
    let tag = tag_of(&server, &prefix, "due:bad.test");
    let at = now_ms() - 60_000;
    let good = "01ARZ3NDEKTSV4RRFFQ69G5FAZ";
    let payload = serde_json::json!({
        "id": good,
        "created_ms": at,
        "due_ms": at,
        "envelope": message(&["b@bad.test"]).envelope,
    })
    .to_string();
    let records = [
        ("01ARZ3NDEKTSV4RRFFQ69G5FAY", "not json".to_string(), at - 1),
        (good, payload, at),
    ];
    for (id, p, score) in &records {
        server
            .cli(&[
                "HSET",
                &format!("{tag}:intake:{id}"),
                "p",
                p,
                "b",
                "Subject: x\r\n\r\nx\r\n",
            ])
            .expect("hset");
        server
            .cli(&["ZADD", &format!("{tag}:intakes"), &score.to_string(), id])
            .expect("zadd");
    }

    q.reap(now_ms()).await.expect("reap");

    let bad = server
        .cli(&["ZRANGE", &format!("{tag}:badintakes"), "0", "-1"])
        .expect("zrange");
    assert_eq!(bad.trim(), "01ARZ3NDEKTSV4RRFFQ69G5FAY");
    let kept = server
        .cli(&["EXISTS", &format!("{tag}:intake:01ARZ3NDEKTSV4RRFFQ69G5FAY")])
        .expect("exists");
    assert_eq!(kept.trim(), "1", "the unreadable record was dropped");
    let left = server.cli(&["ZCARD", &format!("{tag}:intakes")]).expect("zcard");
    assert_eq!(left.trim(), "0");
    let id = good.parse().expect("message id");
    let info = q
        .get_message(id)
        .await
        .expect("get")
        .expect("the good record was driven");
    assert_eq!(info.jobs.len(), 1);
}
