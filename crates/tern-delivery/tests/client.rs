//! The SMTP client on its own (no worker, no queue) against real servers on loopback: smtp-sink for a
//! session of two messages, and the scriptable server for AUTH over implicit TLS. The transcript hook sees
//! every command and reply, with credentials masked and message data as its size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_mx::{Behaviour, FakeMx};
use common::{envelope, ip, sa};
use tern_core::Recipient;
use tern_delivery::smtp::{
    ClientOptions, ConnectError, HeldMessage, MessageReplies, NotStarted, Sent, SmtpClient, Timeouts,
    TlsClients, TranscriptEntry, TranscriptHook,
};
use tern_testkit::{SmtpSink, TestCa, free_port};

/// A hook that keeps each entry as its one-line form, and the lines it kept.
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

/// A session to `addr` (as `server`) after its EHLO.
async fn session(server: &str, addr: std::net::SocketAddr, hook: TranscriptHook) -> SmtpClient {
    let mut client = SmtpClient::connect(server, addr, &options(hook)).await.unwrap();
    client.ehlo("tern.a.test").await.unwrap();
    client
}

/// The recipients of an envelope, keyed by index as a job would key them.
fn keyed(recipients: &[Recipient]) -> Vec<(u32, &Recipient)> {
    recipients
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u32, r))
        .collect()
}

/// The code of each server reply the transcript saw, in order.
fn reply_codes(lines: &[String]) -> Vec<&str> {
    with_prefix(lines, "S: ")
        .into_iter()
        .map(|r| r.get(..3).unwrap_or(r))
        .collect()
}

/// What follows `prefix` on each line that starts with it.
fn with_prefix<'a>(lines: &'a [String], prefix: &str) -> Vec<&'a str> {
    lines.iter().filter_map(|l| l.strip_prefix(prefix)).collect()
}

const FIRST: &[u8] = b"From: s@a.test\r\nTo: r1@b.test, r2@b.test\r\nSubject: one\r\n\r\nThe first body.\r\n";
const SECOND: &[u8] = b"From: s@a.test\r\nTo: r3@b.test\r\nSubject: two\r\n\r\nThe second body.\r\n.dot\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_of_one_session_need_no_rset_between_them_and_the_transcript_sees_every_command() {
    let port = free_port().unwrap();
    let sink = SmtpSink::builder(ip(95), port).dump_to_tempdir().start().unwrap();
    let (hook, lines) = recorder();

    let mut client = session("sink.test", sink.addr(), hook).await;
    let first = envelope("s@a.test", &["r1@b.test", "r2@b.test"]);
    let sent = client
        .send_message(&first, &keyed(&first.recipients), FIRST)
        .await
        .unwrap();
    assert_eq!(sent.transactions, 1);
    assert_eq!(
        sent.replies
            .iter()
            .map(|(i, r)| (*i, r.reply().code, r.is_remote()))
            .collect::<Vec<_>>(),
        vec![(0, 250, true), (1, 250, true)]
    );
    let second = envelope("s@a.test", &["r3@b.test"]);
    let sent = client
        .send_message(&second, &keyed(&second.recipients), SECOND)
        .await
        .unwrap();
    assert_eq!(sent.transactions, 1);
    assert_eq!(sent.replies.len(), 1);
    assert_eq!(sent.replies[0].1.reply().code, 250, "{:?}", sent.replies);
    assert!(client.is_usable());
    client.quit().await;

    assert_eq!(sink.wait_for_messages(2, Duration::from_secs(10)).unwrap(), 2);
    let dumps = common::dumps(sink.dump_dir().unwrap());
    assert!(dumps.iter().any(|d| d.contains("The first body.")), "{dumps:?}");
    assert!(dumps.iter().any(|d| d.contains("The second body.")), "{dumps:?}");

    let lines = lines.lock().unwrap().clone();
    // Every command in the order sent, the message data as its size only.
    let commands = with_prefix(&lines, "C: ");
    let shape: Vec<String> = commands
        .iter()
        .map(|c| match c.split_once(':') {
            Some((verb @ ("MAIL FROM" | "RCPT TO"), rest)) => {
                format!("{verb}:{}", rest.split(' ').next().unwrap_or(""))
            }
            _ => c.to_string(),
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            "EHLO tern.a.test".to_string(),
            "MAIL FROM:<s@a.test>".into(),
            "RCPT TO:<r1@b.test>".into(),
            "RCPT TO:<r2@b.test>".into(),
            "DATA".into(),
            // The end of data ended the first transaction: nothing to reset (RFC 5321 4.1.1.4).
            format!("<body {} octets>", FIRST.len()),
            "MAIL FROM:<s@a.test>".into(),
            "RCPT TO:<r3@b.test>".into(),
            "DATA".into(),
            format!("<body {} octets>", SECOND.len()),
            "QUIT".into(),
        ],
        "{lines:#?}"
    );
    // One reply per command, and the greeting: 220, EHLO, MAIL, RCPT x2, DATA, end of data, MAIL, RCPT,
    // DATA, end of data, QUIT.
    let codes = reply_codes(&lines);
    assert_eq!(
        codes,
        vec![
            "220", "250", "250", "250", "250", "354", "250", "250", "250", "354", "250", "221"
        ],
        "{lines:#?}"
    );
    // The message content itself never reached the hook.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("first body") || l.contains("second body") || l.contains("Subject")),
        "{lines:#?}"
    );
}

