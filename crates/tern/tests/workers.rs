#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Three `tern worker` processes on one queue: a domain's `connections_per_domain` holds across them,
//! counting idle connections kept for reuse, not only busy ones.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::scrub_env;
use tern_core::{Envelope, Recipient, ReversePath};
use tern_queue::{NewMessage, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::{ChildGuard, CountingProxy, Dnsmasq, RedisServer, SmtpSink, free_port};

const LIMIT: usize = 2;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn message(i: usize) -> NewMessage {
    let env = Envelope::new(
        ReversePath::Mailbox("app@sender.test".parse().unwrap()),
        vec![Recipient::new(format!("user{i}@limit.test").parse().unwrap())],
    );
    NewMessage::new(env, b"Subject: hi\r\n\r\nhello\r\n".to_vec())
}

/// Messages trickle in (so that claims are small and connections sit idle between them), then a burst
/// arrives: the counting proxy in front of the sink never sees more than the limit of 2 connections open at
/// once, every message arrives, and idle connections are reused rather than reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_keep_a_domain_within_its_connection_limit() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("limit.test", "mx.limit.test", 10)
        .host("mx.limit.test", ip(121))
        .start()
        .unwrap();
    let sink = SmtpSink::builder(ip(122), port).start().unwrap();
    let proxy = CountingProxy::start(
        SocketAddr::from((ip(121), port)),
        SocketAddr::from((ip(122), port)),
        Duration::from_millis(20),
    )
    .unwrap();
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
url = "{redis}"
key_prefix = "w3"
[delivery]
dns_servers = ["{dns}"]
smtp_port = {port}
helo_name = "tern.test"
poll_interval = "50ms"
connections_per_domain = {LIMIT}
messages_per_connection = 100
idle_connection_time = "5s"
"#,
            redis = redis.url(),
            dns = dns.addr(),
        ),
    )
    .unwrap();
    let workers: Vec<ChildGuard> = (0..3)
        .map(|i| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
            cmd.args(["worker", "--config", config.to_str().unwrap()]);
            scrub_env(&mut cmd);
            ChildGuard::spawn(&format!("tern-worker-{i}"), cmd).unwrap()
        })
        .collect();
    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        key_prefix: "w3".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..30 {
        queue.enqueue(message(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in queue.enqueue_batch((30..90).map(message).collect()).await {
        r.unwrap();
    }
    let logs = || {
        workers
            .iter()
            .map(ChildGuard::logs)
            .collect::<Vec<_>>()
            .join("\n")
    };
    sink.wait_for_messages(90, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    let seen = format!(
        "{} connections in all: {}\n{:?}",
        proxy.total(),
        proxy.spans(),
        sink.counters()
    );
    assert_eq!(sink.message_count(), 90, "{seen}");
    assert!(
        proxy.max() <= LIMIT,
        "{} connections at once with connections_per_domain = {LIMIT}: {seen}",
        proxy.max()
    );
    assert!(
        proxy.total() <= 3 * LIMIT,
        "idle connections are reused, not reopened for each claim: {seen}"
    );
}
