//! The Redis backend's message history, held jobs and bounce reasons as stored (issue #19): the keys the
//! functions write and how long they live. The behaviour itself (what the history tells, holds, reasons) is
//! in the conformance suites; these cases look at Redis behind them, on a one-shard queue so that every key
//! is `{<prefix>:s00}:...`.
#![allow(clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use tern_core::MessageId;
use tern_core::time::now_ms;
use tern_queue::conformance::message;
use tern_queue::{
    DeliveryAttempt, EventKind, HistoryStore, JobState, Outcome, Queue, RedisQueue, RedisQueueOptions, Target,
};
use tern_testkit::redis::RedisServer;

/// A connected one-shard queue keeping history for `retention`, and its key prefix.
async fn queue(server: &RedisServer, name: &str, retention: Duration) -> (RedisQueue, String) {
    let opts = RedisQueueOptions {
        shards: 1,
        history: retention,
        ..common::single(&server.url(), name)
    };
    let prefix = opts.key_prefix.clone();
    (RedisQueue::connect(opts).await.expect("connect"), prefix)
}

/// The name of the shard's key `name`.
fn key(prefix: &str, name: &str) -> String {
    format!("{{{prefix}:s00}}:{name}")
}

/// A command's integer answer.
fn int(server: &RedisServer, args: &[&str]) -> i64 {
    let out = server.cli(args).expect("redis-cli");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{args:?} answered {out:?}"))
}

