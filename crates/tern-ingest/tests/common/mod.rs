//! Shared helpers of the integration tests: a real ingest server on loopback in front of a real redis-server,
//! and a small blocking SMTP client for raw-socket cases.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHasher;
use tern_config::IngestConfig;
use tern_ingest::{IngestError, Shutdown, SmtpServer};
use tern_queue::{Queue, QueueCounts, RedisQueue, RedisQueueOptions};
use tern_smtp::{Reply, ReplyParser};
use tern_testkit::{RedisServer, TestCa};

static PREFIX: AtomicU32 = AtomicU32::new(0);

/// The server's configured host name.
pub const HOSTNAME: &str = "mx.tern.test";

/// A user of the users file: name, password, allowed sender domains.
pub type User<'a> = (&'a str, &'a str, Option<&'a str>);

/// An argon2id hash with small parameters (fast in debug builds); verification reads them from the string.
pub fn cheap_hash(password: &str) -> String {
    let params = argon2::Params::new(512, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password(password.as_bytes()).unwrap().to_string()
}

/// A running ingest server with its Redis queue.
pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub redis: RedisServer,
    pub queue: Arc<dyn Queue>,
    pub smtp: SocketAddr,
    pub smtps: Option<SocketAddr>,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    pub shutdown: Shutdown,
    server: Option<tokio::task::JoinHandle<Result<(), IngestError>>>,
}

impl Harness {
    /// Starts redis-server and the ingest server: plain listener on 127.0.0.1:0, with `tls` also STARTTLS and
    /// an implicit-TLS listener (certificate for `mx.tern.test` and 127.0.0.1), relay network 127.0.0.1/32,
    /// `users` in the users file; `tweak` changes the configuration last.
    pub fn start(tls: bool, users: &[User<'_>], tweak: impl FnOnce(&mut IngestConfig)) -> Harness {
        let redis = RedisServer::start().expect("start redis-server");
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new().unwrap();
        let mut cfg = IngestConfig {
            smtp_listen: vec!["127.0.0.1:0".parse().unwrap()],
            hostname: Some(HOSTNAME.into()),
            relay_networks: vec!["127.0.0.1/32".parse().unwrap()],
            idle_timeout: "20s".parse().unwrap(),
            shutdown_grace: "5s".parse().unwrap(),
            ..IngestConfig::default()
        };
        if tls {
            let paths = ca
                .issue(&[HOSTNAME, "127.0.0.1"])
                .unwrap()
                .write_to(dir.path(), "server")
                .unwrap();
            cfg.tls_cert = Some(paths.cert);
            cfg.tls_key = Some(paths.key);
            cfg.smtps_listen = vec!["127.0.0.1:0".parse().unwrap()];
        }
        if !users.is_empty() {
            let path = dir.path().join("users");
            let text: String = users
                .iter()
                .map(|(u, p, d)| match d {
                    Some(d) => format!("{u}:{}:{d}\n", cheap_hash(p)),
                    None => format!("{u}:{}\n", cheap_hash(p)),
                })
                .collect();
            std::fs::write(&path, text).unwrap();
            cfg.users_file = Some(path);
        }
        tweak(&mut cfg);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let opts = RedisQueueOptions {
            url: redis.url(),
            key_prefix: format!("ingest{}", PREFIX.fetch_add(1, Ordering::Relaxed)),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let queue: Arc<dyn Queue> =
            Arc::new(rt.block_on(RedisQueue::connect(opts)).expect("connect the queue"));
        let shutdown = Shutdown::new();
        let bound = rt
            .block_on(
                SmtpServer::new(&cfg, Arc::clone(&queue))
                    .expect("build the server")
                    .bind(),
            )
            .expect("bind");
        let smtp = bound.smtp_addrs()[0];
        let smtps = bound.smtps_addrs().first().copied();
        let server = Some(rt.spawn(bound.run(shutdown.clone())));
        Harness {
            rt,
            redis,
            queue,
            smtp,
            smtps,
            ca,
            dir,
            shutdown,
            server,
        }
    }

    /// The queue's job counts.
    pub fn counts(&self) -> QueueCounts {
        self.rt.block_on(self.queue.counts()).expect("queue counts")
    }

    /// Cancels the server and waits for `run` to return (at most `limit`).
    pub fn stop(&mut self, limit: Duration) -> Duration {
        let t = Instant::now();
        self.shutdown.cancel();
        if let Some(h) = self.server.take() {
            self.rt
                .block_on(async { tokio::time::timeout(limit, h).await })
                .expect("server stopped in time")
                .expect("server task")
                .expect("server result");
        }
        t.elapsed()
    }

    /// A raw client connected to the plain listener, greeting read.
    pub fn client(&self) -> Client<TcpStream> {
        Client::connect(self.smtp)
    }

    /// The body stored for the message with the given id (found through its first job).
    pub fn stored_body(&self, id: &str) -> Vec<u8> {
        let claim = self
            .rt
            .block_on(self.queue.claim("test", 100, Duration::from_secs(60)))
            .expect("claim")
            .expect("a due job");
        let job = claim
            .jobs
            .iter()
            .find(|j| j.job.id.message.to_string() == id)
            .expect("the message's job");
        job.body.to_vec()
    }

    /// Where test files go.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The message id in a `250 2.0.0 Ok: queued as <id>` reply text.
pub fn queued_id(text: &str) -> Option<String> {
    text.split("queued as ")
        .nth(1)
        .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
}

/// A blocking SMTP client over any stream.
pub struct Client<S: Read + Write> {
    pub stream: S,
    parser: ReplyParser,
}

impl Client<TcpStream> {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client {
            stream,
            parser: ReplyParser::new(),
        };
        let greeting = c.read_reply();
        assert_eq!(greeting.code, 220, "{greeting}");
        c
    }

    /// Connects without reading anything.
    pub fn connect_raw(addr: SocketAddr) -> Client<TcpStream> {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            stream,
            parser: ReplyParser::new(),
        }
    }
}

impl<S: Read + Write> Client<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Client<S> {
        Client {
            stream,
            parser: ReplyParser::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
        self.stream.flush().expect("flush");
    }

    /// The next reply; panics on EOF or timeout.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply().expect("a reply before EOF/timeout")
    }

    /// The next reply, or `None` on EOF, error or timeout.
    pub fn try_read_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some(r) = self.parser.next_reply() {
                return Some(r.expect("well-formed reply"));
            }
            let mut buf = [0u8; 8192];
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.parser.push(&buf[..n]),
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Sends a command and asserts the reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line);
        assert_eq!(r.code, code, "{line:?} got {r}");
        r
    }

    /// EHLO, MAIL, RCPT for `rcpts`, DATA, the body (already dot-stuffed, without the final dot), the
    /// terminator; returns the final reply.
    pub fn send_message(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), 250);
        }
        self.expect("DATA", 354);
        self.send(body);
        self.send(b"\r\n.\r\n");
        self.read_reply()
    }
}

/// The path of a file under the repository's test vectors (`tests/vectors/`).
pub fn vector_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors")
        .join(name)
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS client stream over `tcp` that trusts the harness CA and expects `mx.tern.test`.
pub fn tls_client(ca: &TestCa, tcp: TcpStream) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.cert_der()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(HOSTNAME).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}
