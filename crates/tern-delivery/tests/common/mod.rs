//! Shared harness of the delivery tests: a real redis-server, dnsmasq, and smtp-sinks on 127.0.0.x, with a
//! worker running against them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tern_config::DeliveryConfig;
use tern_core::{Envelope, HumanDuration, Recipient, ReversePath};
use tern_delivery::{Stopped, Worker};
use tern_queue::EventKind;
use tern_queue::{NewMessage, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

static PREFIX: AtomicU32 = AtomicU32::new(0);

/// A queue on `redis` with its own key prefix.
pub async fn queue(redis: &RedisServer, name: &str, lease: Duration) -> Arc<dyn Queue> {
    store(redis, name, lease).await
}

/// [`queue`] as the store itself, for its other sides (routes, trace bus).
pub async fn store(redis: &RedisServer, name: &str, lease: Duration) -> Arc<RedisQueue> {
    let opts = RedisQueueOptions {
        url: redis.url(),
        key_prefix: format!("d{}-{name}", PREFIX.fetch_add(1, Ordering::Relaxed)),
        lease,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    Arc::new(RedisQueue::connect(opts).await.expect("connect to redis"))
}

/// A delivery configuration for tests: DNS from `dns`, MX port `port`, fast polling and short timeouts.
pub fn config(dns: &Dnsmasq, port: u16) -> DeliveryConfig {
    DeliveryConfig {
        dns_servers: vec![dns.addr()],
        smtp_port: port,
        helo_name: Some("tern.a.test".into()),
        poll_interval: HumanDuration(Duration::from_millis(50)),
        connect_timeout: HumanDuration(Duration::from_secs(2)),
        greeting_timeout: HumanDuration(Duration::from_secs(10)),
        command_timeout: HumanDuration(Duration::from_secs(10)),
        retry_schedule: vec![HumanDuration(Duration::from_secs(1))],
        idle_connection_time: HumanDuration(Duration::from_secs(5)),
        shutdown_grace: HumanDuration(Duration::from_secs(5)),
        ..Default::default()
    }
}

/// A running worker; cancelled when dropped.
pub struct RunningWorker {
    pub token: CancellationToken,
    pub handle: Option<JoinHandle<Stopped>>,
}

impl RunningWorker {
    /// Stops the worker and returns what it says it released (`None` when it did not stop in 30 s).
    pub async fn stop(mut self) -> Option<Stopped> {
        self.token.cancel();
        let h = self.handle.take()?;
        tokio::time::timeout(Duration::from_secs(30), h).await.ok()?.ok()
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub fn start_worker(
    cfg: &DeliveryConfig,
    queue: Arc<dyn Queue>,
    owner: &str,
    lease: Duration,
) -> RunningWorker {
    let worker = Worker::new(cfg, queue, owner).expect("worker").with_lease(lease);
    run_worker(worker)
}

/// Runs a worker built by the test.
pub fn run_worker(worker: Worker) -> RunningWorker {
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move { worker.run(t).await });
    RunningWorker {
        token,
        handle: Some(handle),
    }
}

pub fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        ReversePath::Mailbox(from.parse().unwrap()),
        to.iter().map(|t| Recipient::new(t.parse().unwrap())).collect(),
    )
}

pub const BODY: &[u8] = b"From: s@a.test\r\nTo: r@b.test\r\nSubject: test\r\n\r\nHello.\r\n.leading dot\r\n";

pub async fn send(queue: &Arc<dyn Queue>, from: &str, to: &[&str]) {
    queue
        .enqueue(NewMessage::new(envelope(from, to), BODY.to_vec()))
        .await
        .expect("enqueue");
}

pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

pub mod fake_dns;
pub mod fake_mx;
pub mod policy_server;
pub mod py_peer;

/// Waits (bounded) until `f` holds.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The dumped messages of a sink directory, as text.
pub fn dumps(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push(String::from_utf8_lossy(&b).into_owned());
            }
        }
    }
    out
}

/// Waits until the queue holds no jobs.
pub async fn wait_queue_empty(queue: &Arc<dyn Queue>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = queue.counts().await.expect("counts");
        if c.total == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue not empty after {timeout:?}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event so far.
/// Waits until a worker has claimed a job.
pub async fn wait_in_flight(queue: &Arc<dyn Queue>) {
    let deadline = std::time::Instant::now() + WAIT;
    while queue.counts().await.expect("counts").in_flight == 0 {
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn events(queue: &Arc<dyn Queue>) -> Vec<tern_queue::Event> {
    let (ev, _) = queue.read_events(None, 10_000, None).await.expect("events");
    ev
}

/// How long a test waits for something the worker should do at once.
pub const WAIT: Duration = Duration::from_secs(30);

/// `127.0.0.<last>:<port>`.
pub fn sa(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from((ip(last), port))
}

/// The first event of `kind`, waiting up to [`WAIT`] for it.
pub async fn wait_event(q: &Arc<dyn Queue>, kind: EventKind) -> tern_queue::Event {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = events(q).await;
        if let Some(e) = ev.iter().find(|e| e.kind == kind) {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "no {kind:?} event: {ev:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first message `sink` dumped that contains every one of `needle`, waiting up to [`WAIT`] for it.
pub async fn wait_dsn(sink: &SmtpSink, needle: &[&str]) -> String {
    let dir = sink.dump_dir().expect("dump dir").to_path_buf();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(d) = dumps(&dir)
            .into_iter()
            .find(|d| needle.iter().all(|n| d.contains(n)))
        {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no DSN with {needle:?}; dumps: {:#?}",
            dumps(&dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
