//! The embedded queue store against Redis with `appendfsync always`: both durable before they answer.
//!
//! ```text
//! cargo bench -p tern-benches --bench queue_embedded
//! TERN_BENCH_DEPTH=100000 TERN_BENCH_CYCLES=40000 TERN_BENCH_RUNS=3 cargo bench -p tern-benches --bench queue_embedded
//! ```
//!
//! For each backend, with `TERN_BENCH_DEPTH` waiting jobs (default 10,000; ~1 KiB bodies, 100 domains):
//! - cycles: the workload of `benches/queue.rs` (2 producers enqueuing batches of 500, 8 workers claiming
//!   up to 50 jobs of a domain and completing them with one `complete_batch`), `TERN_BENCH_CYCLES` full
//!   enqueue+claim+complete cycles (default 20,000), run `TERN_BENCH_RUNS` times (default 3; median and
//!   range);
//! - single enqueues: 64 concurrent writers each enqueuing one message at a time and awaiting it (as SMTP
//!   sessions do: one 250 per message), 10,000 in all: messages/s and p50/p99 of one enqueue. Every
//!   acknowledgement waits for its sync, so this is where group commit shows.
//!
//! The embedded store lives in a temporary directory on the same disk as Redis's AOF. `TERN_BENCH_ONLY=embedded`
//! (or `redis`) runs one backend alone, for profiling.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_benches::percentile;
use tern_core::{Envelope, Recipient, ReversePath};
use tern_queue::{
    EmbeddedQueue, EmbeddedQueueOptions, NewMessage, Outcome, Queue, RedisQueue, RedisQueueOptions,
};
use tern_testkit::redis::RedisServer;

const DOMAINS: u64 = 100;
const PRODUCERS: usize = 2;
const WORKERS: usize = 8;
const CYCLE_BATCH: usize = 500;
const WRITERS: usize = 64;
const SINGLES: usize = 10_000;

