//! Real SMTP clients against a real server in front of a real redis-server: swaks (STARTTLS, implicit TLS,
//! AUTH PLAIN and LOGIN, pipelining, relay refusal), Python smtplib (SMTPUTF8) and Postfix smtp-source (load).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Harness, queued_id};
use tern_queue::ListFilter;
use tern_testkit::{SmtpSource, require_tool, run_with_timeout};

/// Runs swaks with `args`; returns whether it succeeded and its transcript.
fn swaks(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(require_tool("swaks").unwrap());
    cmd.args([
        "--helo",
        "client.test",
        "--from",
        "sender@example.test",
        "--timeout",
        "15",
    ])
    .args(args);
    let out = run_with_timeout("swaks", cmd, Duration::from_secs(30)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Fails with a clear message when this swaks cannot do TLS (Debian: its Recommends are not installed).
fn require_swaks_tls() {
    let mut cmd = Command::new(require_tool("swaks").unwrap());
    cmd.arg("--support");
    let out = run_with_timeout("swaks", cmd, Duration::from_secs(30)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("TLS supported"),
        "swaks has no TLS support; install libnet-ssleay-perl and libio-socket-ssl-perl:\n{text}"
    );
}

/// The queue id in a swaks transcript.
fn swaks_id(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(|l| l.contains("queued as").then(|| queued_id(l)).flatten())
        .unwrap_or_else(|| panic!("no queued id in:\n{transcript}"))
}

fn auth_user_of(h: &Harness, id: &str) -> Option<String> {
    let info =
        h.rt.block_on(h.queue.get_message(id.parse().unwrap()))
            .unwrap()
            .expect("message in the queue");
    info.jobs[0].tags.get("auth_user").cloned()
}

#[test]
fn swaks_starttls_auth_plain_and_login_and_implicit_tls() {
    require_swaks_tls();
    let h = Harness::start(true, &[("alice", "s3cret pw", None)], |c| {
        c.relay_networks.clear()
    });
    let server = h.smtp.to_string();
    let mut ids = Vec::new();
    for mech in ["PLAIN", "LOGIN"] {
        let (ok, t) = swaks(&[
            "--server",
            &server,
            "--to",
            "r@dest.test",
            "--tls",
            "--auth",
            mech,
            "--auth-user",
            "alice",
            "--auth-password",
            "s3cret pw",
        ]);
        assert!(ok, "{mech}:\n{t}");
        assert!(t.contains("<~  235 2.7.0"), "{mech}:\n{t}");
        let id = swaks_id(&t);
        assert_eq!(auth_user_of(&h, &id).as_deref(), Some("alice"), "{mech}");
        ids.push(id);
    }
    let smtps = h.smtps.unwrap().to_string();
    let (ok, t) = swaks(&[
        "--server",
        &smtps,
        "--to",
        "r@dest.test",
        "--tls-on-connect",
        "--auth",
        "LOGIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "s3cret pw",
    ]);
    assert!(ok, "{t}");
    assert!(t.contains("<~  220 "), "{t}");
    let id = swaks_id(&t);
    assert_eq!(auth_user_of(&h, &id).as_deref(), Some("alice"));
    ids.push(id);
    // A wrong password gets 535.
    let (ok, t) = swaks(&[
        "--server",
        &server,
        "--to",
        "r@dest.test",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "wrong",
    ]);
    assert!(!ok, "{t}");
    assert!(t.contains("535 5.7.8"), "{t}");
    assert_eq!(h.counts().total, 3);
    // Every message says it came in over TLS, authenticated.
    let claim =
        h.rt.block_on(h.queue.claim("t", 10, Duration::from_secs(60)))
            .unwrap()
            .unwrap();
    assert_eq!(claim.jobs.len(), 3);
    for job in &claim.jobs {
        assert!(ids.contains(&job.job.id.message.to_string()));
        let body = String::from_utf8_lossy(&job.body);
        assert!(body.contains(" with ESMTPSA id "), "{body}");
    }
}

#[test]
fn swaks_pipelining_from_a_relay_network_and_refusal_from_outside() {
    let h = Harness::start(false, &[], |_| {});
    let server = h.smtp.to_string();
    let (ok, t) = swaks(&[
        "--server",
        &server,
        "--to",
        "a@dest.test,b@dest.test,c@other.test",
        "--pipeline",
    ]);
    assert!(ok, "{t}");
    let id = swaks_id(&t);
    let info =
        h.rt.block_on(h.queue.get_message(id.parse().unwrap()))
            .unwrap()
            .unwrap();
    assert_eq!(info.jobs.len(), 2, "one job per destination domain");
    assert!(info.jobs.iter().all(|j| !j.tags.contains_key("auth_user")));
    // 127.0.0.2 is outside relay_networks = 127.0.0.1/32 and did not authenticate.
    let (ok, t) = swaks(&["--server", &server, "--to", "r@dest.test", "-li", "127.0.0.2"]);
    assert!(!ok, "{t}");
    assert!(t.contains("530 5.7.0"), "{t}");
    assert_eq!(h.counts().total, 2);
}

#[test]
fn python_smtplib_sends_an_smtputf8_message() {
    let h = Harness::start(false, &[], |_| {});
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "sénder@exämple.test"
m["To"] = "üser@dëst.test"
m["Subject"] = "héllo"
m.set_content("bödy\n")
with smtplib.SMTP("127.0.0.1", {port}, local_hostname="client.test", timeout=15) as s:
    refused = s.send_message(m, mail_options=["SMTPUTF8"])
    assert not refused, refused
print("sent")
"#,
        port = h.smtp.port()
    );
    let mut cmd = Command::new(require_tool("python3").unwrap());
    cmd.arg("-c").arg(script);
    let out = run_with_timeout("python3", cmd, Duration::from_secs(30)).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let filter = ListFilter::default();
    let page = h.rt.block_on(h.queue.list(&filter, None, 10)).unwrap();
    assert_eq!(page.items.len(), 1);
    let env = &page.items[0].envelope;
    assert!(env.smtputf8);
    assert_eq!(env.sender.to_string(), "<sénder@exämple.test>");
    assert_eq!(env.recipients[0].address.to_string(), "üser@dëst.test");
    let id = page.items[0].id.message.to_string();
    let body = String::from_utf8(h.stored_body(&id)).unwrap();
    assert!(body.contains("with UTF8SMTP id"), "{body}");
    assert!(body.contains("Subject: héllo"), "{body}");
}

#[test]
fn smtp_source_2000_messages_over_20_sessions_are_all_queued() {
    let h = Harness::start(false, &[], |_| {});
    let run = SmtpSource {
        target: h.smtp,
        sessions: 20,
        messages: 2000,
        size: 1024,
        from: "load@example.test".into(),
        to: "sink@dest.test".into(),
        reuse: true,
        timeout: Duration::from_secs(60),
        extra_args: Vec::new(),
    };
    let out = run.run().unwrap();
    assert!(
        out.status.success(),
        "smtp-source failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = h.counts();
    assert_eq!(counts.total, 2000, "{counts:?}");
    assert_eq!(counts.queued, 2000, "{counts:?}");
}
