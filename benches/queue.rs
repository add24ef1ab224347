//! Queue throughput and latency against a local redis-server started for the run.
//!
//! ```text
//! cargo bench -p tern-benches --bench queue
//! TERN_BENCH_DEPTHS=1000,100000 TERN_BENCH_CYCLES=20000 cargo bench -p tern-benches --bench queue
//! ```
//!
//! For each queue depth (default 1k, 100k and 1M waiting jobs, ~1 KiB bodies, 100 domains, so that every
//! claim finds at least 10 due jobs of its domain at every depth) it measures:
//! - enqueue: `enqueue_batch` of 100 messages from 2 concurrent producers (messages/s, p99 per batch);
//! - cycles: 2 producers (batches of 500) and 8 workers at once, each a tokio task on a 2-thread runtime,
//!   run `TERN_BENCH_RUNS` times (default 3; the median and the range are reported);
//!   workers `claim` up to 50 jobs of a domain and record their outcomes with one `complete_batch`; full
//!   enqueue+claim+complete cycles per second, p99 of each call (complete: per batch), and the CPU time
//!   the Redis server and this process spent per cycle (Redis `INFO cpu`, `/proc/self/stat`);
//! - claim alone: 5,000 sequential claims of up to 10 jobs with no other load running (p50/p99/p999); only
//!   the claim is timed, then its jobs are completed and replaced (untimed).
//!
//! The depth stays constant while it runs (as many jobs are enqueued as completed). As a ceiling it runs
//! `redis-benchmark -q -n 100000 -t set,get,lpush -P 16` against the same server. With
//! `TERN_BENCH_PROFILE=1` it also prints Redis `INFO commandstats` per cycle and the Redis calls slower than
//! 1 ms during the claim-alone phase.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_benches::percentile;
use tern_core::{Envelope, Recipient, ReversePath};
use tern_queue::{NewMessage, Outcome, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;
use tokio::sync::Mutex;

const DOMAINS: usize = 100;
const PRODUCERS: usize = 2;
const WORKERS: usize = 8;
const BATCH: usize = 100;
/// Producers' batch in the full cycles.
const CYCLE_BATCH: usize = 500;
const CLAIM_ALONE: usize = 5_000;

fn message(i: u64, body: &[u8]) -> NewMessage {
    let env = Envelope::new(
        ReversePath::Mailbox("bench@sender.test".parse().unwrap()),
        vec![Recipient::new(
            format!("user{i}@d{}.test", i % DOMAINS as u64).parse().unwrap(),
        )],
    );
    NewMessage::new(env, body.to_vec())
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
    /// The slowest and fastest run's cycles/s.
    cycles_range: (f64, f64),
    claim_p99: Duration,
    complete_p99: Duration,
    cycle_enqueue_p99: Duration,
    claim_alone_p50: Duration,
    claim_alone_p99: Duration,
    claim_alone_p999: Duration,
    redis_us_per_cycle: f64,
    client_us_per_cycle: f64,
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

/// Starts [`PRODUCERS`] tasks, each enqueuing `batches` batches of `size` messages and recording each batch's
/// time in `lat`.
fn producers(
    q: &Arc<RedisQueue>,
    body: &Arc<Vec<u8>>,
    counter: &Arc<AtomicU64>,
    lat: &Arc<Mutex<Vec<Duration>>>,
    batches: usize,
    size: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..PRODUCERS)
        .map(|_| {
            let (q, body, counter, lat) = (q.clone(), body.clone(), counter.clone(), lat.clone());
            tokio::spawn(async move {
                for _ in 0..batches {
                    let batch: Vec<_> = (0..size)
                        .map(|_| message(counter.fetch_add(1, Ordering::Relaxed), &body))
                        .collect();
                    let s = Instant::now();
                    for r in q.enqueue_batch(batch).await {
                        r.expect("enqueue");
                    }
                    lat.lock().await.push(s.elapsed());
                }
            })
        })
        .collect()
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
    let tasks = producers(&q, &body, &counter, &lat, cycles / PRODUCERS / BATCH, BATCH);
    for t in tasks {
        t.await.unwrap();
    }
    let enqueue_rate = ((cycles / PRODUCERS / BATCH) * PRODUCERS * BATCH) as f64 / t.elapsed().as_secs_f64();
    let enqueue_p99 = percentile(&mut lat.lock().await, 0.99);

    // Bring the depth back: complete as many as were just enqueued.
    drain(&q, (cycles / PRODUCERS / BATCH) * PRODUCERS * BATCH, None, None).await;

    // 2. Full cycles: producers and workers at once.
    let enq_lat = Arc::new(Mutex::new(Vec::new()));
    let claim_lat = Arc::new(Mutex::new(Vec::new()));
    let complete_lat = Arc::new(Mutex::new(Vec::new()));
    let (redis_cpu0, client_cpu0) = (redis_cpu(url), client_cpu());
    if std::env::var_os("TERN_BENCH_PROFILE").is_some() {
        redis_cli(url, &["config", "resetstat"]);
    }
    // TERN_BENCH_SLOWLOG=<file>: every Redis call of the cycles is logged with its time, and written to
    // <file> as JSON (redis-cli --json), to attribute Redis time to scripts by their SHA.
    let slowlog = std::env::var("TERN_BENCH_SLOWLOG").ok();
    if slowlog.is_some() {
        redis_cli(url, &["config", "set", "slowlog-max-len", "1000000"]);
        redis_cli(url, &["config", "set", "slowlog-log-slower-than", "0"]);
        redis_cli(url, &["slowlog", "reset"]);
    }
    // The cycles run `runs` times (TERN_BENCH_RUNS, default 3): this machine's speed varies from minute to
    // minute, so the median is reported with the range.
    let runs: usize = std::env::var("TERN_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let total = (cycles / PRODUCERS / CYCLE_BATCH) * PRODUCERS * CYCLE_BATCH;
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let producers = producers(
            &q,
            &body,
            &counter,
            &enq_lat,
            cycles / PRODUCERS / CYCLE_BATCH,
            CYCLE_BATCH,
        );
        drain(&q, total, Some(claim_lat.clone()), Some(complete_lat.clone())).await;
        for p in producers {
            p.await.unwrap();
        }
        rates.push(total as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let cycles_rate = rates[rates.len() / 2];
    let cycles_range = (rates[0], rates[rates.len() - 1]);
    let total = total * runs;
    if let Some(path) = &slowlog {
        redis_cli(url, &["config", "set", "slowlog-log-slower-than", "10000"]);
        let dump = redis_cli(url, &["--json", "slowlog", "get", "1000000"]);
        if let Err(e) = std::fs::write(path, dump) {
            eprintln!("writing {path}: {e}");
        }
    }
    let redis_us_per_cycle = (redis_cpu(url) - redis_cpu0) * 1e6 / total as f64;
    let client_us_per_cycle = (client_cpu() - client_cpu0) * 1e6 / total as f64;
    if std::env::var_os("TERN_BENCH_PROFILE").is_some() {
        let stats = redis_cli(url, &["info", "commandstats"]);
        let mut rows: Vec<(f64, String)> = stats
            .lines()
            .filter_map(|l| {
                let usec = l.split("usec=").nth(1)?.split(',').next()?.parse::<f64>().ok()?;
                Some((usec, l.to_string()))
            })
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (usec, l) in rows.iter().take(25) {
            eprintln!("  {:>8.2} us/cycle  {l}", usec / total as f64);
        }
    }

    // 3. Claim latency alone, sequential, nothing else running; only the claim is timed.
    let profile = std::env::var_os("TERN_BENCH_PROFILE").is_some();
    if profile {
        redis_cli(url, &["config", "set", "slowlog-log-slower-than", "1000"]);
        redis_cli(url, &["slowlog", "reset"]);
    }
    let alone = {
        let (q, body, counter) = (q.clone(), body.clone(), counter.clone());
        tokio::spawn(async move {
            let mut alone = Vec::with_capacity(CLAIM_ALONE);
            for _ in 0..CLAIM_ALONE {
                let s = Instant::now();
                let c = q.claim("solo", 10, Duration::from_secs(60)).await.expect("claim");
                alone.push(s.elapsed());
                if let Some(c) = c {
                    let work = c
                        .jobs
                        .iter()
                        .map(|j| (j.lease.clone(), Outcome::delivered()))
                        .collect();
                    for r in q.complete_batch("solo", work).await {
                        r.expect("complete");
                    }
                    // Keep the depth: replace what was taken.
                    let refill: Vec<_> = (0..c.jobs.len())
                        .map(|_| message(counter.fetch_add(1, Ordering::Relaxed), &body))
                        .collect();
                    for r in q.enqueue_batch(refill).await {
                        r.expect("enqueue");
                    }
                }
            }
            alone
        })
        .await
        .unwrap()
    };
    if profile {
        eprintln!(
            "claim alone: {} redis calls over 1 ms: {}",
            redis_cli(url, &["slowlog", "len"]).trim(),
            redis_cli(url, &["slowlog", "get", "5"]).replace('\n', " ")
        );
    }
    let used_memory = server_memory(url);
    Row {
        depth,
        fill_rate,
        enqueue_rate,
        enqueue_p99,
        cycles_rate,
        cycles_range,
        claim_p99: percentile(&mut claim_lat.lock().await, 0.99),
        complete_p99: percentile(&mut complete_lat.lock().await, 0.99),
        cycle_enqueue_p99: percentile(&mut enq_lat.lock().await, 0.99),
        claim_alone_p50: percentile(&mut alone.clone(), 0.50),
        claim_alone_p99: percentile(&mut alone.clone(), 0.99),
        claim_alone_p999: percentile(&mut alone.clone(), 0.999),
        redis_us_per_cycle,
        client_us_per_cycle,
        used_memory,
    }
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
                let work: Vec<_> = c
                    .jobs
                    .iter()
                    .map(|j| (j.lease.clone(), Outcome::delivered()))
                    .collect();
                let s = Instant::now();
                let results = q.complete_batch(&owner, work).await;
                let took = s.elapsed();
                for r in &results {
                    r.as_ref().expect("complete");
                }
                done.fetch_add(results.len() as u64, Ordering::Relaxed);
                if let Some(l) = &complete_lat {
                    l.lock().await.push(took);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
}

fn port_of(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap_or("6379")
        .to_string()
}

fn redis_cli(url: &str, args: &[&str]) -> String {
    let port = port_of(url);
    let mut all = vec!["-p", port.as_str()];
    all.extend_from_slice(args);
    std::process::Command::new("redis-cli")
        .args(&all)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn server_memory(url: &str) -> String {
    redis_cli(url, &["info", "memory"])
        .lines()
        .find(|l| l.starts_with("used_memory_human:"))
        .map(|l| l.trim_start_matches("used_memory_human:").trim().to_string())
        .unwrap_or_default()
}

/// CPU seconds (user + system) the Redis server has used.
fn redis_cpu(url: &str) -> f64 {
    redis_cli(url, &["info", "cpu"])
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

/// CPU seconds (user + system) this process has used (Linux; 0 elsewhere).
fn client_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
            let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
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
        "| depth | fill msg/s | enqueue msg/s (batch {BATCH}) | enqueue p99/batch | cycles/s (median; range) | claim p99 | complete p99/batch | enqueue p99/batch of {CYCLE_BATCH} (in cycles) | claim alone p50 / p99 / p999 | redis CPU/cycle | client CPU/cycle | redis memory |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.0} ({:.0}–{:.0}) | {} | {} | {} | {} / {} / {} | {:.0} µs | {:.0} µs | {} |",
            r.depth,
            r.fill_rate,
            r.enqueue_rate,
            ms(r.enqueue_p99),
            r.cycles_rate,
            r.cycles_range.0,
            r.cycles_range.1,
            ms(r.claim_p99),
            ms(r.complete_p99),
            ms(r.cycle_enqueue_p99),
            ms(r.claim_alone_p50),
            ms(r.claim_alone_p99),
            ms(r.claim_alone_p999),
            r.redis_us_per_cycle,
            r.client_us_per_cycle,
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
