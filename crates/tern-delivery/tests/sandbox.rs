//! Sandbox delivery (`delivery.sandbox_dir`) against a real redis-server: messages are written to files,
//! recorded as delivered like real mail, and nothing is looked up or connected to. The only DNS server the
//! worker is given answers NXDOMAIN to everything and records every question; the one fixed route points
//! at a server that counts its sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::fake_dns::FakeDns;
use common::fake_mx::{Behaviour, FakeMx};
use common::*;
use tern_config::DeliveryConfig;
use tern_config::sections::RouteConfig;
use tern_core::{Envelope, HumanDuration, Notify, Recipient, ReversePath};
use tern_queue::{EnqueueReceipt, EventKind, NewMessage, Queue};
use tern_testkit::{RedisServer, free_port};

/// A worker configuration writing into `dir`, asking DNS of `dns` only.
fn sandbox_config(dns: &FakeDns, dir: &Path) -> DeliveryConfig {
    DeliveryConfig {
        dns_servers: vec![dns.addr],
        helo_name: Some("tern.a.test".into()),
        poll_interval: HumanDuration(Duration::from_millis(50)),
        retry_schedule: vec![HumanDuration(Duration::from_secs(1))],
        shutdown_grace: HumanDuration(Duration::from_secs(5)),
        sandbox_dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

async fn enqueue(q: &Arc<dyn Queue>, envelope: Envelope, body: &[u8]) -> EnqueueReceipt {
    q.enqueue(NewMessage::new(envelope, body.to_vec()))
        .await
        .expect("enqueue")
}

/// The file names in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The file of each job of `r`: `<id>.eml` for the first, `<id>.<domain>.eml` for the others.
fn file_of(r: &EnqueueReceipt, domain: &str) -> String {
    let (job, _) = r
        .jobs
        .iter()
        .find(|(_, d)| d == domain)
        .expect("a job for the domain");
    if job.index == 0 {
        format!("{}.eml", r.message)
    } else {
        format!("{}.{domain}.eml", r.message)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_delivery_writes_each_job_to_a_file_and_records_it_delivered_without_dns_or_smtp() {
    let dns = FakeDns::start(vec![]).await;
    let port = free_port().unwrap();
    let mx = FakeMx::start(sa(150, port), Behaviour::default()).await;
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("sandbox");
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "sandbox", Duration::from_secs(30)).await;
    let mut cfg = sandbox_config(&dns, &dir);
    // A real delivery to two.test would go to this server.
    cfg.routes = vec![RouteConfig {
        domain: "two.test".into(),
        host: format!("[127.0.0.150]:{port}"),
    }];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    assert!(dir.is_dir(), "the sandbox directory is made at startup");

    // None of these domains exists: a real delivery would bounce them all (5.1.2).
    let first = enqueue(
        &q,
        envelope("s@a.test", &["r1@one.test", "x@two.test", "r2@one.test"]),
        BODY,
    )
    .await;
    assert_eq!(first.jobs.len(), 2);
    let bounce_body: &[u8] = b"Subject: a bounce\n\nLF line endings\n";
    let second = enqueue(
        &q,
        Envelope::new(
            ReversePath::Null,
            vec![Recipient::new("r@nowhere.test".parse().unwrap())],
        ),
        bounce_body,
    )
    .await;
    wait_queue_empty(&q, WAIT).await;

    let one = file_of(&first, "one.test");
    let two = file_of(&first, "two.test");
    let null = format!("{}.eml", second.message);
    assert_eq!(
        names(&dir),
        BTreeSet::from([one.clone(), two.clone(), null.clone()]),
        "one file per job, no temporary left"
    );
    let mut expected =
        b"Return-Path: <s@a.test>\r\nDelivered-To: r1@one.test\r\nDelivered-To: r2@one.test\r\n".to_vec();
    expected.extend_from_slice(BODY);
    assert_eq!(
        String::from_utf8(std::fs::read(dir.join(&one)).unwrap()).unwrap(),
        String::from_utf8(expected).unwrap()
    );
    let mut expected = b"Return-Path: <s@a.test>\r\nDelivered-To: x@two.test\r\n".to_vec();
    expected.extend_from_slice(BODY);
    assert_eq!(std::fs::read(dir.join(&two)).unwrap(), expected);
    let mut expected = b"Return-Path: <>\nDelivered-To: r@nowhere.test\n".to_vec();
    expected.extend_from_slice(bounce_body);
    assert_eq!(std::fs::read(dir.join(&null)).unwrap(), expected);

    let ev = events(&q).await;
    let delivered: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::Delivered).collect();
    assert_eq!(delivered.len(), 3, "{ev:?}");
    for (file, domain, recipients) in [
        (&one, "one.test", vec!["r1@one.test", "r2@one.test"]),
        (&two, "two.test", vec!["x@two.test"]),
        (&null, "nowhere.test", vec!["r@nowhere.test"]),
    ] {
        let e = delivered
            .iter()
            .find(|e| e.domain == domain)
            .unwrap_or_else(|| panic!("no delivered event for {domain}: {ev:?}"));
        assert_eq!(e.recipients, recipients);
        let written = format!("250 2.0.0 written to {}", dir.join(file).display());
        assert_eq!(e.reply.as_deref(), Some(written.as_str()));
        assert_eq!(e.remote_mx, None, "no server was involved: {e:?}");
    }
    assert!(
        !ev.iter()
            .any(|e| matches!(e.kind, EventKind::Failed | EventKind::Deferred)),
        "{ev:?}"
    );
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.delivered, stats.failed, stats.deferred),
        (4, 0, 0),
        "{stats:?}"
    );

    assert_eq!(dns.asked(), Vec::<String>::new(), "nothing was looked up");
    assert_eq!(mx.seen.lock().unwrap().sessions, 0, "nothing was connected to");
    w.stop().await;
}

