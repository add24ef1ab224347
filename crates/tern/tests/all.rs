//! `tern all`: a whole single-node tern in one process. Mail submitted over SMTP is delivered to the
//! recipient domain's MX (a real Postfix smtp-sink found through a real dnsmasq), the control plane sees the
//! queue drain, and SIGTERM stops everything.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_proto::v1::GetStatusRequest;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, SmtpSink, free_port, wait_for_tcp};

fn reply(reader: &mut BufReader<TcpStream>) -> String {
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

fn submit(addr: SocketAddr, rcpt: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert!(reply(&mut reader).starts_with("220"));
    let mut say = |line: &str| {
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        reply(&mut reader)
    };
    let _ = say("EHLO client.test");
    assert!(say("MAIL FROM:<app@sender.test>").starts_with("250"));
    assert!(say(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(say("DATA").starts_with("354"));
    let queued = say("Subject: all in one\r\n\r\nhello\r\n.");
    let _ = say("QUIT");
    queued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_roles_in_one_process_deliver_submitted_mail_and_stop_on_sigterm() {
    let redis = RedisServer::start().unwrap();
    let mx_port = free_port().unwrap();
    let sink = SmtpSink::start(Ipv4Addr::new(127, 0, 0, 41), mx_port).unwrap();
    let dns = Dnsmasq::builder()
        .mx("dest.test", "mx1.dest.test", 10)
        .host("mx1.dest.test", [127, 0, 0, 41])
        .start()
        .unwrap();
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
[control]
grpc_listen = "127.0.0.1:{control_port}"
"#,
            redis = redis.url(),
            dns = dns.addr(),
        ),
    )
    .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["all", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null());
    let mut tern = ChildGuard::spawn("tern all", cmd).unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{control_port}").parse().unwrap();
    for addr in [smtp, control] {
        wait_for_tcp(addr, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", tern.logs()));
    }

    let queued = tokio::task::spawn_blocking(move || submit(smtp, "someone@dest.test"))
        .await
        .unwrap();
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");

    let delivered = sink.wait_for_messages(1, Duration::from_secs(30));
    assert!(delivered.is_ok(), "not delivered: {delivered:?}\n{}", tern.logs());

    // The control plane sees the queue drained.
    let mut admin = QueueAdminClient::connect(format!("http://{control}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = admin
            .get_status(GetStatusRequest { top_domains: 5 })
            .await
            .unwrap()
            .into_inner();
        if status.totals.unwrap().total == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "queue never drained:\n{}", tern.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(admin);

    let status = tokio::task::spawn_blocking(move || {
        let s = tern.terminate(Duration::from_secs(30)).unwrap();
        (s, tern.logs())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit {:?}\n{}", status.0, status.1);
}
