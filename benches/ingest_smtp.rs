//! SMTP ingest throughput and latency: Postfix's `smtp-source` into tern's submission server, which writes to a
//! local redis-server started for the run.
//!
//! ```text
//! cargo bench -p tern-benches --bench ingest_smtp
//! TERN_BENCH_MESSAGES=40000 cargo bench -p tern-benches --bench ingest_smtp
//! TERN_BENCH_GROUP_COMMIT=0 cargo bench -p tern-benches --bench ingest_smtp   # the bare queue, no group commit
//! ```
//!
//! It measures, with 1 KiB messages and 20 concurrent sessions:
//! - `smtp-source` with one message per connection, and with connections reused (`-d`): messages/s, and CPU
//!   milliseconds per message of the ingest server (this process) and of redis-server;
//! - the time from the end of DATA (`<CRLF>.<CRLF>` sent) to the `250` reply, with 20 paced clients offering
//!   half the reused-connection rate: p50, p99 and p99.9.
//!
//! The ingest server runs in this process on a 2-thread tokio runtime, like `tern ingest` on a 2-core node.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_benches::{cpu_ms, filler_message, percentile, redis_pid};
use tern_config::IngestConfig;
use tern_ingest::{CancellationToken, SmtpServer};
use tern_queue::{Coalescing, CoalescingOptions, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::SmtpSource;
use tern_testkit::redis::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SESSIONS: u32 = 20;
const SIZE: usize = 1024;

async fn queued(queue: &dyn Queue) -> u64 {
    let c = queue.counts().await.unwrap();
    c.total
}

struct Run {
    label: &'static str,
    rate: f64,
    ingest_cpu_ms: f64,
    redis_cpu_ms: f64,
}

async fn smtp_source_run(
    label: &'static str,
    addr: SocketAddr,
    messages: u32,
    reuse: bool,
    queue: &dyn Queue,
    redis_pid: &str,
) -> Run {
    let before = queued(queue).await;
    let (self_cpu, redis_cpu) = (cpu_ms("self"), cpu_ms(redis_pid));
    let started = Instant::now();
    let source = SmtpSource {
        target: addr,
        sessions: SESSIONS,
        messages,
        size: SIZE,
        from: "bench@sender.test".into(),
        to: "rcpt@dest.test".into(),
        reuse,
        timeout: Duration::from_secs(600),
        extra_args: Vec::new(),
    };
    let out = tokio::task::spawn_blocking(move || source.run())
        .await
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = queued(queue).await;
    assert_eq!(
        after - before,
        u64::from(messages),
        "every message must be queued"
    );
    Run {
        label,
        rate: f64::from(messages) / elapsed.as_secs_f64(),
        ingest_cpu_ms: (cpu_ms("self") - self_cpu) / f64::from(messages),
        redis_cpu_ms: (cpu_ms(redis_pid) - redis_cpu) / f64::from(messages),
    }
}

/// One client session that sends a message every `interval`, recording end-of-DATA → 250 latencies.
async fn paced_client(
    addr: SocketAddr,
    interval: Duration,
    until: Instant,
    body: Arc<Vec<u8>>,
) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut read_reply = async |r: &mut BufReader<_>| -> String {
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.clone();
            }
        }
    };
    read_reply(&mut r).await;
    w.write_all(b"EHLO bench.test\r\n").await.unwrap();
    read_reply(&mut r).await;
    let mut latencies = Vec::new();
    let mut next = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        w.write_all(b"MAIL FROM:<bench@sender.test>\r\nRCPT TO:<rcpt@dest.test>\r\nDATA\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            read_reply(&mut r).await;
        }
        w.write_all(&body).await.unwrap();
        let sent = Instant::now();
        let reply = read_reply(&mut r).await;
        latencies.push(sent.elapsed());
        assert!(reply.starts_with("250"), "{reply}");
    }
    w.write_all(b"QUIT\r\n").await.unwrap();
    latencies
}

/// The queue as `tern` opens it: wrapped for group commit (`queue.group_commit`, on by default);
/// `TERN_BENCH_GROUP_COMMIT=0` measures the bare backend.
fn group_commit(queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
    if std::env::var("TERN_BENCH_GROUP_COMMIT").as_deref() == Ok("0") {
        println!("group commit: off");
        queue
    } else {
        println!("group commit: on");
        Arc::new(Coalescing::new(queue, CoalescingOptions::default()))
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let messages: u32 = std::env::var("TERN_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let redis = RedisServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let queue: Arc<dyn Queue> = Arc::new(
            RedisQueue::connect(RedisQueueOptions { url: redis.url(), ..RedisQueueOptions::default() })
                .await
                .unwrap(),
        );
        let queue = group_commit(queue);
        let config = IngestConfig {
            smtp_listen: vec!["127.0.0.1:0".parse().unwrap()],
            relay_networks: vec!["127.0.0.0/8".parse().unwrap()],
            hostname: Some("bench.test".into()),
            max_connections_per_ip: 1000,
            ..IngestConfig::default()
        };
        let server = SmtpServer::new(&config, queue.clone()).unwrap().bind().await.unwrap();
        let addr = server.smtp_addrs()[0];
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.run(shutdown.clone()));
        let pid = redis_pid(&redis.cli(&["info", "server"]).unwrap());

        // Warm up connections, scripts and allocator.
        smtp_source_run("warm-up", addr, 1_000, true, queue.as_ref(), &pid).await;
        let runs = vec![
            smtp_source_run("smtp-source, new connection per message", addr, messages, false, queue.as_ref(), &pid)
                .await,
            smtp_source_run("smtp-source -d, connections reused", addr, messages, true, queue.as_ref(), &pid).await,
        ];

        // Latency at half the reused-connection rate.
        let half = runs[1].rate / 2.0;
        let interval = Duration::from_secs_f64(f64::from(SESSIONS) / half);
        let mut body = filler_message("From: bench@sender.test\r\nTo: rcpt@dest.test\r\nSubject: latency\r\n\r\n", SIZE);
        body.extend_from_slice(b".\r\n");
        let body = Arc::new(body);
        let until = Instant::now() + Duration::from_secs(10);
        let clients: Vec<_> =
            (0..SESSIONS).map(|_| tokio::spawn(paced_client(addr, interval, until, body.clone()))).collect();
        let mut lat = Vec::new();
        for c in clients {
            lat.extend(c.await.unwrap());
        }
        shutdown.cancel();
        let _ = serving.await;

        println!("\nSMTP ingest, {SIZE}-byte messages, {SESSIONS} sessions, {messages} messages per run");
        println!("| run | msg/s | ingest CPU-ms/msg | redis CPU-ms/msg |");
        println!("|---|---:|---:|---:|");
        for r in &runs {
            println!("| {} | {:.0} | {:.3} | {:.3} |", r.label, r.rate, r.ingest_cpu_ms, r.redis_cpu_ms);
        }
        println!(
            "\nend of DATA → 250 at {:.0} msg/s offered ({} samples): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            half,
            lat.len(),
            percentile(&mut lat, 0.50).as_secs_f64() * 1e3,
            percentile(&mut lat, 0.99).as_secs_f64() * 1e3,
            percentile(&mut lat, 0.999).as_secs_f64() * 1e3,
        );
    });
}
