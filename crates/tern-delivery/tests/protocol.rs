//! SMTP client details against a scriptable server on loopback (and smtp-sink where it can play the part):
//! STARTTLS (verified, opportunistic, required, injection, a broken TLS stack and the plaintext fallback),
//! HELO fallback, 452, RFC 2920 with every RCPT refused, 421 moving to the next host, configured routes and
//! relay, admin bounce, delay notices, the null sender, and graceful shutdown (and what it reports).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::fake_mx::{Behaviour, FakeMx};
use common::*;
use tern_config::sections::{RouteConfig, TlsMode};
use tern_core::{HumanDuration, ReversePath};
use tern_queue::{EventKind, NewMessage, Target};
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, TestCa, free_port};

fn dns_for(domain: &str, last: u8) -> Dnsmasq {
    Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .mx(domain, &format!("mx.{domain}"), 10)
        .host(&format!("mx.{domain}"), ip(last))
        .start()
        .expect("dnsmasq")
}

struct Tls {
    _dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    ca: TestCa,
}

fn test_ca() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();
    Tls {
        _dir: dir,
        ca_file,
        ca,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verified_starttls_delivery_with_ehlo_again_after_tls() {
    let port = free_port().unwrap();
    let dns = dns_for("tls.test", 70);
    let tls = test_ca();
    let cert = tls.ca.issue(&["mx.tls.test"]).unwrap();
    let mx = FakeMx::start(
        sa(70, port),
        Behaviour {
            tls: Some(cert),
            pipelining: true,
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "tls", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.tls = TlsMode::Required;
    cfg.extra_ca_file = Some(tls.ca_file.clone());
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@tls.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    assert!(e.tls.as_deref().unwrap_or("").contains("verified"), "{e:?}");
    assert!(!e.tls.as_deref().unwrap_or("").contains("unverified"), "{e:?}");
    let m = mx.messages();
    assert_eq!(m.len(), 1);
    assert!(m[0].tls);
    let cmds = mx.commands();
    assert_eq!(
        cmds.iter().filter(|c| c.starts_with("EHLO")).count(),
        2,
        "{cmds:?}"
    );
    assert_eq!(cmds[0], "EHLO tern.a.test");
    // The body went out CRLF, dot-stuffed (the receiver keeps the stuffing: it does not unstuff).
    let body = String::from_utf8_lossy(&m[0].data).to_string();
    assert!(body.contains("\r\n..leading dot\r\n"), "{body:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opportunistic_tls_accepts_an_unverifiable_certificate() {
    let port = free_port().unwrap();
    let dns = dns_for("opp.test", 71);
    let other_ca = TestCa::new().unwrap();
    let mx = FakeMx::start(
        sa(71, port),
        Behaviour {
            tls: Some(other_ca.issue(&["wrong.name"]).unwrap()),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "opp", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@opp.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    assert!(e.tls.as_deref().unwrap_or("").contains("unverified"), "{e:?}");
    assert!(mx.messages()[0].tls);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_required_refuses_an_unverifiable_certificate() {
    let port = free_port().unwrap();
    let dns = dns_for("badcert.test", 72);
    let other_ca = TestCa::new().unwrap();
    let tls = test_ca();
    let mx = FakeMx::start(
        sa(72, port),
        Behaviour {
            tls: Some(other_ca.issue(&["mx.badcert.test"]).unwrap()),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "badcert", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.tls = TlsMode::Required;
    cfg.extra_ca_file = Some(tls.ca_file.clone());
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@badcert.test"]).await;
    let e = wait_event(&q, EventKind::Deferred).await;
    assert!(e.reply.as_deref().unwrap_or("").contains("4.7.5"), "{e:?}");
    assert!(mx.messages().is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_injected_after_the_starttls_reply_abort_the_session() {
    let port = free_port().unwrap();
    let dns = dns_for("inject.test", 73);
    let tls = test_ca();
    let mx = FakeMx::start(
        sa(73, port),
        Behaviour {
            tls: Some(tls.ca.issue(&["mx.inject.test"]).unwrap()),
            inject_after_starttls: Some(b"250 injected\r\n".to_vec()),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "inject", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    // Required: under opportunistic TLS the message would go on in plaintext over a new connection.
    cfg.tls = TlsMode::Required;
    cfg.extra_ca_file = Some(tls.ca_file.clone());
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@inject.test"]).await;
    let e = wait_event(&q, EventKind::Deferred).await;
    // Caught before the handshake when the bytes came with the 220, or by the handshake itself (they are
    // not a TLS record) when they came just after: either way the session ends and nothing is sent.
    let reply = e.reply.as_deref().unwrap_or("");
    assert!(
        reply.contains("between the STARTTLS reply and the handshake") || reply.contains("TLS handshake"),
        "{e:?}"
    );
    assert!(!mx.commands().iter().any(|c| c.starts_with("MAIL")));
    assert!(mx.messages().is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ehlo_refused_with_502_falls_back_to_helo() {
    let port = free_port().unwrap();
    let dns = dns_for("helo.test", 74);
    let mx = FakeMx::start(
        sa(74, port),
        Behaviour {
            ehlo_reply: Some("502 5.5.2 EHLO not implemented".into()),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "helo", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@helo.test"]).await;
    wait_event(&q, EventKind::Delivered).await;
    let m = mx.messages();
    assert_eq!(m[0].helo, "HELO tern.a.test");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recipients_refused_with_452_go_in_a_new_transaction() {
    let port = free_port().unwrap();
    let dns = dns_for("many.test", 75);
    let mx = FakeMx::start(
        sa(75, port),
        Behaviour {
            max_rcpts: Some(2),
            pipelining: true,
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "many", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(
        &q,
        "s@a.test",
        &[
            "r1@many.test",
            "r2@many.test",
            "r3@many.test",
            "r4@many.test",
            "r5@many.test",
        ],
    )
    .await;
    wait_queue_empty(&q, WAIT).await;
    let sizes: Vec<usize> = mx.messages().iter().map(|m| m.rcpts.len()).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(
        mx.seen.lock().unwrap().sessions,
        1,
        "one session for all three transactions"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_group_with_every_rcpt_refused_sends_the_dot_alone() {
    let port = free_port().unwrap();
    let dns = dns_for("refuse.test", 76);
    let mx = FakeMx::start(
        sa(76, port),
        Behaviour {
            pipelining: true,
            rcpt_reply: Some("550 5.1.1 No such user".into()),
            data_always_354: true,
            ..Default::default()
        },
    )
    .await;
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "refuse", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["a@refuse.test", "b@refuse.test"]).await;
    let dsn = wait_dsn(
        &sender_mx,
        &["Status: 5.1.1", "Final-Recipient: rfc822; a@refuse.test"],
    )
    .await;
    assert!(
        dsn.contains("Final-Recipient: rfc822; b@refuse.test"),
        "one DSN covers both: {dsn}"
    );
    wait_queue_empty(&q, WAIT).await;
    let (empty_data, accepted) = {
        let seen = mx.seen.lock().unwrap();
        (seen.empty_data, seen.messages.len())
    };
    assert_eq!(empty_data, 1, "the dot alone ended the data");
    assert_eq!(accepted, 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_421_moves_the_message_to_the_next_host() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("busy.test", "mx1.busy.test", 10)
        .mx("busy.test", "mx2.busy.test", 20)
        .host("mx1.busy.test", ip(77))
        .host("mx2.busy.test", ip(78))
        .start()
        .unwrap();
    let primary = FakeMx::start(
        sa(77, port),
        Behaviour {
            mail_reply: Some("421 4.3.2 Shutting down".into()),
            ..Default::default()
        },
    )
    .await;
    let secondary = SmtpSink::start(ip(78), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "busy", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@busy.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    assert_eq!(e.remote_mx.as_deref(), Some("mx2.busy.test"));
    assert_eq!(e.attempt, 1, "delivered on the first attempt: {e:?}");
    assert_eq!(secondary.message_count(), 1);
    assert!(primary.commands().iter().any(|c| c.starts_with("MAIL")));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configured_routes_and_the_relay_host_bypass_mx_lookup() {
    let port = free_port().unwrap();
    // No DNS records for these domains at all.
    let dns = Dnsmasq::builder().start().unwrap();
    let routed = SmtpSink::start(ip(79), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "routes", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.routes = vec![RouteConfig {
        domain: "Routed.test".into(),
        host: "127.0.0.79".into(),
    }];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@routed.test"]).await;
    wait_for("the routed message", WAIT, || routed.message_count() >= 1).await;
    w.stop().await;

    let relay = SmtpSink::start(ip(80), port).unwrap();
    let mut cfg = config(&dns, port);
    cfg.relay_host = Some(format!("[127.0.0.80]:{port}"));
    let w = start_worker(&cfg, q.clone(), "w2", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@nowhere.test", "x@elsewhere.test"]).await;
    wait_for("both messages at the relay", WAIT, || relay.message_count() >= 2).await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_bounce_sends_a_dsn_without_delivery() {
    let port = free_port().unwrap();
    // The destination never answers (nothing listens on 127.0.0.81).
    let dns = dns_for("dead.test", 81);
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "bounce", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    let receipt = q
        .enqueue(NewMessage::new(
            envelope("s@a.test", &["r@dead.test"]),
            BODY.to_vec(),
        ))
        .await
        .unwrap();
    let e = wait_event(&q, EventKind::Deferred).await;
    assert!(e.reply.as_deref().unwrap_or("").contains("4.4.1"), "{e:?}");
    assert_eq!(
        q.bounce(&Target::Message(receipt.message), None).await.unwrap(),
        1
    );
    wait_dsn(
        &sender_mx,
        &[
            "Action: failed",
            "Status: 5.0.0",
            "bounced by the administrator",
            "Final-Recipient: rfc822; r@dead.test",
        ],
    )
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay_notice_after_the_configured_wait() {
    let port = free_port().unwrap();
    let dns = dns_for("later.test", 82);
    let _faulty = SmtpSink::builder(ip(82), port)
        .soft_reject("RCPT")
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "delay", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.delay_notice_after = Some(HumanDuration(Duration::from_secs(2)));
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@later.test"]).await;
    let dsn = wait_dsn(
        &sender_mx,
        &[
            "Action: delayed",
            "Will-Retry-Until:",
            "Final-Recipient: rfc822; r@later.test",
        ],
    )
    .await;
    assert!(dsn.contains("Subject: Delayed Mail"), "{dsn}");
    // Only one delay notice, however many retries follow.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sender_mx.message_count(), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_dsn_for_a_message_from_the_null_sender() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .null_mx("nullmx.test")
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "nullsender", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    let mut env = envelope("s@a.test", &["x@nullmx.test"]);
    env.sender = ReversePath::Null;
    q.enqueue(NewMessage::new(env, BODY.to_vec())).await.unwrap();
    wait_event(&q, EventKind::Failed).await;
    wait_queue_empty(&q, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sender_mx.message_count(), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_claiming_and_releases_what_is_left() {
    let port = free_port().unwrap();
    let dns = dns_for("drain.test", 83);
    // Each message waits 3 s for its DATA reply; the grace is 1 s.
    let sink = SmtpSink::builder(ip(83), port).delay_data(3).start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "drain", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.shutdown_grace = HumanDuration(Duration::from_secs(1));
    let mut w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    for _ in 0..3 {
        send(&q, "s@a.test", &["r@drain.test"]).await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while q.counts().await.unwrap().in_flight == 0 {
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    w.token.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), w.handle.take().unwrap())
        .await
        .expect("the worker stops within the grace")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let c = q.counts().await.unwrap();
    assert_eq!(c.in_flight, 0, "every claim released: {c:?}");
    assert_eq!(c.total + sink.message_count(), 3, "{c:?}");
    let ev = events(&q).await;
    let released = ev.iter().filter(|e| e.kind == EventKind::Released).count();
    assert!(released > 0, "{ev:?}");
    assert_eq!(stopped.released, released, "{stopped:?} {ev:?}");
    assert_eq!(stopped.not_released, 0, "{stopped:?}");
}

/// The queue is down when the worker stops: nothing can be released, and its last line says so instead of
/// counting the releases it tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shutdown_line_counts_what_was_released_not_what_was_tried() {
    let port = free_port().unwrap();
    let dns = dns_for("norelease.test", 130);
    // The first message waits 3 s for its DATA reply; the grace is 1 s.
    let _sink = SmtpSink::builder(ip(130), port).delay_data(3).start().unwrap();
    let mut redis = RedisServer::start().unwrap();
    let q = queue(&redis, "norelease", Duration::from_secs(30)).await;
    let msgs = (0..3)
        .map(|_| NewMessage::new(envelope("s@a.test", &["r@norelease.test"]), BODY.to_vec()))
        .collect();
    for r in q.enqueue_batch(msgs).await {
        r.unwrap();
    }
    let mut cfg = config(&dns, port);
    cfg.shutdown_grace = HumanDuration(Duration::from_secs(1));
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    wait_in_flight(&q).await;
    assert_eq!(q.counts().await.unwrap().in_flight, 3, "one claim of three jobs");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop().unwrap();
    let stopped = w.stop().await.expect("the worker stops");
    assert_eq!(stopped.released, 0, "{stopped:?}");
    assert_eq!(stopped.not_released, 3, "{stopped:?}");
}

/// A domain whose only MX answers STARTTLS with 220 and then breaks the handshake: under opportunistic TLS
/// the message goes in plaintext over a new connection to the same host, on the first attempt; the next
/// connection to that host goes plaintext without trying TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_starttls_falls_back_to_plaintext_on_the_same_host_and_is_remembered() {
    let port = free_port().unwrap();
    let dns = dns_for("brokentls.test", 131);
    let mx = FakeMx::start(
        sa(131, port),
        Behaviour {
            broken_tls: true,
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "brokentls", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    assert_eq!(cfg.tls, TlsMode::Opportunistic);
    // Each message on its own connection, so that the second one shows what was remembered.
    cfg.messages_per_connection = 1;
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r1@brokentls.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    assert_eq!(e.attempt, 1, "delivered on the first attempt: {e:?}");
    assert_eq!(e.remote_mx.as_deref(), Some("mx.brokentls.test"), "{e:?}");
    assert_eq!(
        e.tls.as_deref(),
        Some("plaintext; mta-sts=not-applied (disabled)"),
        "{e:?}"
    );
    assert_eq!(mx.messages().len(), 1);
    assert!(!mx.messages()[0].tls);
    assert_eq!(
        mx.seen.lock().unwrap().sessions,
        2,
        "the broken session, then a plaintext one"
    );

    send(&q, "s@a.test", &["r2@brokentls.test"]).await;
    wait_for("the second message", WAIT, || mx.messages().len() >= 2).await;
    wait_queue_empty(&q, WAIT).await;
    let starttls = mx.commands().iter().filter(|c| c.as_str() == "STARTTLS").count();
    assert_eq!(
        starttls,
        1,
        "TLS is not tried again on a host that failed it: {:?}",
        mx.commands()
    );
    assert_eq!(mx.seen.lock().unwrap().sessions, 3);
    let ev = events(&q).await;
    assert!(!ev.iter().any(|e| e.kind == EventKind::Deferred), "{ev:?}");
    w.stop().await;
}

/// The same broken TLS stack under `tls = "required"`: never plaintext, the message is deferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_required_never_falls_back_to_plaintext_when_starttls_fails() {
    let port = free_port().unwrap();
    let dns = dns_for("brokenreq.test", 132);
    let mx = FakeMx::start(
        sa(132, port),
        Behaviour {
            broken_tls: true,
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "brokenreq", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.tls = TlsMode::Required;
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@brokenreq.test"]).await;
    let e = wait_event(&q, EventKind::Deferred).await;
    assert!(e.reply.as_deref().unwrap_or("").contains("4.7.5"), "{e:?}");
    assert!(mx.messages().is_empty());
    assert!(
        !mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        mx.commands()
    );
    assert_eq!(
        mx.seen.lock().unwrap().sessions,
        1,
        "no plaintext session after the failure"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_host_with_implicit_tls_and_auth() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder().start().unwrap();
    let tls = test_ca();
    let behaviour = |password: &str| Behaviour {
        tls: Some(tls.ca.issue(&["127.0.0.87", "127.0.0.88"]).unwrap()),
        implicit_tls: true,
        auth: Some(("tern".into(), password.into())),
        ..Default::default()
    };
    let relay = FakeMx::start(sa(87, port), behaviour("s3cret")).await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "relayauth", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.relay_host = Some(format!("[127.0.0.87]:{port}"));
    cfg.relay_tls = tern_config::sections::RelayTls::Implicit;
    cfg.relay_username = Some("tern".into());
    cfg.relay_password = Some("s3cret".into());
    cfg.extra_ca_file = Some(tls.ca_file.clone());
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@anywhere.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    assert!(e.tls.as_deref().unwrap_or("").contains("verified"), "{e:?}");
    let m = relay.messages();
    assert_eq!(m.len(), 1);
    assert!(m[0].tls);
    assert!(relay.commands().iter().any(|c| c.starts_with("AUTH PLAIN ")));
    w.stop().await;

    // Wrong credentials: deferred, nothing sent.
    let relay = FakeMx::start(sa(88, port), behaviour("other")).await;
    cfg.relay_host = Some(format!("[127.0.0.88]:{port}"));
    let q2 = queue(&redis, "relayauth2", Duration::from_secs(30)).await;
    let w = start_worker(&cfg, q2.clone(), "w2", Duration::from_secs(30));
    send(&q2, "s@a.test", &["r@anywhere.test"]).await;
    let e = wait_event(&q2, EventKind::Deferred).await;
    assert!(e.reply.as_deref().unwrap_or("").contains("AUTH"), "{e:?}");
    assert!(relay.messages().is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_421_after_an_accepted_rcpt_defers_every_recipient_without_data() {
    let port = free_port().unwrap();
    let dns = dns_for("cut.test", 89);
    let mx = FakeMx::start(
        sa(89, port),
        Behaviour {
            max_rcpts: Some(1),
            over_max_reply: Some("421 4.3.2 Going down".into()),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "cut", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["a@cut.test", "b@cut.test"]).await;
    let e = wait_event(&q, EventKind::Deferred).await;
    assert_eq!(e.recipients.len(), 2, "{e:?}");
    assert!(e.reply.as_deref().unwrap_or("").starts_with("421"), "{e:?}");
    assert!(!mx.commands().iter().any(|c| c == "DATA"), "{:?}", mx.commands());
    let ev = events(&q).await;
    assert!(
        !ev.iter()
            .any(|e| matches!(e.kind, EventKind::Failed | EventKind::Delivered)),
        "{ev:?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opportunistic_tls_reports_a_valid_certificate_as_verified() {
    let port = free_port().unwrap();
    let dns = dns_for("oppok.test", 91);
    let tls = test_ca();
    let _mx = FakeMx::start(
        sa(91, port),
        Behaviour {
            tls: Some(tls.ca.issue(&["mx.oppok.test"]).unwrap()),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "oppok", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.extra_ca_file = Some(tls.ca_file.clone());
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@oppok.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    let t = e.tls.as_deref().unwrap_or("");
    assert!(t.contains("verified") && !t.contains("unverified"), "{e:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_the_server_cannot_take_bounces_without_being_sent() {
    let port = free_port().unwrap();
    let dns = dns_for("limits.test", 92);
    // Advertises SIZE 1000000 and 8BITMIME, not SMTPUTF8.
    let mx = FakeMx::start(sa(92, port), Behaviour::default()).await;
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "limits", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    let mut big = BODY.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1_200_000));
    big.extend_from_slice(b"\r\n");
    q.enqueue(NewMessage::new(envelope("s@a.test", &["big@limits.test"]), big))
        .await
        .unwrap();
    let mut utf8 = envelope("s@a.test", &["utf8@limits.test"]);
    utf8.smtputf8 = true;
    q.enqueue(NewMessage::new(utf8, BODY.to_vec())).await.unwrap();
    wait_dsn(
        &sender_mx,
        &["Status: 5.3.4", "Final-Recipient: rfc822; big@limits.test"],
    )
    .await;
    // (The DSN of an SMTPUTF8 message is itself SMTPUTF8, which smtp-sink does not take: check the event.)
    wait_queue_empty(&q, WAIT).await;
    let ev = events(&q).await;
    let f = ev
        .iter()
        .find(|e| e.kind == EventKind::Failed && e.recipients == vec!["utf8@limits.test".to_string()])
        .expect("the SMTPUTF8 message failed");
    assert!(f.reply.as_deref().unwrap_or("").contains("5.6.7"), "{f:?}");
    // tern refused both, not the server: the events name no server that said so.
    assert_eq!(
        ev.iter()
            .filter(|e| e.kind == EventKind::Failed && e.domain == "limits.test")
            .count(),
        2,
        "{ev:?}"
    );
    for failed in ev
        .iter()
        .filter(|e| e.kind == EventKind::Failed && e.domain == "limits.test")
    {
        assert_eq!(
            (failed.remote_mx.as_deref(), failed.remote_ip.as_deref()),
            (None, None),
            "{failed:?}"
        );
    }
    assert!(
        !mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        mx.commands()
    );
    w.stop().await;
}

/// A scriptable MX for `domain` at 127.0.0.`last`, three messages to it queued before a worker starts (so
/// that one claim takes them all), and the worker.
/// Bind every field by name: DNS and Redis stop when theirs is dropped.
struct ThreeMessages {
    _dns: Dnsmasq,
    mx: FakeMx,
    _redis: RedisServer,
    q: std::sync::Arc<dyn tern_queue::Queue>,
    w: RunningWorker,
}

async fn three_messages_in_one_claim(domain: &str, last: u8, behaviour: Behaviour) -> ThreeMessages {
    let port = free_port().unwrap();
    let dns = dns_for(domain, last);
    let mx = FakeMx::start(sa(last, port), behaviour).await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, domain, Duration::from_secs(30)).await;
    for n in 1..=3 {
        send(&q, "s@a.test", &[&format!("r{n}@{domain}")]).await;
    }
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    ThreeMessages {
        _dns: dns,
        mx,
        _redis: redis,
        q,
        w,
    }
}

/// Three messages to one domain in one claim, over one pipelining connection: each message's end of data
/// goes out with the next one's commands (RFC 2920 §3.1), and each gets its own outcome: the one whose
/// data the server refused fails (and bounces), the others are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_of_one_connection_send_each_end_of_data_with_the_next_message_and_keep_their_own_outcome() {
    let behaviour = Behaviour {
        pipelining: true,
        data_replies: vec![
            "250 2.0.0 ok".into(),
            "554 5.6.0 content refused".into(),
            "250 2.0.0 ok".into(),
        ],
        ..Default::default()
    };
    let ThreeMessages {
        q,
        w,
        mx,
        _dns,
        _redis,
    } = three_messages_in_one_claim("held.test", 168, behaviour).await;
    // The bounce's DSN stays queued (the sender's MX is not running): wait for the three outcomes.
    let deadline = std::time::Instant::now() + WAIT;
    let events = loop {
        let events = events(&q).await;
        let ended = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Delivered | EventKind::Failed))
            .count();
        if ended >= 3 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w.stop().await;
    let count = |kind: EventKind| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(EventKind::Delivered), 2, "{events:?}");
    assert_eq!(count(EventKind::Failed), 1, "{events:?}");
    let failed = events.iter().find(|e| e.kind == EventKind::Failed).unwrap();
    assert!(
        failed.reply.as_deref().unwrap_or("").starts_with("554 5.6.0"),
        "{failed:?}"
    );
    let seen = mx.seen.lock().unwrap();
    assert_eq!(seen.sessions, 1);
    assert_eq!(seen.data_ends_with_next_command, 2, "{:?}", seen.commands);
}

/// The server goes away after reading the second message's data, which went out with the third's
/// commands: the second is deferred with tern's own 451 (its data may have arrived, so it is tried again
/// later, not taken as delivered), the first keeps its delivery, and the third goes on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_gone_before_answering_a_held_end_of_data_defers_only_that_message() {
    let behaviour = Behaviour {
        pipelining: true,
        close_at_data_end: Some(2),
        ..Default::default()
    };
    let ThreeMessages {
        q,
        w,
        mx,
        _dns,
        _redis,
    } = three_messages_in_one_claim("gone.test", 169, behaviour).await;
    let deferred = wait_event(&q, EventKind::Deferred).await;
    assert!(
        deferred.reply.as_deref().unwrap_or("").starts_with("451 4.4.2"),
        "{deferred:?}"
    );
    // The server said nothing about it: the event names none, but says whether MTA-STS applied.
    assert_eq!(deferred.remote_mx.as_deref(), None, "{deferred:?}");
    assert_eq!(
        deferred.tls.as_deref(),
        Some("mta-sts=not-applied (disabled)"),
        "{deferred:?}"
    );
    // Tried again a second later (the test's retry schedule): all three delivered in the end.
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
    let events = events(&q).await;
    let delivered: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Delivered).collect();
    assert_eq!(delivered.len(), 3, "{events:?}");
    assert_eq!(
        events.iter().filter(|e| e.kind == EventKind::Deferred).count(),
        1,
        "{events:?}"
    );
    let delivered_late = delivered
        .iter()
        .find(|e| e.message == deferred.message)
        .expect("the deferred message delivered");
    assert_eq!(delivered_late.attempt, 2, "{delivered_late:?}");
    assert_eq!(mx.messages().len(), 3);
    assert!(mx.seen.lock().unwrap().sessions >= 2);
}

/// The primary MX goes away after reading the first message's data, which was held and went out with the
/// second message's commands: the first is deferred (its reply never came), and the second, not started
/// there, goes to the next host with the rest of the batch, as after any host failure, instead of back
/// to the host that just went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_gone_after_a_held_end_of_data_sends_the_next_message_to_the_next_host() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .mx("flaky.test", "mx1.flaky.test", 10)
        .mx("flaky.test", "mx2.flaky.test", 20)
        .host("mx1.flaky.test", ip(170))
        .host("mx2.flaky.test", ip(171))
        .start()
        .unwrap();
    let primary = FakeMx::start(
        sa(170, port),
        Behaviour {
            pipelining: true,
            close_at_data_end: Some(1),
            ..Default::default()
        },
    )
    .await;
    let secondary = SmtpSink::start(ip(171), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "flaky", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    for n in 1..=3 {
        send(&q, "s@a.test", &[&format!("r{n}@flaky.test")]).await;
    }
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    wait_for("two messages at the secondary", WAIT, || {
        secondary.message_count() >= 2
    })
    .await;
    let deferred = wait_event(&q, EventKind::Deferred).await;
    assert!(
        deferred.reply.as_deref().unwrap_or("").starts_with("451 4.4.2"),
        "{deferred:?}"
    );
    w.stop().await;
    let events = events(&q).await;
    let delivered: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Delivered).collect();
    assert_eq!(delivered.len(), 2, "{events:?}");
    for e in delivered {
        assert_eq!(e.remote_mx.as_deref(), Some("mx2.flaky.test"), "{e:?}");
        assert_eq!(e.attempt, 1, "{e:?}");
    }
    assert_eq!(primary.seen.lock().unwrap().sessions, 1);
}
