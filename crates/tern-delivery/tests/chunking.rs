#![allow(clippy::unwrap_used, clippy::expect_used)]
//! BDAT and BINARYMIME on delivery (RFC 3030) against real receivers on loopback: a Python receiver that
//! implements CHUNKING and writes the octets it got (`common/bdat_peer.py`), and smtp-sink, which offers
//! neither CHUNKING nor BINARYMIME.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::py_peer::PyPeer;
use common::*;
use tern_core::Recipient;
use tern_delivery::smtp::chunking::CHUNK_SIZE;
use tern_delivery::smtp::{ClientOptions, SmtpClient, Timeouts, TranscriptEntry, TranscriptHook};
use tern_queue::{EventKind, NewMessage};
use tern_smtp::Body;
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, free_port};

fn recorder() -> (TranscriptHook, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    let hook: TranscriptHook = Arc::new(move |entry: TranscriptEntry<'_>| {
        kept.lock().unwrap().push(entry.to_string());
    });
    (hook, lines)
}

fn options(transcript: TranscriptHook) -> ClientOptions {
    let short = Duration::from_secs(10);
    ClientOptions {
        timeouts: Timeouts {
            connect: short,
            tls_handshake: short,
            greeting: short,
            command: short,
            mail: short,
            rcpt: short,
            data: short,
            data_block: short,
            data_done: short,
            quit: Duration::from_secs(5),
        },
        transcript: Some(transcript),
    }
}

fn keyed(recipients: &[Recipient]) -> Vec<(u32, &Recipient)> {
    recipients
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u32, r))
        .collect()
}

/// A BINARYMIME message: a line of 1,500 octets, bytes no text message may hold (NUL, a bare LF, a bare
/// CR, a line that is only a dot), and filler up to `size` octets.
fn binary_message(size: usize) -> Vec<u8> {
    let mut m = b"From: s@a.test\r\nTo: r@bin.test\r\nSubject: binary\r\nMIME-Version: 1.0\r\n\
                  Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        .to_vec();
    m.extend(std::iter::repeat_n(b'L', 1500));
    m.extend_from_slice(b"\r\n\0bare LF\nbare CR\r.\r\n.\r\n\xff\xfe");
    let mut i = 0u32;
    while m.len() < size {
        m.push((i.wrapping_mul(2_654_435_761) >> 24) as u8);
        i += 1;
    }
    m
}

/// A BINARYMIME message of three chunks reaches a CHUNKING receiver through the worker exactly as queued,
/// by BDAT with `BODY=BINARYMIME`, the chunks pipelined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binarymime_message_with_a_1500_octet_line_arrives_byte_for_byte_by_bdat() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("bin.test", "mx.bin.test", 10)
        .host("mx.bin.test", ip(140))
        .start()
        .unwrap();
    let peer = PyPeer::bdat(sa(140, port), &[]);
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "bdat", Duration::from_secs(30)).await;
    let body = binary_message(2 * CHUNK_SIZE + 1234);
    let mut env = envelope("s@a.test", &["r@bin.test"]);
    env.body = Some(Body::BinaryMime);
    q.enqueue(NewMessage::new(env, body.clone())).await.unwrap();
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    wait_event(&q, EventKind::Delivered).await;
    w.stop().await;

    let got = peer.messages();
    assert_eq!(got.len(), 1, "{}", peer.output());
    let (data, meta) = &got[0];
    assert!(
        data == &body,
        "the octets differ ({} received, {} sent)",
        data.len(),
        body.len()
    );
    assert!(
        meta["mail"].as_str().unwrap().contains("BODY=BINARYMIME"),
        "{meta}"
    );
    let sizes: Vec<String> = meta["bdat_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sizes,
        vec![
            CHUNK_SIZE.to_string(),
            CHUNK_SIZE.to_string(),
            format!("{} LAST", body.len() - 2 * CHUNK_SIZE)
        ]
    );
    // The second chunk was on its way before the first was answered (PIPELINING is offered).
    assert_eq!(meta["pipelined"][0], serde_json::Value::Bool(true), "{meta}");
    let commands = peer.log("commands.log");
    assert!(!commands.iter().any(|c| c == "DATA"), "{commands:?}");
}

