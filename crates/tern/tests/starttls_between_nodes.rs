#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Two tern nodes: one delivers to the other over verified STARTTLS. The receiver is `tern ingest` with a
//! certificate from a test CA for its MX name (and `tern control` to read what it queued); the sender is
//! `tern all` with `tls = "required"`, trusting that CA. This lives with the binary, not in tern-delivery, so
//! that no role crate depends on another.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use common::*;
use serde_json::Value;
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, TestCa, free_port, wait_for_tcp};

/// The receiving MX's address: its own loopback address, as a remote MX would have.
const MX_IP: [u8; 4] = [127, 0, 0, 115];

#[test]
fn a_tern_node_delivers_to_another_over_verified_starttls() {
    let mx_port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("ingest.test", "mx.ingest.test", 10)
        .host("mx.ingest.test", MX_IP)
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();
    let cert = ca
        .issue(&["mx.ingest.test"])
        .unwrap()
        .write_to(dir.path(), "mx")
        .unwrap();

    // The receiver: ingest and control over their own Redis; nothing delivers what it queues.
    let receiver_redis = RedisServer::start().unwrap();
    let (grpc_port, control_port) = (free_port().unwrap(), free_port().unwrap());
    let receiver_config = dir.path().join("receiver.toml");
    std::fs::write(
        &receiver_config,
        format!(
            r#"
[queue]
url = "{redis}"
[ingest]
smtp_listen = ["127.0.0.115:{mx_port}"]
grpc_listen = "127.0.0.1:{grpc_port}"
tls_cert = "{cert}"
tls_key = "{key}"
hostname = "mx.ingest.test"
relay_networks = ["127.0.0.0/8"]
[control]
grpc_listen = "127.0.0.1:{control_port}"
"#,
            redis = receiver_redis.url(),
            cert = cert.cert.display(),
            key = cert.key.display(),
        ),
    )
    .unwrap();
    let role = |name: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args([name, "--config", receiver_config.to_str().unwrap()]);
        scrub_env(&mut cmd);
        ChildGuard::spawn(&format!("receiver-{name}"), cmd).unwrap()
    };
    let ingest = role("ingest");
    let control = role("control");
    wait_for_tcp(SocketAddr::from((MX_IP, mx_port)), SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", ingest.logs()));
    wait_for_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, control_port)), SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", control.logs()));
    let receiver_control = format!("http://127.0.0.1:{control_port}");

    // The sender: TLS required, trusting the test CA only through extra_ca_file.
    let sender = Node::start(
        dns,
        mx_port,
        &format!("tls = \"required\"\nextra_ca_file = \"{}\"", ca_file.display()),
        "",
    );
    let reply = smtp_submit(
        sender.smtp,
        "s@a.test",
        "r@ingest.test",
        "From: s@a.test\r\nTo: r@ingest.test\r\nSubject: over TLS\r\n\r\nHello.\r\n",
    );
    assert!(reply.starts_with("250"), "{reply}");

    // The sender recorded a delivery over verified TLS to the receiver's MX.
    sender.wait("the delivery event", SOON, || {
        sender
            .json_lines(&["events"])
            .iter()
            .any(|e| e["kind"] == "delivered")
    });
    let events = sender.json_lines(&["events"]);
    let delivered = events.iter().find(|e| e["kind"] == "delivered").unwrap();
    let tls = delivered["tls"].as_str().unwrap_or("");
    assert!(
        tls.contains("verified") && !tls.contains("unverified"),
        "{delivered}"
    );
    assert_eq!(delivered["remote_mx"], "mx.ingest.test", "{delivered}");
    assert_eq!(delivered["remote_ip"], "127.0.0.115", "{delivered}");

    // The receiver queued it, and its Received field says the message came over ESMTPS.
    let ternctl_json = |args: &[&str]| -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = ternctl_at(&receiver_control, None, &all);
        assert!(out.status.success(), "ternctl {all:?}: {}", text(&out.stderr));
        serde_json::from_str(text(&out.stdout).trim_end()).unwrap()
    };
    let mut listed = Value::Null;
    sender.wait("the receiver to list the message", SOON, || {
        listed = ternctl_json(&["queue", "list", "--domain", "ingest.test"]);
        listed.to_string().contains("r@ingest.test")
    });
    let id = find_message_id(&listed).unwrap_or_else(|| panic!("no message id in {listed}"));
    let shown = ternctl_json(&["msg", "show", &id, "--body"]);
    let body = shown["body"]
        .as_str()
        .unwrap_or_else(|| panic!("no body in {shown}"));
    let received = unfolded_headers(body)
        .into_iter()
        .find(|h| h.starts_with("Received:"))
        .unwrap_or_else(|| panic!("no Received field: {body:?}"));
    assert!(
        received.contains("by mx.ingest.test (tern) with ESMTPS "),
        "{received:?}"
    );
    drop(control);
    drop(ingest);
}

/// The first `message_id` (or `id`) string anywhere in a `queue list` document.
fn find_message_id(doc: &Value) -> Option<String> {
    match doc {
        Value::Object(map) => map
            .get("message_id")
            .or_else(|| map.get("id"))
            .and_then(Value::as_str)
            .map(|s| s.split('.').next().unwrap_or(s).to_string())
            .or_else(|| map.values().find_map(find_message_id)),
        Value::Array(items) => items.iter().find_map(find_message_id),
        _ => None,
    }
}

/// The header fields of a message, each on one line.
fn unfolded_headers(message: &str) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for line in message.split("\r\n").take_while(|l| !l.is_empty()) {
        match fields.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => fields.push(line.to_string()),
        }
    }
    fields
}
