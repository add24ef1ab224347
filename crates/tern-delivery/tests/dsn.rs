#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The DSNs tern sends, caught by the sender's MX (smtp-sink, or the scriptable server where SMTPUTF8 is
//! needed) and read back with Python's `email` package: success reports only where the receiver will not
//! send one (RFC 3461 5.2.2), global reports for SMTPUTF8 mail (RFC 6533), and failures tern decided itself
//! reported as tern's, not as the server's reply.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fake_mx::{Behaviour, FakeMx};
use common::*;
use serde_json::Value;
use tern_core::{Envelope, Notify, Recipient, ReversePath};
use tern_queue::NewMessage;
use tern_testkit::{Dnsmasq, RedisServer, SmtpSink, free_port};

/// Parses one DSN (a file; the sink's leading `X-...` lines skipped) with Python's `email` package, and
/// prints as JSON its type, report type, part types and the fields of each block of the status part.
/// Python parses `message/delivery-status` into blocks itself; a `message/global-delivery-status` part it
/// reads as one message, whose blocks are split here.
const PARSE_DSN: &str = r#"
import email, email.policy, io, json, re, sys
raw = open(sys.argv[1], 'rb').read()
lines = raw.split(b'\n')
sink = (b'X-Client-Addr:', b'X-Client-Proto:', b'X-Helo-Args:', b'X-Mail-Args:', b'X-Rcpt-Args:')
i = 0
while i < len(lines) and lines[i].startswith(sink):
    i += 1
msg = email.message_from_binary_file(io.BytesIO(b'\n'.join(lines[i:])), policy=email.policy.SMTPUTF8)
parts = msg.get_payload() if msg.is_multipart() else []

def fields(block):
    return {k: ' '.join(str(v).split()) for k, v in block.items()}

def blocks(part):
    payload = part.get_payload()
    if part.get_content_type() == 'message/delivery-status':
        return [fields(b) for b in payload]
    inner = payload[0] if isinstance(payload, list) else None
    text = inner.as_bytes().decode('utf-8') if inner is not None else str(payload)
    out = []
    for chunk in re.split(r'\r?\n\r?\n', text.strip()):
        block = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(':')
            if sep:
                block[key.strip()] = ' '.join(value.split())
        if block:
            out.append(block)
    return out

status = [p for p in parts if p.get_content_type() in ('message/delivery-status', 'message/global-delivery-status')]
found = blocks(status[0]) if status else []
print(json.dumps({
    'content_type': msg.get_content_type(),
    'report_type': msg.get_param('report-type'),
    'subject': str(msg['Subject']),
    'defects': [str(d) for d in msg.defects],
    'parts': [p.get_content_type() for p in parts],
    'per_message': found[0] if found else {},
    'per_recipient': found[1:],
}, ensure_ascii=False))
"#;

