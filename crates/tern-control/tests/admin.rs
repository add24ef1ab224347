//! Every QueueAdmin and Events RPC through a real tonic client, against a queue on a real redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use tern_core::time::now_ms;
use tern_proto::v1 as pb;
use tern_queue::{Outcome, Queue};
use tonic::Code;

use common::{enqueue, message, start};

/// Claims one job (batch of one) and returns it with its lease.
async fn claim_one(queue: &std::sync::Arc<dyn Queue>) -> tern_queue::ClaimedJob {
    let claim = queue
        .claim("test-worker", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a due job");
    claim.jobs.into_iter().next().unwrap()
}

fn filter(f: impl FnOnce(&mut pb::MessageFilter)) -> Option<pb::MessageFilter> {
    let mut m = pb::MessageFilter::default();
    f(&mut m);
    Some(m)
}

async fn list_all(
    client: &mut pb::queue_admin_client::QueueAdminClient<tonic::transport::Channel>,
    f: Option<pb::MessageFilter>,
    limit: u32,
) -> Vec<pb::JobSummary> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                filter: f.clone(),
                cursor: cursor.clone(),
                limit,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= limit as usize);
        out.extend(page.jobs);
        if page.next_cursor.is_empty() {
            return out;
        }
        cursor = page.next_cursor;
    }
}

