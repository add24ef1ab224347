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
    ClientOptions, ConnectError, NotStarted, SmtpClient, Timeouts, TlsClients, TranscriptEntry,
    TranscriptHook,
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
