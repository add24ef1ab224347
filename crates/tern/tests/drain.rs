//! Graceful drain on SIGTERM, with real processes: a worker under load finishes its transactions, gives the
//! rest back and exits within its grace time, losing nothing; ingest finishes the message in flight, answers
//! the idle sessions and new connections 421 and says `draining` on `/readyz`, and lets a gRPC Send in
//! flight finish while new calls get `UNAVAILABLE`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::http::{get, signal};
use common::nodes::{Ports, Sections, config, spawn, wait_ready};
use common::smtp_reply;
use tern_core::{Envelope, Recipient, ReversePath};
use tern_queue::{NewMessage, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, free_port};

const MESSAGES: usize = 400;
const DOMAINS: usize = 4;
const GRACE: Duration = Duration::from_secs(10);

fn message(i: usize) -> NewMessage {
    let env = Envelope::new(
        ReversePath::Mailbox("app@sender.test".parse().unwrap()),
        vec![Recipient::new(
            format!("user{i}@drain{}.test", i % DOMAINS).parse().unwrap(),
        )],
    );
    NewMessage::new(
        env,
        format!("Subject: drain {i}\r\n\r\nmessage {i}\r\n").into_bytes(),
    )
}

/// A worker delivering to a slow receiver (1 s before each DATA reply; claims of 5 jobs, up to 40
/// connections at once) gets
/// SIGTERM with hundreds of jobs left: it exits 0 within `delivery.shutdown_grace`, no job stays in flight,
/// and a second worker delivers the rest: every message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_worker_under_load_loses_no_message_and_exits_within_its_grace() {
    let mx_port = free_port().unwrap();
    let ip = Ipv4Addr::new(127, 0, 0, 141);
    let mut dns = Dnsmasq::builder().host("mx.drain.test", ip);
    for d in 0..DOMAINS {
        dns = dns.mx(&format!("drain{d}.test"), "mx.drain.test", 10);
    }
    let dns = dns.start().unwrap();
    let sink = SmtpSink::builder(ip, mx_port).delay_data(1).start().unwrap();
    let redis = RedisServer::start().unwrap();
    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    for r in queue.enqueue_batch((0..MESSAGES).map(message).collect()).await {
        r.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let extra = Sections {
        delivery: format!(
            "max_connections = 40\nconnections_per_domain = 10\nmessages_per_connection = 5\nshutdown_grace = \"{}s\"",
            GRACE.as_secs()
        ),
        ..Sections::default()
    };
    let ports = Ports::free();
    let text = config(&redis.url(), dns.addr(), mx_port, &ports, &extra);
    let mut worker = spawn("worker", "worker-1", dir.path(), &text, &ports, &[]);
    sink.wait_for_messages(40, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", worker.logs()));

    let started = Instant::now();
    let status = worker.terminate(GRACE + Duration::from_secs(10)).unwrap();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}\n{}", worker.logs());
    assert!(
        took <= GRACE + Duration::from_secs(2),
        "took {took:?}\n{}",
        worker.logs()
    );
    let delivered_before = sink.message_count();
    assert!(
        delivered_before < MESSAGES as u64,
        "the worker was still under load when it stopped: {delivered_before} delivered"
    );
    let counts = queue.counts().await.unwrap();
    assert_eq!(
        counts.in_flight, 0,
        "every claim was finished or given back: {counts:?}"
    );
    assert_eq!(
        counts.total + delivered_before,
        MESSAGES as u64,
        "{counts:?}, {delivered_before} delivered"
    );

    let ports2 = Ports::free();
    let text = config(&redis.url(), dns.addr(), mx_port, &ports2, &extra);
    let worker2 = spawn("worker", "worker-2", dir.path(), &text, &ports2, &[]);
    sink.wait_for_messages(MESSAGES as u64, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", worker2.logs()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.message_count(), MESSAGES as u64, "no message twice");
    assert_eq!(queue.counts().await.unwrap().total, 0);
}

/// An ingest node gets SIGTERM with one session in the middle of DATA and one idle: the idle one gets
/// `421 4.3.2` at once, so does a connection opened during the drain (the listener stays open until the
/// session in flight is done), `/readyz` says `draining` (503), the message in flight is finished and queued
/// (250), and the process exits 0 within `ingest.shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_ingest_finishes_the_message_in_flight_and_answers_idle_sessions_421() {
    let redis = RedisServer::start().unwrap();
    let dns = Dnsmasq::builder().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let extra = Sections {
        ingest: "shutdown_grace = \"10s\"".into(),
        ..Sections::default()
    };
    let text = config(&redis.url(), dns.addr(), 25, &ports, &extra);
    let mut ingest = spawn("ingest", "ingest", dir.path(), &text, &ports, &[]);
    wait_ready(&ports, 200, Duration::from_secs(20), || ingest.logs());

    let open = |helo: &str| {
        let stream = TcpStream::connect(ports.smtp_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert!(smtp_reply(&mut reader).starts_with("220"));
        let mut writer = stream;
        writer.write_all(format!("EHLO {helo}\r\n").as_bytes()).unwrap();
        assert!(smtp_reply(&mut reader).starts_with("250"));
        (writer, reader)
    };
    let (mut busy, mut busy_reader) = open("busy.test");
    for (line, code) in [
        ("MAIL FROM:<app@sender.test>", "250"),
        ("RCPT TO:<user@example.test>", "250"),
        ("DATA", "354"),
    ] {
        busy.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let reply = smtp_reply(&mut busy_reader);
        assert!(reply.starts_with(code), "{line}: {reply}");
    }
    busy.write_all(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .unwrap();
    let (_idle, mut idle_reader) = open("idle.test");

    let started = Instant::now();
    signal(ingest.pid(), "-TERM");
    let reply = smtp_reply(&mut idle_reader);
    assert!(reply.starts_with("421 4.3.2"), "idle session: {reply}");
    let (status, reason) = get(ports.metrics_addr(), "/readyz");
    assert_eq!((status, reason.trim()), (503, "draining"));
    // A connection opened during the drain is answered at once, and closed.
    let late = TcpStream::connect(ports.smtp_addr()).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut late_reader = BufReader::new(late);
    let reply = smtp_reply(&mut late_reader);
    assert_eq!(
        reply,
        "421 4.3.2 tern.test Service shutting down, try again later\r\n",
        "a connection opened during the drain\n{}",
        ingest.logs()
    );
    assert_eq!(smtp_reply(&mut late_reader), "", "closed after the 421");

    busy.write_all(b"second half\r\n.\r\n").unwrap();
    let reply = smtp_reply(&mut busy_reader);
    assert!(
        reply.starts_with("250 2.0.0 Ok: queued as"),
        "message in flight: {reply}"
    );
    let status = ingest.wait_timeout(Duration::from_secs(15)).unwrap();
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running after {took:?}\n{}", ingest.logs()));
    assert!(status.success(), "{status:?}\n{}", ingest.logs());
    assert!(took < Duration::from_secs(10), "took {took:?}");

    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        queue.counts().await.unwrap().total,
        1,
        "the message in flight was queued"
    );
}

/// Resumes a SIGSTOPped process when dropped, so that a failing test does not leave Redis stopped (its
/// guard could not stop it then).
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// An ingest node gets SIGTERM with a gRPC Send in flight (its queue write waits on a Redis stopped with
/// SIGSTOP): the gRPC listener closes at once, so a new Send gets `UNAVAILABLE`; the call in flight
/// completes OK once Redis resumes, its message is queued, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_ingest_lets_a_grpc_send_in_flight_finish_and_new_sends_get_unavailable() {
    use common::http::redis_pid;
    use common::nodes::raw_request;
    use tern_proto::v1::submission_client::SubmissionClient;

    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    // An ingest node resolves nothing: the delivery section's DNS server is never asked.
    let unused_dns = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let text = config(&redis.url(), unused_dns, 25, &ports, &Sections::default());
    let mut ingest = spawn("ingest", "ingest", dir.path(), &text, &ports, &[]);
    wait_ready(&ports, 200, Duration::from_secs(20), || ingest.logs());

    let mut client = SubmissionClient::connect(ports.grpc_url()).await.unwrap();
    // Every pooled Redis connection (16, taken in turn) is made before the stall: one made while Redis is
    // stopped would fail the write at once instead of letting it wait for Redis.
    const WARM: usize = 32;
    for i in 0..WARM {
        client
            .send(raw_request(
                "app@sender.test",
                "user@example.test",
                &format!("warm {i}"),
            ))
            .await
            .unwrap_or_else(|e| panic!("warm-up Send {i}: {e:?}\n{}", ingest.logs()));
    }

    let pid = redis_pid(&redis);
    signal(pid, "-STOP");
    let resume = Resume(pid);
    let stalled_at = Instant::now();
    let in_flight = tokio::spawn(async move {
        client
            .send(raw_request("app@sender.test", "user@example.test", "in flight"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!in_flight.is_finished(), "the Send waits for the stopped Redis");

    signal(ingest.pid(), "-TERM");
    // The gRPC listener closes as the drain starts (a plain TCP connect tells, without starting a call that
    // would wait on the stopped Redis too).
    let grpc_addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, ports.grpc));
    let closing = Instant::now();
    while TcpStream::connect(grpc_addr).is_ok() {
        assert!(
            closing.elapsed() < Duration::from_secs(2),
            "the gRPC listener closes at SIGTERM\n{}",
            ingest.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = tonic::transport::Channel::from_shared(ports.grpc_url())
        .unwrap()
        .connect_lazy();
    let refused = SubmissionClient::new(channel)
        .send(raw_request("app@sender.test", "user@example.test", "too late"))
        .await
        .expect_err("a Send after SIGTERM");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(!refused.message().is_empty(), "{refused:?}");

    // Well within the queue's reply timeout (5 s), so the write in progress is not given up.
    assert!(
        stalled_at.elapsed() < Duration::from_secs(4),
        "{:?}",
        stalled_at.elapsed()
    );
    drop(resume);
    let reply = in_flight
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the Send in flight: {e:?}\n{}", ingest.logs()))
        .into_inner();
    assert!(!reply.duplicate);

    let status = ingest.wait_timeout(Duration::from_secs(30)).unwrap();
    let status = status.unwrap_or_else(|| panic!("still running\n{}", ingest.logs()));
    assert!(status.success(), "{status:?}\n{}", ingest.logs());

    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let id = reply.message_id.parse().unwrap();
    assert!(
        queue.get_message(id).await.unwrap().is_some(),
        "the message of the call in flight was queued"
    );
    assert_eq!(
        queue.counts().await.unwrap().total,
        WARM as u64 + 1,
        "the warm-up messages and the one in flight; nothing of the refused call"
    );
}
