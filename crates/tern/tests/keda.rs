//! KEDA's external scaler on the control plane, asked by a gRPC client generated from the same
//! `proto/keda/externalscaler.proto` KEDA publishes: without the admin key (KEDA sends none) while the
//! admin services still require it, with the jobs due or in flight as the metric and `jobsPerWorker` as the
//! target.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::nodes::{Ports, Sections, config, spawn};
use sha2::Digest;
use tern_core::{Envelope, Recipient, ReversePath};
use tern_proto::keda::external_scaler_client::ExternalScalerClient;
use tern_proto::keda::{GetMetricsRequest, ScaledObjectRef};
use tern_queue::{NewMessage, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::{Dnsmasq, RedisServer};
use tonic::Code;

fn object(jobs_per_worker: Option<&str>) -> ScaledObjectRef {
    let mut metadata = HashMap::from([("scalerAddress".to_string(), "tern-control:7070".to_string())]);
    if let Some(n) = jobs_per_worker {
        metadata.insert("jobsPerWorker".to_string(), n.to_string());
    }
    ScaledObjectRef {
        name: "tern-worker".into(),
        namespace: "tern".into(),
        scaler_metadata: metadata,
    }
}

fn message(domain: &str, i: usize) -> NewMessage {
    let env = Envelope::new(
        ReversePath::Mailbox("app@sender.test".parse().unwrap()),
        vec![Recipient::new(format!("user{i}@{domain}").parse().unwrap())],
    );
    NewMessage::new(env, b"Subject: keda\r\n\r\nhello\r\n".to_vec())
}

/// IsActive, StreamIsActive, GetMetricSpec and GetMetrics answer from the queue's jobs due (those of a
/// suspended domain left out) or in flight without a key; a bad `jobsPerWorker` is INVALID_ARGUMENT; StreamMetricSpec is
/// UNIMPLEMENTED (optional in KEDA's contract); the admin API on the same port still wants its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_scaler_reports_jobs_due_or_in_flight_per_worker_without_the_admin_key() {
    let redis = RedisServer::start().unwrap();
    let dns = Dnsmasq::builder().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("admin_keys");
    let hash = hex::encode(sha2::Sha256::digest(b"the-admin-key"));
    std::fs::write(&keys, format!("ops:{hash}\n")).unwrap();
    let ports = Ports::free();
    let extra = Sections {
        control: format!("api_keys_file = \"{}\"", keys.display()),
        ..Sections::default()
    };
    let text = config(&redis.url(), dns.addr(), 25, &ports, &extra);
    let control = spawn("control", "control", dir.path(), &text, &ports, &[]);
    let logs = || control.logs();

    let mut scaler = ExternalScalerClient::connect(ports.control_url()).await.unwrap();
    let spec = scaler
        .get_metric_spec(object(Some("50")))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", logs()))
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].metric_name, "tern_jobs_due_or_in_flight");
    assert_eq!(spec.metric_specs[0].target_size, 50);
    assert_eq!(spec.metric_specs[0].target_size_float, 50.0);
    let default = scaler.get_metric_spec(object(None)).await.unwrap().into_inner();
    assert_eq!(
        default.metric_specs[0].target_size, 100,
        "jobsPerWorker defaults to 100"
    );
    let bad = scaler.get_metric_spec(object(Some("lots"))).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    assert!(!scaler.is_active(object(None)).await.unwrap().into_inner().result);
    let mut stream = scaler.stream_is_active(object(None)).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().map(|r| r.result), Some(false));

    let queue = RedisQueue::connect(RedisQueueOptions {
        url: redis.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let batch: Vec<NewMessage> = (0..120)
        .map(|i| message(if i < 100 { "due.test" } else { "paused.test" }, i))
        .collect();
    for r in queue.enqueue_batch(batch).await {
        r.unwrap();
    }
    queue.suspend("paused.test", None, "test").await.unwrap();

    let pushed = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("StreamIsActive pushes the change within 15 s")
        .unwrap();
    assert_eq!(pushed.map(|r| r.result), Some(true));
    assert!(scaler.is_active(object(None)).await.unwrap().into_inner().result);
    let metrics = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object(Some("50"))),
            metric_name: "s0-tern_jobs_due_or_in_flight".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metrics.metric_values.len(), 1);
    assert_eq!(
        metrics.metric_values[0].metric_name,
        "s0-tern_jobs_due_or_in_flight"
    );
    assert_eq!(
        metrics.metric_values[0].metric_value, 100,
        "the suspended domain's 20 are not due"
    );
    assert_eq!(metrics.metric_values[0].metric_value_float, 100.0);

    // Jobs claimed by a worker are still work: scaling down in the middle of a batch would release it.
    let tern_queue::ClaimOutcome::Claimed(claim) = queue
        .claim_next("keda-test-worker", 60, Duration::from_secs(60), &[])
        .await
        .unwrap()
    else {
        panic!("a claim of due.test's jobs");
    };
    assert!(!claim.jobs.is_empty());
    let metrics = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object(None)),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        metrics.metric_values[0].metric_value,
        100,
        "due and claimed jobs together: {} claimed",
        claim.jobs.len()
    );

    let unimplemented = scaler.stream_metric_spec(object(None)).await.unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);

    // The admin API on the same port still wants the key.
    let mut admin = tern_proto::v1::queue_admin_client::QueueAdminClient::connect(ports.control_url())
        .await
        .unwrap();
    let refused = admin
        .get_status(tern_proto::v1::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