/// The JSON [`PARSE_DSN`] prints for the DSN in `file`.
fn parse_dsn(file: &Path) -> Value {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(PARSE_DSN)
        .arg(file)
        .output()
        .expect("python3");
    let raw = String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).into_owned();
    assert!(
        out.status.success(),
        "python failed: {}\n{raw}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["defects"], serde_json::json!([]), "{j:#}\n{raw}");
    j
}

/// Writes what the scriptable server received to a file, for [`parse_dsn`].
fn to_file(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn wants_success(address: &str) -> Recipient {
    let mut r = Recipient::new(address.parse().unwrap());
    r.notify = Some(Notify {
        success: true,
        failure: true,
        delay: false,
    });
    r
}

/// Two recipients ask for NOTIFY=SUCCESS. One's MX offers DSN: NOTIFY goes on with the RCPT and that
/// receiver reports the delivery, so tern sends nothing. The other's does not: tern reports it as
/// `relayed` (not `delivered`), in the one DSN the sender gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_success_is_reported_as_relayed_and_only_where_the_server_offers_no_dsn() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(133))
        .mx("withdsn.test", "mx.withdsn.test", 10)
        .host("mx.withdsn.test", ip(134))
        .mx("nodsn.test", "mx.nodsn.test", 10)
        .host("mx.nodsn.test", ip(135))
        .start()
        .unwrap();
    let sender_mx = SmtpSink::builder(ip(133), port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    // smtp-sink offers DSN unless told not to (-N).
    let with_dsn = SmtpSink::builder(ip(134), port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let without_dsn = SmtpSink::builder(ip(135), port).arg("-N").start().unwrap();
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "success", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    let env = Envelope::new(
        ReversePath::Mailbox("s@a.test".parse().unwrap()),
        vec![wants_success("r@withdsn.test"), wants_success("r@nodsn.test")],
    );
    q.enqueue(NewMessage::new(env, BODY.to_vec())).await.unwrap();
    wait_for("both copies", WAIT, || {
        with_dsn.message_count() >= 1 && without_dsn.message_count() >= 1
    })
    .await;
    wait_for("the DSN at the sender's MX", WAIT, || {
        sender_mx.message_count() >= 1
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.stop().await;

    let passed_on = dumps(with_dsn.dump_dir().unwrap());
    assert!(
        passed_on.iter().any(|m| m.contains("NOTIFY=SUCCESS")),
        "NOTIFY went on to the server that offered DSN: {passed_on:#?}"
    );
    let files = sender_mx.dumped_messages().unwrap();
    assert_eq!(
        files.len(),
        1,
        "one DSN, for the server without DSN only: {files:?}"
    );
    let j = parse_dsn(&files[0]);
    assert_eq!(j["report_type"], "delivery-status", "{j:#}");
    assert_eq!(j["subject"], "Successful Mail Delivery Report", "{j:#}");
    let rcpts = j["per_recipient"].as_array().expect("per-recipient blocks");
    assert_eq!(rcpts.len(), 1, "{j:#}");
    let r = &rcpts[0];
    assert_eq!(r["Final-Recipient"], "rfc822; r@nodsn.test", "{j:#}");
    assert_eq!(r["Action"], "relayed", "{j:#}");
    assert_eq!(r["Status"], "2.0.0", "{j:#}");
    assert_eq!(r["Remote-MTA"], "dns; mx.nodsn.test", "{j:#}");
    assert!(
        r["Diagnostic-Code"]
            .as_str()
            .unwrap_or("")
            .starts_with("smtp; 250"),
        "{j:#}"
    );
}

/// A failure of an SMTPUTF8 message: the DSN's status part is `message/global-delivery-status`, and the
/// report type of the `multipart/report` says so (RFC 6522, RFC 6533).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_smtputf8_dsn_is_a_global_delivery_status_report() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(136))
        .mx("utf8.test", "mx.utf8.test", 10)
        .host("mx.utf8.test", ip(137))
        .start()
        .unwrap();
    let sender_mx = FakeMx::start(
        sa(136, port),
        Behaviour {
            smtputf8: true,
            ..Default::default()
        },
    )
    .await;
    let _refusing = FakeMx::start(
        sa(137, port),
        Behaviour {
            smtputf8: true,
            rcpt_reply: Some("550 5.1.1 No such user".into()),
            ..Default::default()
        },
    )
    .await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "global", Duration::from_secs(30)).await;
    let w = start_worker(&config(&dns, port), q.clone(), "w1", Duration::from_secs(30));
    let mut env = envelope("用户@a.test", &["收件人@utf8.test"]);
    env.smtputf8 = true;
    q.enqueue(NewMessage::new(env, BODY.to_vec())).await.unwrap();
    wait_for("the DSN at the sender's MX", WAIT, || {
        !sender_mx.messages().is_empty()
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;

    let dsn = &sender_mx.messages()[0];
    assert!(dsn.mail.contains("SMTPUTF8"), "{}", dsn.mail);
    let dir = tempfile::tempdir().unwrap();
    let j = parse_dsn(&to_file(dir.path(), "dsn.eml", &dsn.data));
    assert_eq!(j["content_type"], "multipart/report", "{j:#}");
    assert_eq!(j["report_type"], "global-delivery-status", "{j:#}");
    assert_eq!(
        j["parts"],
        serde_json::json!(["text/plain", "message/global-delivery-status", "message/global"]),
        "{j:#}"
    );
    let r = &j["per_recipient"][0];
    assert_eq!(r["Final-Recipient"], "utf-8; 收件人@utf8.test", "{j:#}");
    assert_eq!(r["Action"], "failed", "{j:#}");
    assert_eq!(r["Status"], "5.1.1", "{j:#}");
    assert_eq!(r["Diagnostic-Code"], "smtp; 550 5.1.1 No such user", "{j:#}");
    assert_eq!(r["Remote-MTA"], "dns; mx.utf8.test", "{j:#}");
}

/// The server's EHLO says it takes at most 1000000 octets and no SMTPUTF8: tern refuses a larger message
/// (5.3.4) and an SMTPUTF8 one (5.6.7) without sending them. Their DSNs name no Remote-MTA and carry no
/// `smtp` diagnostic (the server never said so), but tern's own (`X-tern`), with the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_tern_decided_is_not_reported_as_the_servers_reply() {
    let port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("a.test", "mx.a.test", 10)
        .host("mx.a.test", ip(138))
        .mx("limits.test", "mx.limits.test", 10)
        .host("mx.limits.test", ip(139))
        .start()
        .unwrap();
    let sender_mx = FakeMx::start(
        sa(138, port),
        Behaviour {
            smtputf8: true,
            ..Default::default()
        },
    )
    .await;
    // SIZE 1000000 and 8BITMIME; no SMTPUTF8.
    let limits = FakeMx::start(sa(139, port), Behaviour::default()).await;
    let redis = RedisServer::start().unwrap();
    let q = queue(&redis, "localfail", Duration::from_secs(30)).await;
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
    wait_for("two DSNs at the sender's MX", WAIT, || {
        sender_mx.messages().len() >= 2
    })
    .await;
    wait_queue_empty(&q, WAIT).await;
    w.stop().await;
    assert!(
        !limits.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        limits.commands()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for (n, m) in sender_mx.messages().iter().enumerate() {
        let j = parse_dsn(&to_file(dir.path(), &format!("dsn{n}.eml"), &m.data));
        let r = j["per_recipient"][0].clone();
        assert_eq!(r["Action"], "failed", "{j:#}");
        assert!(r.get("Remote-MTA").is_none(), "no server reported this: {j:#}");
        let diagnostic = r["Diagnostic-Code"].as_str().unwrap_or("");
        assert!(diagnostic.starts_with("X-tern; "), "{j:#}");
        assert!(!diagnostic.contains("smtp;"), "{j:#}");
        seen.push((
            r["Final-Recipient"].as_str().unwrap_or("").to_string(),
            r["Status"].as_str().unwrap_or("").to_string(),
            diagnostic.to_string(),
        ));
    }
    seen.sort();
    assert_eq!(seen[0].0, "rfc822; big@limits.test", "{seen:?}");
    assert_eq!(seen[0].1, "5.3.4", "{seen:?}");
    assert!(
        seen[0].2.contains("exceeds the server's limit of 1000000"),
        "{seen:?}"
    );
    assert_eq!(seen[1].0, "rfc822; utf8@limits.test", "{seen:?}");
    assert_eq!(seen[1].1, "5.6.7", "{seen:?}");
    assert!(seen[1].2.contains("SMTPUTF8"), "{seen:?}");
}
