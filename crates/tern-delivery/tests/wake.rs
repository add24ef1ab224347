//! Workers are woken by the queue instead of polling: with a poll interval of a minute, work still starts at
//! once. Real redis-server, dnsmasq and smtp-sink on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tern_core::HumanDuration;
use tern_queue::{Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, free_port};

/// A poll interval no test waits out: whatever the worker does within a few seconds, a wake made it do.
const POLL: Duration = Duration::from_secs(60);
/// Far less than [`POLL`], far more than a wake takes.
const PROMPTLY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_worker_delivers_a_new_message_without_waiting_for_its_poll() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder().host("wake.test", ip(61)).start().unwrap();
    let sink = SmtpSink::start(ip(61), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "wake", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.poll_interval = HumanDuration(POLL);
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    // The worker's first claims find nothing: it is waiting (for up to a minute) when the message comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 1..=3u64 {
        send(&q, "s@a.test", &["r@wake.test"]).await;
        wait_for("the message to reach the sink", PROMPTLY, || {
            sink.message_count() >= round
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}

/// One domain with a single connection allowed: each message (one per connection) waits for the slot of
/// the one before. A claim that found the domain at its limit is woken when the slot comes back (to this
/// worker's idle connection, or freed), not at its next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_at_its_limit_is_claimed_again_as_soon_as_its_slot_comes_back() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder().host("limit.test", ip(62)).start().unwrap();
    let sink = SmtpSink::start(ip(62), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q: Arc<dyn Queue> = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            key_prefix: "limit".into(),
            default_domain_concurrency: 1,
            ..Default::default()
        })
        .await
        .expect("connect to redis"),
    );
    let mut cfg = config(&dns, port);
    cfg.poll_interval = HumanDuration(POLL);
    cfg.messages_per_connection = 1;
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages: u64 = 20;
    for i in 0..messages {
        send(&q, "s@a.test", &[&format!("r{i}@limit.test")]).await;
    }
    // Twenty claims one after another, each after the slot came back: without a wake each would wait for
    // the poll (or for the domain's turn to come back in the claim order, a second).
    wait_for("every message to reach the sink", Duration::from_secs(15), || {
        sink.message_count() >= messages
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}

/// A worker keeps its connection to a domain idle, holding the domain's only slot: new mail for the domain
/// wakes that worker (the holder; no one else could claim it), which sends it over the idle connection at
/// once rather than when the connection has idled out and given the slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_mail_for_a_domain_held_by_an_idle_connection_wakes_its_holder() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder().host("held.test", ip(63)).start().unwrap();
    let sink = SmtpSink::start(ip(63), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q: Arc<dyn Queue> = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            key_prefix: "held".into(),
            default_domain_concurrency: 1,
            ..Default::default()
        })
        .await
        .expect("connect to redis"),
    );
    let mut cfg = config(&dns, port);
    cfg.poll_interval = HumanDuration(POLL);
    cfg.idle_connection_time = HumanDuration(POLL);
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 1..=4u64 {
        send(&q, "s@a.test", &[&format!("r{round}@held.test")]).await;
        wait_for("the message to reach the sink", PROMPTLY, || {
            sink.message_count() >= round
        })
        .await;
        // The connection goes idle, holding the slot, before the next message comes.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}
