//! Four claimers (each with its own queue client, as on four machines) take 20,000 jobs over 50 domains.
//! With no lease expiring, every job is completed exactly once, and the number of claims held at once per
//! domain (tracked here with atomics) never exceeds the limit.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tern_core::JobId;
use tern_queue::conformance::message;
use tern_queue::{Completion, Outcome, Queue};
use tern_testkit::redis::RedisServer;
use tokio::sync::Mutex;

const JOBS: usize = 20_000;
const DOMAINS: usize = 50;
const CLAIMERS: usize = 4;
const LIMIT: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_claimers_complete_every_job_once_within_the_limit() {
    let server = RedisServer::start().expect("start redis-server");
    let mut opts = common::single(&server.url(), "conc");
    opts.default_domain_concurrency = LIMIT;
    let filler = common::queue(opts.clone()).await;
    let t = Instant::now();
    let mut batch = Vec::new();
    for i in 0..JOBS {
        batch.push(message(&[&format!("r{i}@d{}.test", i % DOMAINS)]));
        if batch.len() == 1000 {
            for r in filler.enqueue_batch(std::mem::take(&mut batch)).await {
                r.expect("enqueue");
            }
        }
    }
    eprintln!("enqueued {JOBS} in {:?}", t.elapsed());
    assert_eq!(filler.counts().await.expect("counts").total, JOBS as u64);

    let active: Arc<Vec<AtomicU32>> = Arc::new((0..DOMAINS).map(|_| AtomicU32::new(0)).collect());
    let max_seen = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let completions: Arc<Mutex<HashMap<JobId, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CLAIMERS {
        let q: Arc<dyn Queue> = common::queue(opts.clone()).await;
        let (active, max_seen, done, completions) = (
            active.clone(),
            max_seen.clone(),
            done.clone(),
            completions.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let owner = format!("worker-{w}");
            while done.load(Ordering::SeqCst) < JOBS {
                let Some(claim) = q
                    .claim(&owner, 25, Duration::from_secs(120))
                    .await
                    .expect("claim")
                else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                let d: usize = claim
                    .domain
                    .trim_start_matches('d')
                    .trim_end_matches(".test")
                    .parse()
                    .expect("domain");
                let now_active = active[d].fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now_active, Ordering::SeqCst);
                assert!(
                    now_active <= LIMIT,
                    "domain {} has {now_active} claims at once",
                    claim.domain
                );
                let n = claim.jobs.len();
                for (i, job) in claim.jobs.into_iter().enumerate() {
                    if i + 1 == n {
                        // The last completion frees the slot: stop counting this claim first.
                        active[d].fetch_sub(1, Ordering::SeqCst);
                    }
                    let r = q
                        .complete(&owner, &job.lease, Outcome::delivered())
                        .await
                        .expect("complete");
                    assert_eq!(r, Completion::Finished);
                    *completions.lock().await.entry(job.job.id).or_default() += 1;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(90), t)
            .await
            .expect("claimers finish in time")
            .expect("claimer");
    }
    eprintln!(
        "claimed and completed {JOBS} in {:?}; max claims at once per domain {}",
        t.elapsed(),
        max_seen.load(Ordering::SeqCst)
    );
    let completions = completions.lock().await;
    assert_eq!(completions.len(), JOBS);
    assert!(completions.values().all(|&n| n == 1));
    assert!(max_seen.load(Ordering::SeqCst) <= LIMIT);
    let counts = filler.counts().await.expect("counts");
    assert_eq!(counts.total, 0);
    assert_eq!(filler.stats().await.expect("stats").delivered, JOBS as u64);
    drop(server);
}
