#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The worker's log lines as tern writes them (tern-telemetry's JSON layer), against a real Redis store,
//! dnsmasq and smtp-sinks: every lifecycle line of a message (delivered, deferred, bounced, DSN queued)
//! names the message, its sender, its recipients (or their count when many), its domain, the MX and the
//! reply; a deferral says when the next attempt is; no value is Rust debug text; the start line comes once.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tern_config::sections::LogFormat;
use tern_core::MessageId;
use tern_queue::{EventKind, NewMessage, Queue};
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, free_port};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// A writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

/// The process's log lines from here on (INFO and above, as JSON): the subscriber is global, because the
/// worker's tasks run on every thread of the runtime.
fn capture() -> Buffer {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Buffer::default();
            let subscriber =
                tracing_subscriber::registry()
                    .with(LevelFilter::INFO)
                    .with(tern_telemetry::logs::layer(
                        LogFormat::Json,
                        buffer.clone(),
                        false,
                    ));
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            buffer
        })
        .clone()
}

fn lines(buffer: &Buffer) -> Vec<Value> {
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The first line whose message is `message` about `id`, waiting up to [`WAIT`].
async fn wait_line(buffer: &Buffer, message: &str, id: MessageId) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = lines(buffer)
            .into_iter()
            .find(|l| l["message"] == message && l["message_id"] == id.to_string());
        if let Some(l) = found {
            return l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {message:?} line for {id}: {:#?}",
            lines(buffer)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line[name]
        .as_str()
        .unwrap_or_else(|| panic!("no text field {name} in {line}"))
}

/// `2026-11-28T13:26:49Z`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

async fn enqueue(q: &Arc<dyn Queue>, to: &[&str]) -> MessageId {
    q.enqueue(NewMessage::new(envelope("s@a.test", to), BODY.to_vec()))
        .await
        .expect("enqueue")
        .message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_lifecycle_line_names_the_message_its_sender_recipients_domain_mx_and_reply() {
    let buffer = capture();
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(161))
        .mx("ok.test", "mx.ok.test", 10)
        .host("mx.ok.test", ip(162))
        .mx("busy.test", "mx.busy.test", 10)
        .host("mx.busy.test", ip(163))
        .mx("gone.test", "mx.gone.test", 10)
        .host("mx.gone.test", ip(164))
        .start()
        .unwrap();
    let _sender_mx = SmtpSink::start(ip(161), port).unwrap();
    let _ok = SmtpSink::start(ip(162), port).unwrap();
    let _busy = SmtpSink::builder(ip(163), port)
        .soft_reject("RCPT")
        .soft_reply("450 4.2.1 mailbox busy")
        .start()
        .unwrap();
    let _gone = SmtpSink::builder(ip(164), port)
        .hard_reject("RCPT")
        .hard_reply("550 5.1.1 no such user")
        .start()
        .unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "logs", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w-logs", Duration::from_secs(30));

    let ok = enqueue(&q, &["r@ok.test"]).await;
    let line = wait_line(&buffer, "delivered", ok).await;
    assert_eq!(
        (
            field(&line, "sender"),
            field(&line, "recipients"),
            field(&line, "domain"),
            field(&line, "mx"),
            field(&line, "ip")
        ),
        ("s@a.test", "r@ok.test", "ok.test", "mx.ok.test", "127.0.0.162"),
        "{line}"
    );
    assert!(field(&line, "reply").starts_with("250"), "{line}");

    let many: Vec<String> = (0..6).map(|i| format!("r{i}@ok.test")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let crowd = enqueue(&q, &many_refs).await;
    let line = wait_line(&buffer, "delivered", crowd).await;
    assert_eq!(field(&line, "recipients"), "6 recipients", "{line}");

    let busy = enqueue(&q, &["r@busy.test"]).await;
    let line = wait_line(&buffer, "deferred", busy).await;
    assert_eq!(
        (
            field(&line, "recipients"),
            field(&line, "mx"),
            field(&line, "reply")
        ),
        ("r@busy.test", "mx.busy.test", "450 4.2.1 mailbox busy"),
        "{line}"
    );
    assert!(is_rfc3339_utc(field(&line, "next_attempt")), "{line}");
    assert!(line["next_attempt_in_s"].is_u64(), "{line}");

    let gone = enqueue(&q, &["r@gone.test"]).await;
    let line = wait_line(&buffer, "bounced", gone).await;
    assert_eq!(field(&line, "reply"), "550 5.1.1 no such user", "{line}");
    let dsn = field(&line, "dsn").to_string();
    let event = common::wait_event(&q, EventKind::Failed).await;
    assert_eq!(event.dsn.as_deref(), Some(dsn.as_str()), "{event:?}");
    let line = wait_line(&buffer, "DSN queued", gone).await;
    assert_eq!(
        (
            field(&line, "dsn"),
            field(&line, "sender"),
            field(&line, "recipients")
        ),
        (dsn.as_str(), "s@a.test", "r@gone.test"),
        "{line}"
    );
    w.stop().await;

    let all = lines(&buffer);
    let started = all
        .iter()
        .filter(|l| l["message"] == "delivery worker started")
        .count();
    assert_eq!(started, 1, "{all:#?}");
    // No value is Rust debug text (`Some(..)`, `None`, `Unreachable("..")`, a `Duration`'s `5s`).
    for l in &all {
        for (key, value) in l.as_object().unwrap() {
            if let Some(s) = value.as_str() {
                assert!(
                    !s.starts_with("Some(") && s != "None" && !s.contains("(\""),
                    "{key} in {l}"
                );
            }
        }
    }
}
