//! The group-commit wrapper ([`Coalescing`]) over real redis-server processes: concurrent enqueues become few
//! Redis calls, each caller gets its own answer, `WAIT` covers every message of a shared call, and what was
//! acknowledged survives a SIGKILL of Redis.
#![allow(clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tern_core::MessageId;
use tern_core::time::now_ms;
use tern_queue::conformance::message;
use tern_queue::{Coalescing, CoalescingOptions, Completion, NewMessage, Outcome, Queue, QueueError};
use tern_testkit::free_port;
use tern_testkit::redis::RedisServer;

fn wrap(inner: Arc<dyn Queue>) -> Arc<dyn Queue> {
    Arc::new(Coalescing::new(inner, CoalescingOptions::default()))
}

/// A field of `INFO <section>`, as a number.
fn info(server: &RedisServer, section: &str, field: &str) -> u64 {
    let text = server.cli(&["INFO", section]).expect("INFO");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How many times Redis ran `command` since the last `CONFIG RESETSTAT`.
fn calls_of(server: &RedisServer, command: &str) -> u64 {
    let text = server.cli(&["INFO", "commandstats"]).expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn reset_stats(server: &RedisServer) {
    server.cli(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
}

/// A message of a known id to one recipient.
fn named(rcpt: &str) -> (MessageId, NewMessage) {
    let id = MessageId::new();
    let mut m = message(&[rcpt]);
    m.id = Some(id);
    (id, m)
}

/// Enqueues `messages` from as many concurrent tasks; each task's answer with its message's id.
async fn enqueue_concurrently(
    q: &Arc<dyn Queue>,
    messages: Vec<(MessageId, NewMessage)>,
) -> Vec<(MessageId, Result<tern_queue::EnqueueReceipt, QueueError>)> {
    let tasks = messages.into_iter().map(|(id, m)| {
        let q = q.clone();
        tokio::spawn(async move { (id, q.enqueue(m).await) })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_become_few_redis_calls() {
    const N: usize = 256;
    let server = RedisServer::start().expect("start redis-server");
    let url = server.url();
    let batch = |tag: &str| {
        (0..N)
            .map(|i| named(&format!("{tag}{i}@one.test")))
            .collect::<Vec<_>>()
    };

    let bare = common::queue(common::single(&url, "bare")).await;
    reset_stats(&server);
    for (_, r) in enqueue_concurrently(&bare, batch("b")).await {
        r.expect("queued");
    }
    let bare_calls = calls_of(&server, "fcall");

    let wrapped = wrap(common::queue(common::single(&url, "wrapped")).await);
    reset_stats(&server);
    // Redis holds back writes for a moment, so the first call is in flight while the others arrive
    // whatever the machine's load: they must gather behind it.
    server
        .cli(&["CLIENT", "PAUSE", "300", "WRITE"])
        .expect("CLIENT PAUSE");
    let answers = enqueue_concurrently(&wrapped, batch("w")).await;
    let calls = calls_of(&server, "fcall");
    eprintln!("{N} concurrent enqueues: bare {bare_calls} FCALLs; wrapped {calls} FCALLs");
    assert_eq!(
        bare_calls, N as u64,
        "the bare backend: one function call per message"
    );
    // The first alone, then the rest 64 (one `materialise` call) at a time.
    assert!(calls <= 8, "{calls} function calls for {N} messages");
    let mut seen = HashSet::new();
    for (id, answer) in answers {
        let receipt = answer.expect("queued");
        assert_eq!(receipt.message, id, "each caller gets its own receipt");
        assert_eq!(receipt.jobs.len(), 1);
        seen.insert(id);
        assert!(
            wrapped.get_message(id).await.expect("get").is_some(),
            "{id} stored"
        );
    }
    assert_eq!(seen.len(), N);
    assert_eq!(wrapped.counts().await.expect("counts").total, N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_of_a_shared_call_gets_its_own_answer() {
    let server = RedisServer::start().expect("start redis-server");
    let q = wrap(common::queue(common::single(&server.url(), "own")).await);
    server
        .cli(&["CLIENT", "PAUSE", "300", "WRITE"])
        .expect("CLIENT PAUSE");
    let mut messages = Vec::new();
    for i in 0..40 {
        let (id, mut m) = named(&format!("r{i}@one.test"));
        if i % 10 == 3 {
            m.envelope.recipients.clear();
        }
        if i == 5 || i == 25 {
            m = m.with_idempotency_key("the-same-key");
        }
        if i == 8 {
            m = message(&[&format!("r{i}@one.test"), "x@two.test", "y@three.test"]);
            m.id = Some(id);
        }
        messages.push((id, m));
    }
    reset_stats(&server);
    let answers = enqueue_concurrently(&q, messages).await;
    // Counted before the checks below (each `get_message` is a function call per shard).
    let calls = calls_of(&server, "fcall");
    let mut duplicates = Vec::new();
    for (i, (id, answer)) in answers.into_iter().enumerate() {
        if i % 10 == 3 {
            assert!(
                matches!(answer, Err(QueueError::InvalidMessage(_))),
                "{i}: {answer:?}"
            );
            assert!(q.get_message(id).await.expect("get").is_none());
            continue;
        }
        let receipt = answer.unwrap_or_else(|e| panic!("{i}: its neighbours' errors are not its own: {e}"));
        if receipt.duplicate {
            duplicates.push((i, receipt.message));
            continue;
        }
        assert_eq!(receipt.message, id);
        assert_eq!(receipt.jobs.len(), if i == 8 { 3 } else { 1 });
        let info = q.get_message(id).await.expect("get").expect("stored");
        assert_eq!(info.jobs.len(), receipt.jobs.len());
    }
    // One of the two with the same key was first; the other is answered with its id.
    assert_eq!(duplicates.len(), 1, "{duplicates:?}");
    assert_eq!(q.counts().await.expect("counts").total, (40 - 4 - 1 + 2) as u64);
    assert!(calls < 20, "the callers shared calls: {calls} function calls");
}

/// Waits until `check` holds, for up to 10 s.
async fn wait_for(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_covers_every_message_of_a_shared_call() {
    let master = RedisServer::start().expect("start redis-server");
    let port = master.port().to_string();
    let mut replica =
        RedisServer::start_with_args(free_port().expect("port"), &["--replicaof", "127.0.0.1", &port])
            .expect("start the replica");
    wait_for("the replica to be in sync", || {
        info(&master, "replication", "connected_slaves") == 1
            && replica
                .cli(&["INFO", "replication"])
                .is_ok_and(|t| t.contains("master_link_status:up"))
    })
    .await;
    let mut opts = common::single(&master.url(), "wait");
    opts.wait_replicas = 1;
    let q = wrap(common::queue(opts).await);

    reset_stats(&master);
    let batch: Vec<_> = (0..64).map(|i| named(&format!("r{i}@one.test"))).collect();
    for (_, answer) in enqueue_concurrently(&q, batch).await {
        answer.expect("queued and replicated");
    }
    let waits = calls_of(&master, "wait");
    eprintln!("64 concurrent enqueues with wait_replicas = 1: {waits} WAITs");
    assert!(waits < 32, "{waits} WAITs for 64 messages");

    // Without the replica no message is acknowledged: the WAIT after a shared call fails every message of it.
    replica.kill_hard().expect("kill the replica");
    wait_for("the master to see the replica gone", || {
        info(&master, "replication", "connected_slaves") == 0
    })
    .await;
    let batch: Vec<_> = (0..16).map(|i| named(&format!("s{i}@one.test"))).collect();
    for (id, answer) in enqueue_concurrently(&q, batch).await {
        assert!(
            matches!(answer, Err(QueueError::Unavailable(_))),
            "{id}: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_shared_writes_survive_sigkill() {
    const WRITERS: usize = 16;
    let mut server = RedisServer::start_durable().expect("start durable redis-server");
    let opts = common::single(&server.url(), "gcdur");
    let q = wrap(common::queue(opts.clone()).await);

    // Completions acknowledged before the crash stay recorded.
    let done: Vec<_> = (0..40).map(|i| named(&format!("c{i}@done.test"))).collect();
    for (_, answer) in enqueue_concurrently(&q, done).await {
        answer.expect("queued");
    }
    let claim = q
        .claim("w1", 40, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("due jobs");
    assert_eq!(claim.jobs.len(), 40);
    let completions = claim.jobs.iter().map(|job| {
        let (q, lease) = (q.clone(), job.lease.clone());
        tokio::spawn(async move { q.complete("w1", &lease, Outcome::delivered()).await })
    });
    for answer in join_all(completions).await {
        assert_eq!(answer.expect("task"), Ok(Completion::Finished));
    }
    let completed: Vec<MessageId> = claim.jobs.iter().map(|j| j.lease.job.message).collect();

    // Writers still going when Redis dies: whatever they got acknowledged must survive.
    let acked: Arc<Mutex<Vec<(MessageId, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (q, acked) = (q.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let m = if i % 3 == 0 {
                        message(&[&format!("a{w}.{i}@x.test"), &format!("b{w}.{i}@y.test")])
                    } else {
                        message(&[&format!("a{w}.{i}@d{}.test", i % 7)])
                    };
                    match q.enqueue(m).await {
                        Ok(r) => acked.lock().expect("lock").push((r.message, r.jobs.len())),
                        Err(e) => {
                            assert!(e.is_unavailable(), "{e:?}");
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill_hard().expect("SIGKILL redis");
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("writer stops")
            .expect("writer");
    }
    server.restart().expect("restart redis on the same data");

    let q = common::queue(opts).await;
    q.reap(now_ms() + 60_000).await.expect("reap");
    let acked = acked.lock().expect("lock").clone();
    eprintln!("{} enqueues acknowledged while Redis was killed", acked.len());
    assert!(acked.len() > WRITERS, "the writers got going before the crash");
    for (id, jobs) in &acked {
        let info = q
            .get_message(*id)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("message {id} lost"));
        assert_eq!(info.jobs.len(), *jobs, "message {id} lost jobs");
    }
    for id in &completed {
        assert!(
            q.get_message(*id).await.expect("get").is_none(),
            "completed message {id} came back"
        );
    }
    let total: usize = acked.iter().map(|(_, j)| j).sum();
    // The last shared call may have been stored while its replies were lost in the crash (its callers got
    // Unavailable: "may or may not have taken effect"): up to one message per writer, two jobs each.
    let stored = q.counts().await.expect("counts").total;
    assert!(
        (total as u64..=(total + 2 * WRITERS) as u64).contains(&stored),
        "{stored} jobs stored for {total} acknowledged"
    );
}
