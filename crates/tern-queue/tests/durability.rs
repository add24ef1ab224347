//! Redis with `appendonly yes` and `appendfsync always`: every enqueue that was acknowledged survives a
//! SIGKILL of Redis, including enqueues acknowledged while the crash happened.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_core::MessageId;
use tern_core::time::now_ms;
use tern_queue::conformance::message;
use tern_testkit::redis::RedisServer;

const N: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let mut server = RedisServer::start_durable().expect("start durable redis-server");
    let opts = common::single(&server.url(), "dur");
    let q = common::queue(opts.clone()).await;
    let mut acked: Vec<(MessageId, usize)> = Vec::new();
    for i in 0..N {
        // Single-domain (one script) and three-domain (intake record, then jobs) messages.
        let m = if i % 3 == 0 {
            message(&[
                &format!("a{i}@x.test"),
                &format!("b{i}@y.test"),
                &format!("c{i}@z.test"),
            ])
        } else {
            message(&[&format!("a{i}@d{}.test", i % 7)])
        };
        let r = q.enqueue(m).await.expect("enqueue");
        acked.push((r.message, r.jobs.len()));
    }
    // Writers still going when Redis dies: whatever they got acknowledged must survive too.
    let during: Arc<Mutex<Vec<(MessageId, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let q = q.clone();
        let during = during.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let m = message(&[&format!("late{i}@x.test"), &format!("late{i}@w.test")]);
                match q.enqueue(m).await {
                    Ok(r) => during.lock().expect("lock").push((r.message, r.jobs.len())),
                    Err(e) => {
                        assert!(e.is_unavailable(), "{e:?}");
                        return;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill_hard().expect("SIGKILL redis");
    tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("writer stops")
        .expect("writer");
    server.restart().expect("restart redis on the same data");

    let q = common::queue(opts).await;
    // Finish any enqueue that was acknowledged but interrupted before all its jobs existed.
    q.reap(now_ms() + 60_000).await.expect("reap");
    let during = during.lock().expect("lock").clone();
    eprintln!(
        "{} acknowledged before the crash, {} while writing into it",
        acked.len(),
        during.len()
    );
    acked.extend(during);
    let mut seen = HashSet::new();
    for (id, jobs) in &acked {
        let info = q
            .get_message(*id)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("message {id} lost"));
        assert_eq!(info.jobs.len(), *jobs, "message {id} lost jobs");
        assert!(info.body_size > 0);
        seen.insert(*id);
    }
    assert_eq!(seen.len(), acked.len());
    let total: usize = acked.iter().map(|(_, j)| j).sum();
    // The writer's last enqueue may have been stored while its reply was lost in the crash (it then got
    // Unavailable: "may or may not have taken effect"), so up to its two jobs may exist beyond the acked.
    let stored = q.counts().await.expect("counts").total;
    assert!(
        (total as u64..=total as u64 + 2).contains(&stored),
        "{stored} jobs stored for {total} acknowledged"
    );
    drop(server);
}