/// The queue's keys matching `pattern` (after the shard tag).
fn keys(server: &RedisServer, prefix: &str, pattern: &str) -> Vec<String> {
    server
        .cli(&["KEYS", &key(prefix, pattern)])
        .expect("KEYS")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A message made at `ms` (its id's time).
fn message_at(ms: u64, rcpt: &str) -> tern_queue::NewMessage {
    let mut m = message(&[rcpt]);
    m.id = Some(MessageId::at(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_writes_only_the_index_and_history_lives_twice_the_retention_after_the_last_event() {
    let server = RedisServer::start().expect("redis-server");
    let (q, prefix) = queue(&server, "ttl", Duration::from_secs(60)).await;
    let r = q
        .enqueue(message(&["a@ttl.test"]).with_tag("tenant", "t1"))
        .await
        .expect("enqueue");
    let history = key(&prefix, &format!("hist:{}", r.message));
    assert_eq!(
        int(
            &server,
            &["ZSCORE", &key(&prefix, "hidx"), &r.message.to_string()]
        ),
        r.message.timestamp_ms() as i64,
        "indexed by the time in its id"
    );
    assert_eq!(
        int(&server, &["EXISTS", &history]),
        0,
        "the job's record stands for its queued event"
    );
    let events = q.history_events(r.message).await.expect("history");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sender.as_deref(), Some("sender@origin.test"));
    assert_eq!(events[0].tags.get("tenant").map(String::as_str), Some("t1"));
    let queued_at = events[0].time_ms;
    // A claim changes nothing in the history.
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("due");
    assert_eq!(q.history_events(r.message).await.expect("history"), events);
    // The deferral writes the queued record (with its time) and its own, and the TTL.
    q.complete("w", &c.jobs[0].lease, Outcome::defer(now_ms(), "451 later"))
        .await
        .expect("complete");
    let first = int(&server, &["PTTL", &history]);
    // Twice the retention (60 s): a shard's part outlives the message's last event in any other shard.
    assert!((115_000..=120_000).contains(&first), "{first}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = int(&server, &["PTTL", &history]);
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("due");
    q.complete("w", &c.jobs[0].lease, Outcome::delivered())
        .await
        .expect("complete");
    let after = int(&server, &["PTTL", &history]);
    assert!(
        after > before + 300,
        "every event keeps it longer: {before} then {after}"
    );
    let events = q.history_events(r.message).await.expect("history");
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Queued, EventKind::Deferred, EventKind::Delivered]
    );
    assert_eq!(events[0].time_ms, queued_at);
    assert!(
        events
            .iter()
            .all(|e| e.tags.get("tenant").is_some_and(|t| t == "t1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_at_its_first_attempt_writes_its_history_with_one_set() {
    let server = RedisServer::start().expect("redis-server");
    let (q, prefix) = queue(&server, "oneset", Duration::from_secs(60)).await;
    let r = q.enqueue(message(&["a@oneset.test"])).await.expect("enqueue");
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("due");
    server.cli(&["CONFIG", "RESETSTAT"]).expect("resetstat");
    q.complete("w", &c.jobs[0].lease, Outcome::delivered())
        .await
        .expect("complete");
    let stats = server.cli(&["INFO", "commandstats"]).expect("INFO");
    let calls = |command: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("set"), 1, "{stats}");
    assert_eq!((calls("append"), calls("pexpire")), (0, 0), "{stats}");
    let history = key(&prefix, &format!("hist:{}", r.message));
    assert!(int(&server, &["PTTL", &history]) > 55_000);
    let kinds: Vec<EventKind> = q
        .history_events(r.message)
        .await
        .expect("history")
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Queued, EventKind::Delivered]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_separators_tabs_and_newlines_reads_back_whole() {
    let server = RedisServer::start().expect("redis-server");
    let (q, _) = queue(&server, "reply", Duration::from_secs(600)).await;
    let r = q
        .enqueue(message(&["a@reply.test", "b@reply.test"]))
        .await
        .expect("enqueue");
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("due");
    let reply = "550-5.1.1 no\tsuch\r\n550 5.1.1 user\u{1f}here\u{1f}";
    let attempt = DeliveryAttempt {
        remote_mx: Some("mx\u{1f}.reply.test".into()),
        remote_ip: Some("192.0.2.9".into()),
        tls: None,
        dsn: Some("01DSN\u{1f}ID".into()),
    };
    q.complete("w", &c.jobs[0].lease, Outcome::fail(reply).with_attempt(attempt))
        .await
        .expect("complete");
    let events = q.history_events(r.message).await.expect("history");
    assert_eq!(events.len(), 2, "{events:?}");
    let failed = &events[1];
    assert_eq!(failed.reply.as_deref(), Some(reply));
    assert_eq!(failed.recipients, ["a@reply.test", "b@reply.test"]);
    assert_eq!(failed.remote_mx.as_deref(), Some("mx .reply.test"));
    assert_eq!(failed.remote_ip.as_deref(), Some("192.0.2.9"));
    assert_eq!(
        (failed.tls.as_deref(), failed.dsn.as_deref()),
        (None, Some("01DSN ID"))
    );
    assert_eq!(failed.sender, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_trims_the_index_of_old_messages_whose_own_history_lives_on() {
    let server = RedisServer::start().expect("redis-server");
    let (q, prefix) = queue(&server, "trim", Duration::from_secs(60)).await;
    let index = key(&prefix, "hidx");
    let old = q
        .enqueue(message_at(now_ms() - 120_000, "a@trim.test"))
        .await
        .expect("enqueue")
        .message;
    let fresh = q
        .enqueue(message(&["b@trim.test"]))
        .await
        .expect("enqueue")
        .message;
    assert_eq!(int(&server, &["ZCARD", &index]), 2);
    // Listings stop at the retention even before the reaper ran.
    assert_eq!(q.history_ids(0, None, 10).await.expect("ids"), vec![fresh]);
    q.reap(now_ms()).await.expect("reap");
    assert_eq!(int(&server, &["ZCARD", &index]), 1);
    assert_eq!(
        int(&server, &["ZSCORE", &index, &fresh.to_string()]),
        fresh.timestamp_ms() as i64
    );
    // The old message's own history is kept the retention after its last event.
    let events = q.history_events(old).await.expect("history");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sender.as_deref(), Some("sender@origin.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_index_is_trimmed_a_thousand_entries_per_reaper_call() {
    let server = RedisServer::start().expect("redis-server");
    let (q, prefix) = queue(&server, "deep", Duration::from_secs(60)).await;
    let index = key(&prefix, "hidx");
    let base = now_ms() - 3_600_000;
    let messages = (0..1_200u64)
        .map(|i| message_at(base + i, &format!("r{i}@deep.test")))
        .collect();
    for r in q.enqueue_batch(messages).await {
        r.expect("enqueue");
    }
    assert_eq!(int(&server, &["ZCARD", &index]), 1_200);
    q.reap(now_ms()).await.expect("reap");
    assert_eq!(int(&server, &["ZCARD", &index]), 200, "a call trims at most 1000");
    q.reap(now_ms()).await.expect("reap");
    assert_eq!(int(&server, &["ZCARD", &index]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_retention_writes_no_history_key() {
    let server = RedisServer::start().expect("redis-server");
    let (q, prefix) = queue(&server, "none", Duration::ZERO).await;
    let r = q
        .enqueue(message(&["a@none.test", "b@none.test"]))
        .await
        .expect("enqueue");
    let job = Target::Job(r.jobs[0].0);
    assert_eq!(q.hold(&job).await.expect("hold"), 1);
    assert_eq!(q.unhold(&job).await.expect("unhold"), 1);
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("due");
    q.complete("w", &c.jobs[0].lease, Outcome::delivered())
        .await
        .expect("complete");
    q.reap(now_ms()).await.expect("reap");
    assert!(keys(&server, &prefix, "hist:*").is_empty());
    assert!(keys(&server, &prefix, "hidx").is_empty());
    assert!(q.history_events(r.message).await.expect("history").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_jobs_leave_their_schedule_and_the_domain_index_for_the_held_index() {
    let server = RedisServer::start().expect("redis-server");
    let (q, prefix) = queue(&server, "held", Duration::from_secs(60)).await;
    for i in 0..3 {
        q.enqueue(message(&[&format!("r{i}@held.test")]))
            .await
            .expect("enqueue");
    }
    let (schedule, held, domains) = (
        key(&prefix, "due:held.test"),
        key(&prefix, "held:held.test"),
        key(&prefix, "domains"),
    );
    assert_eq!(int(&server, &["ZCARD", &schedule]), 3);
    assert_eq!(
        q.hold(&Target::Domain("held.test".into())).await.expect("hold"),
        3
    );
    assert_eq!(int(&server, &["ZCARD", &schedule]), 0);
    assert_eq!(int(&server, &["ZCARD", &held]), 3);
    assert_eq!(
        server.cli(&["ZSCORE", &domains, "held.test"]).expect("ZSCORE"),
        "",
        "no claim looks at a domain whose jobs are all held"
    );
    assert_eq!(
        server.cli(&["HGET", &key(&prefix, "cnt"), "held"]).expect("HGET"),
        "3"
    );
    assert_eq!(
        q.unhold(&Target::Domain("held.test".into()))
            .await
            .expect("unhold"),
        3
    );
    assert_eq!(int(&server, &["ZCARD", &held]), 0);
    assert_eq!(int(&server, &["ZCARD", &schedule]), 3);
    assert!(int(&server, &["ZSCORE", &domains, "held.test"]) <= now_ms() as i64);
    assert_eq!(
        server.cli(&["HGET", &key(&prefix, "cnt"), "held"]).expect("HGET"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_reason_with_tabs_and_newlines_reads_back_whole() {
    let server = RedisServer::start().expect("redis-server");
    let (q, _) = queue(&server, "reason", Duration::from_secs(60)).await;
    let r = q.enqueue(message(&["a@reason.test"])).await.expect("enqueue");
    assert_eq!(q.hold(&Target::Message(r.message)).await.expect("hold"), 1);
    let reason = "Ticket 42:\tthe recipient\r\nasked us to stop";
    assert_eq!(
        q.bounce(&Target::Message(r.message), Some(reason))
            .await
            .expect("bounce"),
        1
    );
    let info = q.get_message(r.message).await.expect("get").expect("kept");
    assert_eq!(info.jobs[0].bounce_reason.as_deref(), Some(reason));
    assert_eq!(info.jobs[0].state, JobState::Queued, "held no more");
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("the bounce");
    assert_eq!(c.jobs[0].job.bounce_reason.as_deref(), Some(reason));
    // An empty reason is none, and a bounce without one keeps the reason given before.
    assert_eq!(
        q.bounce(&Target::Message(r.message), Some(""))
            .await
            .expect("bounce"),
        1
    );
    let info = q.get_message(r.message).await.expect("get").expect("kept");
    assert_eq!(info.jobs[0].bounce_reason.as_deref(), Some(reason));
}
