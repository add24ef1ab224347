//! The operator's toolkit against a control plane over a real store (redis-server, and the embedded store):
//! hold and release, bulk actions by filter with a dry run, bounce with a reason, finished messages' history
//! and `msg find`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::time::Duration;

mod common;

use common::{Control, Store, enqueue, fails_one_line, json, ok, ternctl_at as ternctl};
use tern_queue::{DeliveryAttempt, Outcome};

#[tokio::test]
async fn hold_and_release_by_id_and_by_filter_on_redis() {
    hold_and_release_by_id_and_by_filter(Store::Redis).await;
}

#[tokio::test]
async fn hold_and_release_by_id_and_by_filter_on_the_embedded_store() {
    hold_and_release_by_id_and_by_filter(Store::Embedded).await;
}

async fn hold_and_release_by_id_and_by_filter(store: Store) {
    let c = Control::start(store, None).await;
    let a = enqueue(&c.queue, "a@sender.example", &["x@h1.example"]).await;
    let b = enqueue(&c.queue, "other@sender.example", &["y@h1.example"]).await;
    let d = enqueue(&c.queue, "a@sender.example", &["z@h2.example"]).await;

    // One message by id.
    let out = ok(&ternctl(&c.url, &["msg", "hold", "--dry-run", &a]).await);
    assert_eq!(
        out.lines().next(),
        Some("would hold 1 job; nothing was changed"),
        "{out}"
    );
    let out = ok(&ternctl(&c.url, &["msg", "hold", &a]).await);
    assert_eq!(out.trim(), "held 1 job");
    let doc = json(&ternctl(&c.url, &["--json", "queue", "list", "--state", "held"]).await);
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{doc}");
    assert_eq!(jobs[0]["message_id"], a.as_str());
    let out = ok(&ternctl(&c.url, &["queue", "list", "--state", "held"]).await);
    assert!(out.contains(" held ") && out.contains("when released"), "{out}");
    let doc = json(&ternctl(&c.url, &["--json", "queue", "status"]).await);
    assert_eq!(doc["totals"]["held"], 1, "{doc}");
    let out = ok(&ternctl(&c.url, &["queue", "status"]).await);
    assert!(
        out.lines().any(|l| l.starts_with("held") && l.ends_with(" 1")),
        "{out}"
    );
    let out = ok(&ternctl(&c.url, &["msg", "show", &a]).await);
    assert!(out.contains(" held "), "{out}");
    // A held job is never claimed: the claim takes the others only.
    let claim = c.queue.claim("w", 10, Duration::from_secs(60)).await.unwrap();
    if let Some(claim) = &claim {
        assert!(
            claim.jobs.iter().all(|j| j.job.id.message.to_string() != a),
            "held job claimed"
        );
        for j in &claim.jobs {
            c.queue.release("w", &j.lease).await.unwrap();
        }
    }
    let out = ok(&ternctl(&c.url, &["msg", "release", &a]).await);
    assert_eq!(out.trim(), "released 1 job");
    let doc = json(&ternctl(&c.url, &["--json", "msg", "release", &a]).await);
    assert_eq!(doc["count"], 0);
    assert_eq!(doc["action"], "release");

    // By filter, combined with AND: a dry run prints the count and the first ids, and changes nothing.
    let out = ok(&ternctl(
        &c.url,
        &[
            "queue",
            "hold",
            "--domain",
            "h1.example",
            "--sender",
            "other@sender.example",
            "--dry-run",
        ],
    )
    .await);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("would hold 1 job matching domain=h1.example sender=other@sender.example; nothing was changed"),
        "{out}"
    );
    assert_eq!(lines.next(), Some(format!("{b}.0").as_str()), "{out}");
    let doc = json(
        &ternctl(
            &c.url,
            &["--json", "queue", "hold", "--domain", "h1.example", "--dry-run"],
        )
        .await,
    );
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["count"], 2);
    assert_eq!(doc["sample_ids"].as_array().unwrap().len(), 2, "{doc}");
    let doc = json(&ternctl(&c.url, &["--json", "queue", "status"]).await);
    assert_eq!(doc["totals"]["held"], 0, "the dry run changed nothing: {doc}");

    // Without --yes and without a terminal: refused, nothing changed.
    let err = fails_one_line(&ternctl(&c.url, &["queue", "hold", "--domain", "h1.example"]).await);
    assert!(err.contains("--yes") && err.contains("--dry-run"), "{err}");
    let out = ok(&ternctl(&c.url, &["queue", "hold", "--domain", "h1.example", "--yes"]).await);
    assert_eq!(out.trim(), "held 2 jobs");
    let out = ok(&ternctl(
        &c.url,
        &[
            "queue",
            "release",
            "--state",
            "held",
            "--tag",
            "tenant=t1",
            "--yes",
        ],
    )
    .await);
    assert_eq!(out.trim(), "released 2 jobs");

    // Filters that match nothing touch nothing.
    let out = ok(&ternctl(
        &c.url,
        &[
            "queue",
            "retry",
            "--tag",
            "tenant=t1",
            "--older-than",
            "1h",
            "--yes",
        ],
    )
    .await);
    assert_eq!(out.trim(), "retried 0 jobs");
    let out = ok(&ternctl(&c.url, &["queue", "delete", "--tag", "tenant=nobody", "--yes"]).await);
    assert_eq!(out.trim(), "deleted 0 jobs");
    let out = ok(&ternctl(
        &c.url,
        &[
            "queue",
            "delete",
            "--domain",
            "h2.example",
            "--tag",
            "tenant",
            "--yes",
        ],
    )
    .await);
    assert_eq!(out.trim(), "deleted 1 job");
    // The deleted message stays readable from its history.
    let out = ok(&ternctl(&c.url, &["msg", "show", &d]).await);
    assert!(out.contains("status    deleted"), "{out}");
    let out = ok(&ternctl(
        &c.url,
        &["queue", "retry", "--sender", "a@sender.example", "--yes"],
    )
    .await);
    assert_eq!(out.trim(), "retried 1 job");
}

