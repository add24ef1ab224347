//! SMTP submission hardening (issue #14), over raw sockets against a real server and a real redis-server:
//! DSN-sized MAIL and RCPT lines, slow clients cut off, an empty message refused, and a queue write that
//! stalls or fails answered honestly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod redis_stall;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Harness, queued_id};
use redis_stall::Stall;
use tern_config::IngestConfig;
use tern_ingest::{Shutdown, SmtpServer};
use tern_queue::{Queue, RedisQueue, RedisQueueOptions};
use tern_smtp::Reply;

fn ehlo<S: std::io::Read + std::io::Write>(c: &mut Client<S>) {
    c.expect("EHLO client.test", 250);
}

fn code(r: &Reply) -> (u16, String) {
    (r.code, r.enhanced.map(|e| e.to_string()).unwrap_or_default())
}

/// Every job in the queue, claimed.
fn claim_all(h: &Harness) -> Vec<tern_queue::ClaimedJob> {
    let mut jobs = Vec::new();
    while let Some(claim) =
        h.rt.block_on(h.queue.claim("test", 1000, Duration::from_secs(60)))
            .unwrap()
    {
        jobs.extend(claim.jobs);
    }
    jobs
}

#[test]
fn mail_and_rcpt_lines_with_dsn_parameters_beyond_512_octets_are_accepted() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    let caps = c.expect("EHLO client.test", 250);
    assert!(caps.lines.iter().any(|l| l == "DSN"), "{caps}");
    // MAIL with RET, a 100-character ENVID and a long AUTH= (RFC 4954): 700 octets.
    let head = format!(
        "MAIL FROM:<sender@example.test> RET=HDRS ENVID={} AUTH=",
        "e".repeat(100)
    );
    let mail = format!("{head}{}", "a".repeat(698 - head.len()));
    assert_eq!(mail.len() + 2, 700);
    c.expect(&mail, 250);
    // RCPT with NOTIFY and a 500-character ORCPT (RFC 3461 4.2's most) to a long address: over 512.
    let address = format!("{}@{}.test", "l".repeat(64), "d".repeat(60));
    let orcpt = format!("rfc822;{}", "o".repeat(493));
    let rcpt = format!("RCPT TO:<{address}> NOTIFY=SUCCESS,FAILURE ORCPT={orcpt}");
    assert!(rcpt.len() + 2 > 600, "{}", rcpt.len());
    c.expect(&rcpt, 250);
    // 1013 octets is over even the DSN allowance.
    let pad = "RCPT TO:<x@dest.test> X-PAD=";
    let over = format!("{pad}{}", "p".repeat(1011 - pad.len()));
    let r = c.cmd(&over);
    assert_eq!(code(&r), (500, "5.5.2".into()), "{r}");
    c.expect("DATA", 354);
    c.send(b"Subject: dsn\r\n\r\nhi\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 250, "{r}");
    let jobs = claim_all(&h);
    assert_eq!(jobs.len(), 1);
    let stored = &jobs[0].job.envelope;
    assert_eq!(stored.envid.as_deref(), Some("e".repeat(100).as_str()));
    assert_eq!(stored.recipients[0].address.to_string(), address);
    let kept = stored.recipients[0].orcpt.as_ref().expect("ORCPT kept");
    assert_eq!(kept.to_param_value(), orcpt);
}

