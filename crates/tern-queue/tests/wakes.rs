//! The Redis backend's wakes against real servers: every shard's wake list reaches a waiter (one server, and
//! a 3-master Cluster where each shard is waited on over its own connection to its master), an idle shard
//! keeps few tokens, a token that reaches a handle no one waits on goes on to another, and a wait returns by
//! its deadline while Redis is down. The backend-neutral semantics are in the conformance suite.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_queue::conformance::message;
use tern_queue::{Outcome, Queue, RedisQueue, RedisQueueOptions, Wakeup};
use tern_testkit::redis::{RedisCluster, RedisServer};

/// Far below the waits' own deadlines: a waiter that was woken is told from one that timed out.
const WAKE_WITHIN: Duration = Duration::from_secs(5);

/// For domains that fall in every shard, one after another: a waiter is woken by an enqueue to the domain.
async fn every_shard_wakes_a_waiter(q: Arc<dyn Queue>) {
    // 100 domains cover the 16 shards (FNV-1a spreads them).
    for i in 0..100 {
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.wait_for_work(Duration::from_secs(20)).await })
        };
        let started = Instant::now();
        q.enqueue(message(&[&format!("r@d{i}.test")]))
            .await
            .expect("enqueue");
        assert_eq!(waiter.await.expect("waiter"), Wakeup::Woken, "domain d{i}.test");
        assert!(started.elapsed() < WAKE_WITHIN, "domain d{i}.test");
        let claim = q
            .claim("w", 10, Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("the new job");
        q.complete("w", &claim.jobs[0].lease, Outcome::delivered())
            .await
            .expect("complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_wakes_a_waiter_on_one_server() {
    let server = RedisServer::start().expect("redis-server");
    every_shard_wakes_a_waiter(common::queue(common::single(&server.url(), "shards")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_wakes_a_waiter_on_a_cluster() {
    let cluster = RedisCluster::start(3).expect("a 3-master cluster");
    let q = common::queue(common::cluster(&cluster.urls_comma(), "shards")).await;
    every_shard_wakes_a_waiter(q).await;
}

/// A queue of one shard on `server` (`{<prefix>:s00}:` is every key's start).
async fn one_shard(server: &RedisServer, prefix: &str) -> Arc<RedisQueue> {
    let opts = RedisQueueOptions {
        shards: 1,
        key_prefix: prefix.into(),
        ..common::single(&server.url(), prefix)
    };
    Arc::new(RedisQueue::connect(opts).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_where_no_one_waits_keeps_a_few_tokens() {
    let server = RedisServer::start().expect("redis-server");
    let q = one_shard(&server, "few").await;
    for i in 0..20 {
        q.enqueue(message(&[&format!("r@few{i}.test")]))
            .await
            .expect("enqueue");
    }
    let tokens: u32 = server
        .cli(&["LLEN", "{few:s00}:wake"])
        .expect("LLEN")
        .trim()
        .parse()
        .expect("a count");
    assert_eq!(tokens, 8, "20 domains made due with no one waiting");
    // Each ends one wait at once (a worker claims, finds work or not, and waits again); then they are used up.
    for _ in 0..8 {
        assert_eq!(q.wait_for_work(Duration::from_secs(5)).await, Wakeup::Woken);
    }
    assert_eq!(
        q.wait_for_work(Duration::from_millis(300)).await,
        Wakeup::TimedOut
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_drops_the_shards_old_tokens_once_nothing_there_is_due() {
    // A worker busy with a batch claims again when it ends, without waiting: the tokens that announced the
    // work it took stay behind, and each would wake a worker to find nothing.
    let server = RedisServer::start().expect("redis-server");
    let q = one_shard(&server, "old").await;
    let tokens = || -> u32 {
        server
            .cli(&["LLEN", "{old:s00}:wake"])
            .expect("LLEN")
            .trim()
            .parse()
            .expect("a length")
    };
    for domain in ["a", "b", "c"] {
        q.enqueue(message(&[&format!("r@{domain}.old.test")]))
            .await
            .expect("enqueue");
    }
    assert_eq!(tokens(), 3, "one per domain made due");
    let first = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("a domain");
    assert_eq!(
        tokens(),
        3,
        "two domains still due: their tokens may wake other workers"
    );
    q.claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("a domain");
    q.claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("a domain");
    assert_eq!(tokens(), 0, "nothing due: the tokens were old");

    // New work pushes a token again; a claim that finds nothing due drops an old one too.
    q.enqueue(message(&["r@d.old.test"])).await.expect("enqueue");
    assert_eq!(tokens(), 1);
    server
        .cli(&["RPUSH", "{old:s00}:wake", "1"])
        .expect("an old token");
    q.claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("d.old.test");
    assert_eq!(tokens(), 0);
    server
        .cli(&["RPUSH", "{old:s00}:wake", "1"])
        .expect("an old token");
    assert!(
        q.claim("w", 10, Duration::from_secs(60))
            .await
            .expect("claim")
            .is_none()
    );
    assert_eq!(tokens(), 0, "a claim that found nothing due");
    q.complete("w", &first.jobs[0].lease, Outcome::delivered())
        .await
        .expect("complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_reaches_a_handle_no_one_waits_on_goes_on_to_another() {
    let server = RedisServer::start().expect("redis-server");
    let first = one_shard(&server, "handoff").await;
    let second = one_shard(&server, "handoff").await;
    // The first handle's waiter leaves, but its listener is still blocked (for the wait's time), first in
    // Redis's line for the next token.
    let leaving = {
        let q = first.clone();
        tokio::spawn(async move { q.wait_for_work(Duration::from_secs(4)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    leaving.abort();
    let staying = {
        let q = second.clone();
        tokio::spawn(async move { q.wait_for_work(Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    first
        .enqueue(message(&["r@handoff.test"]))
        .await
        .expect("enqueue");
    assert_eq!(staying.await.expect("waiter"), Wakeup::Woken);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "woken only after the first handle's block ended: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_returns_by_its_deadline_while_redis_is_down() {
    let port = tern_testkit::free_port().expect("a free port");
    let q = RedisQueue::new(common::single(&format!("redis://127.0.0.1:{port}"), "down")).expect("queue");
    for _ in 0..2 {
        let started = Instant::now();
        assert_eq!(
            q.wait_for_work(Duration::from_millis(500)).await,
            Wakeup::TimedOut
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
