//! The SMTP protocol over raw sockets against a real server and a real redis-server: smuggling vectors,
//! STARTTLS injection, limits, AUTH edge cases, BDAT, headers added before queueing, queue outage, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Client, HOSTNAME, Harness, queued_id};
use tern_smtp::{Notify, Ret};

fn ehlo<S: std::io::Read + std::io::Write>(c: &mut Client<S>) {
    c.expect("EHLO client.test", 250);
}

#[test]
fn every_smuggling_vector_is_rejected_whole_and_nothing_is_queued() {
    let h = Harness::start(false, &[], |_| {});
    let text = std::fs::read_to_string(common::vector_path("smuggling.json"))
        .expect("smuggling vectors in tests/vectors");
    let vectors: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(vectors.len() >= 13);
    let mut accepted = 0;
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let body = v["body"].as_str().unwrap();
        let before = h.counts().total;
        let mut c = h.client();
        ehlo(&mut c);
        c.expect("MAIL FROM:<a@example.test>", 250);
        c.expect("RCPT TO:<victim@dest.test>", 250);
        c.expect("DATA", 354);
        c.send(body.as_bytes());
        c.send(b".\r\n");
        let r = c.read_reply();
        if v["expect"] == "reject" {
            assert!(r.code >= 500, "{name}: expected a 5xx, got {r}");
            assert_eq!(
                r.enhanced.map(|e| e.to_string()).as_deref(),
                Some("5.6.0"),
                "{name}: {r}"
            );
            assert_eq!(h.counts().total, before, "{name}: something was queued");
        } else {
            assert_eq!(r.code, 250, "{name}: {r}");
            assert_eq!(h.counts().total, before + 1, "{name}");
            accepted += 1;
        }
        // The smuggled MAIL/RCPT/DATA were never run: the next reply is the NOOP's.
        let noop = c.cmd("NOOP");
        assert_eq!(
            (noop.code, noop.text()),
            (250, "Ok".to_string()),
            "{name}: {noop}"
        );
        c.expect("QUIT", 221);
    }
    assert_eq!(accepted, 1);
}

#[test]
fn bytes_pipelined_after_starttls_are_discarded_and_ehlo_is_required_again() {
    let h = Harness::start(true, &[("alice", "pw", None)], |_| {});
    let mut c = h.client();
    let caps = c.expect("EHLO client.test", 250);
    assert!(caps.lines.iter().any(|l| l == "STARTTLS"), "{caps}");
    assert!(
        !caps.lines.iter().any(|l| l.starts_with("AUTH")),
        "AUTH offered before TLS: {caps}"
    );
    c.send(b"STARTTLS\r\nNOOP\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 220, "{r}");
    let mut t = Client::new(common::tls_client(&h.ca, c.stream));
    // The first reply under TLS answers our MAIL, not the injected NOOP; and MAIL needs EHLO again.
    let r = t.cmd("MAIL FROM:<a@example.test>");
    assert_eq!(
        (r.code, r.enhanced.as_ref().map(ToString::to_string)),
        (503, Some("5.5.1".into())),
        "{r}"
    );
    let caps = t.expect("EHLO client.test", 250);
    assert!(!caps.lines.iter().any(|l| l == "STARTTLS"), "{caps}");
    assert!(caps.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{caps}");
    t.expect("STARTTLS", 503);
    t.expect("QUIT", 221);
}

#[test]
fn size_limits_apply_at_mail_and_after_the_data_is_drained() {
    let h = Harness::start(false, &[], |c| c.max_message_size = 4096);
    let mut c = h.client();
    let caps = c.expect("EHLO client.test", 250);
    assert!(caps.lines.iter().any(|l| l == "SIZE 4096"), "{caps}");
    let r = c.cmd("MAIL FROM:<a@example.test> SIZE=5000");
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (552, "5.3.4".into()),
        "{r}"
    );
    let big = "x"
        .repeat(70)
        .repeat(100)
        .as_bytes()
        .chunks(70)
        .fold(Vec::new(), |mut v, l| {
            v.extend_from_slice(l);
            v.extend_from_slice(b"\r\n");
            v
        });
    let r = c.send_message("a@example.test", &["r@dest.test"], &big);
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (552, "5.3.4".into()),
        "{r}"
    );
    // The rest of the data was drained, not run as commands.
    c.expect("NOOP", 250);
    // BDAT too.
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.send(b"BDAT 7000 LAST\r\n");
    c.send(&big[..7000]);
    let r = c.read_reply();
    assert_eq!(r.code, 552, "{r}");
    c.expect("NOOP", 250);
    assert_eq!(h.counts().total, 0);
}

