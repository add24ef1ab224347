//! A claimer that dies: after its lease expires the reaper returns the job, another owner gets it, and the
//! first owner's late complete is refused with the distinct `NotOwner` error.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_queue::conformance::message;
use tern_queue::reaper::spawn_reaper;
use tern_queue::{Completion, EventKind, Outcome, QueueError};
use tern_testkit::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_moves_the_job_to_another_owner() {
    let server = RedisServer::start().expect("start redis-server");
    let opts = common::single(&server.url(), "crash");
    let q = common::queue(opts.clone()).await;
    let r = q
        .enqueue(message(&["a@crash.test", "b@crash.test"]))
        .await
        .expect("enqueue");

    let dead = q
        .claim("dead-worker", 10, Duration::from_secs(1))
        .await
        .expect("claim")
        .expect("work");
    assert_eq!(dead.jobs.len(), 1);
    let other = common::queue(opts).await;
    assert!(
        other
            .claim("live-worker", 10, Duration::from_secs(30))
            .await
            .expect("claim")
            .is_none()
    );

    let stop = tern_core::Shutdown::new();
    let reaper = spawn_reaper(Arc::clone(&other), Duration::from_millis(200), stop.clone());
    let t = Instant::now();
    let live = loop {
        if let Some(c) = other
            .claim("live-worker", 10, Duration::from_secs(30))
            .await
            .expect("claim")
        {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the job never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "reclaimed before the lease ran out: {:?}",
        t.elapsed()
    );
    assert_eq!(live.jobs[0].job.id, r.jobs[0].0);

    let err = q
        .complete("dead-worker", &dead.jobs[0].lease, Outcome::delivered())
        .await
        .expect_err("stale");
    assert_eq!(err, QueueError::NotOwner { job: r.jobs[0].0 });
    assert!(!err.is_unavailable());
    let err = q
        .extend("dead-worker", &dead.jobs[0].lease, Duration::from_secs(5))
        .await
        .expect_err("stale");
    assert!(matches!(err, QueueError::NotOwner { .. }));

    let info = q.get_message(r.message).await.expect("get").expect("exists");
    assert_eq!(info.jobs[0].owner.as_deref(), Some("live-worker"));
    assert_eq!(
        other
            .complete("live-worker", &live.jobs[0].lease, Outcome::delivered())
            .await
            .expect("complete"),
        Completion::Finished
    );
    let (events, _) = q.read_events(None, 100, None).await.expect("events");
    let expired: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::LeaseExpired)
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].recipients.len(), 2);
    assert_eq!(q.stats().await.expect("stats").delivered, 2);
    stop.cancel();
    reaper.await.expect("reaper task");
    drop(server);
}
