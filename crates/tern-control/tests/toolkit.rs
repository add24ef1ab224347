//! The operator's toolkit through a real tonic client, against a queue on a real redis-server: hold and
//! release, actions by filter with a dry run, bounce with a reason, suspended jobs shown as such, finished
//! messages and FindMessages from the history, domain routes, and the live SMTP trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tern_proto::v1 as pb;
use tern_queue::{DeliveryAttempt, Outcome, TraceBus, TraceRecord};
use tonic::Code;

use common::{enqueue, message, start};

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn by_filter(f: impl FnOnce(&mut pb::MessageFilter)) -> pb::ActionRequest {
    let mut filter = pb::MessageFilter::default();
    f(&mut filter);
    pb::ActionRequest {
        filter: Some(filter),
        ..Default::default()
    }
}

async fn states(
    client: &mut pb::queue_admin_client::QueueAdminClient<tonic::transport::Channel>,
    domain: &str,
) -> Vec<String> {
    let list = client
        .list_messages(pb::ListMessagesRequest {
            filter: Some(pb::MessageFilter {
                domain: domain.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    list.jobs.into_iter().map(|j| j.state).collect()
}

#[tokio::test]
async fn a_held_message_is_never_claimed_shows_held_and_is_due_again_once_released() {
    let c = start(None).await;
    let mut admin = c.admin().await;
    let id = enqueue(&c.queue, message("a@src.test", &["x@held.test"])).await;
    let held = admin
        .hold(pb::ActionRequest {
            ids: ids(&[&id]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.count, 1);
    assert_eq!(states(&mut admin, "held.test").await, ["held"]);
    let status = admin
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let totals = status.totals.unwrap();
    assert_eq!((totals.held, totals.due_now, totals.in_flight), (1, 0, 0));
    let domain = status
        .domains
        .iter()
        .find(|d| d.domain == "held.test")
        .expect("the domain");
    assert_eq!(
        (domain.held, domain.in_flight),
        (1, 0),
        "a held job is not in flight"
    );
    assert!(
        c.queue
            .claim("w", 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "a held job was claimed"
    );
    let released = admin
        .release(pb::ActionRequest {
            ids: ids(&[&id]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.count, 1);
    assert_eq!(states(&mut admin, "held.test").await, ["queued"]);
    let claim = c.queue.claim("w", 10, Duration::from_secs(30)).await.unwrap();
    assert!(claim.is_some(), "the released job is due at once");
}

#[tokio::test]
async fn a_dry_run_by_sender_tag_and_age_counts_and_names_the_jobs_and_changes_nothing() {
    let c = start(None).await;
    let mut admin = c.admin().await;
    let first = enqueue(
        &c.queue,
        message("alerts@src.test", &["x@one.test"]).with_tag("tenant", "a"),
    )
    .await;
    enqueue(
        &c.queue,
        message("alerts@src.test", &["y@two.test"]).with_tag("tenant", "b"),
    )
    .await;
    enqueue(
        &c.queue,
        message("other@src.test", &["z@one.test"]).with_tag("tenant", "a"),
    )
    .await;
    let mut request = by_filter(|f| {
        f.sender = "ALERTS@src.test".into();
        f.tag = "tenant=a".into();
    });
    request.dry_run = true;
    let dry = admin.hold(request.clone()).await.unwrap().into_inner();
    assert_eq!(dry.count, 1);
    assert_eq!(dry.sample_ids, [format!("{first}.0")]);
    assert_eq!(
        states(&mut admin, "one.test").await,
        ["queued", "queued"],
        "a dry run changed nothing"
    );
    request.dry_run = false;
    assert_eq!(admin.hold(request).await.unwrap().into_inner().count, 1);
    // Nothing is an hour old yet.
    let mut old = by_filter(|f| {
        f.domain = "one.test".into();
        f.older_than_seconds = 3600;
    });
    old.dry_run = true;
    assert_eq!(admin.delete(old).await.unwrap().into_inner().count, 0);
}

#[tokio::test]
async fn only_a_bounce_takes_a_reason_and_the_job_keeps_it_for_the_dsn() {
    let c = start(None).await;
    let mut admin = c.admin().await;
    let id = enqueue(&c.queue, message("a@src.test", &["x@gone.test"])).await;
    let mut wrong = pb::ActionRequest {
        ids: ids(&[&id]),
        reason: "mailbox closed".into(),
        ..Default::default()
    };
    let e = admin.retry_now(wrong.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("reason"), "{}", e.message());
    wrong.reason = "customer asked\r\nX: y".into();
    assert_eq!(
        admin.bounce(wrong).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let bounced = admin
        .bounce(pb::ActionRequest {
            ids: ids(&[&id]),
            reason: "mailbox closed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bounced.count, 1);
    let claim = c
        .queue
        .claim("w", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the bounce");
    assert_eq!(claim.jobs[0].job.bounce_reason.as_deref(), Some("mailbox closed"));
}

#[tokio::test]
async fn jobs_of_a_suspended_domain_show_suspended_and_are_not_counted_due() {
    let c = start(None).await;
    let mut admin = c.admin().await;
    enqueue(&c.queue, message("a@src.test", &["x@paused.test"])).await;
    enqueue(&c.queue, message("a@src.test", &["y@open.test"])).await;
    admin
        .suspend_domain(pb::SuspendDomainRequest {
            domain: "paused.test".into(),
            duration_seconds: 3600,
            reason: "incident".into(),
        })
        .await
        .unwrap();
    assert_eq!(states(&mut admin, "paused.test").await, ["suspended"]);
    let totals = admin
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .totals
        .unwrap();
    assert_eq!(totals.due_now, 1, "only open.test's job is due");
    let suspended = admin
        .list_messages(pb::ListMessagesRequest {
            filter: Some(pb::MessageFilter {
                state: "suspended".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.jobs.len(), 1);
    assert_eq!(suspended.jobs[0].domain, "paused.test");
}

#[tokio::test]
async fn a_delivered_message_stays_readable_and_findable_after_it_left_the_queue() {
    let c = start(None).await;
    let mut admin = c.admin().await;
    let id = enqueue(
        &c.queue,
        message("Reset@src.test", &["user@dest.test"]).with_tag("kind", "password-reset"),
    )
    .await;
    let claim = c
        .queue
        .claim("w", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("work");
    let job = &claim.jobs[0];
    let attempt = DeliveryAttempt {
        remote_mx: Some("mx.dest.test".into()),
        remote_ip: Some("192.0.2.7".into()),
        tls: Some("TLSv1.3".into()),
        dsn: None,
    };
    c.queue
        .complete(
            "w",
            &job.lease,
            Outcome::delivered()
                .with_reply("250 2.0.0 queued as X")
                .with_attempt(attempt),
        )
        .await
        .unwrap();
    let shown = admin
        .get_message(pb::GetMessageRequest {
            id: id.clone(),
            include_body: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.finished);
    assert_eq!(shown.outcome, "delivered");
    assert!(shown.jobs.is_empty());
    assert_eq!(shown.recipients.len(), 1);
    assert_eq!(shown.recipients[0].outcome, "delivered");
    let delivered = shown
        .attempts
        .iter()
        .find(|a| a.kind == "delivered")
        .expect("the attempt");
    assert_eq!(delivered.remote_mx, "mx.dest.test");
    assert_eq!(delivered.remote_ip, "192.0.2.7");
    assert!(delivered.reply.contains("250 2.0.0"));
    for request in [
        pb::FindMessagesRequest {
            recipient: "USER@dest.test".into(),
            ..Default::default()
        },
        pb::FindMessagesRequest {
            sender: "reset@src.test".into(),
            ..Default::default()
        },
        pb::FindMessagesRequest {
            tag: "kind=password-reset".into(),
            ..Default::default()
        },
    ] {
        let found = admin.find_messages(request).await.unwrap().into_inner();
        assert_eq!(found.messages.len(), 1);
        assert_eq!(found.messages[0].message_id, id);
        assert_eq!(found.messages[0].outcome, "delivered");
    }
    let none = admin
        .find_messages(pb::FindMessagesRequest {
            recipient: "nobody@dest.test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.messages.is_empty());
    let empty = admin
        .find_messages(pb::FindMessagesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_route_is_set_listed_and_removed_and_a_bad_target_is_refused() {
    let c = start(None).await;
    let mut admin = c.admin().await;
    let set = admin
        .route_domain(pb::RouteDomainRequest {
            domain: "Stuck.test".into(),
            target: "relay.example.net:2525".into(),
            duration_seconds: 7200,
            reason: "incident 42".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .route
        .unwrap();
    assert_eq!(
        (set.domain.as_str(), set.target.as_str()),
        ("stuck.test", "relay.example.net:2525")
    );
    assert!(set.until_ms > set.since_ms);
    let list = admin
        .list_routes(pb::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.routes.len(), 1);
    assert_eq!(list.routes[0].reason, "incident 42");
    let bad = admin
        .route_domain(pb::RouteDomainRequest {
            domain: "stuck.test".into(),
            target: "relay:99999".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("target"), "{}", bad.message());
    let removed = admin
        .unroute_domain(pb::UnrouteDomainRequest {
            domain: "stuck.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.was_routed);
    assert!(
        admin
            .list_routes(pb::ListRoutesRequest {})
            .await
            .unwrap()
            .into_inner()
            .routes
            .is_empty()
    );
}

#[tokio::test]
async fn a_trace_streams_the_records_of_matching_deliveries_only() {
    let c = start(None).await;
    let mut trace = c.trace().await;
    let mut stream = trace
        .watch(pb::SmtpTraceRequest {
            domain: "traced.test".into(),
            mx: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The registration is visible to workers once the stream is open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.store.trace_filters().await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trace never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = |domain: &str, text: &str| TraceRecord {
        time_ms: 1,
        worker: "w1".into(),
        session: "s1".into(),
        domain: domain.into(),
        mx: "mx.traced.test".into(),
        ip: "192.0.2.1".into(),
        kind: "recv".into(),
        text: text.into(),
    };
    // Published until one arrives: a pub/sub subscription may take a moment to be in place.
    let line = loop {
        c.store
            .publish_trace(&[
                record("other.test", "S: 250 not this"),
                record("traced.test", "S: 250 ok"),
            ])
            .await
            .unwrap();
        if let Ok(next) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
            break next.unwrap().expect("a line");
        }
        assert!(tokio::time::Instant::now() < deadline, "no trace line arrived");
    };
    assert_eq!(line.domain, "traced.test");
    assert_eq!(line.text, "S: 250 ok");
    assert_eq!(line.worker, "w1");
}