#[test]
fn recipients_beyond_the_limit_get_452() {
    let h = Harness::start(false, &[], |c| c.max_recipients = 3);
    let mut c = h.client();
    ehlo(&mut c);
    c.expect("MAIL FROM:<a@example.test>", 250);
    for i in 0..3 {
        c.expect(&format!("RCPT TO:<r{i}@dest.test>"), 250);
    }
    let r = c.cmd("RCPT TO:<r9@dest.test>");
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (452, "4.5.3".into()),
        "{r}"
    );
    c.expect("DATA", 354);
    c.send(b"Subject: three\r\n\r\nhi\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    let claim =
        h.rt.block_on(h.queue.claim("t", 10, Duration::from_secs(60)))
            .unwrap()
            .unwrap();
    assert_eq!(claim.jobs[0].job.envelope.recipients.len(), 3);
}

#[test]
fn bad_sequences_get_503_and_the_error_budget_closes_the_session() {
    let h = Harness::start(false, &[], |c| c.max_errors = 4);
    let mut c = h.client();
    let r = c.cmd("MAIL FROM:<a@example.test>");
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (503, "5.5.1".into()),
        "{r}"
    );
    ehlo(&mut c);
    c.expect("RCPT TO:<r@dest.test>", 503);
    c.expect("DATA", 503);
    c.send(b"BOGUS\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 500, "{r}");
    let r = c.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (421, "4.7.0".into()),
        "{r}"
    );
    assert!(c.try_read_reply().is_none(), "the session should be closed");
}

