#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly
//! The cluster-wide MTA-STS policy cache with real `tern` processes (issue #17): a second worker process
//! applies the policy the first one fetched and cached in Redis, without fetching it again.
//!
//! The peers are all real: redis-server (the sender's queue and policy store, and the receiver's queue),
//! dnsmasq (the MX, A and `_mta-sts` TXT records), an HTTPS policy server (Python's `http.server` behind
//! `ssl`, with a certificate from a test CA, printing one line per request so that the test counts them),
//! and, as the receiving MX, a `tern ingest` offering STARTTLS with a certificate for its MX name from the
//! same CA. The sender is `tern ingest`, `tern control` and one `tern worker` at a time, on one queue.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::nodes::{Ports, Sections, config, spawn};
use common::*;
use serde_json::Value;
use tern_testkit::ports::wait_until;
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, TestCa, free_port, require_tool, wait_for_tcp};

const DOMAIN: &str = "shared-sts.test";
const MX_NAME: &str = "mx.shared-sts.test";
const POLICY_HOST: &str = "mta-sts.shared-sts.test";
/// The receiving MX's own loopback address, as a remote MX would have.
const MX_IP: [u8; 4] = [127, 0, 0, 201];
/// The policy host's address.
const POLICY_IP: [u8; 4] = [127, 0, 0, 202];
const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.shared-sts.test\nmax_age: 86400\n";

/// The HTTPS policy server: `python3 - ADDR PORT CHAIN KEY POLICY_FILE`. It serves the policy file as
/// text/plain at the well-known path (404 elsewhere) and prints `request <path> <host>` for every request
/// it reads, before answering.
const POLICY_SERVER: &str = r#"
import http.server, ssl, sys

addr, port, chain, key, policy_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
with open(policy_file, "rb") as f:
    policy = f.read()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        print("request", self.path, self.headers.get("Host"), flush=True)
        found = self.path == "/.well-known/mta-sts.txt"
        body = policy if found else b"not found\n"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format, *args):
        pass