/// NOTIFY=SUCCESS is honoured as for a server without DSN: tern reports the success (`relayed`), and the
/// DSN, queued like any message, is itself delivered into the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_success_notice_asked_for_is_sent_and_lands_in_the_sandbox_too() {
    let dns = FakeDns::start(vec![]).await;
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_path_buf();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "sandbox-dsn", Duration::from_secs(30)).await;
    let w = start_worker(
        &sandbox_config(&dns, &dir),
        q.clone(),
        "w1",
        Duration::from_secs(30),
    );
    let mut r = Recipient::new("r@b.test".parse().unwrap());
    r.notify = Some(Notify {
        success: true,
        failure: true,
        delay: false,
    });
    let sent = enqueue(
        &q,
        Envelope::new(ReversePath::Mailbox("s@a.test".parse().unwrap()), vec![r]),
        BODY,
    )
    .await;
    wait_for("the message and its DSN in the sandbox", WAIT, || {
        names(&dir).len() >= 2
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    let message = format!("{}.eml", sent.message);
    let all = names(&dir);
    assert!(all.contains(&message), "{all:?}");
    let dsn_file = all.iter().find(|n| **n != message).unwrap();
    let dsn = String::from_utf8_lossy(&std::fs::read(dir.join(dsn_file)).unwrap()).into_owned();
    assert!(
        dsn.starts_with("Return-Path: <>\r\nDelivered-To: s@a.test\r\n"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: relayed"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; r@b.test"), "{dsn}");
    assert_eq!(dns.asked(), Vec::<String>::new(), "nothing was looked up");
    w.stop().await;
}

/// The sandbox directory cannot be made (its parent is a regular file; a read-only directory would not do,
/// as the tests run as root): the worker starts anyway and the message is deferred with a 4.3.0 naming the
/// path and the error, not lost. Once the directory can be made, the retry delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_write_that_fails_defers_the_message_until_it_succeeds() {
    let dns = FakeDns::start(vec![]).await;
    let out = tempfile::tempdir().unwrap();
    let blocker = out.path().join("not-a-dir");
    std::fs::write(&blocker, b"a regular file").unwrap();
    let dir = blocker.join("sandbox");
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "sandbox-fail", Duration::from_secs(30)).await;
    let w = start_worker(
        &sandbox_config(&dns, &dir),
        q.clone(),
        "w1",
        Duration::from_secs(30),
    );
    let sent = enqueue(&q, envelope("s@a.test", &["r@b.test"]), BODY).await;

    let deferred = wait_event(&q, EventKind::Deferred).await;
    let path = dir.join(format!("{}.eml", sent.message));
    let reply = deferred.reply.clone().unwrap_or_default();
    assert!(
        reply.starts_with(&format!("451 4.3.0 sandbox write to {} failed: ", path.display())),
        "{reply}"
    );
    assert!(reply.contains("Not a directory"), "{reply}");
    assert_eq!(deferred.recipients, vec!["r@b.test".to_string()]);
    let info = q.get_message(sent.message).await.unwrap().expect("still queued");
    assert_eq!(info.jobs.len(), 1);
    assert_eq!(info.jobs[0].pending().count(), 1, "{info:?}");
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.delivered, stats.failed), (0, 0), "{stats:?}");

    std::fs::remove_file(&blocker).unwrap();
    wait_queue_empty(&q, WAIT).await;
    let mut expected = b"Return-Path: <s@a.test>\r\nDelivered-To: r@b.test\r\n".to_vec();
    expected.extend_from_slice(BODY);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    assert!(
        events(&q).await.iter().any(|e| e.kind == EventKind::Delivered),
        "delivered on retry"
    );
    assert_eq!(dns.asked(), Vec::<String>::new(), "nothing was looked up");
    w.stop().await;
}