#[test]
fn dsn_parameters_tags_and_trace_headers_are_stored() {
    let h = Harness::start(false, &[("alice", "secret", None)], |c| {
        c.allow_plaintext_auth = true;
        c.relay_networks.clear();
    });
    let mut c = h.client();
    let caps = c.expect("EHLO client.test", 250);
    assert!(caps.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{caps}");
    let r = c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0alice\0secret")));
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (235, "2.7.0".into()),
        "{r}"
    );
    c.expect("AUTH PLAIN", 503);
    c.expect("MAIL FROM:<a@example.test> RET=HDRS ENVID=env+2B1", 250);
    c.expect(
        "RCPT TO:<r@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r@dest.test",
        250,
    );
    c.expect("DATA", 354);
    c.send(b"Subject: trace\r\n\r\nMessage-ID: <not-a-header@body>\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 250, "{r}");
    assert!(r.text().starts_with("Ok: queued as "), "{r}");
    let id = queued_id(&r.text()).unwrap();

    let claim =
        h.rt.block_on(h.queue.claim("t", 10, Duration::from_secs(60)))
            .unwrap()
            .unwrap();
    let job = &claim.jobs[0];
    assert_eq!(job.job.id.message.to_string(), id);
    let env = &job.job.envelope;
    assert_eq!(env.ret, Some(Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("env+1"));
    let rcpt = &env.recipients[0];
    assert_eq!(
        rcpt.notify,
        Some(Notify {
            success: true,
            failure: true,
            delay: false
        })
    );
    assert_eq!(rcpt.orcpt.as_ref().unwrap().address, "r@dest.test");
    assert_eq!(job.job.tags.get("auth_user").map(String::as_str), Some("alice"));

    let body = String::from_utf8(job.body.to_vec()).unwrap();
    let expect_start = format!(
        "Received: from client.test ([127.0.0.1])\r\n\tby {HOSTNAME} (tern) with ESMTPA id {id}\r\n\tfor <r@dest.test>; "
    );
    assert!(body.starts_with(&expect_start), "{body}");
    assert!(
        body.contains(&format!("\r\nMessage-ID: <{id}@{HOSTNAME}>\r\n")),
        "{body}"
    );
    assert!(body.contains("\r\nDate: "), "{body}");
    assert!(
        body.ends_with("Subject: trace\r\n\r\nMessage-ID: <not-a-header@body>\r\n"),
        "{body}"
    );

    // A message with its own Message-ID and Date keeps them and gets no second one.
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<x@other.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Message-Id: <mine@example.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhi\r\n.\r\n");
    let r = c.read_reply();
    let id2 = queued_id(&r.text()).unwrap();
    let body = String::from_utf8(h.stored_body(&id2)).unwrap();
    assert_eq!(body.matches("Message-I").count(), 1, "{body}");
    assert_eq!(body.matches("\nDate:").count(), 1, "{body}");
}

#[test]
fn auth_edge_cases_plain_login_cancel_lockout_and_session_drop() {
    let h = Harness::start(false, &[("alice", "secret", Some("example.test"))], |c| {
        c.allow_plaintext_auth = true;
        c.relay_networks.clear();
        c.auth_max_failures = 4;
    });
    let mut c = h.client();
    ehlo(&mut c);
    // Not authenticated, not in a relay network.
    let r = c.cmd("MAIL FROM:<a@example.test>");
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (530, "5.7.0".into()),
        "{r}"
    );
    c.expect("AUTH CRAM-MD5", 504);
    // PLAIN with an empty challenge, cancelled.
    let r = c.cmd("AUTH PLAIN");
    assert_eq!((r.code, r.text()), (334, String::new()), "{r}");
    let r = c.cmd("*");
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (501, "5.7.0".into()),
        "{r}"
    );
    // LOGIN, the right password; a sender outside the user's domains is refused.
    let r = c.cmd("AUTH LOGIN");
    assert_eq!((r.code, r.text()), (334, "VXNlcm5hbWU6".into()), "{r}");
    let r = c.cmd(&B64.encode("alice"));
    assert_eq!((r.code, r.text()), (334, "UGFzc3dvcmQ6".into()), "{r}");
    c.expect(&B64.encode("secret"), 235);
    let r = c.cmd("MAIL FROM:<a@elsewhere.test>");
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (553, "5.7.1".into()),
        "{r}"
    );
    c.expect("MAIL FROM:<a@Example.TEST>", 250);
    c.expect("QUIT", 221);

    // Three wrong passwords end the session.
    let mut c = h.client();
    ehlo(&mut c);
    for i in 0..3 {
        let r = c.cmd(&format!(
            "AUTH PLAIN {}",
            B64.encode(format!("\0alice\0wrong{i}"))
        ));
        assert_eq!(
            (r.code, r.enhanced.unwrap().to_string()),
            (535, "5.7.8".into()),
            "{r}"
        );
    }
    let r = c.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (421, "4.7.0".into()),
        "{r}"
    );
    assert!(c.try_read_reply().is_none());

    // The fourth failure from this address locks it out: even the right password gets 454.
    let mut c = h.client();
    ehlo(&mut c);
    c.expect(&format!("AUTH PLAIN {}", B64.encode("\0nobody\0x")), 535);
    let r = c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0alice\0secret")));
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (454, "4.7.0".into()),
        "{r}"
    );
}

#[test]
fn auth_needs_tls_unless_plaintext_is_allowed() {
    let h = Harness::start(false, &[("alice", "secret", None)], |_| {});
    let mut c = h.client();
    let caps = c.expect("EHLO client.test", 250);
    assert!(!caps.lines.iter().any(|l| l.starts_with("AUTH")), "{caps}");
    let r = c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0alice\0secret")));
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (538, "5.7.11".into()),
        "{r}"
    );
}

