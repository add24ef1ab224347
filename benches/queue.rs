//! Queue throughput and latency against a local redis-server started for the run.
//!
//! ```text
//! cargo bench -p tern-benches --bench queue
//! TERN_BENCH_DEPTHS=1000,100000 TERN_BENCH_CYCLES=20000 cargo bench -p tern-benches --bench queue
//! ```
//!
//! For each queue depth (default 1k, 100k and 1M waiting jobs, ~1 KiB bodies, 100 domains, so that every claim finds 10 due jobs of its domain at every depth) it measures:
//! - enqueue: `enqueue_batch` of 100 messages from 2 concurrent producers (messages/s, p99 per batch);
//! - cycles: producers and 4 workers at once; workers `claim` up to 50 jobs of a domain and `complete`
//!   each (concurrently on the multiplexed connection); full enqueue+claim+complete cycles per second and
//!   p99 of each call;
//! - claim alone: 2,000 sequential claims of up to 10 jobs (p50/p99); their jobs are completed and replaced.
//!
//! The depth stays constant while it runs (as many jobs are enqueued as completed). As a ceiling it runs
//! `redis-benchmark -q -n 100000 -t set,get,lpush -P 16` against the same server.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_core::{Envelope, Recipient, ReversePath};
use tern_queue::{NewMessage, Outcome, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;
use tokio::sync::Mutex;

const DOMAINS: usize = 100;
const PRODUCERS: usize = 2;
const WORKERS: usize = 4;
const BATCH: usize = 100;

fn message(i: u64, body: &[u8]) -> NewMessage {
    let env = Envelope::new(
        ReversePath::Mailbox("bench@sender.test".parse().unwrap()),
        vec![Recipient::new(
            format!("user{i}@d{}.test", i % DOMAINS as u64).parse().unwrap(),
        )],
    );
    NewMessage::new(env, body.to_vec())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    depth: usize,
    fill_rate: f64,
    enqueue_rate: f64,
    enqueue_p99: Duration,
    cycles_rate: f64,
    claim_p99: Duration,
    complete_p99: Duration,
    cycle_enqueue_p99: Duration,
    claim_alone_p50: Duration,
    claim_alone_p99: Duration,
    used_memory: String,
}

async fn fill(q: &Arc<RedisQueue>, depth: usize, body: &Arc<Vec<u8>>, counter: &Arc<AtomicU64>) -> f64 {
    let t = Instant::now();
    let per = depth.div_ceil(4);
    let mut tasks = Vec::new();
    for p in 0..4 {
        let (q, body, counter) = (q.clone(), body.clone(), counter.clone());
        let n = per.min(depth.saturating_sub(p * per));
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let k = left.min(500);
                let batch: Vec<_> = (0..k)
                    .map(|_| message(counter.fetch_add(1, Ordering::Relaxed), &body))
                    .collect();
                for r in q.enqueue_batch(batch).await {
                    r.expect("enqueue");
                }
                left -= k;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    depth as f64 / t.elapsed().as_secs_f64()
}

async fn run_depth(url: &str, depth: usize, cycles: usize) -> Row {
    let opts = RedisQueueOptions {
        url: url.to_string(),
        key_prefix: format!("bench{depth}"),
        pool_size: 8,
        ..Default::default()
    };
    let q = Arc::new(RedisQueue::connect(opts).await.expect("connect"));
    let body = Arc::new(vec![b'x'; 1024]);
    let counter = Arc::new(AtomicU64::new(0));
    eprintln!("depth {depth}: filling");
    let fill_rate = fill(&q, depth, &body, &counter).await;
    eprintln!("depth {depth}: filled at {fill_rate:.0} msg/s");

    // 1. Enqueue alone.
    let lat = Arc::new(Mutex::new(Vec::new()));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let (q, body, counter, lat) = (q.clone(), body.clone(), counter.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..(cycles / PRODUCERS / BATCH) {
                let batch: Vec<_> = (0..BATCH)
                    .map(|_| message(counter.fetch_add(1, Ordering::Relaxed), &body))
                    .collect();
                let s = Instant::now();
                for r in q.enqueue_batch(batch).await {
                    r.expect("enqueue");
                }
                lat.lock().await.push(s.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let enqueue_rate = ((cycles / PRODUCERS / BATCH) * PRODUCERS * BATCH) as f64 / t.elapsed().as_secs_f64();
    let enqueue_p99 = pct(&mut lat.lock().await, 0.99);

    // Bring the depth back: complete as many as were just enqueued.
    drain(&q, (cycles / PRODUCERS / BATCH) * PRODUCERS * BATCH, None, None).await;

    // 2. Full cycles: producers and workers at once.
    let enq_lat = Arc::new(Mutex::new(Vec::new()));
    let claim_lat = Arc::new(Mutex::new(Vec::new()));
    let complete_lat = Arc::new(Mutex::new(Vec::new()));
    let t = Instant::now();
    let mut producers = Vec::new();
    let total = (cycles / PRODUCERS / BATCH) * PRODUCERS * BATCH;
    for _ in 0..PRODUCERS {
        let (q, body, counter, lat) = (q.clone(), body.clone(), counter.clone(), enq_lat.clone());
        producers.push(tokio::spawn(async move {
            for _ in 0..(cycles / PRODUCERS / BATCH) {
                let batch: Vec<_> = (0..BATCH)
                    .map(|_| message(counter.fetch_add(1, Ordering::Relaxed), &body))
                    .collect();
                let s = Instant::now();
                for r in q.enqueue_batch(batch).await {
                    r.expect("enqueue");
                }
                lat.lock().await.push(s.elapsed());
            }
        }));
    }
    drain(&q, total, Some(claim_lat.clone()), Some(complete_lat.clone())).await;
    for p in producers {
        p.await.unwrap();
    }
    let cycles_rate = total as f64 / t.elapsed().as_secs_f64();

    // 3. Claim latency alone, sequential.
    let mut alone = Vec::new();
    for _ in 0..2000 {
        let s = Instant::now();
        let c = q.claim("solo", 10, Duration::from_secs(60)).await.expect("claim");
        alone.push(s.elapsed());
        if let Some(c) = c {
            let done = c
                .jobs
                .iter()
                .map(|j| q.complete("solo", &j.lease, Outcome::delivered()));
            for r in futures_join(done).await {
                r.expect("complete");
            }
            // Keep the depth: replace what was taken (not timed).
            let refill: Vec<_> = (0..c.jobs.len())
                .map(|_| message(counter.fetch_add(1, Ordering::Relaxed), &body))
                .collect();
            for r in q.enqueue_batch(refill).await {
                r.expect("enqueue");
            }
        }
    }
    let used_memory = server_memory(url);
    Row {
        depth,
        fill_rate,
        enqueue_rate,
        enqueue_p99,
        cycles_rate,
        claim_p99: pct(&mut claim_lat.lock().await, 0.99),
        complete_p99: pct(&mut complete_lat.lock().await, 0.99),
        cycle_enqueue_p99: pct(&mut enq_lat.lock().await, 0.99),
        claim_alone_p50: pct(&mut alone.clone(), 0.50),
        claim_alone_p99: pct(&mut alone, 0.99),
        used_memory,
    }
}

async fn futures_join<F: Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.collect();
    let mut out = Vec::with_capacity(handles.len());
    // Poll them together: the multiplexed connection pipelines the requests.
    let joined = join_all_local(handles).await;
    out.extend(joined);
    out
}

async fn join_all_local<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::with_capacity(futs.len());
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out = Vec::with_capacity(set.len());
    // A tiny join_all without pulling in the futures crate.
    let results: Vec<Option<F::Output>> = std::future::poll_fn(|cx| {
        let mut pending = false;
        if out.len() < set.len() {
            out.resize_with(set.len(), || None);
        }
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(std::mem::take(&mut out))
        }
    })
    .await;
    results.into_iter().map(|r| r.unwrap()).collect()
}

/// Workers claim and complete until `n` jobs are done.
async fn drain(
    q: &Arc<RedisQueue>,
    n: usize,
    claim_lat: Option<Arc<Mutex<Vec<Duration>>>>,
    complete_lat: Option<Arc<Mutex<Vec<Duration>>>>,
) {
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (q, done, claim_lat, complete_lat) =
            (q.clone(), done.clone(), claim_lat.clone(), complete_lat.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("bench-{w}");
            while (done.load(Ordering::Relaxed) as usize) < n {
                let s = Instant::now();
                let Some(c) = q.claim(&owner, 50, Duration::from_secs(60)).await.expect("claim") else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                if let Some(l) = &claim_lat {
                    l.lock().await.push(s.elapsed());
                }
                let timed = c.jobs.iter().map(|j| {
                    let q = q.clone();
                    let owner = owner.clone();
                    async move {
                        let s = Instant::now();
                        q.complete(&owner, &j.lease, Outcome::delivered())
                            .await
                            .expect("complete");
                        s.elapsed()
                    }
                });
                let lats = futures_join(timed).await;
                done.fetch_add(lats.len() as u64, Ordering::Relaxed);
                if let Some(l) = &complete_lat {
                    l.lock().await.extend(lats);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
}

fn server_memory(url: &str) -> String {
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap_or("6379")
        .to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port, "info", "memory"])
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("used_memory_human:"))
                .map(|l| l.trim_start_matches("used_memory_human:").trim().to_string())
        })
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, so do nothing unless benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let depths: Vec<usize> = std::env::var("TERN_BENCH_DEPTHS")
        .unwrap_or_else(|_| "1000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let cycles: usize = std::env::var("TERN_BENCH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40_000);
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    println!(
        "redis-server {} on port {} (no persistence), {} cores",
        redis_version(),
        server.port(),
        cores()
    );
    let ceiling = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &server.port().to_string(),
            "-q",
            "-n",
            "100000",
            "-t",
            "set,get,lpush",
            "-P",
            "16",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\r', "\n"))
        .unwrap_or_else(|e| format!("redis-benchmark failed: {e}"));
    println!("ceiling: redis-benchmark -q -n 100000 -t set,get,lpush -P 16");
    for line in ceiling.lines().filter(|l| l.contains("requests per second")) {
        println!("  {}", line.trim());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for depth in depths {
        rows.push(rt.block_on(run_depth(&url, depth, cycles)));
        // Free the memory of this depth before the next.
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &server.port().to_string(), "flushall"])
            .output();
    }
    println!();
    println!(
        "| depth | fill msg/s | enqueue msg/s (batch {BATCH}) | enqueue p99/batch | cycles/s | claim p99 | complete p99 | enqueue p99 (in cycles) | claim alone p50 / p99 | redis memory |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.0} | {} | {} | {} | {} / {} | {} |",
            r.depth,
            r.fill_rate,
            r.enqueue_rate,
            ms(r.enqueue_p99),
            r.cycles_rate,
            ms(r.claim_p99),
            ms(r.complete_p99),
            ms(r.cycle_enqueue_p99),
            ms(r.claim_alone_p50),
            ms(r.claim_alone_p99),
            r.used_memory,
        );
    }
    drop(server);
}

fn redis_version() -> String {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