fn message(i: u64, body: &[u8]) -> NewMessage {
    let env = Envelope::new(
        ReversePath::Mailbox("bench@sender.test".parse().unwrap()),
        vec![Recipient::new(
            format!("user{i}@d{}.test", i % DOMAINS).parse().unwrap(),
        )],
    );
    NewMessage::new(env, body.to_vec())
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Row {
    name: &'static str,
    fill_rate: f64,
    cycles: f64,
    range: (f64, f64),
    singles: f64,
    single_p50: Duration,
    single_p99: Duration,
}

async fn enqueue_many(q: &Arc<dyn Queue>, n: usize, body: &Arc<Vec<u8>>, counter: &Arc<AtomicU64>) {
    let mut left = n;
    while left > 0 {
        let k = left.min(CYCLE_BATCH);
        let batch = (0..k)
            .map(|_| message(counter.fetch_add(1, Ordering::Relaxed), body))
            .collect();
        for r in q.enqueue_batch(batch).await {
            r.expect("enqueue");
        }
        left -= k;
    }
}

/// Workers claim and complete until `n` jobs are done.
async fn drain(q: &Arc<dyn Queue>, n: usize) {
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (q, done) = (Arc::clone(q), Arc::clone(&done));
            tokio::spawn(async move {
                let owner = format!("bench-{w}");
                while (done.load(Ordering::Relaxed) as usize) < n {
                    let Some(c) = q.claim(&owner, 50, Duration::from_secs(60)).await.expect("claim") else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let work = c
                        .jobs
                        .iter()
                        .map(|j| (j.lease.clone(), Outcome::delivered()))
                        .collect();
                    let results = q.complete_batch(&owner, work).await;
                    for r in &results {
                        r.as_ref().expect("complete");
                    }
                    done.fetch_add(results.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

async fn run(name: &'static str, q: Arc<dyn Queue>, depth: usize, cycles: usize, runs: usize) -> Row {
    let body = Arc::new(vec![b'x'; 1024]);
    let counter = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let fillers: Vec<_> = (0..4)
        .map(|_| {
            let (q, body, counter) = (Arc::clone(&q), Arc::clone(&body), Arc::clone(&counter));
            tokio::spawn(async move { enqueue_many(&q, depth / 4, &body, &counter).await })
        })
        .collect();
    for f in fillers {
        f.await.unwrap();
    }
    let fill_rate = depth as f64 / t.elapsed().as_secs_f64();
    eprintln!("{name}: filled {depth} at {fill_rate:.0} msg/s");

    let total = (cycles / PRODUCERS / CYCLE_BATCH) * PRODUCERS * CYCLE_BATCH;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let (q, body, counter) = (Arc::clone(&q), Arc::clone(&body), Arc::clone(&counter));
                tokio::spawn(async move { enqueue_many(&q, total / PRODUCERS, &body, &counter).await })
            })
            .collect();
        drain(&q, total).await;
        for p in producers {
            p.await.unwrap();
        }
        rates.push(total as f64 / t.elapsed().as_secs_f64());
        eprintln!("{name}: {:.0} cycles/s", rates[rates.len() - 1]);
    }
    rates.sort_by(f64::total_cmp);

    // One message per call, many writers at once: every acknowledgement waits for a sync.
    let t = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (q, body, counter) = (Arc::clone(&q), Arc::clone(&body), Arc::clone(&counter));
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(SINGLES / WRITERS);
                for _ in 0..SINGLES / WRITERS {
                    let m = message(counter.fetch_add(1, Ordering::Relaxed), &body);
                    let s = Instant::now();
                    q.enqueue(m).await.expect("enqueue");
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in writers {
        lat.extend(w.await.unwrap());
    }
    let singles = lat.len() as f64 / t.elapsed().as_secs_f64();
    Row {
        name,
        fill_rate,
        cycles: rates[rates.len() / 2],
        range: (rates[0], rates[rates.len() - 1]),
        singles,
        single_p50: percentile(&mut lat, 0.50),
        single_p99: percentile(&mut lat, 0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, so do nothing unless benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let depth = env_or("TERN_BENCH_DEPTH", 10_000);
    let cycles = env_or("TERN_BENCH_CYCLES", 20_000);
    let runs = env_or("TERN_BENCH_RUNS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("TERN_BENCH_ONLY").unwrap_or_default();
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().expect("temp dir");
    if only != "redis" {
        let opts = EmbeddedQueueOptions {
            path: dir.path().join("store"),
            ..Default::default()
        };
        let q: Arc<dyn Queue> = Arc::new(EmbeddedQueue::open(opts).expect("open the embedded store"));
        rows.push(rt.block_on(run("embedded (redb)", q, depth, cycles, runs)));
    }
    let size = std::fs::metadata(dir.path().join("store/queue.redb")).map_or(0, |m| m.len());
    if only != "embedded" {
        let server = RedisServer::start_durable().expect("start redis-server");
        let opts = RedisQueueOptions {
            url: server.url(),
            key_prefix: "bench".into(),
            pool_size: 8,
            ..Default::default()
        };
        let q: Arc<dyn Queue> = Arc::new(rt.block_on(RedisQueue::connect(opts)).expect("connect"));
        rows.push(rt.block_on(run("redis, appendfsync always", q, depth, cycles, runs)));
        drop(server);
    }
    println!();
    println!(
        "depth {depth}, {cycles} cycles × {runs} runs, {WRITERS} writers × {} single enqueues; store file {:.0} MiB",
        SINGLES / WRITERS,
        size as f64 / (1 << 20) as f64
    );
    println!(
        "| backend | fill msg/s (batches of 500) | cycles/s: median (range) | single enqueues/s ({WRITERS} writers) | single p50 / p99 |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} ({:.0}–{:.0}) | {:.0} | {} / {} |",
            r.name,
            r.fill_rate,
            r.cycles,
            r.range.0,
            r.range.1,
            r.singles,
            ms(r.single_p50),
            ms(r.single_p99)
        );
    }
}