/// A session kept idle between batches is checked with RSET before its next message; with PIPELINING the
/// RSET leads the message's command group (no round trip of its own) and is answered first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_sat_idle_begins_its_next_message_with_rset() {
    let port = free_port().unwrap();
    let sink = SmtpSink::builder(ip(97), port).start().unwrap();
    let (hook, lines) = recorder();
    let mut client = session("sink.test", sink.addr(), hook).await;
    let env = envelope("s@a.test", &["r1@b.test"]);
    for _ in 0..2 {
        let sent = client
            .send_message(&env, &keyed(&env.recipients), FIRST)
            .await
            .unwrap();
        assert_eq!(sent.replies[0].1.reply().code, 250, "{:?}", sent.replies);
        client.going_idle();
    }
    client.quit().await;
    assert_eq!(sink.wait_for_messages(2, Duration::from_secs(10)).unwrap(), 2);
    let lines = lines.lock().unwrap().clone();
    let commands: Vec<&str> = with_prefix(&lines, "C: ")
        .into_iter()
        .map(|c| c.split(':').next().unwrap_or(c))
        .collect();
    let body = format!("<body {} octets>", FIRST.len());
    assert_eq!(
        commands,
        [
            "EHLO tern.a.test",
            "MAIL FROM",
            "RCPT TO",
            "DATA",
            &body,
            "RSET",
            "MAIL FROM",
            "RCPT TO",
            "DATA",
            &body,
            "QUIT"
        ],
        "{lines:#?}"
    );
    let codes = reply_codes(&lines);
    assert_eq!(
        codes,
        [
            "220", "250", "250", "250", "354", "250", "250", "250", "250", "354", "250", "221"
        ],
        "{lines:#?}"
    );
}

/// A server that closed the session after a message (its 421 waiting unread, as Postfix's idle timeout or a
/// server's limit of messages per session leaves it) fails the next message before it started, whether the
/// session sat idle (RSET first) or not, with or without PIPELINING: nothing of it was taken, and the caller
/// opens a new session for it instead of taking the 421 as the message's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_closed_after_a_message_fails_the_next_message_before_it_started() {
    for (pipelining, idle) in [(true, true), (false, true), (true, false), (false, false)] {
        let port = free_port().unwrap();
        let mx = FakeMx::start(
            sa(98, port),
            Behaviour {
                pipelining,
                close_after_messages: Some(1),
                ..Default::default()
            },
        )
        .await;
        let (hook, _lines) = recorder();
        let mut client = session("idle.test", mx.addr, hook).await;
        let env = envelope("s@a.test", &["r1@b.test"]);
        let first = client
            .send_message(&env, &keyed(&env.recipients), FIRST)
            .await
            .unwrap();
        assert_eq!(first.replies[0].1.reply().code, 250, "{:?}", first.replies);
        if idle {
            client.going_idle();
        }
        let second = client.send_message(&env, &keyed(&env.recipients), SECOND).await;
        let case = format!("pipelining {pipelining}, idle {idle}");
        assert_eq!(second, Err(NotStarted), "{case}");
        assert!(!client.is_usable(), "{case}");
        assert_eq!(mx.seen.lock().unwrap().messages.len(), 1, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_credentials_reach_the_server_but_not_the_transcript() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();
    let mx = FakeMx::start(
        sa(96, port),
        Behaviour {
            tls: Some(ca.issue(&["relay.auth.test"]).unwrap()),
            implicit_tls: true,
            auth: Some(("tern".into(), "s3cret".into())),
            ..Default::default()
        },
    )
    .await;
    let tls = TlsClients::new(Some(ca_file.as_path())).unwrap();
    let (hook, lines) = recorder();

    let mut client = SmtpClient::connect_tls("relay.auth.test", mx.addr, &options(hook), &tls, true)
        .await
        .unwrap();
    assert!(client.tls().unwrap().ends_with(" verified"), "{:?}", client.tls());
    client.ehlo("tern.a.test").await.unwrap();
    client.auth_plain("tern", "s3cret").await.unwrap();
    client.quit().await;

    // The server got the real credentials...
    let sent_auth: Vec<String> = mx
        .commands()
        .into_iter()
        .filter(|c| c.starts_with("AUTH"))
        .collect();
    assert_eq!(sent_auth.len(), 1, "{sent_auth:?}");
    let token = sent_auth[0].trim_start_matches("AUTH PLAIN ").to_string();
    assert!(token.len() > 8, "{sent_auth:?}");
    // ...the transcript saw the command masked, and the server's answer.
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines[0].starts_with("TLS: ") && lines[0].ends_with(" verified"),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"C: AUTH PLAIN <masked>".to_string()),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("S: 235")), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains(&token) || l.contains("s3cret")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_without_tls_sends_nothing_and_ends_the_session() {
    let port = free_port().unwrap();
    let sink = SmtpSink::start(ip(97), port).unwrap();
    let (hook, lines) = recorder();
    let mut client = session("sink.test", sink.addr(), hook).await;
    let refused = client.auth_plain("tern", "s3cret").await;
    assert!(matches!(refused, Err(ConnectError::Tls(_))), "{refused:?}");
    assert!(!client.is_usable());
    let lines = lines.lock().unwrap().clone();
    let commands = with_prefix(&lines, "C: ");
    assert!(!commands.iter().any(|c| c.starts_with("AUTH")), "{lines:#?}");
    assert_eq!(commands.last(), Some(&"QUIT"), "{lines:#?}");
}