#[tokio::test]
async fn bounce_takes_a_reason_for_the_dsn() {
    let c = Control::start(Store::Redis, None).await;
    let a = enqueue(&c.queue, "a@sender.example", &["x@b1.example"]).await;
    let b = enqueue(&c.queue, "a@sender.example", &["y@b2.example"]).await;
    let out = ok(&ternctl(
        &c.url,
        &["msg", "bounce", &a, "--reason", "mailbox moved to x@new.example"],
    )
    .await);
    assert_eq!(out.trim(), "bounced 1 job");
    let out = ok(&ternctl(
        &c.url,
        &[
            "queue",
            "bounce",
            "--domain",
            "b2.example",
            "--reason",
            "domain retired",
            "--yes",
        ],
    )
    .await);
    assert_eq!(out.trim(), "bounced 1 job");
    // The worker that claims them finds the reasons for the DSNs.
    let mut reasons = Vec::new();
    while let Some(claim) = c.queue.claim("w", 10, Duration::from_secs(60)).await.unwrap() {
        for j in claim.jobs {
            assert!(j.job.admin_bounce);
            reasons.push((j.job.id.message.to_string(), j.job.bounce_reason.clone()));
        }
    }
    reasons.sort();
    let mut want = vec![
        (a, Some("mailbox moved to x@new.example".to_string())),
        (b, Some("domain retired".to_string())),
    ];
    want.sort();
    assert_eq!(reasons, want);
}