#[tokio::test]
async fn status_shape_list_and_get_show_real_states() {
    let c = start(None).await;
    let q = &c.queue;
    for i in 0..3 {
        enqueue(q, message("alice@sender.example", &[&format!("u{i}@a.example")])).await;
    }
    let tagged = enqueue(
        q,
        message("bob@sender.example", &["x@b.example", "y@b.example"]).with_tag("tenant", "t1"),
    )
    .await;
    let split = enqueue(
        q,
        message("alice@sender.example", &["z@a.example", "w@c.example"]),
    )
    .await;
    // 6 jobs: a.example x4, b.example x1, c.example x1.

    // One deferred (attempted, waiting an hour), one in flight, one failed (gone).
    let deferred = claim_one(q).await;
    q.complete(
        "test-worker",
        &deferred.lease,
        Outcome::defer(now_ms() + 3_600_000, "451 4.7.1 try later"),
    )
    .await
    .unwrap();
    let in_flight = claim_one(q).await;
    let failed = claim_one(q).await;
    q.complete(
        "test-worker",
        &failed.lease,
        Outcome::fail("550 5.1.1 no such user"),
    )
    .await
    .unwrap();

    let mut admin = c.admin().await;
    let status = admin
        .get_status(pb::GetStatusRequest { top_domains: 2 })
        .await
        .unwrap()
        .into_inner();
    let t = status.totals.unwrap();
    assert_eq!(t.total, 5, "{t:?}");
    assert_eq!(t.in_flight, 1, "{t:?}");
    assert_eq!(t.deferred, 1, "{t:?}");
    assert_eq!(t.scheduled, 4, "{t:?}");
    assert_eq!(t.due_now, 3, "{t:?}");
    assert_eq!(t.suspended, 0);
    assert!(status.oldest_age_ms < 60_000, "{}", status.oldest_age_ms);
    assert_eq!(status.domains.len(), 2);
    assert!(status.domains[0].depth >= status.domains[1].depth);
    let windows: Vec<u64> = status.recent.iter().map(|r| r.window_seconds).collect();
    assert_eq!(windows, [60, 300, 3600]);
    assert!(
        status.recent.iter().all(|r| r.failed >= 1 && r.deferred >= 1),
        "{:?}",
        status.recent
    );
    let deferred_domain = status
        .domains
        .iter()
        .chain(std::iter::empty())
        .find(|d| d.domain == deferred.job.domain);
    if let Some(d) = deferred_domain {
        assert_eq!(d.last_error, "451 4.7.1 try later");
    }

    let shape = admin
        .get_shape(pb::GetShapeRequest {
            top_domains: 0,
            by: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shape.buckets.len(), 8);
    assert_eq!(shape.buckets[0], "0-5m");
    assert_eq!(shape.buckets[7], "320m+");
    let total = shape.total.unwrap();
    assert_eq!(total.total, 5);
    assert_eq!(total.counts, [5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(shape.rows.iter().map(|r| r.total).sum::<u64>(), 5);
    assert!(shape.rows.windows(2).all(|w| w[0].total >= w[1].total));

    // Listing: everything, paged two at a time, with no repeats.
    let all = list_all(&mut admin, None, 2).await;
    assert_eq!(all.len(), 5);
    assert_eq!(all.iter().map(|j| &j.job_id).collect::<HashSet<_>>().len(), 5);
    // Each filter.
    let by_domain = list_all(&mut admin, filter(|f| f.domain = "B.example".into()), 10).await;
    assert!(by_domain.iter().all(|j| j.domain == "b.example"));
    let by_sender = list_all(&mut admin, filter(|f| f.sender = "bob@sender.example".into()), 10).await;
    assert_eq!(
        by_sender.len(),
        usize::from(failed.job.id.message.to_string() != tagged)
    );
    let by_rcpt = list_all(&mut admin, filter(|f| f.recipient = "w@c.example".into()), 10).await;
    assert!(
        by_rcpt
            .iter()
            .all(|j| j.message_id == split && j.domain == "c.example")
    );
    let by_state = list_all(&mut admin, filter(|f| f.state = "deferred".into()), 10).await;
    assert_eq!(by_state.len(), 1);
    assert_eq!(by_state[0].job_id, deferred.job.id.to_string());
    assert_eq!(by_state[0].attempts, 1);
    assert_eq!(by_state[0].last_error, "451 4.7.1 try later");
    let inflight = list_all(&mut admin, filter(|f| f.state = "inflight".into()), 10).await;
    assert_eq!(inflight.len(), 1);
    assert_eq!(inflight[0].job_id, in_flight.job.id.to_string());
    let attempted = list_all(&mut admin, filter(|f| f.min_attempts = 1), 10).await;
    assert_eq!(attempted.len(), 1);
    let old = list_all(&mut admin, filter(|f| f.older_than_seconds = 3600), 10).await;
    assert!(old.is_empty());
    let young = list_all(&mut admin, filter(|f| f.older_than_seconds = 0), 1).await;
    assert_eq!(young.len(), 5);
    let by_tag = list_all(&mut admin, filter(|f| f.tag = "tenant=t1".into()), 10).await;
    assert!(
        by_tag
            .iter()
            .all(|j| j.message_id == tagged && j.tags["tenant"] == "t1")
    );
    let by_tag_key = list_all(&mut admin, filter(|f| f.tag = "tenant".into()), 1).await;
    assert_eq!(by_tag.len(), by_tag_key.len());

    // One message: jobs with recipients, and its history from the events.
    let shown = admin
        .get_message(pb::GetMessageRequest {
            id: deferred.job.id.to_string(),
            include_body: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.message_id, deferred.job.id.message.to_string());
    assert!(shown.size > 0);
    let job = shown
        .jobs
        .iter()
        .find(|j| j.job.as_ref().unwrap().job_id == deferred.job.id.to_string())
        .unwrap();
    assert!(job.recipients.iter().all(|r| r.status == "pending"));
    let kinds: Vec<&str> = shown.attempts.iter().map(|a| a.kind.as_str()).collect();
    assert!(kinds.starts_with(&["queued"]), "{kinds:?}");
    assert!(kinds.contains(&"deferred"), "{kinds:?}");
    let d = shown.attempts.iter().find(|a| a.kind == "deferred").unwrap();
    assert_eq!(d.reply, "451 4.7.1 try later");
    assert!(!d.tls);
    assert!(shown.content_available, "{}", shown.content_note);
    assert!(shown.headers.contains("Subject:"), "{}", shown.headers);
    drop(in_flight);
}

#[tokio::test]
async fn actions_by_id_and_by_domain_return_counts() {
    let c = start(None).await;
    let q = &c.queue;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(enqueue(q, message("s@sender.example", &[&format!("r{i}@d.example")])).await);
    }
    let other = enqueue(q, message("s@sender.example", &["r@e.example"])).await;
    let mut admin = c.admin().await;

    // Retry a deferred job by id: it becomes due at once.
    let j = claim_one(q).await;
    q.complete(
        "test-worker",
        &j.lease,
        Outcome::defer(now_ms() + 3_600_000, "421 busy"),
    )
    .await
    .unwrap();
    let n = admin
        .retry_now(pb::ActionRequest {
            ids: vec![j.job.id.to_string()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 1);
    let retried = list_all(&mut admin, filter(|f| f.state = "deferred".into()), 10).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].job_id, j.job.id.to_string());
    assert!(
        retried[0].next_attempt_ms <= now_ms(),
        "the retried job is due now"
    );

    // Dry run by domain counts without acting.
    let dry = admin
        .delete(pb::ActionRequest {
            filter: filter(|f| f.domain = "d.example".into()),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.count, 4);

    // Bounce one message by id: flagged, listed as admin bounce.
    let n = admin
        .bounce(pb::ActionRequest {
            ids: vec![other.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 1);
    let listed = list_all(&mut admin, filter(|f| f.domain = "e.example".into()), 10).await;
    assert!(listed[0].admin_bounce);

    // Delete one by id, then the rest of the domain by filter.
    let n = admin
        .delete(pb::ActionRequest {
            ids: vec![ids[0].clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 1);
    let n = admin
        .delete(pb::ActionRequest {
            filter: filter(|f| f.domain = "d.example".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 3);
    assert!(
        list_all(&mut admin, filter(|f| f.domain = "d.example".into()), 10)
            .await
            .is_empty()
    );

    // A filter with more than a domain acts job by job.
    for i in 0..3 {
        enqueue(
            q,
            message("s@sender.example", &[&format!("t{i}@f.example")]).with_tag("camp", "x"),
        )
        .await;
    }
    enqueue(q, message("s@sender.example", &["u@f.example"])).await;
    let n = admin
        .retry_now(pb::ActionRequest {
            filter: filter(|f| f.tag = "camp=x".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 3);

    // Errors: unknown id, malformed id, no target at all.
    let unknown = tern_core::MessageId::new().to_string();
    let e = admin
        .delete(pb::ActionRequest {
            ids: vec![unknown],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = admin
        .bounce(pb::ActionRequest {
            ids: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("ids:"), "{}", e.message());
    let e = admin.delete(pb::ActionRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_suspended_domain_is_not_claimed_until_resumed() {
    let c = start(None).await;
    let q = &c.queue;
    enqueue(q, message("s@sender.example", &["r@slow.example"])).await;
    let mut admin = c.admin().await;
    let s = admin
        .suspend_domain(pb::SuspendDomainRequest {
            domain: "Slow.Example".into(),
            duration_seconds: 3600,
            reason: "rate limited by the receiver".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .suspension
        .unwrap();
    assert_eq!(s.domain, "slow.example");
    assert!(s.until_ms > now_ms() + 3_500_000);
    let list = admin
        .list_suspensions(pb::ListSuspensionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .suspensions;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reason, "rate limited by the receiver");
    assert!(q.claim("w", 10, Duration::from_secs(60)).await.unwrap().is_none());
    let status = admin
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.totals.unwrap().suspended, 1);
    assert!(status.domains[0].suspension.is_some());

    let r = admin
        .resume_domain(pb::ResumeDomainRequest {
            domain: "slow.example".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.was_suspended);
    let claim = q.claim("w", 10, Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(claim.domain, "slow.example");
    let r = admin
        .resume_domain(pb::ResumeDomainRequest {
            domain: "slow.example".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.was_suspended);
    let e = admin
        .suspend_domain(pb::SuspendDomainRequest {
            domain: "not a domain".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn watch_shows_a_message_life_in_order() {
    let c = start(None).await;
    let q = &c.queue;
    let mut events = c.events().await;
    // Everything from the start, only w.example.
    let mut stream = events
        .watch(pb::WatchRequest {
            from: "start".into(),
            domain: "w.example".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    enqueue(q, message("s@sender.example", &["noise@n.example"])).await;
    let id = enqueue(q, message("s@sender.example", &["r@w.example"])).await;
    loop {
        let j = claim_one(q).await;
        if j.job.domain == "w.example" {
            q.complete("test-worker", &j.lease, Outcome::defer(now_ms(), "451 later"))
                .await
                .unwrap();
            break;
        }
        q.release("test-worker", &j.lease).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let j = loop {
        let j = claim_one(q).await;
        if j.job.domain == "w.example" {
            break j;
        }
        q.complete("test-worker", &j.lease, Outcome::delivered())
            .await
            .unwrap();
    };
    q.complete("test-worker", &j.lease, Outcome::delivered())
        .await
        .unwrap();

    let mut kinds = Vec::new();
    let mut last_position = String::new();
    while kinds.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        assert_eq!(e.domain, "w.example");
        if e.kind == "released" {
            continue;
        }
        assert_eq!(e.message_id, id);
        assert!(!e.position.is_empty());
        last_position = e.position.clone();
        kinds.push(e.kind);
    }
    assert_eq!(kinds, ["queued", "deferred", "delivered"]);

    // From a position: only what came after; with a type filter.
    let next = enqueue(q, message("s@sender.example", &["again@w.example"])).await;
    let mut resumed = events
        .watch(pb::WatchRequest {
            from: last_position,
            types: vec!["queued".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = tokio::time::timeout(Duration::from_secs(10), resumed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.message_id, next);
    assert_eq!(e.kind, "queued");

    // From now: only new events.
    let mut live = events
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let newest = enqueue(q, message("s@sender.example", &["live@w.example"])).await;
    let e = tokio::time::timeout(Duration::from_secs(10), live.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.message_id, newest);

    let e = events
        .watch(pb::WatchRequest {
            types: vec!["exploded".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

fn authed<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret-admin-key".parse().unwrap());
    r
}

#[tokio::test]
async fn errors_have_the_right_codes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = common::keys_file(dir.path(), "ops", "s3cret-admin-key");
    let mut c = start(Some(keys)).await;
    let mut admin = c.admin().await;

    // No key, a wrong key: UNAUTHENTICATED; the right key works.
    let e = admin
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let with_key = |key: &str| {
        let mut r = tonic::Request::new(pb::GetStatusRequest::default());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let e = admin.get_status(with_key("wrong")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    admin.get_status(with_key("s3cret-admin-key")).await.unwrap();
    let mut events = c.events().await;
    let e = events.watch(pb::WatchRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // NOT_FOUND for an unknown id, INVALID_ARGUMENT naming the field.
    let e = admin
        .get_message(authed(pb::GetMessageRequest {
            id: tern_core::MessageId::new().to_string(),
            include_body: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = admin
        .list_messages(authed(pb::ListMessagesRequest {
            filter: filter(|f| f.state = "soon".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("filter.state"), "{}", e.message());
    let e = admin
        .list_messages(authed(pb::ListMessagesRequest {
            cursor: "garbage".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // UNAVAILABLE when the queue is down.
    c.redis.stop().unwrap();
    let e = admin
        .get_status(authed(pb::GetStatusRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = admin
        .list_suspensions(authed(pb::ListSuspensionsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn a_public_listener_needs_keys_and_health_and_reflection_answer() {
    let config = tern_config::ControlConfig {
        grpc_listen: "0.0.0.0:0".parse().unwrap(),
        ..Default::default()
    };
    let queue: std::sync::Arc<dyn Queue> =
        std::sync::Arc::new(tern_queue::RedisQueue::new(tern_queue::RedisQueueOptions::default()).unwrap());
    let e = tern_control::ControlServer::bind(&config, queue)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("control.api_keys_file"), "{e}");

    let c = start(None).await;
    let channel = tonic::transport::Endpoint::from_shared(c.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: tern_control::QUEUE_ADMIN_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists the admin services (MtaSts too, even with MTA-STS off; SmtpTrace, served over the
    // store's trace bus) and KEDA's external scaler.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort_unstable();
    // Exactly what this port serves: not the ingest role's Submission, which it would answer with
    // UNIMPLEMENTED.
    assert_eq!(
        names,
        [
            tern_proto::keda::EXTERNAL_SCALER_SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            tern_control::EVENTS_SERVICE,
            tern_control::MTA_STS_SERVICE,
            tern_control::QUEUE_ADMIN_SERVICE,
            tern_proto::v1::SMTP_TRACE_SERVICE,
        ]
    );
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("tern.v1.Submission".into())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let err = replies.message().await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "Submission is described here: {err:?}"
    );
}
