#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The worker's side of the operator's toolkit, against a real Redis store, dnsmasq, smtp-sinks and the
//! scriptable server: a domain rerouted (`ternctl domain route`) and back, a live SMTP trace read through
//! the store's trace bus, an admin bounce whose DSN gives the operator's reason and the last reply, and
//! the id of a failure DSN on the failed event.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_mx::{Behaviour, FakeMx};
use common::*;
use tern_core::time::now_ms;
use tern_core::{HumanDuration, MessageId};
use tern_delivery::Worker;
use tern_queue::{
    EventKind, NewMessage, Queue, Route, RouteStore, Target, TraceBus, TraceFilter, TraceRecord,
};
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, TestCa, free_port};

/// How long a route set or removed takes to reach a running worker, with room to spare (the worker
/// re-reads the routes every 3 s).
const ROUTE_SETTLES: Duration = Duration::from_millis(4500);

/// How long a trace opened takes to reach a running worker (it reads the filters every second).
const TRACE_SETTLES: Duration = Duration::from_millis(1500);

async fn enqueue(q: &Arc<dyn Queue>, from: &str, to: &[&str]) -> MessageId {
    q.enqueue(NewMessage::new(envelope(from, to), BODY.to_vec()))
        .await
        .expect("enqueue")
        .message
}

/// The events of `kind` about `message`, waiting up to [`WAIT`] for the first.
async fn wait_message_event(q: &Arc<dyn Queue>, kind: EventKind, message: MessageId) -> tern_queue::Event {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ev = events(q).await;
        if let Some(e) = ev.iter().find(|e| e.kind == kind && e.message == Some(message)) {
            return e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind:?} event for {message}: {ev:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A domain whose MX host has no address is sent, once an operator routes it, to the route's host (a name
/// looked up for its address, on the configured SMTP port), without a restart; the delivered event names
/// the route's host. Once the route is removed, the next message goes by MX again and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_sends_a_domain_without_usable_mx_to_the_route_host_until_it_is_removed() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("stuck.test", "mx.stuck.test", 10)
        .host("relay.ops.test", ip(151))
        .start()
        .unwrap();
    let sink = SmtpSink::start(ip(151), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let store = store(&redis, "reroute", Duration::from_secs(30)).await;
    let q: Arc<dyn Queue> = store.clone();
    let worker = Worker::new(&config(&dns, port), q.clone(), "w-route")
        .unwrap()
        .with_lease(Duration::from_secs(30))
        .with_routes(store.clone());
    let w = run_worker(worker);

    store
        .set_route(&Route {
            domain: "Stuck.test".into(),
            host: "relay.ops.test".into(),
            port: None,
            since_ms: now_ms(),
            until_ms: None,
            reason: "incident 42".into(),
        })
        .await
        .unwrap();
    tokio::time::sleep(ROUTE_SETTLES).await;
    let first = enqueue(&q, "s@a.test", &["r@stuck.test"]).await;
    let e = wait_message_event(&q, EventKind::Delivered, first).await;
    assert_eq!(
        (e.remote_mx.as_deref(), e.remote_ip.as_deref()),
        (Some("relay.ops.test"), Some("127.0.0.151")),
        "{e:?}"
    );
    assert_eq!(sink.message_count(), 1);

    assert!(store.remove_route("stuck.test").await.unwrap());
    tokio::time::sleep(ROUTE_SETTLES).await;
    let second = enqueue(&q, "s@a.test", &["r@stuck.test"]).await;
    let e = wait_message_event(&q, EventKind::Deferred, second).await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(reply.contains("4.4.3") && reply.contains("stuck.test"), "{e:?}");
    assert_eq!(e.remote_mx, None, "{e:?}");
    assert_eq!(
        sink.message_count(),
        1,
        "the second message must not reach the route's host"
    );
    w.stop().await;
}

/// A trace open on the store's bus sees, from the worker, the SMTP conversation of a matching delivery as
/// it happens: the connection (host, address, port), TLS, the commands sent and replies read, the AUTH
/// payload masked and the message data as its size only, and the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_trace_sees_the_conversation_with_auth_masked_and_no_message_text() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();
    let dns = Dnsmasq::builder().start().unwrap();
    let relay = FakeMx::start(
        sa(152, port),
        Behaviour {
            tls: Some(ca.issue(&["127.0.0.152"]).unwrap()),
            implicit_tls: true,
            auth: Some(("tern".into(), "s3cret".into())),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let store = store(&redis, "trace", Duration::from_secs(30)).await;
    let q: Arc<dyn Queue> = store.clone();
    let mut cfg = config(&dns, port);
    cfg.relay_host = Some(format!("[127.0.0.152]:{port}"));
    cfg.relay_tls = tern_config::sections::RelayTls::Implicit;
    cfg.relay_username = Some("tern".into());
    cfg.relay_password = Some("s3cret".into());
    cfg.extra_ca_file = Some(ca_file);

    let mut trace = store
        .open_trace(TraceFilter {
            domain: Some("B.test".into()),
            mx: None,
        })
        .await
        .expect("open a trace");
    let worker = Worker::new(&cfg, q.clone(), "w-trace")
        .unwrap()
        .with_lease(Duration::from_secs(30))
        .with_trace_bus(store.clone());
    let w = run_worker(worker);
    tokio::time::sleep(TRACE_SETTLES).await;
    let id = enqueue(&q, "s@a.test", &["r@b.test"]).await;
    wait_message_event(&q, EventKind::Delivered, id).await;
    // Stopping closes the idle connection: its `close` record is published before the worker returns.
    w.stop().await;

    let mut records: Vec<TraceRecord> = Vec::new();
    while !records.iter().any(|r| r.kind == "close") {
        match tokio::time::timeout(Duration::from_secs(10), trace.next()).await {
            Ok(Some(r)) => records.push(r),
            other => panic!("the trace ended before a close ({other:?}): {records:#?}"),
        }
    }
    let lines: Vec<String> = records.iter().map(|r| format!("{} {}", r.kind, r.text)).collect();
    let has = |kind: &str, start: &str| {
        records
            .iter()
            .any(|r| r.kind == kind && r.text.starts_with(start))
    };
    assert!(
        has("connect", &format!("127.0.0.152 [127.0.0.152]:{port}")),
        "{lines:#?}"
    );
    assert!(has("tls", "TLS"), "{lines:#?}");
    assert!(has("recv", "220"), "{lines:#?}");
    assert!(has("send", "EHLO tern.a.test"), "{lines:#?}");
    assert!(has("send", "AUTH PLAIN <masked>"), "{lines:#?}");
    assert!(has("recv", "235"), "{lines:#?}");
    assert!(has("send", "MAIL FROM:<s@a.test>"), "{lines:#?}");
    assert!(has("send", "RCPT TO:<r@b.test>"), "{lines:#?}");
    assert!(has("send", "<message data: "), "{lines:#?}");
    assert!(has("close", ""), "{lines:#?}");
    let token = relay
        .commands()
        .into_iter()
        .find_map(|c| c.strip_prefix("AUTH PLAIN ").map(str::to_string))
        .expect("AUTH sent");
    for r in &records {
        assert!(
            !r.text.contains("s3cret") && !r.text.contains(&token),
            "credentials in {r:?}"
        );
        assert!(
            !r.text.contains("Hello.") && !r.text.contains("Subject"),
            "message text in {r:?}"
        );
        assert_eq!(
            (r.worker.as_str(), r.domain.as_str(), r.mx.as_str(), r.ip.as_str()),
            ("w-trace", "b.test", "127.0.0.152", "127.0.0.152"),
            "{r:?}"
        );
        assert_eq!(
            r.session, records[0].session,
            "one connection, one session: {lines:#?}"
        );
    }
}

/// The DSN of an operator's bounce gives the operator's reason and the last reply the recipient had; the
/// failed event carries both, and the DSN's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_bounce_dsn_gives_the_reason_and_the_last_reply() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(153))
        .mx("busy.test", "mx.busy.test", 10)
        .host("mx.busy.test", ip(154))
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(153), port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let _busy = SmtpSink::builder(ip(154), port)
        .soft_reject("RCPT")
        .soft_reply("450 4.2.1 mailbox busy, try later")
        .start()
        .unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "adminbounce", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));

    let id = enqueue(&q, "s@a.test", &["r@busy.test"]).await;
    wait_message_event(&q, EventKind::Deferred, id).await;
    let bounced = q
        .bounce(&Target::Message(id), Some("the mailbox is\nbeing retired"))
        .await
        .unwrap();
    assert_eq!(bounced, 1);
    let e = wait_message_event(&q, EventKind::Failed, id).await;
    let want = "bounced by the administrator: the mailbox is being retired; last reply: 450 4.2.1 mailbox \
                busy, try later";
    assert_eq!(
        e.reply.as_deref(),
        Some(format!("550 5.0.0 {want}").as_str()),
        "{e:?}"
    );
    let dsn_id = e.dsn.clone().expect("the DSN's id on the failed event");
    let dsn = wait_dsn(&sender_mx, &["Diagnostic-Code: X-tern; ", want]).await;
    assert!(dsn.contains(&format!("Message-ID: <{dsn_id}@")), "{dsn}");
    assert!(dsn.contains("Status: 5.0.0"), "{dsn}");
    w.stop().await;
}