/// A text message to a CHUNKING server goes by BDAT: its lines as they are (a line starting with a dot is
/// not stuffed), no terminating dot; the transcript shows `BDAT <n> LAST` and the size, never the content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_goes_by_bdat_unstuffed_and_the_transcript_shows_only_its_size() {
    let port = free_port().unwrap();
    let peer = PyPeer::bdat(sa(141, port), &[]);
    let (hook, lines) = recorder();
    let mut client = SmtpClient::connect("bdat.test", peer.addr, &options(hook))
        .await
        .unwrap();
    client.ehlo("tern.a.test").await.unwrap();
    assert!(client.capabilities().chunking);
    let env = envelope("s@a.test", &["r1@b.test", "r2@b.test"]);
    let sent = client
        .send_message(&env, &keyed(&env.recipients), BODY)
        .await
        .unwrap();
    let codes: Vec<u16> = sent.replies.iter().map(|(_, r)| r.reply().code).collect();
    assert_eq!(codes, vec![250, 250], "{sent:?}");
    client.quit().await;

    let got = peer.messages();
    assert_eq!(got.len(), 1, "{}", peer.output());
    assert_eq!(got[0].0, BODY, "received as sent, the dot line unstuffed");
    assert!(!got[0].1["mail"].as_str().unwrap().contains("BODY="));
    let lines = lines.lock().unwrap().clone();
    let want_cmd = format!("C: BDAT {} LAST", BODY.len());
    let want_size = format!("C: <body {} octets>", BODY.len());
    let at = lines.iter().position(|l| *l == want_cmd).expect("BDAT line");
    assert_eq!(lines[at + 1], want_size, "{lines:#?}");
    assert!(!lines.iter().any(|l| l == "C: DATA"), "{lines:#?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("Hello") || l.contains("leading dot")),
        "{lines:#?}"
    );
}

/// The first chunk of five is refused (pipelined, four in flight): no chunk follows the failure, every
/// recipient gets the refusal, and the next message on the session starts with RSET and goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chunk_fails_the_message_for_every_recipient_and_no_chunk_follows() {
    let port = free_port().unwrap();
    let peer = PyPeer::bdat(
        sa(142, port),
        &[
            "--fail-chunk",
            "0",
            "--fail-reply",
            "552 5.3.4 chunk too big for me",
        ],
    );
    let (hook, _lines) = recorder();
    let mut client = SmtpClient::connect("bdat.test", peer.addr, &options(hook))
        .await
        .unwrap();
    client.ehlo("tern.a.test").await.unwrap();
    let big = binary_message(4 * CHUNK_SIZE + 10);
    let env = envelope("s@a.test", &["r1@b.test", "r2@b.test"]);
    let sent = client
        .send_message(&env, &keyed(&env.recipients), &big)
        .await
        .unwrap();
    for (_, r) in &sent.replies {
        assert!(r.is_remote());
        assert_eq!(r.reply().to_string(), "552 5.3.4 chunk too big for me");
    }
    assert_eq!(sent.replies.len(), 2);
    assert!(client.is_usable());
    let bdats: Vec<String> = peer
        .log("commands.log")
        .into_iter()
        .filter(|c| c.starts_with("BDAT"))
        .collect();
    assert_eq!(bdats.len(), 4, "the window's chunks only: {bdats:?}");
    assert!(!bdats.iter().any(|c| c.ends_with("LAST")), "{bdats:?}");

    // The session goes on: RSET, then the next message (the peer fails only a transaction's first chunk
    // of a series, so a one-chunk message would fail too: it is refused alike, but after RSET).
    let env2 = envelope("s@a.test", &["r3@b.test"]);
    let again = client
        .send_message(&env2, &keyed(&env2.recipients), BODY)
        .await
        .unwrap();
    assert_eq!(again.replies[0].1.reply().code, 552);
    client.quit().await;
    let commands = peer.log("commands.log");
    let rset = commands.iter().position(|c| c == "RSET").expect("RSET");
    let mail2 = commands.iter().rposition(|c| c.starts_with("MAIL")).unwrap();
    assert!(rset < mail2, "{commands:?}");
    assert!(peer.messages().is_empty());
}

/// A BINARYMIME message whose recipient's server offers neither CHUNKING nor BINARYMIME (smtp-sink) cannot
/// be converted: it bounces at once with 5.6.3, a DSN goes to the sender, and the server got nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binarymime_to_a_server_without_chunking_bounces_5_6_3_with_a_dsn() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(143))
        .mx("plain.test", "mx.plain.test", 10)
        .host("mx.plain.test", ip(144))
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(143), port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let plain = SmtpSink::start(ip(144), port).unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "nobdat", Duration::from_secs(30)).await;
    let mut env = envelope("s@a.test", &["r@plain.test"]);
    env.body = Some(Body::BinaryMime);
    q.enqueue(NewMessage::new(env, binary_message(4000)))
        .await
        .unwrap();
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    let failed = wait_event(&q, EventKind::Failed).await;
    let dsn = wait_dsn(&sender_mx, &["5.6.3", "r@plain.test"]).await;
    w.stop().await;
    assert!(dsn.contains("BINARYMIME"), "{dsn}");
    assert_eq!(plain.message_count(), 0);
    let ev = events(&q).await;
    assert!(
        !ev.iter().any(|e| e.kind == EventKind::Deferred),
        "bounced without a retry: {ev:?} ({failed:?})"
    );
}
