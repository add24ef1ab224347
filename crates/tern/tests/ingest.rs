//! `tern ingest` as an operator runs it: from a config file, against a real redis-server, taking mail over
//! SMTP, and stopping cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::smtp_reply;
use tern_testkit::{ChildGuard, RedisServer, free_port, wait_for_tcp};

fn say(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str) -> String {
    stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    smtp_reply(reader)
}

#[test]
fn ingest_serves_smtp_and_grpc_queues_mail_and_stops_on_sigterm() {
    let redis = RedisServer::start().unwrap();
    let port = free_port().unwrap();
    let grpc_port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[queue]\nurl = \"{}\"\nkey_prefix = \"e2e\"\n\n[ingest]\nsmtp_listen = [\"127.0.0.1:{port}\"]\n\
             relay_networks = [\"127.0.0.1/32\"]\nhostname = \"ingest.test\"\n\
             grpc_listen = \"127.0.0.1:{grpc_port}\"\n",
            redis.url()
        ),
    )
    .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["ingest", "--config", config.to_str().unwrap()])
        .env("TERN_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    let mut tern = ChildGuard::spawn("tern ingest", cmd).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_tcp(addr, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", tern.logs()));
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    wait_for_tcp(grpc, Duration::from_secs(20)).unwrap_or_else(|e| panic!("gRPC: {e}\n{}", tern.logs()));

    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert!(smtp_reply(&mut reader).starts_with("220 ingest.test"));
    assert!(say(&mut stream, &mut reader, "EHLO client.test").contains("PIPELINING"));
    assert!(say(&mut stream, &mut reader, "MAIL FROM:<s@a.test>").starts_with("250"));
    assert!(say(&mut stream, &mut reader, "RCPT TO:<r@b.test>").starts_with("250"));
    assert!(say(&mut stream, &mut reader, "DATA").starts_with("354"));
    let queued = say(&mut stream, &mut reader, "Subject: e2e\r\n\r\nhello\r\n.");
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    assert!(say(&mut stream, &mut reader, "QUIT").starts_with("221"));

    // The message is in Redis under the configured prefix.
    let keys = redis.cli(&["--scan", "--pattern", "{e2e:*"]).unwrap();
    assert!(keys.contains(":jd:"), "no job keys in redis:\n{keys}");

    let started = Instant::now();
    let status = tern.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", tern.logs());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "slow shutdown: {:?}",
        started.elapsed()
    );
}

#[test]
fn ingest_with_an_invalid_configuration_exits_1_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(&config, "[ingest]\nmax_recipients = \"many\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["ingest", "--config", config.to_str().unwrap()])
        .env("TERN_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ingest.max_recipients"));
}
