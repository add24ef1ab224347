//! `tern all` on the embedded queue store: no Redis anywhere. With no `queue.url` the store is `./tern-data`;
//! what was acknowledged survives SIGKILL; a second process on the same directory is refused and told who
//! holds it; `tern ingest` or `tern worker` alone on the store is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{SOON, scrub_env, smtp_submit, ternctl_at};
use tern_testkit::{ChildGuard, Dnsmasq, SmtpSink, free_port, run_with_timeout, wait_for_tcp};

/// The listeners of one `tern all`.
struct Listeners {
    smtp: u16,
    grpc: u16,
    control: u16,
}

impl Listeners {
    fn free() -> Listeners {
        Listeners {
            smtp: free_port().unwrap(),
            grpc: free_port().unwrap(),
            control: free_port().unwrap(),
        }
    }

    fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.smtp))
    }

    fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.control)
    }
}

/// A configuration with no `[queue]` section at all (`queue_line` empty) or with `queue_line` in it, MX
/// hosts found through `dns` on `mx_port`, and the default relaying (loopback only).
fn config(queue_line: &str, dns: SocketAddr, mx_port: u16, ports: &Listeners) -> String {
    let queue = if queue_line.is_empty() {
        String::new()
    } else {
        format!("[queue]\n{queue_line}\n")
    };
    format!(
        r#"{queue}
[ingest]
smtp_listen = ["127.0.0.1:{smtp}"]
grpc_listen = "127.0.0.1:{grpc}"
hostname = "tern.test"
[delivery]
dns_servers = ["{dns}"]
smtp_port = {mx_port}
helo_name = "tern.test"
[control]
grpc_listen = "127.0.0.1:{control}"
"#,
        smtp = ports.smtp,
        grpc = ports.grpc,
        control = ports.control,
    )
}

/// Starts `tern all` in `cwd` with the configuration `config` (written beside it) and waits for its
/// listeners.
fn start_all(cwd: &Path, name: &str, config: &str, ports: &Listeners) -> ChildGuard {
    let path = cwd.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["all", "--config", path.to_str().unwrap()])
        .current_dir(cwd);
    scrub_env(&mut cmd);
    let tern = ChildGuard::spawn(name, cmd).unwrap();
    for port in [ports.smtp, ports.grpc, ports.control] {
        wait_for_tcp(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", tern.logs()));
    }
    tern
}

/// The subjects of the messages a dumping sink received.
fn subjects_received(sink: &SmtpSink) -> BTreeSet<String> {
    let mut subjects = BTreeSet::new();
    for file in sink.dumped_messages().unwrap() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("Subject: ")) {
            subjects.insert(line["Subject: ".len()..].trim().to_string());
        }
    }
    subjects
}

#[test]
fn with_no_queue_url_tern_all_keeps_its_queue_in_tern_data_and_delivers() {
    let mx_port = free_port().unwrap();
    let sink = SmtpSink::start(Ipv4Addr::new(127, 0, 0, 61), mx_port).unwrap();
    let dns = Dnsmasq::builder()
        .mx("embedded.test", "mx.embedded.test", 10)
        .host("mx.embedded.test", [127, 0, 0, 61])
        .start()
        .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let ports = Listeners::free();
    let mut tern = start_all(
        cwd.path(),
        "tern",
        &config("", dns.addr(), mx_port, &ports),
        &ports,
    );

    // Relaying from loopback works with the defaults: no relay_networks in the configuration.
    let queued = smtp_submit(
        ports.smtp_addr(),
        "app@sender.test",
        "someone@embedded.test",
        "Subject: embedded\r\n\r\nhello",
    );
    assert!(
        queued.starts_with("250 2.0.0 Ok: queued as "),
        "{queued}\n{}",
        tern.logs()
    );
    sink.wait_for_messages(1, SOON)
        .unwrap_or_else(|e| panic!("not delivered: {e}\n{}", tern.logs()));
    assert!(cwd.path().join("tern-data").is_dir(), "no ./tern-data");

    // The banner named the listeners and the store.
    let banner = tern.stdout();
    assert!(banner.contains(&format!("127.0.0.1:{}", ports.smtp)), "{banner}");
    assert!(banner.contains("embedded store in "), "{banner}");
    assert!(banner.contains("ternctl send"), "{banner}");

    let status = tern.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", tern.logs());
}

