//! Shared by ternctl's tests: a gRPC server of tern's running in the test over a real redis-server, and the
//! output of a `ternctl` run.
#![allow(dead_code)] // each test binary uses its own part of this module
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::process::Output;
use std::sync::Arc;

use tern_ingest::CancellationToken;
use tern_queue::{Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;

/// A server running in the test (ingest or control), its queue, and its URL; dropping it stops the server.
pub struct Server {
    pub redis: RedisServer,
    pub queue: Arc<dyn Queue>,
    pub url: String,
    pub stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A fresh redis-server and a queue on it with `shards` shards.
pub async fn redis_queue(shards: u16) -> (RedisServer, Arc<dyn Queue>) {
    let redis = RedisServer::start().unwrap();
    let options = RedisQueueOptions {
        url: redis.url(),
        shards,
        ..RedisQueueOptions::default()
    };
    let queue: Arc<dyn Queue> = Arc::new(RedisQueue::connect(options).await.unwrap());
    (redis, queue)
}

/// What a ternctl run printed on stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a ternctl run printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Which queue store a control plane runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A fresh redis-server.
    Redis,
    /// The embedded store in a temporary directory.
    Embedded,
}

/// A control plane running in the test over a real store, with the operator's toolkit (history, routes,
/// the trace bus) served from the same store; dropping it stops the server.
///
/// The server runs on a runtime of its own, on its own thread, so that stopping it ends its connections
/// as a process exit would (a server stopped gracefully waits for its streams); the store stays open.
pub struct Control {
    pub queue: Arc<dyn Queue>,
    pub routes: Arc<dyn tern_queue::RouteStore>,
    pub traces: Arc<dyn tern_queue::TraceBus>,
    pub url: String,
    pub addr: std::net::SocketAddr,
    stores: tern_control::OperatorStores,
    keys: Option<std::path::PathBuf>,
    /// Dropping it stops the server's runtime.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _redis: Option<RedisServer>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.take();
    }
}

impl Control {
    /// A control plane over a fresh `store`, with `keys` (an admin keys file) or none.
    pub async fn start(store: Store, keys: Option<std::path::PathBuf>) -> Control {
        let (queue, stores, redis, dir) = match store {
            Store::Redis => {
                let redis = RedisServer::start().unwrap();
                let options = RedisQueueOptions {
                    url: redis.url(),
                    shards: 4,
                    ..RedisQueueOptions::default()
                };
                let q = Arc::new(RedisQueue::connect(options).await.unwrap());
                let stores = tern_control::OperatorStores {
                    history: q.clone(),
                    routes: q.clone(),
                    traces: q.clone(),
                };
                (q as Arc<dyn Queue>, stores, Some(redis), None)
            }
            Store::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                let options = tern_queue::EmbeddedQueueOptions {
                    path: dir.path().join("queue"),
                    ..Default::default()
                };
                let q = Arc::new(tern_queue::EmbeddedQueue::open(options).unwrap());
                let stores = tern_control::OperatorStores {
                    history: q.clone(),
                    routes: q.clone(),
                    traces: q.clone(),
                };
                (q as Arc<dyn Queue>, stores, None, Some(dir))
            }
        };
        let mut c = Control {
            queue,
            routes: stores.routes.clone(),
            traces: stores.traces.clone(),
            url: String::new(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            stores,
            keys,
            stop: None,
            thread: None,
            _redis: redis,
            _dir: dir,
        };
        c.serve().await;
        c
    }

    /// Binds (on the same port again after a restart) and serves, on a runtime of its own.
    async fn serve(&mut self) {
        let config = tern_config::ControlConfig {
            grpc_listen: self.addr,
            api_keys_file: self.keys.clone(),
            ..tern_config::ControlConfig::default()
        };
        let (queue, stores) = (self.queue.clone(), self.stores.clone());
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                // After a restart the old listener may take a moment to let go of the port.
                let mut tries = 0;
                let server = loop {
                    let bound = tern_control::ControlServer::bind_all(
                        &config,
                        queue.clone(),
                        tern_control::StsServices::default(),
                        Some(stores.clone()),
                    )
                    .await;
                    match bound {
                        Ok(s) => break s,
                        Err(_) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("cannot bind the control plane: {e}"),
                    }
                };
                let _ = bound_tx.send(server.local_addr());
                tokio::select! {
                    _ = server.run(CancellationToken::new()) => {}
                    _ = stop_rx => {}
                }
            });
            // Every task of the server, its connections included, ends here: as if the process exited.
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        });
        self.addr = bound_rx.await.expect("the control plane bound");
        self.url = format!("http://{}", self.addr);
        self.stop = Some(stop_tx);
        self.thread = Some(thread);
    }

    /// Stops the server as a crash would (its connections break) and starts it again on the same address.
    pub async fn restart(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .unwrap()
                .unwrap();
        }
        self.serve().await;
    }
}

/// Runs ternctl with `args` after `--server <url>`, without the environment's server and keys, stdin
/// closed.
pub async fn ternctl_at(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .arg("--server")
        .arg(url)
        .args(args)
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_ADMIN_TOKEN")
        .env_remove("TERN_SERVER")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

/// Exit 0; returns stdout.
pub fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    stdout(o)
}

/// Exit 0 and one JSON document on stdout.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", stdout(o)))
}

/// Exit 1 with exactly one line on stderr; returns it.
pub fn fails_one_line(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {} stderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ternctl: error: "), "{err}");
    err
}

/// Queues one message from `from` to `to` with the tag `tenant=t1`; returns its id.
pub async fn enqueue(queue: &Arc<dyn Queue>, from: &str, to: &[&str]) -> String {
    use tern_core::{Envelope, Mailbox, Recipient, ReversePath};
    let env = Envelope::new(
        ReversePath::Mailbox(Mailbox::parse(from, false).unwrap()),
        to.iter()
            .map(|t| Recipient::new(Mailbox::parse(t, false).unwrap()))
            .collect(),
    );
    let body = format!(
        "From: {from}\r\nTo: {}\r\nSubject: hi\r\n\r\nHello\r\n",
        to.join(", ")
    );
    queue
        .enqueue(tern_queue::NewMessage::new(env, body.into_bytes()).with_tag("tenant", "t1"))
        .await
        .unwrap()
        .message
        .to_string()
}
