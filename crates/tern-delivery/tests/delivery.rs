//! Delivery against real peers: redis-server, dnsmasq and smtp-sink on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tern_core::{HumanDuration, Shutdown};
use tern_queue::EventKind;
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, free_port};

/// The sender's domain `a.test` has its own MX, a dumping sink at 127.0.0.30, to catch DSNs.
fn dns_with_sender(b: tern_testkit::DnsmasqBuilder) -> Dnsmasq {
    b.mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(30))
        .start()
        .expect("dnsmasq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_mx_refuses_and_the_secondary_gets_the_mail() {
    let port = free_port().unwrap();
    // mx1 (127.0.0.21) has nothing listening: the connection is refused.
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("ok.test", "mx1.ok.test", 10)
            .mx("ok.test", "mx2.ok.test", 20)
            .host("mx1.ok.test", ip(21))
            .host("mx2.ok.test", ip(22)),
    );
    let sink = SmtpSink::start(ip(22), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "secondary", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@ok.test"]).await;
    wait_for("the secondary to get the message", WAIT, || {
        sink.message_count() >= 1
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    let ev = events(&q).await;
    let delivered = ev
        .iter()
        .find(|e| e.kind == EventKind::Delivered)
        .expect("a delivered event");
    assert_eq!(delivered.remote_mx.as_deref(), Some("mx2.ok.test"));
    assert_eq!(delivered.remote_ip.as_deref(), Some("127.0.0.22"));
    assert_eq!(delivered.recipients, vec!["r@ok.test".to_string()]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_without_mx_is_its_own_mail_exchanger() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(Dnsmasq::builder().host("implicit.test", ip(26)));
    let sink = SmtpSink::start(ip(26), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "implicit", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@implicit.test"]).await;
    wait_for("the implicit MX to get the message", WAIT, || {
        sink.message_count() >= 1
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn null_mx_bounces_at_once_with_a_dsn() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(Dnsmasq::builder().null_mx("nullmx.test"));
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "nullmx", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["x@nullmx.test"]).await;
    let dsn = wait_dsn(
        &sender_mx,
        &[
            "Action: failed",
            "Status: 5.1.10",
            "Final-Recipient: rfc822; x@nullmx.test",
        ],
    )
    .await;
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(dsn.contains("To: <s@a.test>"), "{dsn}");
    wait_queue_empty(&q, WAIT).await;
    let ev = events(&q).await;
    assert!(ev.iter().any(|e| e.kind == EventKind::Failed), "{ev:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nxdomain_bounces_with_5_1_2() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(Dnsmasq::builder());
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "nxdomain", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["x@nowhere.test"]).await;
    wait_dsn(
        &sender_mx,
        &[
            "Action: failed",
            "Status: 5.1.2",
            "Final-Recipient: rfc822; x@nowhere.test",
        ],
    )
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}

/// `nodata.test` exists (it has a TXT record) but has no MX and no A or AAAA record: dnsmasq, authoritative
/// for `test`, answers NOERROR without records and with the zone's SOA (NODATA, RFC 2308) for each. Mail
/// for it can never be routed: it bounces at once with 5.4.4 instead of being retried until `max_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_without_mx_or_address_records_bounces_with_5_4_4() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .txt("nodata.test", "v=spf1 -all")
            .arg("--auth-server=ns.test,127.0.0.1")
            .arg("--auth-zone=test"),
    );
    for rtype in [
        tern_testkit::dns::TYPE_MX,
        tern_testkit::dns::TYPE_A,
        tern_testkit::dns::TYPE_AAAA,
    ] {
        let reply = dns.query("nodata.test", rtype).unwrap();
        assert_eq!(
            (reply.rcode, reply.answers.len()),
            (0, 0),
            "NODATA for type {rtype}: {reply:?}"
        );
    }
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "nodata", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    // A deferral would not come back within the test.
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["x@nodata.test"]).await;
    let dsn = wait_dsn(
        &sender_mx,
        &[
            "Action: failed",
            "Status: 5.4.4",
            "Final-Recipient: rfc822; x@nodata.test",
        ],
    )
    .await;
    assert!(!dsn.contains("Remote-MTA:"), "no server was involved: {dsn}");
    wait_queue_empty(&q, WAIT).await;
    let ev = events(&q).await;
    let failed = ev
        .iter()
        .find(|e| e.kind == EventKind::Failed)
        .expect("a failed event");
    assert!(
        failed.reply.as_deref().unwrap_or("").starts_with("550 5.4.4"),
        "{failed:?}"
    );
    assert!(!ev.iter().any(|e| e.kind == EventKind::Deferred), "{ev:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_4xx_defers_and_the_message_goes_once_the_peer_recovers() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("slow.test", "mx.slow.test", 10)
            .host("mx.slow.test", ip(40)),
    );
    let mut faulty = SmtpSink::builder(ip(40), port)
        .soft_reject("RCPT")
        .soft_reply("450 4.2.1 Try later")
        .start()
        .unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "recover", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@slow.test"]).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ev = events(&q).await;
        if let Some(e) = ev.iter().find(|e| e.kind == EventKind::Deferred) {
            assert!(e.reply.as_deref().unwrap_or("").contains("450"), "{e:?}");
            assert_eq!(e.remote_mx.as_deref(), Some("mx.slow.test"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no deferral: {ev:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    faulty.stop().unwrap();
    let good = SmtpSink::start(ip(40), port).unwrap();
    wait_for("delivery after recovery", WAIT, || good.message_count() >= 1).await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_recipient_refused_one_delivered_and_one_dsn() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("good.test", "mx.good.test", 10)
            .host("mx.good.test", ip(50))
            .mx("bad.test", "mx.bad.test", 10)
            .host("mx.bad.test", ip(51)),
    );
    let good = SmtpSink::start(ip(50), port).unwrap();
    let _bad = SmtpSink::builder(ip(51), port)
        .hard_reject("RCPT")
        .hard_reply("550 5.1.1 User unknown")
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "mixed", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["ok@good.test", "nobody@bad.test"]).await;
    wait_for("the good recipient's copy", WAIT, || good.message_count() >= 1).await;
    let dsn = wait_dsn(
        &sender_mx,
        &["Status: 5.1.1", "Final-Recipient: rfc822; nobody@bad.test"],
    )
    .await;
    assert!(!dsn.contains("Final-Recipient: rfc822; ok@good.test"), "{dsn}");
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 User unknown"),
        "{dsn}"
    );
    assert!(dsn.contains("Remote-MTA: dns; mx.bad.test"), "{dsn}");
    wait_queue_empty(&q, WAIT).await;
    // Exactly one DSN: the delivered recipient is not reported.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sender_mx.message_count(), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_older_than_max_age_expires_with_a_dsn() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("stuck.test", "mx.stuck.test", 10)
            .host("mx.stuck.test", ip(45)),
    );
    let _faulty = SmtpSink::builder(ip(45), port)
        .soft_reject("RCPT")
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(30), port).dump_to_tempdir().start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "expire", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.max_age = HumanDuration(Duration::from_secs(3));
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@stuck.test"]).await;
    wait_dsn(
        &sender_mx,
        &[
            "Action: failed",
            "Status: 4.4.7",
            "Final-Recipient: rfc822; r@stuck.test",
        ],
    )
    .await;
    wait_queue_empty(&q, WAIT).await;
    let ev = events(&q).await;
    assert!(ev.iter().any(|e| e.kind == EventKind::Expired), "{ev:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_messages_reuse_few_connections() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("bulk.test", "mx.bulk.test", 10)
            .host("mx.bulk.test", ip(55)),
    );
    let sink = SmtpSink::start(ip(55), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "reuse", Duration::from_secs(30)).await;
    let msgs = (0..200)
        .map(|_| tern_queue::NewMessage::new(envelope("s@a.test", &["r@bulk.test"]), BODY.to_vec()))
        .collect();
    for r in q.enqueue_batch(msgs).await {
        r.unwrap();
    }
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    wait_for("200 messages", WAIT, || sink.message_count() >= 200).await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
    // Sessions are counted as they end; the worker closed its idle ones on stop.
    wait_for("sessions to end", WAIT, || sink.counters().sessions >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = sink.counters();
    assert_eq!(c.messages, 200, "{c:?}");
    assert!(c.sessions <= 10, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_required_refuses_a_plaintext_only_peer() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("plain.test", "mx.plain.test", 10)
            .host("mx.plain.test", ip(57)),
    );
    let sink = SmtpSink::start(ip(57), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "tlsreq", Duration::from_secs(30)).await;
    let mut cfg = config(&dns, port);
    cfg.tls = tern_config::sections::TlsMode::Required;
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@plain.test"]).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ev = events(&q).await;
        if let Some(e) = ev.iter().find(|e| e.kind == EventKind::Deferred) {
            assert!(e.reply.as_deref().unwrap_or("").contains("4.7.5"), "{e:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no deferral: {ev:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink.message_count(), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_data_leaves_the_job_to_another_after_the_lease() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("slowdata.test", "mx.slowdata.test", 10)
            .host("mx.slowdata.test", ip(60)),
    );
    // The sink waits 3 s before answering DATA: the first worker is killed in that window.
    let sink = SmtpSink::builder(ip(60), port).delay_data(3).start().unwrap();
    let redis = RedisServer::start().unwrap();
    let lease = Duration::from_secs(2);
    let q = queue(&redis, "kill", lease).await;
    let reaper = tern_queue::reaper::spawn_reaper(q.clone(), Duration::from_millis(200), Shutdown::new());
    let cfg = config(&dns, port);
    let mut first = start_worker(&cfg, q.clone(), "w1", lease);
    send(&q, "s@a.test", &["r@slowdata.test"]).await;
    // Wait until the first worker owns the job, then kill it mid-DATA.
    wait_in_flight(&q).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    first.handle.take().unwrap().abort();
    assert_eq!(sink.message_count(), 0);
    let second = start_worker(&cfg, q.clone(), "w2", lease);
    wait_for("the second worker to deliver", WAIT, || sink.message_count() >= 1).await;
    wait_queue_empty(&q, WAIT).await;
    let ev = events(&q).await;
    assert!(ev.iter().any(|e| e.kind == EventKind::LeaseExpired), "{ev:?}");
    second.stop().await;
    reaper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_is_recorded_once_redis_returns_and_the_message_goes_once() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("outage.test", "mx.outage.test", 10)
            .host("mx.outage.test", ip(61)),
    );
    // The sink answers DATA after 3 s; Redis is down from 1 s into that wait until after the answer, so
    // the first attempts to record the delivery fail.
    let sink = SmtpSink::builder(ip(61), port).delay_data(3).start().unwrap();
    let mut redis = RedisServer::start_durable().unwrap();
    let lease = Duration::from_secs(6);
    let q = queue(&redis, "outage", lease).await;
    let reaper = tern_queue::reaper::spawn_reaper(q.clone(), Duration::from_millis(200), Shutdown::new());
    let w = start_worker(&config(&dns, port), q.clone(), "w1", lease);
    send(&q, "s@a.test", &["r@outage.test"]).await;
    wait_in_flight(&q).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.stop().unwrap();
    wait_for("the sink to take the message", WAIT, || sink.message_count() >= 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart().unwrap();
    wait_queue_empty(&q, WAIT).await;
    // Past the lease: a delivery whose outcome was lost would come back now and go again.
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    assert_eq!(sink.message_count(), 1, "delivered more than once");
    let ev = events(&q).await;
    assert!(ev.iter().any(|e| e.kind == EventKind::Delivered), "{ev:?}");
    assert!(!ev.iter().any(|e| e.kind == EventKind::LeaseExpired), "{ev:?}");
    w.stop().await;
    reaper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_idle_connection_is_replaced_by_one_to_the_preferred_mx() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("stale.test", "mx1.stale.test", 10)
            .mx("stale.test", "mx2.stale.test", 20)
            .host("mx1.stale.test", ip(62))
            .host("mx2.stale.test", ip(63)),
    );
    let first = SmtpSink::start(ip(62), port).unwrap();
    let backup = SmtpSink::start(ip(63), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "stale", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r1@stale.test"]).await;
    wait_for("the first message", WAIT, || first.message_count() >= 1).await;
    wait_queue_empty(&q, WAIT).await;
    // The preferred MX restarts: the worker's idle connection to it is dead, the MX itself is fine.
    drop(first);
    let again = SmtpSink::start(ip(62), port).unwrap();
    send(&q, "s@a.test", &["r2@stale.test"]).await;
    wait_for("the second message", WAIT, || {
        again.message_count() + backup.message_count() >= 1
    })
    .await;
    assert_eq!(again.message_count(), 1, "not sent to the preferred MX");
    assert_eq!(backup.message_count(), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_address_of_an_mx_is_tried() {
    let port = free_port().unwrap();
    // mx.multi.test has two addresses; nothing listens on the first.
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("multi.test", "mx.multi.test", 10)
            .host("mx.multi.test", ip(84))
            .host("mx.multi.test", ip(85)),
    );
    let sink = SmtpSink::start(ip(85), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "multi", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@multi.test"]).await;
    wait_for("delivery at the second address", WAIT, || {
        sink.message_count() >= 1
    })
    .await;
    let ev = events(&q).await;
    let d = ev
        .iter()
        .find(|e| e.kind == EventKind::Delivered)
        .expect("delivered");
    assert_eq!(d.remote_ip.as_deref(), Some("127.0.0.85"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_domain_defers_its_whole_batch_with_one_connection_attempt() {
    let port = free_port().unwrap();
    let dns = dns_with_sender(
        Dnsmasq::builder()
            .mx("down.test", "mx.down.test", 10)
            .host("mx.down.test", ip(86)),
    );
    // A host that accepts TCP and hangs up at once: every connection is counted.
    let listener = std::net::TcpListener::bind((ip(86), port)).unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "down", Duration::from_secs(30)).await;
    for _ in 0..5 {
        send(&q, "s@a.test", &["r@down.test"]).await;
    }
    let mut cfg = config(&dns, port);
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let n = events(&q)
            .await
            .iter()
            .filter(|e| e.kind == EventKind::Deferred)
            .count();
        if n == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} deferrals");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    let ev = events(&q).await;
    assert!(
        ev.iter().filter(|e| e.kind == EventKind::Deferred).all(|e| e
            .reply
            .as_deref()
            .unwrap_or("")
            .starts_with("451 4.4.")),
        "{ev:?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dns_failure_defers_with_4_4_3() {
    let port = free_port().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "dnsfail", Duration::from_secs(30)).await;
    // A DNS server address where nothing listens.
    let dead_dns = tern_testkit::free_udp_tcp_port().unwrap();
    let dns = Dnsmasq::builder().start().unwrap();
    let mut cfg = config(&dns, port);
    cfg.dns_servers = vec![std::net::SocketAddr::from((ip(1), dead_dns))];
    cfg.retry_schedule = vec![HumanDuration(Duration::from_secs(3600))];
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["r@any.test"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = events(&q).await;
        if let Some(e) = ev.iter().find(|e| e.kind == EventKind::Deferred) {
            assert!(e.reply.as_deref().unwrap_or("").starts_with("451 4.4.3"), "{e:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no deferral: {ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop().await;
}