/// The codes of a message's replies, with who gave them.
fn codes(replies: &MessageReplies) -> Vec<(u32, u16, bool)> {
    replies
        .replies
        .iter()
        .map(|(i, r)| (*i, r.reply().code, r.is_remote()))
        .collect()
}

/// The replies of a message sent to the end, or a panic saying how it was left.
fn done(sent: Result<Sent, NotStarted>) -> MessageReplies {
    match sent {
        Ok(Sent::Done(replies)) => replies,
        other => panic!("not sent to the end: {other:?}"),
    }
}

/// The held message of a send, or a panic saying how it was left.
fn held(sent: Result<Sent, NotStarted>) -> HeldMessage {
    match sent {
        Ok(Sent::Held(message)) => message,
        other => panic!("its end of data was not held: {other:?}"),
    }
}

/// Three messages on one pipelining session, the first two holding their end of data: each end of data
/// reaches the server in the same write as the next message's commands (RFC 2920 §3.1), and each message
/// still gets its own reply: the second's refusal is not taken for the first's or the third's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_end_of_data_goes_out_with_the_next_message_and_each_message_gets_its_own_reply() {
    let port = free_port().unwrap();
    let mx = FakeMx::start(
        sa(165, port),
        Behaviour {
            pipelining: true,
            data_replies: vec![
                "250 2.0.0 first".into(),
                "554 5.6.0 content refused".into(),
                "250 2.0.0 third".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let (hook, lines) = recorder();
    let mut client = session("held.test", mx.addr, hook).await;
    let first = envelope("s@a.test", &["r1@b.test", "r2@b.test"]);
    let second = envelope("s@a.test", &["r3@b.test"]);
    let third = envelope("s@a.test", &["r4@b.test"]);

    let (settled, sent) = client
        .send_message_after(None, &first, &keyed(&first.recipients), FIRST, true)
        .await;
    assert!(settled.is_none());
    let first_held = held(sent);
    assert_eq!(first_held.transactions(), 1);
    assert_eq!(
        mx.seen.lock().unwrap().data_ends,
        0,
        "the data waits for the next message"
    );

    let (settled, sent) = client
        .send_message_after(
            Some(first_held),
            &second,
            &keyed(&second.recipients),
            SECOND,
            true,
        )
        .await;
    let first_replies = settled.expect("the first message's replies");
    assert_eq!(codes(&first_replies), [(0, 250, true), (1, 250, true)]);
    let second_held = held(sent);

    let (settled, sent) = client
        .send_message_after(Some(second_held), &third, &keyed(&third.recipients), FIRST, false)
        .await;
    let second_replies = settled.expect("the second message's replies");
    assert_eq!(codes(&second_replies), [(0, 554, true)]);
    assert_eq!(codes(&done(sent)), [(0, 250, true)]);
    assert!(client.is_usable());
    client.quit().await;

    let seen = mx.seen.lock().unwrap();
    assert_eq!(seen.data_ends, 3);
    assert_eq!(
        seen.data_ends_with_next_command, 2,
        "the first two ends of data came with the next message's commands"
    );
    assert_eq!(seen.messages.len(), 2, "the refused one is not kept");
    assert!(String::from_utf8_lossy(&seen.messages[1].data).contains("The first body."));
    // The transcript still reads in the order things happened on the wire.
    let lines = lines.lock().unwrap().clone();
    assert_eq!(
        reply_codes(&lines),
        [
            "220", "250", "250", "250", "250", "354", "250", "250", "250", "354", "554", "250", "250", "354",
            "250", "221"
        ],
        "{lines:#?}"
    );
}

/// A server gone before it answered a held end of data (the connection closed once the data was read):
/// that message gets tern's own 451 (its data may have arrived: tried again later, never taken as
/// delivered), and the next message, whose commands went with it, was not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_before_answering_a_held_end_of_data_defers_that_message_and_the_next_is_not_started() {
    let port = free_port().unwrap();
    let mx = FakeMx::start(
        sa(166, port),
        Behaviour {
            pipelining: true,
            close_at_data_end: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (hook, _lines) = recorder();
    let mut client = session("gone.test", mx.addr, hook).await;
    let env = envelope("s@a.test", &["r1@b.test", "r2@b.test"]);
    let (_, sent) = client
        .send_message_after(None, &env, &keyed(&env.recipients), FIRST, true)
        .await;
    let first = held(sent);
    let (settled, sent) = client
        .send_message_after(Some(first), &env, &keyed(&env.recipients), SECOND, true)
        .await;
    let first = settled.expect("the first message's replies");
    assert_eq!(codes(&first), [(0, 451, false), (1, 451, false)]);
    assert_eq!(sent.unwrap_err(), NotStarted);
    assert!(!client.is_usable());
    assert_eq!(mx.seen.lock().unwrap().data_ends, 1);
}

/// A held message with nothing to follow it is settled: its data goes out alone and its reply is read.
/// Without PIPELINING nothing is held: each message's reply is read before the next is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_is_settled_on_its_own_and_nothing_is_held_without_pipelining() {
    for pipelining in [true, false] {
        let port = free_port().unwrap();
        let mx = FakeMx::start(
            sa(167, port),
            Behaviour {
                pipelining,
                ..Default::default()
            },
        )
        .await;
        let (hook, _lines) = recorder();
        let mut client = session("settle.test", mx.addr, hook).await;
        let env = envelope("s@a.test", &["r1@b.test"]);
        let (_, sent) = client
            .send_message_after(None, &env, &keyed(&env.recipients), FIRST, true)
            .await;
        let replies = match sent {
            Ok(Sent::Held(message)) if pipelining => client.settle(message).await,
            Ok(Sent::Done(replies)) if !pipelining => replies,
            other => panic!("pipelining {pipelining}: {other:?}"),
        };
        assert_eq!(codes(&replies), [(0, 250, true)], "pipelining {pipelining}");
        assert!(client.is_usable());
        client.quit().await;
        let seen = mx.seen.lock().unwrap();
        assert_eq!(
            (seen.data_ends, seen.messages.len()),
            (1, 1),
            "pipelining {pipelining}"
        );
        assert_eq!(seen.data_ends_with_next_command, 0, "pipelining {pipelining}");
    }
}

/// A held message dropped instead of passed on or settled leaves a reply nobody will read for it: the next
/// message is not started and the session is unusable, so that reply is never taken for another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_held_message_was_dropped_takes_no_further_message() {
    let port = free_port().unwrap();
    let mx = FakeMx::start(
        sa(172, port),
        Behaviour {
            pipelining: true,
            data_replies: vec!["554 5.6.0 refused".into()],
            ..Default::default()
        },
    )
    .await;
    let (hook, _lines) = recorder();
    let mut client = session("dropped.test", mx.addr, hook).await;
    let env = envelope("s@a.test", &["r1@b.test"]);
    let (_, sent) = client
        .send_message_after(None, &env, &keyed(&env.recipients), FIRST, true)
        .await;
    drop(held(sent));
    let second = client.send_message(&env, &keyed(&env.recipients), SECOND).await;
    assert_eq!(second, Err(NotStarted));
    assert!(!client.is_usable());
    assert_eq!(mx.seen.lock().unwrap().data_ends, 0, "nothing more was written");
}
