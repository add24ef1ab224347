#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Delivery against more real peers on loopback: tied MX records, DSNs read back with Python's `email`
//! package, and the per-domain connection limit across three workers. (Delivery to tern's own ingest over
//! verified STARTTLS is an end-to-end test of the binary: `crates/tern/tests/starttls_between_nodes.rs`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tern_queue::{EventKind, NewMessage, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::{CountingProxy, Dnsmasq, RedisServer, SmtpSink, free_port};

/// Two MX hosts at the same preference: with one message per connection, every connection picks among them
/// afresh, and each gets a fair share of 200 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tied_mx_records_get_a_roughly_even_share() {
    const N: u64 = 200;
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("tied.test", "mx1.tied.test", 10)
        .mx("tied.test", "mx2.tied.test", 10)
        .host("mx1.tied.test", ip(111))
        .host("mx2.tied.test", ip(112))
        .start()
        .unwrap();
    let sink1 = SmtpSink::start(ip(111), port).unwrap();
    let sink2 = SmtpSink::start(ip(112), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "tied", Duration::from_secs(30)).await;
    let msgs = (0..N)
        .map(|_| NewMessage::new(envelope("s@a.test", &["r@tied.test"]), BODY.to_vec()))
        .collect();
    for r in q.enqueue_batch(msgs).await {
        r.unwrap();
    }
    let mut cfg = config(&dns, port);
    cfg.messages_per_connection = 1;
    let w = start_worker(&cfg, q.clone(), "w1", Duration::from_secs(30));
    wait_for("200 messages over both sinks", WAIT, || {
        sink1.message_count() + sink2.message_count() >= N
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
    let (a, b) = (sink1.message_count(), sink2.message_count());
    assert_eq!(a + b, N, "mx1 {a}, mx2 {b}");
    // Binomial(200, 0.5): below 50 on either side is ~7 standard deviations away.
    assert!(a >= N / 4 && b >= N / 4, "uneven share: mx1 {a}, mx2 {b}");
    // The queue's events tell the same story.
    let ev = events(&q).await;
    let by_mx = |mx: &str| {
        ev.iter()
            .filter(|e| e.kind == EventKind::Delivered && e.remote_mx.as_deref() == Some(mx))
            .count() as u64
    };
    assert_eq!(
        (by_mx("mx1.tied.test"), by_mx("mx2.tied.test")),
        (a, b),
        "delivered events per MX disagree with the sinks"
    );
}

/// Parses a dumped DSN with Python's `email` package (after the sink's `X-...` lines) and returns what it
/// found, as JSON.
const PARSE_DSN: &str = r#"
import email, io, json, sys
raw = open(sys.argv[1], 'rb').read()
lines = raw.split(b'\n')
sink = (b'X-Client-Addr:', b'X-Client-Proto:', b'X-Helo-Args:', b'X-Mail-Args:', b'X-Rcpt-Args:')
i = 0
while i < len(lines) and lines[i].startswith(sink):
    i += 1
msg = email.message_from_binary_file(io.BytesIO(b'\n'.join(lines[i:])))
parts = msg.get_payload() if msg.is_multipart() else []
out = {
    'stripped': i,
    'content_type': msg.get_content_type(),
    'report_type': msg.get_param('report-type'),
    'from': msg['From'],
    'to': msg['To'],
    'defects': [str(d) for d in msg.defects],
    'parts': [p.get_content_type() for p in parts],
}
status = [p for p in parts if p.get_content_type() == 'message/delivery-status']
if status:
    blocks = status[0].get_payload()
    out['per_message'] = {k: str(v) for k, v in blocks[0].items()}
    out['per_recipient'] = [{k: ' '.join(str(v).split()) for k, v in b.items()} for b in blocks[1:]]
returned = [p for p in parts if p.get_content_type() == 'message/rfc822']
if returned:
    inner = returned[0].get_payload()[0]
    out['returned'] = {'subject': inner['Subject'], 'to': inner['To'], 'from': inner['From']}
print(json.dumps(out))
"#;

/// One of two recipients is refused with 550 5.1.1: the DSN that reaches the sender's MX is a well-formed
/// RFC 3464 report according to Python's `email` package, about that recipient only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_5xx_dsn_parses_with_python_email() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(120))
        .mx("good.test", "mx.good.test", 10)
        .host("mx.good.test", ip(121))
        .mx("bad.test", "mx.bad.test", 10)
        .host("mx.bad.test", ip(122))
        .start()
        .unwrap();
    let good = SmtpSink::start(ip(121), port).unwrap();
    let _bad = SmtpSink::builder(ip(122), port)
        .hard_reject("RCPT")
        .hard_reply("550 5.1.1 User unknown")
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(120), port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "dsn", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    send(&q, "s@a.test", &["ok@good.test", "nobody@bad.test"]).await;
    wait_for("the good recipient's copy", WAIT, || good.message_count() >= 1).await;
    wait_for("the DSN at the sender's MX", WAIT, || {
        sender_mx.message_count() >= 1
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
    let files = sender_mx.dumped_messages().unwrap();
    assert_eq!(files.len(), 1, "exactly one DSN: {files:?}");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(PARSE_DSN)
        .arg(&files[0])
        .output()
        .expect("python3");
    let raw = std::fs::read_to_string(&files[0]).unwrap_or_default();
    assert!(
        out.status.success(),
        "python failed: {}\n{raw}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ctx = format!("{j:#}\n--- dump ---\n{raw}");
    // X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args and one X-Rcpt-Args came off.
    assert_eq!(j["stripped"], 5, "{ctx}");
    assert_eq!(j["content_type"], "multipart/report", "{ctx}");
    assert_eq!(j["report_type"], "delivery-status", "{ctx}");
    assert_eq!(j["defects"], serde_json::json!([]), "{ctx}");
    assert_eq!(
        j["parts"],
        serde_json::json!(["text/plain", "message/delivery-status", "message/rfc822"]),
        "{ctx}"
    );
    assert!(j["to"].as_str().unwrap_or("").contains("s@a.test"), "{ctx}");
    assert_eq!(j["per_message"]["Reporting-MTA"], "dns; tern.a.test", "{ctx}");
    let rcpts = j["per_recipient"].as_array().expect("per-recipient blocks");
    assert_eq!(rcpts.len(), 1, "only the refused recipient: {ctx}");
    let r = &rcpts[0];
    assert_eq!(r["Action"], "failed", "{ctx}");
    assert_eq!(r["Status"], "5.1.1", "{ctx}");
    assert_eq!(r["Final-Recipient"], "rfc822; nobody@bad.test", "{ctx}");
    assert_eq!(r["Diagnostic-Code"], "smtp; 550 5.1.1 User unknown", "{ctx}");
    assert_eq!(r["Remote-MTA"], "dns; mx.bad.test", "{ctx}");
    assert_eq!(j["returned"]["subject"], "test", "{ctx}");
    assert_eq!(j["returned"]["to"], "r@b.test", "{ctx}");
}

/// What [`three_workers_one_domain`] saw at the proxy.
struct LimitRun {
    delivered: u64,
    max: usize,
    total: usize,
    spans: String,
}

impl LimitRun {
    /// Every one of `n` messages arrived, and never more than `limit` connections were open at once.
    fn assert_all_within(&self, n: u64, limit: usize) {
        assert_eq!(self.delivered, n, "{}", self.spans);
        assert!(
            self.max <= limit,
            "{} connections at once with a limit of {limit}: {}",
            self.max,
            self.spans
        );
    }
}

/// Three workers (three `Worker` instances in this process, each with its own owner name and its own
/// `RedisQueue` client on the same queue) deliver `n` messages to one domain whose `connections_per_domain`
/// is `limit`, through a counting proxy in front of the sink. Messages are enqueued all at once, or one
/// every `trickle` (so that claims are small and sessions go idle between them).
async fn three_workers_one_domain(
    prefix: &str,
    n: u64,
    limit: u32,
    messages_per_connection: u32,
    sink_data_delay: u32,
    trickle: Option<Duration>,
) -> LimitRun {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("limit.test", "mx.limit.test", 10)
        .host("mx.limit.test", ip(125))
        .start()
        .unwrap();
    let mut sink = SmtpSink::builder(ip(126), port);
    if sink_data_delay > 0 {
        sink = sink.delay_data(sink_data_delay);
    }
    let sink = sink.start().unwrap();
    // The proxy adds 30 ms to every server reply, like a real network: a QUIT then takes a while.
    let proxy = CountingProxy::start(sa(125, port), sa(126, port), Duration::from_millis(30)).unwrap();
    let redis = RedisServer::start().unwrap();
    let mut cfg = config(&dns, port);
    cfg.connections_per_domain = limit;
    cfg.messages_per_connection = messages_per_connection;
    let mut queues: Vec<Arc<dyn Queue>> = Vec::new();
    for _ in 0..3 {
        let opts = RedisQueueOptions {
            url: redis.url(),
            key_prefix: prefix.into(),
            lease: Duration::from_secs(30),
            default_domain_concurrency: cfg.connections_per_domain,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        queues.push(Arc::new(RedisQueue::connect(opts).await.unwrap()));
    }
    let message = || NewMessage::new(envelope("s@a.test", &["r@limit.test"]), BODY.to_vec());
    if trickle.is_none() {
        for r in queues[0].enqueue_batch((0..n).map(|_| message()).collect()).await {
            r.unwrap();
        }
    }
    let workers: Vec<RunningWorker> = queues
        .iter()
        .enumerate()
        .map(|(i, q)| start_worker(&cfg, q.clone(), &format!("w{i}"), Duration::from_secs(30)))
        .collect();
    if let Some(every) = trickle {
        for _ in 0..n {
            queues[0].enqueue(message()).await.unwrap();
            tokio::time::sleep(every).await;
        }
    }
    wait_for("every message at the sink", Duration::from_secs(45), || {
        sink.message_count() >= n
    })
    .await;
    wait_queue_empty(&queues[1], WAIT).await;
    for w in workers {
        w.stop().await;
    }
    LimitRun {
        delivered: sink.message_count(),
        max: proxy.max(),
        total: proxy.total(),
        spans: format!(
            "connections (open-close, s): {}; sink {:?}",
            proxy.spans(),
            sink.counters()
        ),
    }
}

/// Without reuse (one message per connection) and with a slow sink, so that sessions overlap: the proxy
/// never sees more than the limit of 2 connections at once, and every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_domain_limit_holds_across_three_workers() {
    const N: u64 = 40;
    let r = three_workers_one_domain("limit3", N, 2, 1, 1, None).await;
    r.assert_all_within(N, 2);
    // The limit was actually reached: sessions did overlap.
    assert_eq!(r.max, 2, "sessions never overlapped: {}", r.spans);
    assert_eq!(r.total as u64, N, "one connection per message: {}", r.spans);
}

/// With reuse, and messages trickling in so that claims are small and connections sit idle between
/// them: idle connections keep their slot (a queue hold), so three workers still never have more than
/// the limit of 2 connections open at once, busy or idle, and the idle ones are reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_count_against_the_per_domain_limit() {
    const N: u64 = 30;
    let r = three_workers_one_domain("limit3idle", N, 2, 100, 0, Some(Duration::from_millis(50))).await;
    r.assert_all_within(N, 2);
    assert!(
        r.total <= 4,
        "idle connections are reused, not reopened: {} connections for {N} messages: {}",
        r.total,
        r.spans
    );
}
