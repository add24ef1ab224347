//! The MTA-STS policy cache in Redis beyond what the conformance cases see: an entry's key expires a day
//! after its policy does (never before), an error keeps the later expiry, and listing drops the index
//! members of entries Redis expired.
// Test helpers: a failed Redis call is a failed test.
#![allow(clippy::expect_used)]

mod common;

use tern_core::time::now_ms;
use tern_queue::sts::KEEP_AFTER_EXPIRY;
use tern_queue::{PolicyStore, RedisQueueOptions, StsEntry};
use tern_testkit::redis::RedisServer;

fn keep_ms() -> u64 {
    u64::try_from(KEEP_AFTER_EXPIRY.as_millis()).expect("fits")
}

fn entry(domain: &str, expires_at_ms: u64) -> StsEntry {
    StsEntry {
        domain: domain.into(),
        policy: "version: STSv1\nmode: testing\nmx: *.example\nmax_age: 3600\n".into(),
        policy_id: "1".into(),
        fetched_at_ms: now_ms(),
        expires_at_ms,
        last_error: None,
        last_error_at_ms: None,
    }
}

/// The one key whose name ends with `suffix` (the key prefix and shard are the queue's).
fn key_ending(server: &RedisServer, suffix: &str) -> String {
    let keys = server.cli(&["KEYS", &format!("*{suffix}")]).expect("keys");
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert_eq!(keys.len(), 1, "keys ending {suffix}: {keys:?}");
    keys[0].to_string()
}

fn expire_time(server: &RedisServer, key: &str) -> u64 {
    let t = server.cli(&["PEXPIRETIME", key]).expect("pexpiretime");
    t.parse().unwrap_or_else(|_| panic!("PEXPIRETIME {key}: {t}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_expires_from_redis_a_day_after_its_policy_and_an_error_never_shortens_that() {
    let server = RedisServer::start().expect("start redis-server");
    let q = common::redis_queue(common::single(&server.url(), "ttl")).await;

    let expires = now_ms() + 7 * 24 * 3600 * 1000;
    q.sts_put(&entry("Policy.test", expires)).await.expect("put");
    let key = key_ending(&server, ":sts:policy.test");
    assert_eq!(expire_time(&server, &key), expires + keep_ms());

    q.sts_record_error("policy.test", "HTTP 500", now_ms())
        .await
        .expect("record error");
    assert_eq!(
        expire_time(&server, &key),
        expires + keep_ms(),
        "the policy's later expiry stands"
    );

    let before = now_ms();
    q.sts_record_error("error-only.test", "no TXT", before)
        .await
        .expect("record error");
    let after = now_ms();
    let at = expire_time(&server, &key_ending(&server, ":sts:error-only.test"));
    assert!(
        (before + keep_ms()..=after + keep_ms()).contains(&at),
        "an entry without a policy goes a day after its error: {at}"
    );

    let past = now_ms() - 2 * 24 * 3600 * 1000;
    q.sts_put(&entry("expired.test", past)).await.expect("put");
    let at = expire_time(&server, &key_ending(&server, ":sts:expired.test"));
    assert!(
        at >= before + keep_ms(),
        "an expired policy is kept a day from its write"
    );
    assert!(q.sts_get("expired.test").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_skips_entries_redis_expired_and_drops_them_from_the_index() {
    let server = RedisServer::start().expect("start redis-server");
    // One shard: every entry in one index, so that a page must reach past the expired ones.
    let opts = RedisQueueOptions {
        shards: 1,
        ..common::single(&server.url(), "lazy")
    };
    let q = common::redis_queue(opts).await;
    let expires = now_ms() + 3600 * 1000;
    for domain in ["a.test", "b.test", "c.test", "d.test"] {
        q.sts_put(&entry(domain, expires)).await.expect("put");
    }
    // As if Redis had expired them: the entries go, their index members stay.
    let mut index = String::new();
    for domain in ["b.test", "c.test"] {
        let key = key_ending(&server, &format!(":sts:{domain}"));
        assert_eq!(server.cli(&["DEL", &key]).expect("del"), "1");
        index = key.replace(&format!("sts:{domain}"), "stsidx");
    }
    assert_eq!(server.cli(&["ZCARD", &index]).expect("zcard"), "4");

    let domains = |entries: Vec<StsEntry>| -> Vec<String> { entries.into_iter().map(|e| e.domain).collect() };
    assert_eq!(
        domains(q.sts_list(None, 2).await.expect("list")),
        ["a.test", "d.test"],
        "a page is filled past the expired entries"
    );
    assert_eq!(
        server.cli(&["ZRANGE", &index, "0", "-1"]).expect("zrange"),
        "a.test\nd.test",
        "they are dropped from the index"
    );
    assert_eq!(
        domains(q.sts_list(Some("a.test"), 10).await.expect("list")),
        ["d.test"]
    );
    assert_eq!(q.sts_get("b.test").await.expect("get"), None);
}
