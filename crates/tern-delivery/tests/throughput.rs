//! A rough throughput measurement (ignored by default): `cargo test -p tern-delivery --release --test
//! throughput -- --ignored --nocapture`. One worker, one redis-server, one smtp-sink, 2000 messages to one
//! domain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "a measurement, not a check"]
async fn throughput_one_worker_one_domain() {
    const N: u64 = 2000;
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("bulk.test", "mx.bulk.test", 10)
        .host("mx.bulk.test", ip(90))
        .start()
        .unwrap();
    let sink = SmtpSink::start(ip(90), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "bench", Duration::from_secs(60)).await;
    let msgs: Vec<_> = (0..N)
        .map(|_| tern_queue::NewMessage::new(envelope("s@a.test", &["r@bulk.test"]), BODY.to_vec()))
        .collect();
    for chunk in msgs.chunks(500) {
        for r in q.enqueue_batch(chunk.to_vec()).await {
            r.unwrap();
        }
    }
    let started = Instant::now();
    let w = start_worker(&config(&dns, port), q.clone(), "bench", Duration::from_secs(60));
    wait_for("all messages", Duration::from_secs(300), || {
        sink.message_count() >= N
    })
    .await;
    let took = started.elapsed();
    w.stop().await;
    println!(
        "delivered {N} messages in {took:?}: {:.0} msg/s; sink counters {:?}",
        N as f64 / took.as_secs_f64(),
        sink.counters()
    );
}
