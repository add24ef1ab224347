//! The gRPC Send API hardening (issue #14), with a real tonic client over loopback and a real redis-server
//! behind the queue: the raw path's line checks and line endings, the answer to a repeated idempotency key,
//! the reserved `tlsrpt` tag, and a queue write that stalls or fails answered honestly.
//!
//! The service is served here by plain tonic, without the listener's limits, so that each test can set the
//! retry window (`ingest.enqueue_retry_for`) itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_stall;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_stall::Stall;
use tern_ingest::Shutdown;
use tern_ingest::enqueue::EnqueueRetry;
use tern_ingest::grpc::service::{Limits, SubmissionService};
use tern_ingest::grpc::{CallLimits, CallsInProgress, GrpcServer, GrpcSettings};
use tern_proto::v1::submission_client::SubmissionClient;
use tern_proto::v1::submission_server::SubmissionServer;
use tern_proto::v1::{Envelope, SendBatchRequest, SendRequest, SendResponse, send_request::Content};
use tern_queue::{ClaimedJob, Queue, RedisQueue, RedisQueueOptions};
use tern_server::auth::Authenticator;
use tern_testkit::RedisServer;
use tern_testkit::redis::queue_shard_of;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Status};

/// The Submission service over a real Redis queue (or a queue at `url`), on a free loopback port.
struct Harness {
    redis: Option<RedisServer>,
    queue: Arc<dyn Queue>,
    addr: SocketAddr,
    shutdown: Shutdown,
}

impl Harness {
    async fn start(window: Duration) -> Harness {
        let redis = RedisServer::start().expect("start redis-server");
        let mut h = Harness::at(&redis.url(), window).await;
        h.redis = Some(redis);
        h
    }

    /// The service over a queue at `url`, which need not be reachable.
    async fn at(url: &str, window: Duration) -> Harness {
        Harness::over(queue_options(url), window).await
    }