/// Every message acknowledged with 250 is delivered after a SIGKILL, the ones in flight at the kill too:
/// the first mail exchanger holds every DATA, so the kill finds transactions under way.
#[test]
fn acknowledged_mail_survives_sigkill_of_tern_all_including_jobs_in_flight() {
    const MESSAGES: usize = 20;
    let mx_ip = Ipv4Addr::new(127, 0, 0, 62);
    let mx_port = free_port().unwrap();
    let mut stalling = SmtpSink::builder(mx_ip, mx_port).delay_data(120).start().unwrap();
    let dns = Dnsmasq::builder()
        .mx("crash.test", "mx.crash.test", 10)
        .host("mx.crash.test", [127, 0, 0, 62])
        .start()
        .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let store = cwd.path().join("store");
    let queue_line = format!("url = \"embedded://{}\"", store.display());
    let ports = Listeners::free();
    let config = config(&queue_line, dns.addr(), mx_port, &ports);
    let mut tern = start_all(cwd.path(), "tern-before", &config, &ports);

    let mut expected = BTreeSet::new();
    for i in 0..MESSAGES {
        let subject = format!("crash {i}");
        let reply = smtp_submit(
            ports.smtp_addr(),
            "app@sender.test",
            &format!("user{i}@crash.test"),
            &format!("Subject: {subject}\r\n\r\nbody {i}"),
        );
        assert!(reply.starts_with("250 "), "{reply}\n{}", tern.logs());
        expected.insert(subject);
    }
    // Wait until deliveries are under way (the stalling MX holds them), then kill without warning.
    let control = ports.control_url();
    tern_testkit::ports::wait_until("jobs in flight", SOON, Duration::from_millis(100), || {
        let out = ternctl_at(&control, None, &["queue", "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Ok(status["totals"]["in_flight"].as_u64().unwrap_or(0) > 0)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tern.logs()));
    tern.kill_hard().unwrap();
    stalling.stop().unwrap();

    let sink = SmtpSink::builder(mx_ip, mx_port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let mut restarted = start_all(cwd.path(), "tern-after", &config, &ports);
    tern_testkit::ports::wait_until(
        "every message delivered",
        SOON,
        Duration::from_millis(200),
        || Ok(subjects_received(&sink).is_superset(&expected)),
    )
    .unwrap_or_else(|e| {
        let missing: Vec<_> = expected.difference(&subjects_received(&sink)).cloned().collect();
        panic!("{e:#}; missing {missing:?}\n{}", restarted.logs())
    });
    let status = restarted.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", restarted.logs());
}

/// The second process runs with the very same configuration, metrics port included: the store's lock
/// must be what refuses it, naming the holder, before any port it shares with the first is tried.
#[test]
fn a_second_process_on_the_same_store_is_refused_and_told_the_holders_pid() {
    let dns = Dnsmasq::builder().start().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let ports = Listeners::free();
    let metrics = free_port().unwrap();
    let body = format!(
        "{}[telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
        config("", dns.addr(), 25, &ports)
    );
    let path = cwd.path().join("tern.toml");
    std::fs::write(&path, &body).unwrap();
    let command = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(["all", "--config", path.to_str().unwrap()])
            .current_dir(cwd.path());
        scrub_env(&mut cmd);
        cmd.env_remove(common::METRICS_ON_FREE_PORT.0);
        cmd
    };
    let mut first = ChildGuard::spawn("first", command()).unwrap();
    for port in [ports.smtp, ports.grpc, ports.control, metrics] {
        wait_for_tcp(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", first.logs()));
    }

    let out = run_with_timeout("second tern all", command(), Duration::from_secs(30)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the second process:\n{stderr}");
    assert!(
        stderr.contains(&format!("in use by process {}", first.pid())),
        "the error does not name the holder {}:\n{stderr}",
        first.pid()
    );
    // The first one is unharmed.
    assert!(first.is_running(), "{}", first.logs());
    let status = first.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", first.logs());
}

/// The README's quick start, as a newcomer runs it: `tern all` with no configuration but the sandbox, on the
/// embedded store, `ternctl send` with its defaults but the port, and the delivered file.
#[test]
fn the_quick_start_delivers_a_first_message_into_the_sandbox() {
    let cwd = tempfile::tempdir().unwrap();
    let ports = Listeners::free();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.arg("all").current_dir(cwd.path());
    scrub_env(&mut cmd);
    cmd.env("TERN_DELIVERY__SANDBOX_DIR", "tern-mail")
        .env(
            "TERN_INGEST__SMTP_LISTEN",
            format!("[\"127.0.0.1:{}\"]", ports.smtp),
        )
        .env("TERN_INGEST__GRPC_LISTEN", format!("127.0.0.1:{}", ports.grpc))
        .env(
            "TERN_CONTROL__GRPC_LISTEN",
            format!("127.0.0.1:{}", ports.control),
        );
    let mut tern = ChildGuard::spawn("tern-quick-start", cmd).unwrap();
    for port in [ports.smtp, ports.grpc, ports.control] {
        wait_for_tcp(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", tern.logs()));
    }
    let mut send = Command::new(common::ternctl_path());
    send.args([
        "send",
        "--ingest",
        &format!("http://127.0.0.1:{}", ports.grpc),
        "--from",
        "you@example.com",
        "--to",
        "friend@example.net",
        "--subject",
        "hello",
        "--text",
        "Hello from tern",
    ]);
    scrub_env(&mut send);
    let out = run_with_timeout("ternctl send", send, Duration::from_secs(30)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tern.logs()
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let file = cwd.path().join("tern-mail").join(format!("{id}.eml"));
    tern_testkit::ports::wait_until("the delivered file", SOON, Duration::from_millis(100), || {
        Ok(file.exists())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tern.logs()));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("Return-Path: <you@example.com>"), "{text}");
    assert!(text.contains("Delivered-To: friend@example.net"), "{text}");
    assert!(text.contains("Hello from tern"), "{text}");
    assert!(cwd.path().join("tern-data").is_dir());

    // The finished message stays readable from the embedded store's history, as the quick start says.
    let control = ports.control_url();
    let mut shown = serde_json::Value::Null;
    tern_testkit::ports::wait_until(
        "msg show to report the message finished",
        SOON,
        Duration::from_millis(100),
        || {
            let out = ternctl_at(&control, None, &["--json", "msg", "show", &id]);
            shown = serde_json::from_slice(&out.stdout).unwrap_or_default();
            Ok(shown["finished"] == true)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tern.logs()));
    assert_eq!(shown["outcome"], "delivered", "{shown}");
    assert_eq!(shown["message_id"], id.as_str(), "{shown}");
    let status = tern.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", tern.logs());
}

#[test]
fn ingest_or_worker_alone_on_the_embedded_store_is_refused_with_what_to_do_instead() {
    let cwd = tempfile::tempdir().unwrap();
    for role in ["ingest", "worker"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.arg(role).current_dir(cwd.path());
        scrub_env(&mut cmd);
        let out = run_with_timeout(role, cmd, Duration::from_secs(30)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "tern {role}: {stderr}");
        assert!(
            stderr.contains("tern all") && stderr.contains("Redis"),
            "tern {role}: {stderr}"
        );
        assert!(
            !cwd.path().join("tern-data").exists(),
            "tern {role} opened the store"
        );

        let mut check = Command::new(env!("CARGO_BIN_EXE_tern"));
        check
            .args(["check-config", "--role", role])
            .current_dir(cwd.path());
        scrub_env(&mut check);
        let out = run_with_timeout(role, check, Duration::from_secs(30)).unwrap();
        assert!(!out.status.success(), "check-config --role {role} passed");
    }
}
