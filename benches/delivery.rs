//! Delivery throughput and worker memory: a real `tern worker` process drains a pre-filled queue into a Postfix
//! `smtp-sink`, routing through a real dnsmasq.
//!
//! ```text
//! cargo bench -p tern-benches --bench delivery
//! TERN_BENCH_MESSAGES=20000 cargo bench -p tern-benches --bench delivery
//! ```
//!
//! 1 KiB messages over 10 domains, one recipient each, all MX records pointing at one smtp-sink; the worker
//! runs with the defaults (10 connections per domain, 100 messages per connection, connection reuse on), so up
//! to 10 x 10 x 100 = 10,000 messages are in flight at once. It reports messages/s (first to last delivery),
//! the worker's CPU milliseconds per message, and its peak RSS (VmHWM).
//!
//! The worker binary is built in release mode by the benchmark (`cargo build --release -p tern --features
//! tern/jemalloc`: the container image's build, and the binary `benches/e2e/run` takes by default, which a
//! build without the feature would silently replace).
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_benches::{cpu_ms, filler_message, status_kb};
use tern_core::{Envelope, Recipient, ReversePath};
use tern_queue::{NewMessage, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;
use tern_testkit::{ChildGuard, Dnsmasq, SmtpSink, free_port};

const DOMAINS: usize = 10;
const SIZE: usize = 1024;

fn main() {
    let total: usize = std::env::var("TERN_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);

    // The worker binary, optimised, exactly as operators run it.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "tern",
            "--bin",
            "tern",
            "--features",
            "tern/jemalloc",
        ])
        .status()
        .unwrap();
    assert!(built.success(), "cannot build the tern binary");
    let tern_bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tern");

    let redis = RedisServer::start().unwrap();
    let mx_port = free_port().unwrap();
    let mx_ip = Ipv4Addr::new(127, 0, 0, 51);
    let sink = SmtpSink::start(mx_ip, mx_port).unwrap();
    let mut dns = Dnsmasq::builder().host("mx.bench.test", mx_ip);
    for d in 0..DOMAINS {
        dns = dns.mx(&format!("d{d}.test"), "mx.bench.test", 10);
    }
    let dns = dns.start().unwrap();

    // Fill the queue.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = redis.url();
    rt.block_on(async {
        let queue: Arc<dyn Queue> = Arc::new(
            RedisQueue::connect(RedisQueueOptions {
                url: url.clone(),
                ..RedisQueueOptions::default()
            })
            .await
            .unwrap(),
        );
        let body = filler_message("From: bench@sender.test\r\nSubject: delivery bench\r\n\r\n", SIZE);
        let body = bytes::Bytes::from(body);
        for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
            let batch = chunk
                .iter()
                .map(|i| {
                    let rcpt = format!("user{i}@d{}.test", i % DOMAINS);
                    let env = Envelope::new(
                        ReversePath::Mailbox("bench@sender.test".parse().unwrap()),
                        vec![Recipient::new(rcpt.parse().unwrap())],
                    );
                    NewMessage::new(env, body.clone())
                })
                .collect();
            for r in queue.enqueue_batch(batch).await {
                r.unwrap();
            }
        }
        assert_eq!(queue.counts().await.unwrap().total, total as u64);
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[queue]\nurl = \"{url}\"\n[delivery]\ndns_servers = [\"{}\"]\nsmtp_port = {mx_port}\n\
             helo_name = \"bench.test\"\npoll_interval = \"50ms\"\n[telemetry]\nlog_level = \"warn\"\n\
             metrics_listen = \"127.0.0.1:0\"\n",
            dns.addr()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&tern_bin);
    cmd.args(["worker", "--config", config.to_str().unwrap()]);
    let started = Instant::now();
    let mut worker = ChildGuard::spawn("tern worker", cmd).unwrap();
    let pid = worker.pid();

    let mut first: Option<Instant> = None;
    let mut peak_rss_kb = 0;
    let deadline = started + Duration::from_secs(600);
    loop {
        let n = sink.message_count();
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        peak_rss_kb = peak_rss_kb.max(status_kb(&pid.to_string(), "VmRSS:").unwrap_or(0));
        if n >= total as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {total} delivered\n{}",
            worker.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = first.map_or(started.elapsed(), |f| f.elapsed());
    let cpu = cpu_ms(&pid.to_string());
    let hwm_kb = status_kb(&pid.to_string(), "VmHWM:").unwrap_or(peak_rss_kb);
    let counters = sink.counters();
    worker.terminate(Duration::from_secs(30)).unwrap();

    println!("\nDelivery: {total} x {SIZE}-byte messages over {DOMAINS} domains into smtp-sink, reuse on");
    println!("| msg/s | worker CPU-ms/msg | worker peak RSS | SMTP sessions |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.3} | {:.1} MB | {} |",
        total as f64 / elapsed.as_secs_f64(),
        cpu / total as f64,
        hwm_kb as f64 / 1024.0,
        counters.sessions
    );
}