    /// The service over a queue with `options`.
    async fn over(options: RedisQueueOptions, window: Duration) -> Harness {
        let queue: Arc<dyn Queue> = Arc::new(RedisQueue::new(options).unwrap());
        let service = SubmissionService::new(
            queue.clone(),
            Authenticator::Open,
            Limits {
                max_message_size: 1024 * 1024,
                max_recipients: 10,
                hostname: "ingest.tern.test".into(),
            },
        )
        .with_enqueue_retry(EnqueueRetry { window });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        tokio::spawn(
            Server::builder()
                .add_service(SubmissionServer::new(service))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move { stop.cancelled().await },
                ),
        );
        Harness {
            redis: None,
            queue,
            addr,
            shutdown,
        }
    }

    fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("a Redis of the harness")
    }

    async fn client(&self) -> SubmissionClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        SubmissionClient::new(channel)
    }

    async fn send(&self, req: SendRequest) -> Result<SendResponse, Status> {
        self.client()
            .await
            .send(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every job in the queue, claimed, in id order.
    async fn claim_all(&self) -> Vec<ClaimedJob> {
        let mut jobs = Vec::new();
        while let Some(claim) = self
            .queue
            .claim("test", 1000, Duration::from_secs(60))
            .await
            .unwrap()
        {
            jobs.extend(claim.jobs);
        }
        jobs.sort_by_key(|j| j.job.id);
        jobs
    }
}

/// The queue's options for the tests: short timeouts, and one connection: once made, every write goes over
/// it, so a write sent while Redis is stopped reaches it (and is applied when it resumes) instead of waiting
/// for a connection.
fn queue_options(url: &str) -> RedisQueueOptions {
    RedisQueueOptions {
        url: url.into(),
        key_prefix: "grpc-hardening".into(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        pool_size: 1,
        ..Default::default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn raw(bytes: &[u8]) -> SendRequest {
    SendRequest {
        content: Some(Content::Raw(bytes.to_vec())),
        ..Default::default()
    }
}

fn to(rcpts: &[&str], key: &str) -> SendRequest {
    SendRequest {
        idempotency_key: key.into(),
        envelope: Some(Envelope {
            mail_from: "app@src.test".into(),
            rcpt_to: rcpts.iter().map(|r| (*r).to_owned()).collect(),
        }),
        ..raw(b"From: app@src.test\r\nSubject: hi\r\n\r\nhello\r\n")
    }
}

const WINDOW: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_with_a_nul_octet_or_a_line_over_998_octets_is_refused_naming_the_line() {
    let h = Harness::start(WINDOW).await;
    let mut nul = b"From: a@src.test\r\nTo: b@dest.test\r\n\r\nfirst\r\nse\0cond\r\n".to_vec();
    let err = h.send(raw(&nul)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("raw: line 5: NUL octet"), "{err:?}");
    nul.retain(|b| *b != 0);
    h.send(raw(&nul)).await.expect("the same message without the NUL");

    let mut long = b"From: a@src.test\r\nTo: b@dest.test\r\n\r\nshort\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 5000));
    long.extend_from_slice(b"\r\n");
    let err = h.send(raw(&long)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("raw: line 5: 5000 octets long"),
        "{err:?}"
    );
    // A line of exactly 998 octets is allowed.
    let mut fits = b"From: a@src.test\r\nTo: b@dest.test\r\n\r\n".to_vec();
    fits.extend(std::iter::repeat_n(b'x', 998));
    fits.extend_from_slice(b"\r\n");
    h.send(raw(&fits)).await.expect("998 octets");
    assert_eq!(h.claim_all().await.len(), 2, "only the two good messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_cr_and_bare_lf_in_raw_become_crlf() {
    let h = Harness::start(WINDOW).await;
    let message = b"From: a@src.test\nTo: b@dest.test\rSubject: ends\r\n\none\rtwo\nthree\r\n";
    let reply = h.send(raw(message)).await.unwrap();
    let jobs = h.claim_all().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job.id.message.to_string(), reply.message_id);
    let body = &jobs[0].body;
    for (i, b) in body.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && body[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    assert!(
        text.contains("From: a@src.test\r\nTo: b@dest.test\r\nSubject: ends\r\n\r\none\r\ntwo\r\nthree\r\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_answers_with_the_first_messages_recipients() {
    let h = Harness::start(WINDOW).await;
    let first = h
        .send(to(&["ann@one.test", "bob@two.test"], "order-7"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let again = h.send(to(&["cy@three.test"], "order-7")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    let mut accepted = again.accepted.clone();
    accepted.sort();
    assert_eq!(accepted, ["ann@one.test", "bob@two.test"], "{again:?}");
    // Nothing of the repeat was queued.
    let jobs = h.claim_all().await;
    let rcpts: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.job.envelope.recipients.iter().map(|r| r.address.to_string()))
        .collect();
    assert_eq!(rcpts.len(), 2, "{rcpts:?}");
    assert!(!rcpts.contains(&"cy@three.test".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idempotency_keys_may_not_use_the_internal_prefix() {
    let h = Harness::start(WINDOW).await;
    let err = h
        .send(to(&["ann@one.test"], "tern:01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("idempotency_key: "), "{err:?}");
}

/// The `tlsrpt` tag marks TLS-RPT report mail, which workers deliver without MTA-STS (RFC 8460 section 3):
/// a client that could set it would send past an enforced policy. Refused in any case, in Send and in each
/// message of SendBatch, and nothing is queued; other tags, and `tlsrpt` as a value, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_report_tag_is_reserved_for_terns_own_report_mail() {
    let h = Harness::start(WINDOW).await;
    let tagged = |name: &str| SendRequest {
        tags: [(name.to_owned(), "victim.test".to_owned())].into(),
        ..to(&["ann@victim.test"], "")
    };
    for name in ["tlsrpt", "TLSRPT", "TlsRpt"] {
        let err = h.send(tagged(name)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().starts_with(&format!("tags[{name:?}]: ")),
            "{name}: {err:?}"
        );
        assert!(
            err.message().contains("\"tlsrpt\" is reserved"),
            "{name}: {err:?}"
        );
    }
    let reply = h
        .client()
        .await
        .send_batch(SendBatchRequest {
            messages: vec![tagged("tenant"), tagged("tlsrpt")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.results.len(), 2, "{reply:?}");
    let ok = match &reply.results[0].result {
        Some(tern_proto::v1::send_result::Result::Ok(ok)) => ok.message_id.clone(),
        other => panic!("the untagged message: {other:?}"),
    };
    match &reply.results[1].result {
        Some(tern_proto::v1::send_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
            assert!(e.message.contains("\"tlsrpt\" is reserved"), "{e:?}");
        }
        other => panic!("the tagged message: {other:?}"),
    }
    let value = SendRequest {
        tags: [("campaign".to_owned(), "tlsrpt".to_owned())].into(),
        ..to(&["bob@victim.test"], "")
    };
    let by_value = h.send(value).await.expect("tlsrpt as a tag value").message_id;
    let jobs = h.claim_all().await;
    let ids: Vec<String> = jobs.iter().map(|j| j.job.id.message.to_string()).collect();
    assert_eq!(ids.len(), 2, "only the two allowed messages: {ids:?}");
    assert!(ids.contains(&ok) && ids.contains(&by_value), "{ids:?}");
    assert!(
        jobs.iter()
            .all(|j| !j.job.tags.keys().any(|k| k.eq_ignore_ascii_case("tlsrpt"))),
        "{jobs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_shorter_than_the_window_ends_with_one_ok_and_one_message() {
    let h = Harness::start(WINDOW).await;
    h.send(to(&["warm@up.test"], "")).await.unwrap();
    let mut stall = Stall::start(h.redis());
    let call = {
        let mut client = h.client().await;
        tokio::spawn(async move { client.send(to(&["ann@one.test"], "")).await })
    };
    // Past the queue's reply timeout (2 s): the first write has timed out by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stall.resume();
    let reply = call.await.unwrap().expect("OK once Redis is back").into_inner();
    // The repeat found the stalled first attempt's write, stored on resuming: the client sent one request.
    assert!(!reply.duplicate, "{reply:?}");
    let jobs = h.claim_all().await;
    let ours: Vec<_> = jobs
        .iter()
        .filter(|j| j.job.id.message.to_string() == reply.message_id)
        .collect();
    assert_eq!(ours.len(), 1, "queued once");
    assert_eq!(jobs.len(), 2, "the warm-up message and this one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_longer_than_the_window_may_have_queued_and_a_retry_with_the_key_gets_the_first_id() {
    let h = Harness::start(Duration::from_secs(3)).await;
    h.send(to(&["warm@up.test"], "")).await.unwrap();
    let mut stall = Stall::start(h.redis());
    let started = Instant::now();
    let err = h.send(to(&["ann@one.test"], "invoice-42")).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("may have been queued"), "{err:?}");
    assert!(err.message().contains("same idempotency_key"), "{err:?}");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    stall.resume();
    // Redis applies what it was sent while stopped (the intake record: the message is stored); the client's
    // retry with the same key is answered with that first message's id, and queues nothing more.
    let retry = h.send(to(&["ann@one.test"], "invoice-42")).await.unwrap();
    // The reaper finishes the interrupted enqueue (intake records older than 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.queue.counts().await.unwrap().total < 2 {
        assert!(
            Instant::now() < deadline,
            "the stalled message's jobs never appeared"
        );
        h.queue.reap(tern_core::time::now_ms()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let jobs = h.claim_all().await;
    assert_eq!(jobs.len(), 2, "the warm-up message and one copy of this one");
    let ours = jobs
        .iter()
        .find(|j| j.job.envelope.recipients[0].address.to_string() == "ann@one.test")
        .expect("the stalled message was queued after all");
    assert_eq!(retry.message_id, ours.job.id.message.to_string());
    assert!(retry.duplicate, "{retry:?}");
    assert_eq!(retry.accepted, ["ann@one.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_shorter_than_the_window_is_answered_in_time() {
    let h = Harness::start(WINDOW).await;
    h.send(to(&["warm@up.test"], "")).await.unwrap();
    let _stall = Stall::start(h.redis());
    let mut request = Request::new(to(&["ann@one.test"], "deadline-1"));
    request.set_timeout(Duration::from_secs(6));
    let started = Instant::now();
    let err = h.client().await.send(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("may have been queued"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_redis_that_refuses_connections_answers_that_nothing_was_queued_at_once() {
    let nobody = tern_testkit::free_port().unwrap();
    let h = Harness::at(&format!("redis://127.0.0.1:{nobody}"), WINDOW).await;
    let started = Instant::now();
    let err = h.send(to(&["ann@one.test"], "")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("nothing was queued"), "{err:?}");
    // The queue's own word (no connection from the pool: nothing sent), not a guess from the error's text.
    assert!(err.message().contains("nothing was sent"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// In cluster mode even a refused connection may follow an applied write: the cluster client repeats a call
/// by itself after a dropped connection, so a call sent to a node that died meanwhile ends with "Connection
/// refused" from the repeat, whatever the first try did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_in_cluster_mode_answers_that_the_message_may_have_been_queued() {
    let mut cluster = tern_testkit::RedisCluster::start(3).expect("start a Redis Cluster");
    let options = RedisQueueOptions {
        cluster: true,
        ..queue_options(&cluster.urls_comma())
    };
    // No repeats: the first failure is the answer.
    let h = Harness::over(options, Duration::ZERO).await;
    let domains = ["a", "b", "c", "d", "e", "f"];
    // Connections to every node (the domains' shards spread over the three).
    for d in domains {
        h.send(to(&[&format!("warm@{d}.test")], ""))
            .await
            .expect("the cluster takes a message");
    }
    cluster.nodes_mut()[1].kill_hard().expect("kill a node");
    let mut failed = 0;
    for d in domains {
        if let Err(err) = h.send(to(&[&format!("ann@{d}.test")], "")).await {
            failed += 1;
            assert_eq!(err.code(), Code::Unavailable, "{d}: {err:?}");
            assert!(err.message().contains("may have been queued"), "{d}: {err:?}");
        }
    }
    assert!(failed > 0, "no message went to the dead node");
}

/// On one server a batch's shards go out together, in one pipeline on one connection: when that connection
/// cannot be made, nothing of the batch was sent, and the answer says so. (In a cluster the shards go to
/// different nodes, so a batch's messages can fail differently: the answer then follows the unit tests of
/// `batch_failure_status` in `grpc/service.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_two_shards_on_a_refused_connection_answers_that_nothing_was_queued() {
    // Two connections, no repeats, two shards: the messages of the batch below (no idempotency keys, so each
    // is written by the call of its domain's shard) are in two shards.
    let redis = RedisServer::start().expect("start redis-server");
    let options = RedisQueueOptions {
        pool_size: 2,
        shards: 2,
        ..queue_options(&redis.url())
    };
    let h = Harness::over(options, Duration::ZERO).await;
    // One connection made (the pool's first), then Redis gone.
    h.send(to(&["warm@up.test"], "")).await.unwrap();
    drop(redis);
    // The batch takes the pool's second place, whose connection is made now and refused: nothing sent.
    // Before the shards' calls went out together, shard 1's call took the first connection, still thought
    // good, and failed on it (may have been written).
    assert_eq!(
        (queue_shard_of("a.test", 2), queue_shard_of("one.test", 2)),
        (0, 1)
    );
    let batch = SendBatchRequest {
        messages: vec![to(&["bob@a.test"], ""), to(&["ann@one.test"], "")],
    };
    let err = h.client().await.send_batch(batch).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("nothing was queued"), "{err:?}");
}

/// The real listener (limits, deadlines, shutdown) over a queue at `url`, with `limits` and a 60 s window.
async fn listener(url: &str, limits: CallLimits, shutdown: &Shutdown) -> (SocketAddr, CallsInProgress) {
    let queue: Arc<dyn Queue> = Arc::new(RedisQueue::new(queue_options(url)).unwrap());
    let settings = GrpcSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_message_size: 64 * 1024,
        hostname: Some("ingest.tern.test".into()),
        limits,
        enqueue_retry: EnqueueRetry { window: WINDOW },
        ..GrpcSettings::default()
    };
    let server = GrpcServer::bind(&settings, queue).await.unwrap();
    let addr = server.local_addr();
    let calls = server.calls_in_progress();
    tokio::spawn(server.run(shutdown.clone()));
    (addr, calls)
}

async fn client_of(addr: SocketAddr) -> SubmissionClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    SubmissionClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_the_repeats_and_the_call_answers_that_it_may_have_been_queued() {
    let redis = RedisServer::start().expect("start redis-server");
    let shutdown = Shutdown::new();
    let (addr, calls) = listener(&redis.url(), CallLimits::default(), &shutdown).await;
    let mut client = client_of(addr).await;
    client.send(to(&["warm@up.test"], "")).await.unwrap();
    let _stall = Stall::start(&redis);
    let started = Instant::now();
    let call = tokio::spawn(async move { client.send(to(&["ann@one.test"], "")).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), calls.finished())
            .await
            .is_err(),
        "the call is in progress"
    );
    shutdown.cancel();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("may have been queued"), "{err:?}");
    // The attempt in progress at the shutdown ends by the queue's timeout (2.5 s); the 60 s of repeats do
    // not run.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(1), calls.finished())
        .await
        .expect("no call in progress once it answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_stop_before_the_calls_deadline_on_the_server_and_the_call_answers() {
    let redis = RedisServer::start().expect("start redis-server");
    let shutdown = Shutdown::new();
    // A deadline of 5 s plus the upload of the largest request (64 KiB + 1 MiB at 1 MiB/s): about 6 s, far
    // short of the 60 s window; the client sets none of its own.
    let limits = CallLimits {
        request_timeout: Duration::from_secs(5),
        ..CallLimits::default()
    };
    let (addr, _calls) = listener(&redis.url(), limits, &shutdown).await;
    let mut client = client_of(addr).await;
    client.send(to(&["warm@up.test"], "")).await.unwrap();
    let _stall = Stall::start(&redis);
    let started = Instant::now();
    let err = client.send(to(&["ann@one.test"], "")).await.unwrap_err();
    // Not cut off at the deadline (DEADLINE_EXCEEDED, which retry policies do not repeat): answered.
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("may have been queued"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    shutdown.cancel();
}