/// Claims the one due job and completes it with `outcome`.
async fn finish(c: &Control, outcome: Outcome) {
    let claim = c
        .queue
        .claim("w", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a due job");
    c.queue
        .complete("w", &claim.jobs[0].lease, outcome)
        .await
        .unwrap();
}

#[tokio::test]
async fn finished_messages_stay_readable_and_findable_on_redis() {
    finished_messages_stay_readable_and_findable(Store::Redis).await;
}

#[tokio::test]
async fn finished_messages_stay_readable_and_findable_on_the_embedded_store() {
    finished_messages_stay_readable_and_findable(Store::Embedded).await;
}

async fn finished_messages_stay_readable_and_findable(store: Store) {
    let c = Control::start(store, None).await;
    let delivered = enqueue(&c.queue, "s@sender.example", &["d@deliv.example"]).await;
    finish(
        &c,
        Outcome::delivered()
            .with_reply("250 2.0.0 queued as 42")
            .with_attempt(DeliveryAttempt {
                remote_mx: Some("mx.deliv.example".into()),
                remote_ip: Some("192.0.2.10".into()),
                tls: Some("TLSv1.3 TLS_AES_128_GCM_SHA256".into()),
                dsn: None,
            }),
    )
    .await;
    let failed = enqueue(&c.queue, "s@sender.example", &["f@fail.example"]).await;
    finish(
        &c,
        Outcome::fail("550 5.1.1 no such user").with_attempt(DeliveryAttempt {
            remote_mx: Some("mx.fail.example".into()),
            remote_ip: Some("192.0.2.20".into()),
            tls: None,
            dsn: Some("01KBDSN0000000000000000000".into()),
        }),
    )
    .await;
    let queued = enqueue(&c.queue, "other@sender.example", &["q@deliv.example"]).await;

    // Show: outcome, finished time, every recipient with how it ended, every attempt.
    let out = ok(&ternctl(&c.url, &["msg", "show", &delivered]).await);
    assert!(out.contains("delivered, finished 20"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("d@deliv.example") && l.contains("delivered") && l.contains("250 2.0.0")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("delivered")
            && l.contains("mx.deliv.example")
            && l.contains("192.0.2.10")
            && l.contains("TLSv1.3")),
        "{out}"
    );
    let doc = json(&ternctl(&c.url, &["--json", "msg", "show", &failed]).await);
    assert_eq!(doc["finished"], true, "{doc}");
    assert_eq!(doc["outcome"], "bounced", "{doc}");
    assert!(doc["finished_ms"].is_u64(), "{doc}");
    assert_eq!(doc["recipients"][0]["address"], "f@fail.example");
    assert_eq!(doc["recipients"][0]["outcome"], "bounced");
    let attempts = doc["attempts"].as_array().unwrap();
    let last = attempts.last().unwrap();
    assert_eq!(last["kind"], "failed", "{doc}");
    assert_eq!(last["remote_ip"], "192.0.2.20");
    assert_eq!(last["dsn_id"], "01KBDSN0000000000000000000");
    let out = ok(&ternctl(&c.url, &["msg", "show", &failed]).await);
    assert!(out.contains("01KBDSN0000000000000000000"), "the DSN id: {out}");

    // Find: by recipient, sender, tag and time, queued or finished, newest first.
    let out = ok(&ternctl(&c.url, &["msg", "find", "--to", "d@deliv.example"]).await);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert!(out.starts_with("MESSAGE"), "{out}");
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].starts_with(&delivered) && rows[0].contains("delivered"),
        "{out}"
    );
    let doc = json(
        &ternctl(
            &c.url,
            &[
                "--json",
                "msg",
                "find",
                "--from",
                "s@sender.example",
                "--since",
                "1h",
            ],
        )
        .await,
    );
    let ids: Vec<&str> = doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [failed.as_str(), delivered.as_str()], "{doc}");
    assert_eq!(doc["complete"], true);
    let doc = json(
        &ternctl(
            &c.url,
            &["--json", "msg", "find", "--tag", "tenant=t1", "--limit", "1"],
        )
        .await,
    );
    assert_eq!(doc["messages"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["messages"][0]["message_id"], queued.as_str());
    assert_eq!(doc["messages"][0]["outcome"], "queued");
    let doc = json(&ternctl(&c.url, &["--json", "msg", "find", "--since", "2000-01-01"]).await);
    assert_eq!(doc["messages"].as_array().unwrap().len(), 3, "{doc}");
    let out = ok(&ternctl(&c.url, &["msg", "find", "--to", "nobody@deliv.example"]).await);
    assert_eq!(out.lines().count(), 1, "the header only: {out}");
}
