//! The control-plane commands of `ternctl` against an in-process control server in front of a real
//! redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::process::Stdio;
use std::time::Duration;

mod common;

use common::{Control, Store, enqueue, fails_one_line, json, ok, stderr, ternctl_at as ternctl};
use serde_json::Value;
use tern_core::{Envelope, Mailbox, Recipient, ReversePath};
use tern_queue::{NewMessage, Outcome};

#[tokio::test]
async fn queue_commands_show_tables_and_json_on_redis() {
    queue_commands_show_tables_and_json(Store::Redis).await;
}

#[tokio::test]
async fn queue_commands_show_tables_and_json_on_the_embedded_store() {
    queue_commands_show_tables_and_json(Store::Embedded).await;
}

async fn queue_commands_show_tables_and_json(store: Store) {
    let c = Control::start(store, None).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(enqueue(&c.queue, "a@sender.example", &[&format!("r{i}@one.example")]).await);
    }
    ids.push(enqueue(&c.queue, "b@sender.example", &["r@two.example"]).await);
    // One deferred job, so that there is a last error.
    let claim = c
        .queue
        .claim("w", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let job = &claim.jobs[0];
    c.queue
        .complete(
            "w",
            &job.lease,
            Outcome::defer(tern_core::time::now_ms() + 3_600_000, "451 4.7.1 greylisted"),
        )
        .await
        .unwrap();

    let out = ok(&ternctl(&c.url, &["queue", "status"]).await);
    for want in [
        "STATE",
        "due now",
        "in flight",
        "Oldest message",
        "DELIVERED",
        "DOMAIN",
        "one.example",
    ] {
        assert!(out.contains(want), "{want} missing in:\n{out}");
    }
    assert!(out.contains("451 4.7.1 greylisted"), "{out}");
    let doc = json(&ternctl(&c.url, &["--json", "queue", "status"]).await);
    assert_eq!(doc["totals"]["total"], 4);
    assert_eq!(doc["totals"]["deferred"], 1);
    assert_eq!(doc["recent"].as_array().unwrap().len(), 3);
    assert_eq!(doc["domains"][0]["domain"], "one.example");

    let out = ok(&ternctl(&c.url, &["queue", "shape"]).await);
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("DOMAIN") && header.contains("0-5m") && header.ends_with("320m+"),
        "{out}"
    );
    assert!(out.lines().nth(1).unwrap().starts_with("TOTAL"), "{out}");
    let doc = json(&ternctl(&c.url, &["--json", "queue", "shape"]).await);
    assert_eq!(doc["total"]["total"], 4);
    assert_eq!(doc["buckets"].as_array().unwrap().len(), 8);
    // By sender: the same age buckets, a row per sender.
    let out = ok(&ternctl(&c.url, &["queue", "shape", "--by", "sender"]).await);
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("SENDER") && header.ends_with("320m+"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("a@sender.example ") && l.split_whitespace().nth(1) == Some("3")),
        "{out}"
    );
    let doc = json(&ternctl(&c.url, &["--json", "queue", "shape", "--by", "sender"]).await);
    assert_eq!(doc["by"], "sender");
    assert_eq!(doc["rows"][0]["sender"], "a@sender.example", "{doc}");
    assert_eq!(doc["rows"][0]["total"], 3);

    let out = ok(&ternctl(&c.url, &["queue", "list"]).await);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.starts_with("JOB"), "{out}");
    // Columns line up: every row's DOMAIN column starts where the header's does.
    let col = out.lines().next().unwrap().find("DOMAIN").unwrap();
    assert!(
        out.lines().skip(1).all(|l| l[col..].contains(".example")),
        "{out}"
    );
    let doc = json(&ternctl(&c.url, &["--json", "queue", "list", "--domain", "two.example"]).await);
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["message_id"], ids[3].as_str());
    let doc = json(&ternctl(&c.url, &["--json", "queue", "list", "--state", "deferred"]).await);
    assert_eq!(doc["jobs"][0]["last_error"], "451 4.7.1 greylisted");
    let doc = json(
        &ternctl(
            &c.url,
            &[
                "--json",
                "queue",
                "list",
                "--sender",
                "a@sender.example",
                "--limit",
                "2",
            ],
        )
        .await,
    );
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 2);
    assert!(doc["next_cursor"].is_string());
    let doc = json(&ternctl(&c.url, &["--json", "queue", "list", "--older-than", "1h"]).await);
    assert!(doc["jobs"].as_array().unwrap().is_empty());
    let doc = json(&ternctl(&c.url, &["--json", "queue", "list", "--rcpt", "r1@one.example"]).await);
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 1);

    // Bad filters are usage errors: exit 2, naming the flag.
    let out = ternctl(&c.url, &["queue", "list", "--older-than", "soon"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--older-than"), "{}", stderr(&out));
    let out = ternctl(&c.url, &["queue", "list", "--state", "bogus"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("held"),
        "the states are listed: {}",
        stderr(&out)
    );
    // host:port works as well as a URL.
    let bare = c.url.trim_start_matches("http://");
    let doc = json(&ternctl(bare, &["--json", "queue", "status"]).await);
    assert_eq!(doc["totals"]["total"], 4);

    let out = ok(&ternctl(&c.url, &["queue", "top", "--iterations", "2"]).await);
    assert!(out.contains("rates") && out.contains("depth: 4 jobs"), "{out}");
    assert!(out.contains("held 0"), "{out}");
}

#[tokio::test]
async fn msg_commands_show_and_act() {
    let c = Control::start(Store::Redis, None).await;
    let a = enqueue(&c.queue, "a@sender.example", &["x@three.example"]).await;
    let b = enqueue(&c.queue, "a@sender.example", &["y@three.example"]).await;
    for i in 0..3 {
        enqueue(&c.queue, "a@sender.example", &[&format!("z{i}@four.example")]).await;
    }

    let out = ok(&ternctl(&c.url, &["msg", "show", &a]).await);
    for want in [
        "MESSAGE",
        "x@three.example",
        "RECIPIENT",
        "pending",
        "EVENT",
        "queued",
    ] {
        assert!(out.contains(want), "{want} missing in:\n{out}");
    }
    let doc = json(&ternctl(&c.url, &["--json", "msg", "show", &a, "--body"]).await);
    assert_eq!(doc["message_id"], a.as_str());
    assert_eq!(doc["jobs"][0]["recipients"][0]["address"], "x@three.example");
    assert_eq!(doc["attempts"][0]["kind"], "queued");
    assert_eq!(doc["tags"]["tenant"], "t1");

    let unknown = tern_core::MessageId::new().to_string();
    let err = fails_one_line(&ternctl(&c.url, &["msg", "show", &unknown]).await);
    assert!(err.contains("not found"), "{err}");
    fails_one_line(&ternctl(&c.url, &["msg", "delete", &unknown]).await);

    let out = ok(&ternctl(&c.url, &["msg", "retry", &a]).await);
    assert_eq!(out.trim(), "retried 1 job");
    let doc = json(&ternctl(&c.url, &["--json", "msg", "bounce", &b]).await);
    assert_eq!(doc["count"], 1);
    assert_eq!(doc["action"], "bounce");

    // By domain: refused without --yes when stdin is not a terminal.
    let err = fails_one_line(&ternctl(&c.url, &["msg", "delete", "--domain", "four.example"]).await);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(c.queue.domain_depth("four.example").await.unwrap().total, 3);
    // A dry run needs no confirmation and changes nothing.
    let out = ok(&ternctl(
        &c.url,
        &["msg", "delete", "--domain", "four.example", "--dry-run"],
    )
    .await);
    assert!(
        out.starts_with("would delete 3 jobs matching domain=four.example; nothing was changed"),
        "{out}"
    );
    assert_eq!(c.queue.domain_depth("four.example").await.unwrap().total, 3);
    let out = ok(&ternctl(&c.url, &["msg", "delete", "--domain", "four.example", "--yes"]).await);
    assert_eq!(out.trim(), "deleted 3 jobs");
    assert_eq!(c.queue.domain_depth("four.example").await.unwrap().total, 0);

    // Ids and --domain together, or neither: usage errors.
    assert_eq!(ternctl(&c.url, &["msg", "delete"]).await.status.code(), Some(2));
    assert_eq!(
        ternctl(&c.url, &["msg", "delete", &a, "--domain", "x.example"])
            .await
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test]
async fn domain_and_events_commands_on_redis() {
    domain_and_events_commands(Store::Redis).await;
}

#[tokio::test]
async fn domain_and_events_commands_on_the_embedded_store() {
    domain_and_events_commands(Store::Embedded).await;
}

async fn domain_and_events_commands(store: Store) {
    let c = Control::start(store, None).await;
    let id = enqueue(&c.queue, "a@sender.example", &["x@five.example"]).await;

    let out = ok(&ternctl(
        &c.url,
        &[
            "domain",
            "suspend",
            "five.example",
            "--for",
            "1h",
            "--reason",
            "receiver asked",
        ],
    )
    .await);
    // "until 15:04 UTC (in 1h)": the clock time, and how far.
    assert!(out.starts_with("suspended five.example until "), "{out}");
    assert!(
        (out.contains(" UTC (in 59m") || out.contains(" UTC (in 1h)")) && out.contains("(receiver asked)"),
        "{out}"
    );
    assert!(
        c.queue
            .claim("w", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );
    let out = ok(&ternctl(&c.url, &["domain", "list"]).await);
    assert!(out.starts_with("DOMAIN"), "{out}");
    assert!(
        out.contains("five.example") && out.contains("suspended") && out.contains("receiver asked"),
        "{out}"
    );
    // The job of a suspended domain shows as suspended, not as due.
    let doc = json(&ternctl(&c.url, &["--json", "queue", "list", "--domain", "five.example"]).await);
    assert_eq!(doc["jobs"][0]["state"], "suspended", "{doc}");
    let out = ok(&ternctl(&c.url, &["queue", "list", "--domain", "five.example"]).await);
    assert!(out.contains("when resumed"), "{out}");
    let doc = json(&ternctl(&c.url, &["--json", "queue", "status"]).await);
    assert_eq!(doc["totals"]["due_now"], 0, "{doc}");
    let out = ok(&ternctl(&c.url, &["queue", "status"]).await);
    assert!(out.contains("1 (1 domain)"), "{out}");
    let doc = json(&ternctl(&c.url, &["--json", "domain", "list"]).await);
    assert_eq!(doc["suspensions"][0]["domain"], "five.example");
    assert!(doc["suspensions"][0]["until_ms"].is_u64());
    let out = ok(&ternctl(&c.url, &["domain", "resume", "five.example"]).await);
    assert_eq!(out.trim(), "resumed five.example");
    let doc = json(&ternctl(&c.url, &["--json", "domain", "resume", "five.example"]).await);
    assert_eq!(doc["was_suspended"], false);
    let out = ternctl(&c.url, &["domain", "suspend", "five.example", "--for", "a while"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--for"), "{}", stderr(&out));

    // Events: with --json, JSON lines, the message's life in order.
    let out = ok(&ternctl(&c.url, &["events", "--json", "--domain", "five.example"]).await);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = lines.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["queued", "suspended", "resumed"], "{out}");
    assert_eq!(lines[0]["message_id"], id.as_str());
    assert!(lines[0]["position"].is_string());
    // Without: one line for people each, no position.
    let out = ok(&ternctl(&c.url, &["events", "--domain", "five.example"]).await);
    let text: Vec<&str> = out.lines().collect();
    assert_eq!(text.len(), 3, "{out}");
    assert!(
        text[0].contains("  queued ")
            && text[0].contains(&format!("{id}."))
            && text[0].contains("x@five.example"),
        "{out}"
    );
    let position = lines[0]["position"].as_str().unwrap();
    assert!(!out.contains(position), "{out}");
    let out = ok(&ternctl(&c.url, &["events", "--type", "queued"]).await);
    assert_eq!(out.lines().count(), 1, "{out}");
    let out = ok(&ternctl(&c.url, &["events", "--kind", "resumed", "--json"]).await);
    assert_eq!(out.lines().count(), 1, "{out}");

    // --follow: new events as they come.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args([
            "--server", &c.url, "events", "--follow", "--json", "--type", "queued",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    // The watch starts from "now", whenever the process gets there: enqueue until one shows up.
    let mut sent = Vec::new();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            sent.push(enqueue(&c.queue, "a@sender.example", &["later@five.example"]).await);
            if let Ok(line) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
                return line.unwrap().unwrap();
            }
        }
    })
    .await
    .expect("an event line in time");
    let e: Value = serde_json::from_str(&line).unwrap();
    assert!(sent.iter().any(|id| e["message_id"] == id.as_str()), "{line}");
    follow.kill().await.unwrap();
}

#[tokio::test]
async fn failures_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("admin.keys");
    {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(b"right-key"));
        std::fs::write(&keys, format!("ops:{digest}\n")).unwrap();
    }
    let c = Control::start(Store::Redis, Some(keys)).await;
    let err = fails_one_line(&ternctl(&c.url, &["--token", "wrong-key", "queue", "status"]).await);
    assert!(
        err.contains("refused the key") && err.contains("--token") && err.contains("TERN_ADMIN_TOKEN"),
        "{err}"
    );
    // A missing key: the error names the flag and the variable.
    let err = fails_one_line(&ternctl(&c.url, &["queue", "status"]).await);
    assert!(
        err.contains("the control plane needs an admin key: pass --token or set TERN_ADMIN_TOKEN"),
        "{err}"
    );
    ok(&ternctl(&c.url, &["--token", "right-key", "queue", "status"]).await);
    ok(&ternctl(&c.url, &["queue", "status", "--token", "right-key"]).await);
    // The admin key comes from TERN_ADMIN_TOKEN; TERN_TOKEN is send's and is not sent to the control
    // plane (the error says so).
    let with_env = |var: &'static str| {
        let url = c.url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
                .args(["--server", &url, "queue", "status"])
                .env_remove("TERN_TOKEN")
                .env_remove("TERN_ADMIN_TOKEN")
                .env(var, "right-key")
                .output()
                .await
                .unwrap()
        }
    };
    ok(&with_env("TERN_ADMIN_TOKEN").await);
    let err = fails_one_line(&with_env("TERN_TOKEN").await);
    assert!(
        err.contains("TERN_ADMIN_TOKEN") && err.contains("TERN_TOKEN is set"),
        "{err}"
    );

    // Unreachable: a port nobody listens on.
    let port = tern_testkit::ports::free_port().unwrap();
    let err = fails_one_line(&ternctl(&format!("http://127.0.0.1:{port}"), &["queue", "status"]).await);
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test]
async fn completions_print_a_script() {
    // Dynamic by default: the script asks ternctl.
    let out = ternctl("http://127.0.0.1:1", &["completions", "bash"]).await;
    let script = ok(&out);
    assert!(
        script.contains("_clap_complete_ternctl()") && script.contains("COMPLETE=\"bash\""),
        "{script}"
    );
    let out = ternctl("http://127.0.0.1:1", &["completions", "bash", "--static"]).await;
    let script = ok(&out);
    assert!(
        script.contains("_ternctl()") && script.contains("complete"),
        "{script}"
    );
    for shell in ["zsh", "fish"] {
        let out = ternctl("http://127.0.0.1:1", &["completions", shell]).await;
        assert!(ok(&out).contains("ternctl"));
    }
    assert_eq!(
        ternctl("http://127.0.0.1:1", &["completions", "tcsh"])
            .await
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test]
async fn bulk_actions_over_1000_messages_show_progress() {
    let c = Control::start(Store::Redis, None).await;
    let batch: Vec<NewMessage> = (0..1005)
        .map(|i| {
            let env = Envelope::new(
                ReversePath::Mailbox(Mailbox::parse("a@sender.example", false).unwrap()),
                vec![Recipient::new(
                    Mailbox::parse(&format!("r{i}@bulk.example"), false).unwrap(),
                )],
            );
            NewMessage::new(env, b"Subject: bulk\r\n\r\nhi\r\n".to_vec())
        })
        .collect();
    for r in c.queue.enqueue_batch(batch).await {
        r.unwrap();
    }
    let out = ternctl(&c.url, &["msg", "delete", "--domain", "bulk.example", "--yes"]).await;
    assert_eq!(ok(&out).trim(), "deleted 1005 jobs");
    let err = stderr(&out);
    assert!(
        err.contains("deleted: 1000/1005") && err.contains("deleted: 1005/1005"),
        "{err}"
    );
    assert_eq!(c.queue.domain_depth("bulk.example").await.unwrap().total, 0);
}