#[test]
fn bdat_chunks_are_joined_and_checked() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    let caps = c.expect("EHLO client.test", 250);
    for kw in [
        "CHUNKING",
        "BINARYMIME",
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "DSN",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(caps.lines.iter().any(|l| l == kw), "{kw} missing: {caps}");
    }
    // Pipelined: MAIL, RCPT, two chunks, one of them holding what looks like commands.
    c.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<r@dest.test>\r\nBDAT 22\r\nSubject: x\r\n\r\nQUIT\r\n\r\nBDAT 7 LAST\r\nbye\r\n\r\n");
    for code in [250, 250, 250] {
        assert_eq!(c.read_reply().code, code);
    }
    let r = c.read_reply();
    assert_eq!(r.code, 250, "{r}");
    let id = queued_id(&r.text()).unwrap();
    let body = h.stored_body(&id);
    assert!(
        body.ends_with(b"Subject: x\r\n\r\nQUIT\r\n\r\nbye\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // A bare LF in text content is refused ...
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.send(b"BDAT 10 LAST\r\nSubj: x\n\r\n");
    let r = c.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (554, "5.6.0".into()),
        "{r}"
    );
    // ... but allowed for BODY=BINARYMIME; DATA is refused for it.
    c.expect("MAIL FROM:<a@example.test> BODY=BINARYMIME", 250);
    c.expect("RCPT TO:<r@other.test>", 250);
    c.expect("DATA", 503);
    c.send(b"BDAT 11 LAST\r\nSubj: x\n\0\r\n");
    assert_eq!(c.read_reply().code, 250);
    // BDAT without a transaction: the chunk is still consumed.
    c.send(b"BDAT 6 LAST\r\nNOOP\r\n");
    assert_eq!(c.read_reply().code, 503);
    c.expect("NOOP", 250);
}

#[test]
fn redis_down_gives_451_and_nothing_is_acknowledged() {
    let mut h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    ehlo(&mut c);
    h.redis.stop().unwrap();
    let r = c.send_message("a@example.test", &["r@dest.test"], b"Subject: down\r\n\r\nhi\r\n");
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (451, "4.3.0".into()),
        "{r}"
    );
    c.expect("NOOP", 250);
}

#[test]
fn connection_limits_and_idle_timeout_answer_421() {
    let h = Harness::start(false, &[], |c| {
        c.max_connections_per_ip = 2;
        c.idle_timeout = "1s".parse().unwrap();
    });
    let _a = h.client();
    let _b = h.client();
    let mut c = Client::connect_raw(h.smtp);
    let r = c.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (421, "4.7.0".into()),
        "{r}"
    );
    assert!(c.try_read_reply().is_none());
    drop((_a, _b));
    // The slots come back once the server has seen the two connections close.
    let mut idle = None;
    common::wait_until(Duration::from_secs(5), "a free connection slot", || {
        let mut c = Client::connect_raw(h.smtp);
        let ok = c.read_reply().code == 220;
        if ok {
            idle = Some(c);
        }
        ok
    });
    let mut idle = idle.unwrap();
    let r = idle.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (421, "4.4.2".into()),
        "{r}"
    );
}

/// Shutdown: the idle session gets `421 4.3.2`, the message in progress finishes (250, then 421); while it
/// does, the listeners stay open and answer each new connection `421 4.3.2` at once (implicit TLS: after the
/// handshake); once it is done, they close.
#[test]
fn shutdown_lets_a_message_in_progress_finish_and_closes_idle_sessions() {
    let mut h = Harness::start(true, &[], |_| {});
    let mut idle = h.client();
    ehlo(&mut idle);
    let mut busy = h.client();
    ehlo(&mut busy);
    busy.expect("MAIL FROM:<a@example.test>", 250);
    busy.expect("RCPT TO:<r@dest.test>", 250);
    busy.expect("DATA", 354);
    busy.send(b"Subject: in flight\r\n\r\npart one\r\n");
    h.shutdown.cancel();
    let r = idle.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (421, "4.3.2".into()),
        "{r}"
    );
    let shutting_down = |r: &tern_smtp::Reply| {
        assert_eq!(
            (r.code, r.enhanced.as_ref().map(ToString::to_string)),
            (421, Some("4.3.2".into())),
            "{r}"
        );
        assert_eq!(
            r.lines.first().map(String::as_str),
            Some(format!("{HOSTNAME} Service shutting down, try again later").as_str()),
            "{r}"
        );
    };
    for _ in 0..3 {
        let mut late = Client::connect_raw(h.smtp);
        shutting_down(&late.read_reply());
        assert!(late.try_read_reply().is_none(), "closed after the 421");
    }
    let tcp = std::net::TcpStream::connect(h.smtps.unwrap()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut late_tls = Client::new(common::tls_client(&h.ca, tcp));
    shutting_down(&late_tls.read_reply());

    busy.send(b"part two\r\n.\r\n");
    let r = busy.read_reply();
    assert_eq!(r.code, 250, "{r}");
    let r = busy.read_reply();
    assert_eq!(r.code, 421, "{r}");
    let took = h.stop(Duration::from_secs(5));
    assert!(took < Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(h.smtp).is_err(),
        "the listener is closed once the drain is over"
    );
    assert_eq!(h.counts().total, 1);
}

