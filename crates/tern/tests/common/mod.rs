//! Shared by the end-to-end tests of this crate: a whole `tern all` node with its peers, `ternctl` runs, and a
//! plain SMTP submission.
#![allow(dead_code)] // each test binary uses its own part of this module
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

pub mod http;
pub mod nodes;
pub mod otlp;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tern_testkit::ports::wait_until;
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, cargo_bin, free_port, run_with_timeout, wait_for_tcp};

/// How long any single ternctl call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the delivery worker to do something it should do at once.
pub const SOON: Duration = Duration::from_secs(30);

/// A running `tern all` and its peers; dropping it stops everything (tern first).
pub struct Node {
    /// The `tern all` process.
    pub tern: ChildGuard,
    /// The SMTP submission listener.
    pub smtp: SocketAddr,
    /// The control plane, as ternctl's `--server`.
    pub control: String,
    /// The Send API, as `ternctl send --ingest`.
    pub ingest: String,
    /// Sent as `--token` with every control-plane call.
    pub token: Option<String>,
    _dir: tempfile::TempDir,
    _dns: Dnsmasq,
    /// The node's Redis.
    pub redis: RedisServer,
}

impl Node {
    /// Starts `tern all` with mail exchangers on `mx_port` found through `dns`; `extra_delivery` and
    /// `extra_control` are appended to their sections.
    pub fn start(dns: Dnsmasq, mx_port: u16, extra_delivery: &str, extra_control: &str) -> Node {
        let redis = RedisServer::start().unwrap();
        let (smtp_port, grpc_port, control_port) =
            (free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tern.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[queue]
url = "{redis}"
[ingest]
smtp_listen = ["127.0.0.1:{smtp_port}"]
grpc_listen = "127.0.0.1:{grpc_port}"
relay_networks = ["127.0.0.1/32"]
hostname = "tern.test"
[delivery]
dns_servers = ["{dns}"]
smtp_port = {mx_port}
helo_name = "tern.test"
poll_interval = "100ms"
{extra_delivery}
[control]
grpc_listen = "127.0.0.1:{control_port}"
{extra_control}
"#,
                redis = redis.url(),
                dns = dns.addr(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(["all", "--config", config.to_str().unwrap()]);
        scrub_env(&mut cmd);
        let tern = ChildGuard::spawn("tern-all", cmd).unwrap();
        for port in [smtp_port, grpc_port, control_port] {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            wait_for_tcp(addr, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", tern.logs()));
        }
        Node {
            tern,
            smtp: SocketAddr::from((Ipv4Addr::LOCALHOST, smtp_port)),
            control: format!("http://127.0.0.1:{control_port}"),
            ingest: format!("http://127.0.0.1:{grpc_port}"),
            token: None,
            _dir: dir,
            _dns: dns,
            redis,
        }
    }

    /// Runs `ternctl --server <control> [--token <token>] ARGS` to completion.
    pub fn ternctl(&self, args: &[&str]) -> Output {
        ternctl_at(&self.control, self.token.as_deref(), args)
    }

    /// `ternctl ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ternctl(args);
        assert!(
            out.status.success(),
            "ternctl {args:?} failed with {:?}: {}\n{}",
            out.status,
            text(&out.stderr),
            self.tern.logs()
        );
        text(&out.stdout)
    }

    /// `ternctl --json ARGS`, which must succeed and print one JSON document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(out.trim_end())
            .unwrap_or_else(|e| panic!("ternctl {all:?} printed no single JSON document ({e}):\n{out}"))
    }

    /// `ternctl --json ARGS`, which must succeed and print JSON lines.
    pub fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        parse_lines(&self.ok(&all))
    }

    /// Sends one message with `ternctl send` through the Send API; its message id.
    pub fn send(&self, from: &str, to: &str) -> String {
        self.send_tagged(from, to, &[])
    }

    /// Like [`Node::send`], with `--tag` flags (`key=value`).
    pub fn send_tagged(&self, from: &str, to: &str, tags: &[&str]) -> String {
        let mut args = vec![
            "send",
            "--ingest",
            &self.ingest,
            "--from",
            from,
            "--to",
            to,
            "--subject",
            "control e2e",
            "--text",
            "hello",
        ];
        for t in tags {
            args.extend(["--tag", t]);
        }
        let doc = self.json(&args);
        assert_eq!(doc["accepted"], serde_json::json!([to]), "{doc}");
        assert_eq!(doc["duplicate"], false, "{doc}");
        let id = doc["message_id"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 26, "a ULID: {doc}");
        id
    }

    /// `queue status --json`.
    pub fn status(&self) -> Value {
        self.json(&["queue", "status"])
    }

    /// Waits until `probe` holds, polling every 100 ms; fails with `what` and tern's logs.
    pub fn wait(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
        wait_until(what, timeout, Duration::from_millis(100), || Ok(probe()))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.tern.logs()));
    }
}

/// Runs `ternctl --server SERVER [--token TOKEN] ARGS` to completion.
pub fn ternctl_at(server: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(ternctl_path());
    // `send` talks to an ingest node (`--ingest`), and refuses the control plane's `--server`.
    if !args.contains(&"send") {
        cmd.arg("--server").arg(server);
    }
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    cmd.args(args);
    scrub_env(&mut cmd);
    run_with_timeout("ternctl", cmd, CALL_TIMEOUT).unwrap()
}

pub fn ternctl_path() -> std::path::PathBuf {
    cargo_bin("ternctl").unwrap_or_else(|e| panic!("{e:#}"))
}

/// No `TERN_*` variable of the caller's environment (`TERN_SERVER`, `TERN_TOKEN`, config overrides) leaks in,
/// and a tern server started with it binds its metrics and health listener on a free port (tests run in
/// parallel; the default, 127.0.0.1:9090, would collide).
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERN_")) {
        cmd.env_remove(k);
    }
    cmd.env(METRICS_ON_FREE_PORT.0, METRICS_ON_FREE_PORT.1);
}

/// The override that puts a tern server's metrics listener on a free port.
pub const METRICS_ON_FREE_PORT: (&str, &str) = ("TERN_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0");

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn parse_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{out}")))
        .collect()
}

/// Reads one (possibly multiline) SMTP reply.
pub fn smtp_reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

/// Submits one message over plain SMTP (the client must be in `ingest.relay_networks`); the reply to the
/// final dot.
pub fn smtp_submit(addr: SocketAddr, from: &str, rcpt: &str, data: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // The greeting in the message: a one-off failure in CI (2026-12-05) left no trace of what answered.
    let greeting = smtp_reply(&mut reader);
    assert!(greeting.starts_with("220"), "greeting from {addr}: {greeting:?}");
    let mut say = |line: &str| {
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        smtp_reply(&mut reader)
    };
    assert!(say("EHLO client.test").starts_with("250"));
    assert!(say(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    assert!(say(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(say("DATA").starts_with("354"));
    let queued = say(&format!("{data}\r\n."));
    assert!(say("QUIT").starts_with("221"));
    queued
}