/// The DSN queued for a recipient that failed is recorded, by its id, on the failed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_dsn_id_lands_on_the_failed_event() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(155))
        .mx("gone.test", "mx.gone.test", 10)
        .host("mx.gone.test", ip(156))
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(155), port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let _gone = SmtpSink::builder(ip(156), port)
        .hard_reject("RCPT")
        .hard_reply("550 5.1.1 no such user")
        .start()
        .unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "dsnid", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));

    let id = enqueue(&q, "s@a.test", &["r@gone.test"]).await;
    let e = wait_message_event(&q, EventKind::Failed, id).await;
    assert!(e.reply.as_deref().unwrap_or("").contains("5.1.1"), "{e:?}");
    assert_eq!(e.remote_mx.as_deref(), Some("mx.gone.test"), "{e:?}");
    let dsn_id: MessageId = e.dsn.as_deref().expect("the DSN's id").parse().unwrap();
    // That id is the DSN's: queued under it, and sent to the sender with it.
    let queued = wait_message_event(&q, EventKind::Queued, dsn_id).await;
    assert_eq!(queued.recipients, vec!["s@a.test".to_string()], "{queued:?}");
    let dsn = wait_dsn(&sender_mx, &["550 5.1.1 no such user"]).await;
    assert!(dsn.contains(&format!("Message-ID: <{dsn_id}@")), "{dsn}");
    w.stop().await;
}
