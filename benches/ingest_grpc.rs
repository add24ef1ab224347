//! gRPC batch ingest throughput: `SendBatch` calls into tern's Send API, which writes to a local redis-server
//! started for the run.
//!
//! ```text
//! cargo bench -p tern-benches --bench ingest_grpc
//! TERN_BENCH_MESSAGES=200000 cargo bench -p tern-benches --bench ingest_grpc
//! TERN_BENCH_GROUP_COMMIT=0 cargo bench -p tern-benches --bench ingest_grpc   # the bare queue, no group commit
//! ```
//!
//! Raw 1 KiB messages with an explicit envelope, batches of 500, 4 concurrent callers. The server and the
//! callers share this process (and the 2 cores with redis-server), so the CPU figure per message counts both;
//! redis-server's CPU is reported apart.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_benches::{cpu_ms, filler_message, percentile, redis_pid};
use tern_ingest::CancellationToken;
use tern_ingest::grpc::{GrpcServer, GrpcSettings};
use tern_proto::v1::{
    Envelope, SendBatchRequest, SendRequest, send_request::Content, submission_client::SubmissionClient,
};
use tern_queue::{Coalescing, CoalescingOptions, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;

const BATCH: usize = 500;
const CALLERS: usize = 4;
const SIZE: usize = 1024;

fn batch(n: usize, body: &[u8]) -> SendBatchRequest {
    let messages = (0..n)
        .map(|i| SendRequest {
            envelope: Some(Envelope {
                mail_from: "bench@sender.test".into(),
                rcpt_to: vec![format!("user{i}@d{}.test", i % 100)],
            }),
            content: Some(Content::Raw(body.to_vec())),
            ..Default::default()
        })
        .collect();
    SendBatchRequest { messages }
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
    let total: usize = std::env::var("TERN_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let redis = RedisServer::start().unwrap();
    let info = redis.cli(&["info", "server"]).unwrap();
    let redis_pid = redis_pid(&info);
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
        let settings = GrpcSettings { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..GrpcSettings::default() };
        let server = GrpcServer::bind(&settings, queue.clone()).await.unwrap();
        let url = format!("http://{}", server.local_addr());
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));

        let body = filler_message("From: bench@sender.test\r\nTo: rcpt@dest.test\r\nSubject: bench\r\n\r\n", SIZE);
        let request = Arc::new(batch(BATCH, &body));
        let client = SubmissionClient::connect(url).await.unwrap();

        // Warm-up.
        client.clone().send_batch(request.as_ref().clone()).await.unwrap();

        let calls = total / BATCH;
        let (self_cpu, r_cpu) = (cpu_ms("self"), cpu_ms(&redis_pid));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CALLERS {
            let mut client = client.clone();
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in (c..calls).step_by(CALLERS) {
                    let t = Instant::now();
                    let reply = client.send_batch(request.as_ref().clone()).await.unwrap().into_inner();
                    lat.push(t.elapsed());
                    assert_eq!(reply.results.len(), BATCH);
                }
                lat
            }));
        }
        let mut lat: Vec<Duration> = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        let sent = (calls * BATCH) as f64;
        let p99 = percentile(&mut lat, 0.99);
        println!("\ngRPC SendBatch: {SIZE}-byte raw messages, batches of {BATCH}, {CALLERS} callers, {sent} messages");
        println!("| msg/s | process CPU-ms/msg (server + callers) | redis CPU-ms/msg | p99 per batch |");
        println!("|---:|---:|---:|---:|");
        println!(
            "| {:.0} | {:.4} | {:.4} | {:.1} ms |",
            sent / elapsed.as_secs_f64(),
            (cpu_ms("self") - self_cpu) / sent,
            (cpu_ms(&redis_pid) - r_cpu) / sent,
            p99.as_secs_f64() * 1e3
        );
        stop.cancel();
    });
}
