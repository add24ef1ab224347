//! A re-drive of an intake record whose message was already handled (its cleanup was interrupted after the
//! jobs were made and delivered) changes nothing: no job comes back, and no record of one lingers.

mod common;

use std::time::Duration;

use tern_core::time::now_ms;

use tern_queue::conformance::message;
use tern_queue::{Completion, Outcome};
use tern_testkit::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_a_handled_message_leaves_no_job_and_no_record() {
    let server = RedisServer::start().expect("start redis-server");
    let opts = common::single(&server.url(), "redrive");
    let prefix = opts.key_prefix.clone();
    let q = common::queue(opts).await;

    // An idempotency key sends the message through the intake path, which marks what it materialised.
    let mut m = message(&["a@redrive.test"]);
    m.idempotency_key = Some("k-1".into());
    let envelope = m.envelope.clone();
    let r = q.enqueue(m).await.expect("enqueue");
    let c = q
        .claim("w", 10, Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("work");
    let done = q
        .complete("w", &c.jobs[0].lease, Outcome::delivered())
        .await
        .expect("complete");
    assert_eq!(done, Completion::Finished);

    // The intake record again, as if dropping it had failed, old enough for the reaper to drive it.
    let marker = server
        .cli(&["--scan", "--pattern", &format!("{{{prefix}:*:mat:{}", r.message)])
        .expect("scan");
    let tag = marker
        .lines()
        .next()
        .and_then(|k| k.split(":mat:").next())
        .expect("a materialised marker")
        .to_string();
    let at = now_ms() - 60_000;
    let payload = serde_json::json!({
        "id": r.message,
        "created_ms": at,
        "due_ms": at,
        "envelope": envelope,
    })
    .to_string();
    let body = "Subject: conformance\r\n\r\nhello\r\n";
    server
        .cli(&[
            "HSET",
            &format!("{tag}:intake:{}", r.message),
            "p",
            &payload,
            "b",
            body,
            "at",
            &at.to_string(),
        ])
        .expect("hset");
    server
        .cli(&[
            "ZADD",
            &format!("{tag}:intakes"),
            &at.to_string(),
            &r.message.to_string(),
        ])
        .expect("zadd");

    q.reap(now_ms()).await.expect("reap");

    assert!(q.get_message(r.message).await.expect("get").is_none());
    assert_eq!(q.counts().await.expect("counts").total, 0);
    assert!(
        q.claim("w", 10, Duration::from_secs(30))
            .await
            .expect("claim")
            .is_none(),
        "the handled message came back"
    );
    let records = server
        .cli(&["--scan", "--pattern", &format!("{{{prefix}:*:jd:*")])
        .expect("scan");
    assert_eq!(records.trim(), "", "records left behind");
    let intakes = server.cli(&["ZCARD", &format!("{tag}:intakes")]).expect("zcard");
    assert_eq!(intakes.trim(), "0", "the intake record was not dropped");
}
