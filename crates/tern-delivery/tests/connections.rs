//! Opening and closing connections against the scriptable server on loopback: a STARTTLS refusal that ends
//! the session moves on to the next host; the connection lost during the TLS handshake is not remembered as
//! the host's TLS failing; a worker that stops closes its idle connections at once, not one after another;
//! a session that breaks before the server answered records an event that names no server but says
//! whether MTA-STS applied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::fake_mx::{Behaviour, FakeMx};
use common::*;
use tern_config::sections::TlsMode;
use tern_core::HumanDuration;
use tern_queue::EventKind;
use tern_testkit::{Dnsmasq, RedisServer, free_port};

/// A primary MX that answers STARTTLS with 421 (and, misbehaving, goes on serving): the session is over, so
/// the secondary gets the message on the first attempt, and nothing is sent on the closing session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_starttls_refused_with_421_moves_on_to_the_next_host() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .mx("closing.test", "mx1.closing.test", 10)
        .mx("closing.test", "mx2.closing.test", 20)
        .host("mx1.closing.test", ip(141))
        .host("mx2.closing.test", ip(142))
        .start()
        .unwrap();
    let primary = FakeMx::start(
        sa(141, port),
        Behaviour {
            starttls_reply: Some("421 4.3.2 shutting down".into()),
            ..Default::default()
        },
    )
    .await;
    let secondary = FakeMx::start(sa(142, port), Behaviour::default()).await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "starttls421", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    assert_eq!(cfg.tls, TlsMode::Opportunistic);
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@closing.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    assert_eq!(e.attempt, 1, "{e:?}");
    assert_eq!(e.remote_mx.as_deref(), Some("mx2.closing.test"), "{e:?}");
    assert_eq!(secondary.messages().len(), 1);
    assert!(
        !primary.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        primary.commands()
    );
    w.stop().await;
}

/// An MX that accepts STARTTLS and then closes the connection during the handshake: under opportunistic
/// TLS the message goes in plaintext over a new connection, but the host's TLS is tried again on the next
/// connection, since a lost connection (a reset on the path, say) says nothing of its TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_lost_during_the_tls_handshake_is_not_remembered_as_a_tls_failure() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .mx("lost.test", "mx.lost.test", 10)
        .host("mx.lost.test", ip(143))
        .start()
        .unwrap();
    let mx = FakeMx::start(
        sa(143, port),
        Behaviour {
            close_during_handshake: true,
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "lostinhandshake", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    // Each message on its own connection, so that the second one shows what was remembered.
    cfg.messages_per_connection = 1;
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r1@lost.test"]).await;
    let e = wait_event(&q, EventKind::Delivered).await;
    assert_eq!(
        (e.attempt, e.tls.as_deref()),
        (1, Some("plaintext; mta-sts=not-applied (disabled)")),
        "{e:?}"
    );
    send(&q, "s@a.test", &["r2@lost.test"]).await;
    wait_for("the second message", WAIT, || mx.messages().len() >= 2).await;
    wait_queue_empty(&q, WAIT).await;
    let starttls = mx.commands().iter().filter(|c| c.as_str() == "STARTTLS").count();
    assert_eq!(starttls, 2, "TLS is tried again: {:?}", mx.commands());
    assert!(mx.messages().iter().all(|m| !m.tls));
    w.stop().await;
}

/// An MX that closes the connection at MAIL without a reply: tern's own 451 defers the message, and its
/// event names no server (the MX said nothing) nor claims its session's TLS, but still says whether
/// MTA-STS applied (issue #17).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_broken_before_any_reply_still_says_whether_mta_sts_applied() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .mx("broken.test", "mx.broken.test", 10)
        .host("mx.broken.test", ip(145))
        .start()
        .unwrap();
    let mx = FakeMx::start(
        sa(145, port),
        Behaviour {
            close_at_mail: true,
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "closedatmail", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@broken.test"]).await;
    let e = wait_event(&q, EventKind::Deferred).await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(reply.starts_with("451 4.4.2"), "{e:?}");
    assert_eq!(
        (e.remote_mx.as_deref(), e.remote_ip.as_deref()),
        (None, None),
        "{e:?}"
    );
    assert_eq!(e.tls.as_deref(), Some("mta-sts=not-applied (disabled)"), "{e:?}");
    assert!(
        mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        mx.commands()
    );
    w.stop().await;
}

/// Four idle connections to a server that never answers QUIT: a stopping worker closes them together, so
/// it takes one QUIT timeout (5 s), not four.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_worker_closes_its_idle_connections_at_once() {
    let port = free_port().unwrap();
    let domains = ["q1.test", "q2.test", "q3.test", "q4.test"];
    let mut b = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .host("mx.quiet.test", ip(144));
    for d in domains {
        b = b.mx(d, "mx.quiet.test", 10);
    }
    let dns = b.start().unwrap();
    let mx = FakeMx::start(
        sa(144, port),
        Behaviour {
            silent_quit: true,
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "quietquit", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.idle_connection_time = HumanDuration(Duration::from_secs(120));
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    for d in domains {
        send(&q, "s@a.test", &[&format!("r@{d}")]).await;
    }
    wait_for("four messages", WAIT, || mx.messages().len() >= 4).await;
    wait_queue_empty(&q, WAIT).await;
    // The connections went idle (the last step of each batch, after the outcome is recorded).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mx.seen.lock().unwrap().sessions, 4);
    let started = Instant::now();
    let stopped = w.stop().await;
    let took = started.elapsed();
    assert!(stopped.is_some(), "the worker did not stop");
    assert!(
        took < Duration::from_secs(12),
        "closing four idle connections took {took:?}"
    );
    assert_eq!(
        mx.commands().iter().filter(|c| c.as_str() == "QUIT").count(),
        4,
        "{:?}",
        mx.commands()
    );
}
