//! Redis stopped mid-test: calls fail promptly with `Unavailable` (no hang, no panic), and work resumes
//! once Redis is back on the same port.

mod common;

use std::time::{Duration, Instant};

use tern_queue::conformance::message;
use tern_queue::{Outcome, QueueError};
use tern_testkit::redis::RedisServer;

fn unavailable<T: std::fmt::Debug>(r: Result<T, QueueError>, what: &str) {
    match r {
        // NotSent is the outage in which the call never left the process: unavailable too.
        Err(e) if e.is_unavailable() => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_redis_is_down_and_resume_after() {
    let mut server = RedisServer::start_durable().expect("start redis-server");
    let q = common::queue(common::single(&server.url(), "outage")).await;
    let before = q.enqueue(message(&["a@out.test"])).await.expect("enqueue");
    let claim = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("work");

    server.stop().expect("stop redis");
    let bound = Duration::from_secs(4);
    let t = Instant::now();
    unavailable(q.enqueue(message(&["b@out.test"])).await, "enqueue");
    unavailable(q.claim("w", 10, Duration::from_secs(60)).await, "claim");
    unavailable(
        q.complete("w", &claim.jobs[0].lease, Outcome::delivered()).await,
        "complete",
    );
    unavailable(q.counts().await, "counts");
    unavailable(q.reap(0).await, "reap");
    let batch = q
        .enqueue_batch(vec![
            message(&["c@out.test"]),
            message(&["d@out.test", "e@other.test"]),
        ])
        .await;
    for r in batch {
        unavailable(r, "enqueue_batch");
    }
    assert!(
        t.elapsed() < bound * 6,
        "calls took {:?} while redis was down",
        t.elapsed()
    );
    eprintln!("7 calls failed with Unavailable in {:?}", t.elapsed());

    server.restart().expect("restart redis on the same port");
    let t = Instant::now();
    let done = loop {
        match q.complete("w", &claim.jobs[0].lease, Outcome::delivered()).await {
            Ok(done) => break done,
            Err(e) if e.is_unavailable() && t.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("queue did not come back: {e:?}"),
        }
    };
    eprintln!("queue usable again {:?} after the restart", t.elapsed());
    assert_eq!(done, tern_queue::Completion::Finished);
    assert!(q.get_message(before.message).await.expect("get").is_none());
    let after = q.enqueue(message(&["f@out.test"])).await.expect("enqueue after");
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("work");
    assert_eq!(c.jobs[0].job.id.message, after.message);
    drop(server);
}

/// A server that accepts connections and never answers (a hung Redis): calls still return promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_gives_unavailable_within_the_timeouts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        // Keep every accepted connection open and silent until the test ends.
        let mut conns = Vec::new();
        listener.set_nonblocking(true).expect("nonblocking");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            match listener.accept() {
                Ok((c, _)) => conns.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let mut opts = common::single(&format!("redis://127.0.0.1:{port}/"), "hung");
    opts.connect_timeout = Duration::from_millis(500);
    opts.response_timeout = Duration::from_millis(500);
    let q = tern_queue::RedisQueue::new(opts).expect("queue");
    let t = Instant::now();
    unavailable(
        tern_queue::Queue::enqueue(&q, message(&["a@hung.test"])).await,
        "enqueue",
    );
    unavailable(
        tern_queue::Queue::claim(&q, "w", 1, Duration::from_secs(1)).await,
        "claim",
    );
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "two calls took {took:?}");
    eprintln!("two calls against a silent server failed with Unavailable in {took:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_out_of_memory_is_an_outage_and_nothing_is_stored() {
    let server = RedisServer::start().expect("start redis-server");
    let q = common::queue(common::single(&server.url(), "oom")).await;
    q.enqueue(message(&["a@oom.test"])).await.expect("enqueue");
    // Far below what is in use: every write is refused with OOM until there is room again.
    server
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .expect("policy");
    server
        .cli(&["CONFIG", "SET", "maxmemory", "1"])
        .expect("maxmemory");
    unavailable(q.enqueue(message(&["b@oom.test"])).await, "enqueue");
    server
        .cli(&["CONFIG", "SET", "maxmemory", "0"])
        .expect("maxmemory");
    q.enqueue(message(&["c@oom.test"])).await.expect("enqueue after");
    assert_eq!(q.counts().await.expect("counts").total, 2);
}

/// Out of memory, new mail is refused (an outage), but the mail already queued keeps moving: claims,
/// heartbeats and completions run (a completion frees the job's memory), as does the reaper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_out_of_memory_still_claims_and_completes_queued_mail() {
    let server = RedisServer::start().expect("start redis-server");
    let q = common::queue(common::single(&server.url(), "oomflow")).await;
    q.enqueue(message(&["a@oomflow.test"])).await.expect("enqueue");
    q.enqueue(message(&["b@oomflow.test"])).await.expect("enqueue");
    server
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .expect("policy");
    server
        .cli(&["CONFIG", "SET", "maxmemory", "1"])
        .expect("maxmemory");
    unavailable(q.enqueue(message(&["c@oomflow.test"])).await, "enqueue");
    let c = q
        .claim("w", 10, Duration::from_secs(60))
        .await
        .expect("claim while out of memory")
        .expect("work");
    assert_eq!(c.jobs.len(), 2);
    q.extend("w", &c.jobs[0].lease, Duration::from_secs(60))
        .await
        .expect("heartbeat while out of memory");
    for j in &c.jobs {
        assert_eq!(
            q.complete("w", &j.lease, Outcome::delivered())
                .await
                .expect("complete while out of memory"),
            tern_queue::Completion::Finished
        );
    }
    q.reap(tern_core::time::now_ms())
        .await
        .expect("reap while out of memory");
    assert_eq!(q.counts().await.expect("counts").total, 0);
    server
        .cli(&["CONFIG", "SET", "maxmemory", "0"])
        .expect("maxmemory");
}

/// After a restart of the server every pooled connection is stale. The first call that fails on one learns of
/// it for them all: the rest are made anew on their next use, so one call fails, not one per connection (each
/// such failure costs ingest a repeat after a back-off, and a worker a claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_one_failed_call_renews_every_pooled_connection() {
    let mut server = RedisServer::start_durable().expect("start redis-server");
    let mut options = common::single(&server.url(), "renew");
    options.pool_size = 4;
    let q = common::queue(options).await;
    // Calls take the connections in turn, one each: every connection of the pool is made.
    for n in 0..8 {
        q.enqueue(message(&[&format!("warm{n}@renew.test")]))
            .await
            .expect("enqueue");
    }
    server.restart().expect("restart redis on the same port");
    let mut failed = 0;
    for n in 0..4 {
        match q.enqueue(message(&[&format!("after{n}@renew.test")])).await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => failed += 1,
            Err(e) => panic!("enqueue after the restart: {e:?}"),
        }
    }
    assert_eq!(failed, 1, "calls that failed on a stale connection");
}