#[test]
fn long_lines_and_mail_loops_are_refused() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    ehlo(&mut c);
    let mut long = b"Subject: long\r\n\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 999));
    long.extend_from_slice(b"\r\n");
    let r = c.send_message("a@example.test", &["r@dest.test"], &long);
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (554, "5.6.0".into()),
        "{r}"
    );
    let looping: String = (0..101)
        .map(|i| format!("Received: from hop{i}.test\r\n"))
        .collect::<String>()
        + "\r\nhi\r\n";
    let r = c.send_message("a@example.test", &["r@dest.test"], looping.as_bytes());
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (554, "5.4.6".into()),
        "{r}"
    );
    let hundred: String = (0..100)
        .map(|i| format!("Received: from hop{i}.test\r\n"))
        .collect::<String>()
        + "\r\nhi\r\n";
    let r = c.send_message("a@example.test", &["r@dest.test"], hundred.as_bytes());
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(h.counts().total, 1);
}

#[test]
fn a_flood_of_commands_without_mail_is_closed_with_421() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    // 99 more pipelined at once: the limit is 100 between two messages.
    c.send(&b"NOOP\r\n".repeat(99));
    for _ in 0..99 {
        assert_eq!(c.read_reply().code, 250);
    }
    // A message resets the count.
    let r = c.send_message("a@example.test", &["r@dest.test"], b"Subject: x\r\n\r\nhi\r\n");
    assert_eq!(r.code, 250, "{r}");
    c.send(&b"RSET\r\n".repeat(101));
    for _ in 0..100 {
        assert_eq!(c.read_reply().code, 250);
    }
    let r = c.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (421, "4.7.0".into()),
        "{r}"
    );
    assert!(c.try_read_reply().is_none(), "the session went on");
}

#[test]
fn a_bdat_line_that_does_not_parse_closes_the_session() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    // The chunk after it would otherwise be read as commands.
    c.send(b"BDAT 10 LAST x\r\nRSET\r\nQUIT\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 501, "{r}");
    let r = c.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (421, "4.5.0".into()),
        "{r}"
    );
    assert!(c.try_read_reply().is_none(), "the chunk was read as commands");
}

#[test]
fn recipients_that_differ_beyond_ascii_case_are_both_kept() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.test> SMTPUTF8", 250);
    c.expect("RCPT TO:<k@dest.test>", 250);
    // U+212A KELVIN SIGN: its Unicode lower case is "k", but it is another address.
    let r = c.cmd("RCPT TO:<\u{212a}@dest.test>");
    assert_eq!(r.code, 250, "{r}");
    assert!(!r.text().contains("duplicate"), "{r}");
    let r = c.cmd("RCPT TO:<K@dest.test>");
    assert!(r.text().contains("duplicate"), "ASCII case still folds: {r}");
    c.expect("DATA", 354);
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 250, "{r}");
    let claim =
        h.rt.block_on(h.queue.claim("t", 10, Duration::from_secs(60)))
            .unwrap()
            .unwrap();
    assert_eq!(claim.jobs[0].job.envelope.recipients.len(), 2);
}

#[test]
fn a_bdat_chunk_far_over_the_size_limit_is_not_read() {
    let h = Harness::start(false, &[], |c| c.max_message_size = 4096);
    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.send(b"BDAT 18446744073709551615 LAST\r\n");
    let r = c.read_reply();
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (552, "5.3.4".into()),
        "{r}"
    );
    assert_eq!(c.read_reply().code, 421);
    assert!(c.try_read_reply().is_none(), "the session went on");
}