server = http.server.ThreadingHTTPServer((addr, port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_2
context.load_cert_chain(chain, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
"#;

/// Worker A fetches the domain's enforce policy (one HTTPS request) and delivers over verified TLS; after it
/// stops, a new worker process B delivers the next message under the same policy, read from Redis: the
/// policy server still counted exactly one request.
#[test]
fn a_second_worker_process_applies_the_policy_the_first_cached_without_fetching_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let mx_port = free_port().unwrap();
    let policy_port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx(DOMAIN, MX_NAME, 10)
        .host(MX_NAME, MX_IP)
        .host(POLICY_HOST, POLICY_IP)
        .txt(&format!("_mta-sts.{DOMAIN}"), "v=STSv1; id=1;")
        .start()
        .unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();

    let policy_server = start_policy_server(dir.path(), &ca, policy_port);
    let receiver = Receiver::start(dir.path(), &ca, mx_port);

    // The sender: every process reads the same settings (only its listening ports differ).
    let redis = RedisServer::start().unwrap();
    let extra = Sections {
        delivery: format!(
            "extra_ca_file = \"{}\"\n[delivery.mta_sts]\nhttps_port = {policy_port}",
            ca_file.display()
        ),
        ..Sections::default()
    };
    let role = |role: &str, name: &str| {
        let ports = Ports::free();
        let text = config(&redis.url(), dns.addr(), mx_port, &ports, &extra);
        (spawn(role, name, dir.path(), &text, &ports, &[]), ports)
    };
    let (ingest, ingest_ports) = role("ingest", "sender-ingest");
    let (control, control_ports) = role("control", "sender-control");
    let control_url = control_ports.control_url();

    // Worker A fetches the policy and delivers the first message under it.
    let (mut worker_a, _) = role("worker", "worker-a");
    submit(ingest_ports.smtp_addr(), "r1@shared-sts.test", &ingest);
    let delivered = wait_delivered(&control_url, "r1@shared-sts.test", &[&worker_a, &policy_server]);
    assert_enforced(&delivered);
    assert_eq!(requests(&policy_server), 1, "{}", policy_server.logs());
    let first = policy_server
        .stdout()
        .lines()
        .find(|l| l.starts_with("request "))
        .unwrap()
        .to_owned();
    assert!(
        first.starts_with(&format!("request /.well-known/mta-sts.txt {POLICY_HOST}")),
        "the policy server saw: {first}"
    );
    let status = worker_a.terminate(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "worker A exited with {status}\n{}",
        worker_a.logs()
    );

    // Worker B, a new process with nothing in memory, applies the policy worker A left in Redis.
    let (worker_b, _) = role("worker", "worker-b");
    submit(ingest_ports.smtp_addr(), "r2@shared-sts.test", &ingest);
    let delivered = wait_delivered(&control_url, "r2@shared-sts.test", &[&worker_b, &policy_server]);
    assert_enforced(&delivered);
    assert_eq!(
        requests(&policy_server),
        1,
        "worker B fetched the policy again:\n{}\n{}",
        policy_server.logs(),
        worker_b.logs()
    );

    // The receiver has both messages.
    wait_until(
        "the receiver to list both messages",
        SOON,
        Duration::from_millis(100),
        || {
            let listed = receiver.json(&["queue", "list", "--domain", DOMAIN]).to_string();
            Ok(listed.contains("r1@shared-sts.test") && listed.contains("r2@shared-sts.test"))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", receiver.ingest.logs()));

    // The control plane shows the cached policy.
    let out = ternctl_at(&control_url, None, &["sts", "show", DOMAIN, "--json"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), control.logs());
    let shown: Value = serde_json::from_str(text(&out.stdout).trim_end()).unwrap();
    assert_eq!(shown["mode"], "enforce", "{shown}");
    assert_eq!(shown["policy_id"], "1", "{shown}");
    assert_eq!(shown["mx"], serde_json::json!([MX_NAME]), "{shown}");
    assert_eq!(requests(&policy_server), 1, "{}", policy_server.logs());
    drop(worker_b);
}

/// Starts the policy server on `POLICY_IP:port` with a certificate for the policy host, and waits until it
/// takes connections.
fn start_policy_server(dir: &Path, ca: &TestCa, port: u16) -> ChildGuard {
    let cert = ca.issue(&[POLICY_HOST]).unwrap();
    let chain = dir.join("policy-chain.pem");
    std::fs::write(&chain, cert.chain_pem(ca)).unwrap();
    let key = cert.write_to(dir, "policy").unwrap().key;
    let policy_file = dir.join("mta-sts.txt");
    std::fs::write(&policy_file, POLICY).unwrap();
    let script = dir.join("policy_server.py");
    std::fs::write(&script, POLICY_SERVER).unwrap();
    let mut cmd = Command::new(require_tool("python3").unwrap());
    cmd.arg(&script)
        .arg(Ipv4Addr::from(POLICY_IP).to_string())
        .arg(port.to_string())
        .arg(&chain)
        .arg(&key)
        .arg(&policy_file);
    let server = ChildGuard::spawn_logging_to("policy-server", cmd, dir).unwrap();
    wait_for_tcp(SocketAddr::from((POLICY_IP, port)), SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    server
}

/// The HTTP requests the policy server has read.
fn requests(server: &ChildGuard) -> usize {
    server
        .stdout()
        .lines()
        .filter(|l| l.starts_with("request "))
        .count()
}

/// The receiving MX: `tern ingest` with STARTTLS (a certificate for the MX name) and `tern control` over
/// its own Redis; nothing delivers what it queues.
struct Receiver {
    ingest: ChildGuard,
    _control: ChildGuard,
    control_url: String,
    _redis: RedisServer,
}

impl Receiver {
    fn start(dir: &Path, ca: &TestCa, mx_port: u16) -> Receiver {
        let cert = ca.issue(&[MX_NAME]).unwrap().write_to(dir, "mx").unwrap();
        let redis = RedisServer::start().unwrap();
        let (grpc_port, control_port) = (free_port().unwrap(), free_port().unwrap());
        let path = dir.join("receiver.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[queue]
url = "{redis}"
[ingest]
smtp_listen = ["{mx_ip}:{mx_port}"]
grpc_listen = "127.0.0.1:{grpc_port}"
tls_cert = "{cert}"
tls_key = "{key}"
hostname = "{MX_NAME}"
relay_networks = ["127.0.0.0/8"]
[control]
grpc_listen = "127.0.0.1:{control_port}"
"#,
                redis = redis.url(),
                mx_ip = Ipv4Addr::from(MX_IP),
                cert = cert.cert.display(),
                key = cert.key.display(),
            ),
        )
        .unwrap();
        let role = |name: &str| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
            cmd.args([name, "--config", path.to_str().unwrap()]);
            scrub_env(&mut cmd);
            ChildGuard::spawn_logging_to(&format!("receiver-{name}"), cmd, dir).unwrap()
        };
        let ingest = role("ingest");
        let control = role("control");
        wait_for_tcp(SocketAddr::from((MX_IP, mx_port)), SOON)
            .unwrap_or_else(|e| panic!("{e}\n{}", ingest.logs()));
        wait_for_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, control_port)), SOON)
            .unwrap_or_else(|e| panic!("{e}\n{}", control.logs()));
        Receiver {
            ingest,
            _control: control,
            control_url: format!("http://127.0.0.1:{control_port}"),
            _redis: redis,
        }
    }

    /// `ternctl --json ARGS` against the receiver, which must succeed and print one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = ternctl_at(&self.control_url, None, &all);
        assert!(out.status.success(), "ternctl {all:?}: {}", text(&out.stderr));
        serde_json::from_str(text(&out.stdout).trim_end()).unwrap()
    }
}