/// Sends `bytes` one at a time, `gap` apart, until a reply arrives or `limit` passes; the reply (if any) and
/// when it came, counted from the first byte.
fn trickle(
    stream: &mut TcpStream,
    bytes: &[u8],
    gap: Duration,
    limit: Duration,
) -> Option<(String, Duration)> {
    stream.set_read_timeout(Some(gap)).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    for b in bytes.iter().cycle() {
        if start.elapsed() > limit {
            return None;
        }
        if stream.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match std::io::Read::read(stream, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    (!got.is_empty()).then(|| (String::from_utf8_lossy(&got).into_owned(), start.elapsed()))
}

#[test]
fn a_command_line_sent_a_byte_at_a_time_must_be_complete_within_the_idle_timeout() {
    let h = Harness::start(false, &[], |c| c.idle_timeout = "2s".parse().unwrap());
    let mut c = h.client();
    ehlo(&mut c);
    // One byte every 300 ms is never idle for 2 s; the line never ends.
    let (reply, after) = trickle(
        &mut c.stream,
        b"NOOP xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        Duration::from_millis(300),
        Duration::from_secs(8),
    )
    .expect("the server cut the line off");
    assert!(reply.starts_with("421 4.4.2 "), "{reply}");
    assert!(reply.contains("not completed in time"), "{reply}");
    assert!(
        after >= Duration::from_millis(1800) && after < Duration::from_secs(4),
        "{after:?}"
    );
    assert!(c.try_read_reply().is_none(), "the connection is closed");
}

#[test]
fn a_data_transfer_trickling_below_the_floor_rate_is_cut_off() {
    let h = Harness::start(false, &[], |c| c.idle_timeout = "2s".parse().unwrap());
    let mut c = h.client();
    ehlo(&mut c);
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.expect("DATA", 354);
    let (reply, after) = trickle(
        &mut c.stream,
        b"Subject: slow\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
        Duration::from_millis(300),
        Duration::from_secs(8),
    )
    .expect("the server cut the transfer off");
    assert!(reply.starts_with("421 4.4.2 "), "{reply}");
    assert!(reply.contains("too slow"), "{reply}");
    assert!(
        after >= Duration::from_millis(1800) && after < Duration::from_secs(4),
        "{after:?}"
    );
    assert_eq!(h.counts().total, 0);
}

#[test]
fn a_bdat_chunk_trickling_below_the_floor_rate_is_cut_off() {
    let h = Harness::start(false, &[], |c| c.idle_timeout = "2s".parse().unwrap());
    let mut c = h.client();
    ehlo(&mut c);
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.send(b"BDAT 1000 LAST\r\n");
    let (reply, after) = trickle(
        &mut c.stream,
        b"x",
        Duration::from_millis(300),
        Duration::from_secs(8),
    )
    .expect("the server cut the chunk off");
    assert!(reply.starts_with("421 4.4.2 "), "{reply}");
    assert!(reply.contains("too slow"), "{reply}");
    assert!(
        after >= Duration::from_millis(1800) && after < Duration::from_secs(4),
        "{after:?}"
    );
    assert_eq!(h.counts().total, 0);
}

#[test]
fn a_client_at_a_normal_pace_is_not_cut_off() {
    let h = Harness::start(false, &[], |c| c.idle_timeout = "2s".parse().unwrap());
    let mut c = h.client();
    ehlo(&mut c);
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.expect("DATA", 354);
    // 3 s of transfer, never idle for long, at far over the floor rate: 64 KiB every 500 ms.
    let mut line = vec![b'y'; 900];
    line.extend_from_slice(b"\r\n");
    c.send(b"Subject: steady\r\n\r\n");
    for _ in 0..6 {
        for _ in 0..70 {
            c.send(&line);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    c.send(b".\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 250, "{r}");
}

#[test]
fn an_empty_message_is_refused_by_bdat_0_last_and_by_data() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    ehlo(&mut c);
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    let r = c.cmd("BDAT 0 LAST");
    assert_eq!(code(&r), (554, "5.6.0".into()), "{r}");
    assert!(r.text().contains("empty message"), "{r}");
    // The transaction is over: the next one starts with MAIL.
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.expect("DATA", 354);
    c.send(b"\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!(code(&r), (554, "5.6.0".into()), "{r}");
    assert_eq!(h.counts().total, 0, "nothing was queued");
    c.expect("NOOP", 250);
    // A message with content still goes through.
    let r = c.send_message("a@example.test", &["r@dest.test"], b"Subject: x\r\n\r\nhi\r\n");
    assert_eq!(r.code, 250, "{r}");
}

/// A server in front of a queue at `url` (which need not be reachable) with one pooled connection: once
/// made, every write goes over it, so a write sent while Redis is stopped reaches it and is applied when it
/// resumes.
struct Server {
    rt: tokio::runtime::Runtime,
    queue: Arc<dyn Queue>,
    addr: std::net::SocketAddr,
    shutdown: Shutdown,
}

impl Server {
    fn start(url: &str) -> Server {
        Server::start_with(url, IngestConfig::default())
    }

    /// [`Server::start`] with the other keys of `base`.
    fn start_with(url: &str, base: IngestConfig) -> Server {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let queue: Arc<dyn Queue> = Arc::new(
            RedisQueue::new(RedisQueueOptions {
                url: url.into(),
                key_prefix: "smtp-hardening".into(),
                connect_timeout: Duration::from_millis(500),
                response_timeout: Duration::from_secs(2),
                pool_size: 1,
                ..Default::default()
            })
            .unwrap(),
        );
        let cfg = IngestConfig {
            smtp_listen: vec!["127.0.0.1:0".parse().unwrap()],
            relay_networks: vec!["127.0.0.1/32".parse().unwrap()],
            hostname: Some("mx.tern.test".into()),
            ..base
        };
        let bound = rt
            .block_on(SmtpServer::new(&cfg, queue.clone()).unwrap().bind())
            .unwrap();
        let addr = bound.smtp_addrs()[0];
        let shutdown = Shutdown::new();
        rt.spawn(bound.run(shutdown.clone()));
        Server {
            rt,
            queue,
            addr,
            shutdown,
        }
    }

    /// Submits one message on a fresh connection; the reply to its end.
    fn submit(&self, subject: &str) -> Reply {
        let mut c = Client::connect(self.addr);
        c.stream.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        ehlo(&mut c);
        c.send_message(
            "a@example.test",
            &["r@dest.test"],
            format!("Subject: {subject}\r\n\r\nhi\r\n").as_bytes(),
        )
    }

    /// Every job in the queue, claimed.
    fn claim_all(&self) -> Vec<tern_queue::ClaimedJob> {
        let mut jobs = Vec::new();
        while let Some(claim) = self
            .rt
            .block_on(self.queue.claim("test", 1000, Duration::from_secs(60)))
            .unwrap()
        {
            jobs.extend(claim.jobs);
        }
        jobs
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[test]
fn a_redis_stall_shorter_than_the_retry_window_ends_with_one_250_and_one_message() {
    let redis = tern_testkit::RedisServer::start().unwrap();
    let server = Server::start(&redis.url());
    let warm = server.submit("warm-up");
    assert_eq!(warm.code, 250, "{warm}");
    let mut stall = Stall::start(&redis);
    let started = Instant::now();
    let reply = std::thread::scope(|s| {
        let client = s.spawn(|| server.submit("stalled"));
        // Well past the queue's reply timeout (2 s): the first write has timed out by now.
        std::thread::sleep(Duration::from_secs(5));
        stall.resume();
        client.join().unwrap()
    });
    assert_eq!(reply.code, 250, "{reply}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    let id = queued_id(&reply.text()).unwrap();
    let jobs = server.claim_all();
    assert_eq!(jobs.len(), 2, "the warm-up message, and this one queued once");
    assert_eq!(
        jobs.iter().filter(|j| j.job.id.message.to_string() == id).count(),
        1
    );
}

#[test]
fn enqueue_retry_for_zero_answers_a_stalled_write_at_once_that_it_may_have_been_queued() {
    let redis = tern_testkit::RedisServer::start().unwrap();
    let no_repeat = IngestConfig {
        enqueue_retry_for: "0s".parse().unwrap(),
        ..IngestConfig::default()
    };
    let server = Server::start_with(&redis.url(), no_repeat);
    let warm = server.submit("warm-up");
    assert_eq!(warm.code, 250, "{warm}");
    let _stall = Stall::start(&redis);
    let started = Instant::now();
    let reply = server.submit("not repeated");
    assert_eq!(code(&reply), (451, "4.3.0".into()), "{reply}");
    assert!(reply.text().contains("may have been queued"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "one attempt (a 2 s reply timeout), not the default 60 s of repeats: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_stall_cut_short_by_shutdown_answers_that_the_message_may_have_been_queued() {
    let redis = tern_testkit::RedisServer::start().unwrap();
    let server = Server::start(&redis.url());
    let warm = server.submit("warm-up");
    assert_eq!(warm.code, 250, "{warm}");
    let _stall = Stall::start(&redis);
    let reply = std::thread::scope(|s| {
        let client = s.spawn(|| server.submit("maybe"));
        std::thread::sleep(Duration::from_secs(1));
        server.shutdown.cancel();
        client.join().unwrap()
    });
    assert_eq!(code(&reply), (451, "4.3.0".into()), "{reply}");
    assert!(reply.text().contains("may have been queued"), "{reply}");
}

/// A single Redis that refuses connections: the queue's pool makes none, so nothing was sent (the queue says
/// so: `QueueError::NotSent`), and the answer says nothing was queued, without repeats. (In cluster mode a
/// refused connection proves nothing: see grpc_hardening.rs.)
#[test]
fn a_single_redis_that_refuses_connections_answers_that_nothing_was_queued_at_once() {
    let nobody = tern_testkit::free_port().unwrap();
    let server = Server::start(&format!("redis://127.0.0.1:{nobody}"));
    let mut c = Client::connect(server.addr);
    ehlo(&mut c);
    let started = Instant::now();
    let r = c.send_message("a@example.test", &["r@dest.test"], b"Subject: x\r\n\r\nhi\r\n");
    assert_eq!(code(&r), (451, "4.3.0".into()), "{r}");
    assert!(r.text().contains("nothing was queued"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    c.expect("NOOP", 250);
}