/// The session's read buffer starts small and grows while a large message arrives: a message many times its
/// starting size, by DATA (dot-stuffed, lines of every length) and by BDAT, is stored octet for octet, and
/// the session goes on reading commands correctly after it.
#[test]
fn large_messages_arrive_whole_by_data_and_bdat() {
    let h = Harness::start(false, &[], |c| c.max_message_size = 4 * 1024 * 1024);
    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    let mut body = b"Subject: large\r\n\r\n".to_vec();
    for i in 0..6000 {
        // Lines of 0 to 199 octets, some starting with a dot.
        let len = (i * 37) % 200;
        let line: String = std::iter::repeat_n(char::from(b'a' + (i % 26) as u8), len).collect();
        if i % 11 == 0 {
            body.extend_from_slice(b".");
        }
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    assert!(body.len() > 500 * 1024, "{}", body.len());

    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.expect("DATA", 354);
    let mut wire = Vec::with_capacity(body.len() + 8192);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    c.send(&wire);
    let r = c.read_reply();
    assert_eq!(r.code, 250, "{r}");
    let stored = h.stored_body(&queued_id(&r.text()).unwrap());
    assert!(stored.ends_with(&body), "DATA: the stored message differs");

    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    let mut chunk = format!("BDAT {} LAST\r\n", body.len()).into_bytes();
    chunk.extend_from_slice(&body);
    c.send(&chunk);
    let r = c.read_reply();
    assert_eq!(r.code, 250, "{r}");
    let stored = h.stored_body(&queued_id(&r.text()).unwrap());
    assert!(stored.ends_with(&body), "BDAT: the stored message differs");
    c.expect("NOOP", 250);
}

/// A client that pipelines QUIT behind its message's end and then sends more than the server reads (still
/// unread when the server closes, so the close is a reset) still gets the message's `250` and the `221`:
/// the server holds back only a lone `221` for the close's FIN, never a reply to a message, which a reset
/// would drop (the client would not learn that its message was queued, and would send it again).
#[test]
fn a_message_pipelined_before_quit_gets_its_reply_even_when_the_close_is_a_reset() {
    let h = Harness::start(false, &[], |_| {});
    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.test>", 250);
    c.expect("RCPT TO:<r@dest.test>", 250);
    c.expect("DATA", 354);
    let mut wire = b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n".to_vec();
    // Far more than one read takes, without a line end: unread at the close.
    wire.resize(wire.len() + 512 * 1024, b'x');
    let mut writer = c.stream.try_clone().expect("a second handle");
    // Its own thread: the write blocks once the server stops reading, and fails when the reset comes.
    let sending = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut writer, &wire);
    });
    let queued = c.read_reply();
    assert_eq!(queued.code, 250, "{queued}");
    assert!(queued_id(&queued.text()).is_some(), "{queued}");
    let bye = c.read_reply();
    assert_eq!(bye.code, 221, "{bye}");
    sending.join().expect("the writer thread");
}

/// After `221` the server closes its side: a plain client reads the end of the stream, and a TLS client gets
/// TLS's `close_notify` first (a clean end, not a truncation: rustls reports a close without it as an error).
#[test]
fn quit_ends_the_connection_cleanly_over_plain_tcp_and_tls() {
    use std::io::Read;
    let h = Harness::start(true, &[], |_| {});
    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    c.expect("QUIT", 221);
    let mut rest = Vec::new();
    let read = c.stream.read_to_end(&mut rest).expect("the end of the stream");
    assert_eq!(read, 0, "nothing after 221: {rest:?}");

    let mut c = h.client();
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    let mut t = Client::new(common::tls_client(&h.ca, c.stream));
    t.expect("EHLO client.test", 250);
    t.expect("QUIT", 221);
    let mut rest = Vec::new();
    let read = t
        .stream
        .read_to_end(&mut rest)
        .expect("close_notify, then the end of the stream");
    assert_eq!(read, 0, "nothing after 221: {rest:?}");
}
