//! On one Redis server, an operation that spans shards (an enqueue of messages to many domains, a batch of
//! completions) sends every shard's calls in ONE pipeline on one connection, with one `WAIT` for the
//! replicas: one round trip, not one per shard. Checked against a real redis-server, with its own `MONITOR`
//! (which client sent each call) and `INFO commandstats` (how many `WAIT`s ran). In a Redis Cluster each shard's
//! pipeline goes to its master on a connection of its own, so the shards of one master wait at once.
#![allow(clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_queue::conformance::message;
use tern_queue::{Completion, Outcome, QueueError};
use tern_testkit::redis::{RedisServer, queue_shard_of};

/// Sixteen domains: with the default 16 shards, most shards get one (FNV-1a spreads them).
fn domains() -> Vec<String> {
    (0..16).map(|i| format!("d{i}.test")).collect()
}

/// The server's `MONITOR` in a child `redis-cli`, read by a thread.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    /// Starts monitoring and returns once Redis confirmed it (`OK`).
    fn start(server: &RedisServer) -> Monitor {
        let mut child = Command::new("redis-cli")
            .args(["-p", &server.port().to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli MONITOR");
        let stdout = child.stdout.take().expect("redis-cli's output");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "OK" {
                    let _ = ready_tx.send(());
                    continue;
                }
                sink.lock().expect("lines").push(line);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("MONITOR answered OK");
        Monitor { child, lines }
    }

    /// The clients (address:port) that sent a call of the function named `function` (a suffix of the
    /// library's versioned name), once `expected` calls were seen (or 5 s passed).
    fn clients_calling(&self, function: &str, expected: usize) -> (usize, BTreeSet<String>) {
        let marker = format!("_{function}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (calls, clients) = {
                let lines = self.lines.lock().expect("lines");
                let calls: Vec<&String> = lines
                    .iter()
                    .filter(|l| l.contains("\"FCALL\"") && l.contains(&marker))
                    .collect();
                // `1733456789.123456 [0 127.0.0.1:54321] "FCALL" ...`
                let clients = calls
                    .iter()
                    .filter_map(|l| l.split_once('[').and_then(|(_, rest)| rest.split_once(']')))
                    .map(|(inside, _)| inside.to_string())
                    .collect();
                (calls.len(), clients)
            };
            if calls >= expected || Instant::now() > deadline {
                return (calls, clients);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_over_many_shards_sends_every_shards_call_on_one_connection() {
    let server = RedisServer::start().expect("redis-server");
    let opts = common::single(&server.url(), "pipes");
    assert!(
        opts.pool_size > 1,
        "connections to spread over, were the calls split"
    );
    let q = common::queue(opts).await;
    // Every connection of the pool made and used, as on a busy process.
    for d in domains() {
        q.enqueue(message(&[&format!("warm@{d}")]))
            .await
            .expect("warm-up");
    }
    let monitor = Monitor::start(&server);
    let batch = domains().iter().map(|d| message(&[&format!("r@{d}")])).collect();
    for answer in q.enqueue_batch(batch).await {
        answer.expect("queued");
    }
    let (calls, clients) = monitor.clients_calling("materialise", 8);
    assert!(calls >= 8, "one call per shard of the batch: {calls}");
    assert_eq!(clients.len(), 1, "the shards' calls came from {clients:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_over_many_shards_go_on_one_connection() {
    let server = RedisServer::start().expect("redis-server");
    let q = common::queue(common::single(&server.url(), "pipes")).await;
    for d in domains() {
        q.enqueue(message(&[&format!("r@{d}")])).await.expect("enqueue");
    }
    let mut leases = Vec::new();
    while let Some(claim) = q.claim("w1", 10, Duration::from_secs(60)).await.expect("claim") {
        leases.extend(claim.jobs.into_iter().map(|j| (j.lease, Outcome::delivered())));
    }
    assert_eq!(leases.len(), 16, "every domain's job claimed");
    let monitor = Monitor::start(&server);
    for answer in q.complete_batch("w1", leases).await {
        assert_eq!(answer, Ok(Completion::Finished));
    }
    let (calls, clients) = monitor.clients_calling("complete", 8);
    assert!(calls >= 8, "one call per shard of the batch: {calls}");
    assert_eq!(clients.len(), 1, "the shards' calls came from {clients:?}");
}

/// A server that lost the library (`FUNCTION FLUSH`, as a restart without persistence does) gets it loaded
/// once for the whole operation, and the calls that found it missing are sent once more: every message
/// queued. (Before, each shard's calls went again on their own, and each shard loaded the library.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_over_many_shards_loads_a_missing_library_once() {
    let server = RedisServer::start().expect("redis-server");
    let q = common::queue(common::single(&server.url(), "pipes")).await;
    server.cli(&["FUNCTION", "FLUSH"]).expect("flush the library");
    server.cli(&["CONFIG", "RESETSTAT"]).expect("reset stats");
    let batch = domains().iter().map(|d| message(&[&format!("r@{d}")])).collect();
    for answer in q.enqueue_batch(batch).await {
        answer.expect("queued once the library is back");
    }
    let stats = server.cli(&["INFO", "commandstats"]).expect("INFO");
    assert_eq!(calls_of(&stats, "function|load"), 1, "{stats}");
    let shards = domains()
        .iter()
        .map(|d| queue_shard_of(d, 16))
        .collect::<BTreeSet<_>>()
        .len() as u64;
    assert!(shards >= 8, "{shards} shards");
    assert_eq!(
        calls_of(&stats, "fcall"),
        2 * shards,
        "each shard's call sent twice, and no more: {stats}"
    );
    assert_eq!(q.counts().await.expect("counts").total, 16);
}

/// A batch whose every message is refused before anything is sent (here: a recipient named twice) is
/// answered without a word to Redis: against a server that accepts connections and never answers, at once,
/// and no connection is even made. (The shared pipeline of an operation once took a connection for nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_whole_before_sending_never_touches_redis() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let mut opts = common::single(&format!("redis://127.0.0.1:{port}/"), "silent");
    opts.connect_timeout = Duration::from_millis(500);
    opts.response_timeout = Duration::from_millis(500);
    let q = tern_queue::RedisQueue::new(opts).expect("queue");
    let batch = vec![
        message(&["a@one.test", "a@one.test"]),
        message(&["b@two.test", "B@two.test"]),
    ];
    let started = Instant::now();
    let answers = tern_queue::Queue::enqueue_batch(&q, batch).await;
    let took = started.elapsed();
    for answer in answers {
        assert!(matches!(answer, Err(QueueError::InvalidMessage(_))), "{answer:?}");
    }
    assert!(took < Duration::from_millis(200), "answered in {took:?}");
    assert!(listener.accept().is_err(), "a connection was made");
}

/// How many times `command` ran, from `INFO commandstats`.
fn calls_of(stats: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Every shard's part of an enqueue waits for the replicas with one `WAIT` (before, one per shard), and each
/// message still gets the replicas' answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_over_many_shards_waits_for_the_replicas_once() {
    let server = RedisServer::start().expect("redis-server");
    let mut opts = common::single(&server.url(), "pipes");
    opts.wait_replicas = 1;
    opts.response_timeout = Duration::from_millis(500);
    let q = common::queue(opts).await;
    server.cli(&["CONFIG", "RESETSTAT"]).expect("reset stats");
    let batch = domains().iter().map(|d| message(&[&format!("r@{d}")])).collect();
    assert_every_answer_names_the_replicas(q.enqueue_batch(batch).await);
    let stats = server.cli(&["INFO", "commandstats"]).expect("INFO");
    assert_eq!(calls_of(&stats, "wait"), 1, "{stats}");
}

/// Every answer of an enqueue is the replicas' ("only 0 of 1 replicas acknowledged"), not a timeout.
fn assert_every_answer_names_the_replicas(answers: Vec<Result<tern_queue::EnqueueReceipt, QueueError>>) {
    for answer in answers {
        match answer {
            Err(QueueError::Unavailable(reason)) => assert!(
                reason.contains("replicas acknowledged"),
                "a shard's call did not get its replicas' answer: {reason}"
            ),
            other => panic!("{other:?}"),
        }
    }
}

/// In a cluster the shards' calls go to their masters, and those of one master would share the master's one
/// connection of a cluster connection: an enqueue over many shards must wait for the replicas on a connection
/// per shard, or its `WAIT`s queue behind each other on that connection (Redis reads nothing more from a client
/// blocked in `WAIT`), each waiting half the reply timeout, and all but the first run out of time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_missing_replica_is_reported_as_such_for_every_shard_of_an_enqueue() {
    let cluster = tern_testkit::redis::RedisCluster::start(3).expect("start a 3-master cluster");
    let mut opts = common::cluster(&cluster.urls_comma(), "clusterwait");
    opts.wait_replicas = 1;
    let q = common::queue(opts).await;
    // Sixteen domains over the 16 shards, about five shards per master. No replicas: each WAIT answers 0
    // after half the reply timeout (the tests' 2 s).
    let batch = domains().iter().map(|d| message(&[&format!("r@{d}")])).collect();
    assert_every_answer_names_the_replicas(q.enqueue_batch(batch).await);
}
