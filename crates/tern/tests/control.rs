//! `tern control` as an operator runs it: the admin API over a real redis-server, stopped by SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_proto::v1::GetStatusRequest;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tern_testkit::{ChildGuard, RedisServer, free_port, wait_for_tcp};

#[tokio::test]
async fn control_serves_queue_status_and_stops_on_sigterm() {
    let redis = RedisServer::start().unwrap();
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[queue]\nurl = \"{}\"\n\n[control]\ngrpc_listen = \"127.0.0.1:{port}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["control", "--config", config.to_str().unwrap()])
        .env("TERN_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    let mut tern = ChildGuard::spawn("tern control", cmd).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_tcp(addr, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", tern.logs()));

    let mut client = QueueAdminClient::connect(format!("http://{addr}")).await.unwrap();
    let status = client
        .get_status(GetStatusRequest { top_domains: 5 })
        .await
        .unwrap()
        .into_inner();
    let totals = status.totals.unwrap();
    assert_eq!(totals.total, 0, "a fresh queue is empty");
    assert_eq!(status.recent.len(), 3, "1m, 5m and 1h windows");

    let status = tern.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit {status:?}\n{}", tern.logs());
}

#[test]
fn control_on_a_public_address_without_keys_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(&config, "[control]\ngrpc_listen = \"0.0.0.0:7070\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["control", "--config", config.to_str().unwrap()])
        .env("TERN_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("control.") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}