/// Submits one message for `rcpt` to the sender's ingest over SMTP.
fn submit(smtp: SocketAddr, rcpt: &str, ingest: &ChildGuard) {
    let data = format!("From: s@sender.test\r\nTo: {rcpt}\r\nSubject: under MTA-STS\r\n\r\nHello.\r\n");
    let reply = smtp_submit(smtp, "s@sender.test", rcpt, &data);
    assert!(reply.starts_with("250"), "{reply}\n{}", ingest.logs());
}

/// Waits until the sender's events hold the `delivered` event of `rcpt`, and returns it; on failure shows
/// the logs of `peers`.
fn wait_delivered(control_url: &str, rcpt: &str, peers: &[&ChildGuard]) -> Value {
    let mut found = None;
    wait_until(
        &format!("the delivered event of {rcpt}"),
        SOON,
        Duration::from_millis(100),
        || {
            let out = ternctl_at(control_url, None, &["--json", "events"]);
            anyhow::ensure!(out.status.success(), "ternctl events: {}", text(&out.stderr));
            found = parse_lines(&text(&out.stdout))
                .into_iter()
                .find(|e| e["kind"] == "delivered" && e["recipients"].to_string().contains(rcpt));
            Ok(found.is_some())
        },
    )
    .unwrap_or_else(|e| {
        let out = ternctl_at(control_url, None, &["--json", "events"]);
        let logs: Vec<String> = peers.iter().map(|p| p.logs()).collect();
        panic!("{e:#}\nevents:\n{}\n{}", text(&out.stdout), logs.join("\n"))
    });
    found.unwrap()
}

/// The event says the message went to the MX over verified TLS with the enforce policy applied.
fn assert_enforced(delivered: &Value) {
    let tls = delivered["tls"].as_str().unwrap_or("");
    assert!(
        tls.contains(" verified") && tls.ends_with("; mta-sts=enforce"),
        "{delivered}"
    );
    assert_eq!(delivered["remote_mx"], MX_NAME, "{delivered}");
    assert_eq!(
        delivered["remote_ip"],
        Ipv4Addr::from(MX_IP).to_string(),
        "{delivered}"
    );
}
