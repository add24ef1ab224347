//! The gRPC Send API end to end: a real tonic client over loopback, the real server, and a real
//! redis-server behind the queue. Each test has its own Redis and its own free port.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mail_parser::{MessageParser, MimeHeaders};
use tern_core::Shutdown;
use tern_core::{Notify, Ret, ReversePath};
use tern_ingest::grpc::{CallLimits, GrpcError, GrpcServer, GrpcSettings};
use tern_proto::v1 as pb;
use tern_proto::v1::submission_client::SubmissionClient;
use tern_proto::v1::{
    Attachment, ComposedMessage, Envelope, SendBatchRequest, SendRequest, SendResponse,
    send_request::Content, send_result,
};
use tern_queue::{ClaimedJob, Queue, RedisQueue, RedisQueueOptions};
use tern_server::auth::{AuthError, key_line};
use tern_server::grpc::HealthHandle;
use tern_testkit::RedisServer;
use tokio_util::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const MAX_SIZE: usize = 64 * 1024;
const GOOD_KEY: &str = "good-key-0123456789";
const NARROW_KEY: &str = "narrow-key-0123456789";

/// A running gRPC server over a real Redis queue.
struct Harness {
    redis: RedisServer,
    queue: Arc<dyn Queue>,
    addr: SocketAddr,
    shutdown: Shutdown,
    health: HealthHandle,
    server: Option<tokio::task::JoinHandle<Result<(), GrpcError>>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts Redis and the server on a free loopback port; with `keys`, an API keys file holding
    /// `good` (any domain) and `narrow` (sender domain allowed.test only).
    async fn start(keys: bool) -> Harness {
        Harness::start_with(keys, CallLimits::default()).await
    }

    /// [`Harness::start`], with the Submission calls' `limits`.
    async fn start_with(keys: bool, limits: CallLimits) -> Harness {
        let redis = RedisServer::start().expect("start redis-server");
        let queue: Arc<dyn Queue> = Arc::new(
            RedisQueue::connect(RedisQueueOptions {
                url: redis.url(),
                key_prefix: "grpc-test".into(),
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(2),
                ..Default::default()
            })
            .await
            .expect("connect to redis"),
        );
        let dir = tempfile::tempdir().unwrap();
        let api_keys_file = keys.then(|| {
            let path = dir.path().join("api_keys");
            let text = format!(
                "# test keys\n{}\n{}:allowed.test\n",
                key_line("good", GOOD_KEY),
                key_line("narrow", NARROW_KEY)
            );
            std::fs::write(&path, text).unwrap();
            path
        });
        let port = tern_testkit::free_port().unwrap();
        let settings = GrpcSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            api_keys_file,
            max_message_size: MAX_SIZE,
            max_recipients: 5,
            hostname: Some("ingest.tern.test".into()),
            limits,
            ..GrpcSettings::default()
        };
        let server = GrpcServer::bind(&settings, queue.clone()).await.expect("bind");
        let addr = server.local_addr();
        assert_eq!(addr.port(), port);
        let health = server.health();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Harness {
            redis,
            queue,
            addr,
            shutdown,
            health,
            server: Some(task),
            _dir: dir,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    async fn client(&self) -> SubmissionClient<Channel> {
        SubmissionClient::new(self.channel().await)
    }

    /// Every job in the queue, claimed (jobs of all domains).
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

    async fn total_jobs(&self) -> u64 {
        self.queue.counts().await.unwrap().total
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }
}

fn with_key<T>(msg: T, key: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(key) = key {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    req
}

fn raw(text: &str) -> SendRequest {
    SendRequest {
        content: Some(Content::Raw(text.as_bytes().to_vec())),
        ..Default::default()
    }
}

fn composed(c: ComposedMessage) -> SendRequest {
    SendRequest {
        content: Some(Content::Composed(c)),
        ..Default::default()
    }
}

fn simple() -> ComposedMessage {
    ComposedMessage {
        from: "app@allowed.test".into(),
        to: vec!["one@dest.test".into()],
        subject: "Hi".into(),
        text_body: "Hello".into(),
        ..Default::default()
    }
}

async fn send(h: &Harness, req: SendRequest) -> Result<SendResponse, Status> {
    h.client().await.send(req).await.map(tonic::Response::into_inner)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `Send` request whose raw message is `size` bytes long.
fn raw_of_size(size: usize) -> SendRequest {
    let head = "From: a@src.test\r\nTo: b@dest.test\r\n\r\n";
    raw(&format!("{head}{}", "x".repeat(size - head.len())))
}

/// Passes already encoded protobuf bytes through as gRPC messages, for calls the generated client cannot
/// make (a request body that never ends).
#[derive(Clone, Copy, Debug, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }

    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The protobuf encoding of `SendRequest { raw }`: field 3, length-delimited. Written by hand because the
/// tests have no protobuf encoder to call, and this is the one field needed.
fn encoded_raw_send_request(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![(3 << 3) | 2];
    let mut len = raw.len();
    while len >= 0x80 {
        out.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(raw);
    out
}

/// A `Send` whose request body never ends, like a client stalled mid-upload: one complete, valid message
/// frame, then the stream stays open. The server's decoder reads a unary body to its end before the
/// handler runs, so only a check that does not need the body can answer such a call.
async fn stalled_send(channel: Channel, key: Option<&str>) -> Status {
    let frame = encoded_raw_send_request(b"From: a@src.test\r\nTo: b@dest.test\r\n\r\nstalled\r\n");
    let body = futures::stream::iter(vec![frame]).chain(futures::stream::pending());
    let mut request = with_key(body, key);
    request.set_timeout(Duration::from_secs(600)); // far beyond any limit under test
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.client_streaming(
        request,
        PathAndQuery::from_static("/tern.v1.Submission/Send"),
        BytesCodec,
    )
    .await
    .expect_err("a body that never ends cannot succeed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_message_without_envelope_takes_it_from_the_headers_and_drops_bcc() {
    let h = Harness::start(false).await;
    let msg = "From: Ann <ann@src.test>\r\nTo: bob@a.test, \"Cy\" <cy@b.test>\r\nCc: dee@a.test\r\n\
               Bcc: secret@c.test\r\nSubject: raw\r\n\r\nBody line\r\nBcc: in-body@x.test\r\n";
    let mut req = raw(msg);
    req.tags.insert("tenant".into(), "t1".into());
    let reply = send(&h, req).await.unwrap();
    assert_eq!(reply.message_id.len(), 26, "{reply:?}");
    assert_eq!(
        reply.accepted,
        ["bob@a.test", "cy@b.test", "dee@a.test", "secret@c.test"]
    );
    assert!(reply.rejected.is_empty() && !reply.duplicate);

    let info = h
        .queue
        .get_message(reply.message_id.parse().unwrap())
        .await
        .unwrap()
        .expect("queued");
    assert_eq!(info.jobs.len(), 3, "one job per domain");
    let jobs = h.claim_all().await;
    assert_eq!(jobs.len(), 3);
    let mut rcpts: Vec<String> = Vec::new();
    for j in &jobs {
        assert_eq!(
            j.job.envelope.sender,
            ReversePath::Mailbox("ann@src.test".parse().unwrap())
        );
        assert_eq!(j.job.tags.get("tenant").map(String::as_str), Some("t1"));
        rcpts.extend(j.job.envelope.recipients.iter().map(|r| r.address.to_string()));
        let body = text(&j.body);
        assert!(
            body.starts_with(&format!(
                "Message-ID: <{}@ingest.tern.test>\r\nDate: ",
                reply.message_id
            )),
            "{body}"
        );
        assert!(!body.contains("secret@c.test"), "Bcc left in:\n{body}");
        assert!(
            body.contains("\r\n\r\nBody line\r\nBcc: in-body@x.test\r\n"),
            "body changed:\n{body}"
        );
    }
    rcpts.sort();
    assert_eq!(rcpts, ["bob@a.test", "cy@b.test", "dee@a.test", "secret@c.test"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composed_message_is_built_into_mime_with_attachments() {
    let h = Harness::start(false).await;
    let mut c = simple();
    c.from = "\"App Sender\" <app@allowed.test>".into();
    c.to = vec!["one@dest.test".into(), "Two <two@dest.test>".into()];
    c.cc = vec!["three@other.test".into()];
    c.bcc = vec!["hidden@dest.test".into()];
    c.reply_to = "help@allowed.test".into();
    c.subject = "Grüße".into();
    c.html_body = "<p>Hello <img src=\"cid:logo\"></p>".into();
    c.headers.insert("X-Campaign".into(), "spring".into());
    c.attachments = vec![
        Attachment {
            filename: "report.pdf".into(),
            content_type: "application/pdf".into(),
            content: b"%PDF-1.4 fake".to_vec(),
            content_id: String::new(),
        },
        Attachment {
            filename: "logo.png".into(),
            content_type: "image/png".into(),
            content: vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3],
            content_id: "logo".into(),
        },
    ];
    let mut req = composed(c);
    req.envid = "env-1".into();
    req.ret = pb::Ret::Hdrs as i32;
    req.notify = vec![pb::Notify::Failure as i32, pb::Notify::Delay as i32];
    let reply = send(&h, req).await.unwrap();
    assert_eq!(
        reply.accepted,
        [
            "one@dest.test",
            "two@dest.test",
            "three@other.test",
            "hidden@dest.test"
        ]
    );

    let jobs = h.claim_all().await;
    assert_eq!(jobs.len(), 2);
    let env = &jobs[0].job.envelope;
    assert_eq!(env.sender.to_string(), "<app@allowed.test>");
    assert_eq!(env.envid.as_deref(), Some("env-1"));
    assert_eq!(env.ret, Some(Ret::Hdrs));
    assert_eq!(
        env.recipients[0].notify,
        Some(Notify {
            success: false,
            failure: true,
            delay: true
        })
    );
    let all: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.job.envelope.recipients.iter().map(|r| r.address.to_string()))
        .collect();
    assert!(all.contains(&"hidden@dest.test".to_string()), "{all:?}");

    let body = jobs[0].body.clone();
    assert_eq!(body, jobs[1].body, "every job carries the same message");
    let t = text(&body);
    assert!(
        !t.contains("hidden@dest.test"),
        "Bcc written into the message:\n{t}"
    );
    assert!(
        t.contains(&format!("Message-ID: <{}@ingest.tern.test>", reply.message_id)),
        "{t}"
    );
    let m = MessageParser::default().parse(&body).expect("parses");
    assert_eq!(m.subject(), Some("Grüße"));
    assert_eq!(
        m.from().unwrap().first().unwrap().address(),
        Some("app@allowed.test")
    );
    assert_eq!(m.to().unwrap().iter().count(), 2);
    assert_eq!(
        m.cc().unwrap().first().unwrap().address(),
        Some("three@other.test")
    );
    assert!(m.bcc().is_none());
    assert_eq!(
        m.reply_to().unwrap().first().unwrap().address(),
        Some("help@allowed.test")
    );
    assert_eq!(m.header_raw("X-Campaign").map(str::trim), Some("spring"));
    assert!(
        m.is_content_type("multipart", "mixed"),
        "top: {:?}",
        m.content_type()
    );
    assert_eq!(m.body_text(0).as_deref().map(str::trim), Some("Hello"));
    assert!(m.body_html(0).unwrap().contains("cid:logo"));
    assert_eq!(m.attachment_count(), 2);
    let pdf = m
        .attachments()
        .find(|a| a.attachment_name() == Some("report.pdf"))
        .expect("pdf");
    assert_eq!(pdf.contents(), b"%PDF-1.4 fake");
    assert!(pdf.is_content_type("application", "pdf"));
    let logo = m
        .attachments()
        .find(|a| a.content_id() == Some("logo"))
        .expect("inline logo");
    assert_eq!(logo.contents(), &[0x89, b'P', b'N', b'G', 0, 1, 2, 3]);
    for needle in ["multipart/alternative", "multipart/related"] {
        assert!(t.contains(needle), "{needle} missing:\n{t}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_envelope_wins_and_duplicates_and_extra_recipients_are_rejected() {
    let h = Harness::start(false).await;
    let mut req = raw("From: header@src.test\r\nTo: shown@a.test\r\nBcc: kept@a.test\r\n\r\nhi\r\n");
    req.envelope = Some(Envelope {
        mail_from: "<bounce@src.test>".into(),
        rcpt_to: [
            "r1@a.test",
            "<r2@a.test>",
            "R1@a.test",
            "r3@a.test",
            "r4@a.test",
            "r5@a.test",
            "r6@a.test",
        ]
        .map(String::from)
        .to_vec(),
    });
    let reply = send(&h, req).await.unwrap();
    assert_eq!(
        reply.accepted,
        ["r1@a.test", "r2@a.test", "r3@a.test", "r4@a.test", "r5@a.test"]
    );
    let rejected: Vec<(&str, &str)> = reply
        .rejected
        .iter()
        .map(|r| (r.address.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0].0, "R1@a.test");
    assert!(
        rejected[0].1.starts_with("envelope.rcpt_to[2]: listed twice"),
        "{rejected:?}"
    );
    assert_eq!(rejected[1].0, "r6@a.test");
    assert!(rejected[1].1.contains("too many recipients"), "{rejected:?}");
    let jobs = h.claim_all().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job.envelope.sender.to_string(), "<bounce@src.test>");
    assert!(
        text(&jobs[0].body).contains("Bcc: kept@a.test"),
        "the message is left alone with an envelope"
    );

    // The null sender.
    let mut req = raw("From: mailer-daemon@src.test\r\n\r\nbounce\r\n");
    req.envelope = Some(Envelope {
        mail_from: String::new(),
        rcpt_to: vec!["x@a.test".into()],
    });
    send(&h, req).await.unwrap();
    let jobs = h.claim_all().await;
    assert!(jobs[0].job.envelope.is_bounce());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_allows_partial_success_with_a_result_per_message() {
    let h = Harness::start(false).await;
    let mut bad = simple();
    bad.to = vec!["ok@dest.test".into(), "x".into()];
    let mut client = h.client().await;
    let reply = client
        .send_batch(SendBatchRequest {
            messages: vec![
                composed(simple()),
                composed(bad),
                raw("From: a@src.test\r\nTo: b@dest.test\r\n\r\nx\r\n"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.results.len(), 3);
    let ids: Vec<String> = reply
        .results
        .iter()
        .filter_map(|r| match &r.result {
            Some(send_result::Result::Ok(ok)) => Some(ok.message_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    match &reply.results[1].result {
        Some(send_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert_eq!(e.message, "composed.to[1]: invalid address \"x\"");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    for id in &ids {
        assert!(h.queue.get_message(id.parse().unwrap()).await.unwrap().is_some());
    }
    assert_eq!(h.total_jobs().await, 2);

    // Over 1,000 messages: the whole call is refused.
    let many = SendBatchRequest {
        messages: vec![composed(simple()); 1001],
    };
    let err = client.send_batch(many).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("messages: 1001 messages"),
        "{}",
        err.message()
    );
    assert_eq!(h.total_jobs().await, 2);
    // Exactly 1,000 is fine.
    let full = SendBatchRequest {
        messages: vec![composed(simple()); 1000],
    };
    let reply = client.send_batch(full).await.unwrap().into_inner();
    assert_eq!(reply.results.len(), 1000);
    assert!(
        reply
            .results
            .iter()
            .all(|r| matches!(r.result, Some(send_result::Result::Ok(_))))
    );
    assert_eq!(h.total_jobs().await, 1002);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_id_and_queues_once() {
    let h = Harness::start(false).await;
    let mut req = composed(simple());
    req.idempotency_key = "order-42".into();
    let first = send(&h, req.clone()).await.unwrap();
    let second = send(&h, req.clone()).await.unwrap();
    assert_eq!(first.message_id, second.message_id);
    assert!(!first.duplicate && second.duplicate);
    // Also inside a batch.
    let reply = h
        .client()
        .await
        .send_batch(SendBatchRequest { messages: vec![req] })
        .await
        .unwrap()
        .into_inner();
    match &reply.results[0].result {
        Some(send_result::Result::Ok(ok)) => assert_eq!(ok.message_id, first.message_id),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.total_jobs().await, 1);
    assert_eq!(h.claim_all().await.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_queue_nothing() {
    let h = Harness::start(false).await;
    let with = |f: &dyn Fn(&mut ComposedMessage)| {
        let mut c = simple();
        f(&mut c);
        composed(c)
    };
    let with_env = |from: &str, to: &[&str]| {
        let mut r = composed(simple());
        r.envelope = Some(Envelope {
            mail_from: from.into(),
            rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        });
        r
    };
    let too_big = format!(
        "From: a@src.test\r\nTo: b@dest.test\r\n\r\n{}",
        "x".repeat(MAX_SIZE)
    );
    let mut big_attachment = simple();
    big_attachment.attachments.push(Attachment {
        filename: "big.bin".into(),
        content: vec![7; MAX_SIZE * 3 / 4 + 10],
        ..Default::default()
    });
    let cases: Vec<(SendRequest, &str)> = vec![
        (
            with(&|c| c.to.push("x".into())),
            "composed.to[1]: invalid address \"x\"",
        ),
        (
            with(&|c| c.cc = vec!["a@b@c".into()]),
            "composed.cc[0]: invalid address \"a@b@c\"",
        ),
        (
            with(&|c| c.from = "nobody".into()),
            "composed.from: invalid address \"nobody\"",
        ),
        (
            with(&|c| c.reply_to = "<bad".into()),
            "composed.reply_to: invalid address",
        ),
        (
            with_env("a@src.test", &["ok@dest.test", "bad"]),
            "envelope.rcpt_to[1]: invalid address \"bad\"",
        ),
        (
            with_env("not an address", &["ok@dest.test"]),
            "envelope.mail_from: invalid address",
        ),
        (
            with(&|c| c.subject = "hi\r\nBcc: victim@x.test".into()),
            "composed.subject: CR or LF",
        ),
        (
            with(&|c| c.subject = "hi\nX: y".into()),
            "composed.subject: CR or LF",
        ),
        (
            with(&|c| {
                c.headers.insert("X-Tag".into(), "a\r\nTo: victim@x.test".into());
            }),
            "composed.headers[\"X-Tag\"]: CR or LF",
        ),
        (
            with(&|c| c.to = vec!["Eve\r\nBcc: x@y.test <e@x.test>".into()]),
            "composed.to[0]: CR or LF",
        ),
        (with(&|c| c.to.clear()), "composed: no recipients"),
        (with_env("a@src.test", &[]), "envelope.rcpt_to: no recipients"),
        (
            raw("From: a@src.test\r\nSubject: nobody\r\n\r\nhi\r\n"),
            "raw: no recipients",
        ),
        (with(&|c| c.text_body.clear()), "composed: empty body"),
        (raw(""), "raw: empty message"),
        (raw("\r\n\r\n"), "raw: empty message"),
        (raw("no headers here\r\n"), "raw: not an RFC 5322 message"),
        (
            raw("From: a@src.test\r\nTo: b@dest.test\r\n\r\n"),
            "raw: empty body",
        ),
        (raw("From: a@src.test\r\nTo: b@dest.test\r\n"), "raw: empty body"),
        (
            raw("From: a@src.test\r\nTo: bob\r\n\r\nhi\r\n"),
            "raw.To: invalid address \"bob\"",
        ),
        (raw(&too_big), "raw: message too large"),
        (composed(big_attachment), "composed: message too large"),
        (SendRequest::default(), "content: required"),
        (
            SendRequest {
                idempotency_key: "k".repeat(300),
                ..composed(simple())
            },
            "idempotency_key: longer than 256 bytes",
        ),
        (
            SendRequest {
                ret: 7,
                ..composed(simple())
            },
            "ret: unknown value 7",
        ),
        (
            SendRequest {
                notify: vec![pb::Notify::Never as i32, pb::Notify::Success as i32],
                ..composed(simple())
            },
            "notify: NEVER must appear alone",
        ),
        (
            SendRequest {
                envid: "x".repeat(101),
                ..composed(simple())
            },
            "envid: longer than 100",
        ),
    ];
    let mut client = h.client().await;
    for (req, want) in cases {
        let err = client.send(req).await.expect_err(want);
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert!(
            err.message().starts_with(want),
            "want {want:?}, got {:?}",
            err.message()
        );
    }
    assert_eq!(h.total_jobs().await, 0, "nothing may be queued");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_and_limit_sender_domains() {
    let h = Harness::start(true).await;
    let mut client = h.client().await;

    let err = client.send(with_key(composed(simple()), None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("missing API key"), "{err:?}");
    let err = client
        .send(with_key(composed(simple()), Some("wrong-key")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .send_batch(with_key(
            SendBatchRequest {
                messages: vec![composed(simple())],
            },
            Some("wrong-key"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut req = Request::new(composed(simple()));
    req.metadata_mut()
        .insert("authorization", format!("Basic {GOOD_KEY}").parse().unwrap());
    assert_eq!(client.send(req).await.unwrap_err().code(), Code::Unauthenticated);

    client
        .send(with_key(composed(simple()), Some(GOOD_KEY)))
        .await
        .unwrap();
    let mut elsewhere = simple();
    elsewhere.from = "app@elsewhere.test".into();
    client
        .send(with_key(composed(elsewhere.clone()), Some(GOOD_KEY)))
        .await
        .unwrap();

    // `narrow` may send from allowed.test only, checked on the envelope sender.
    client
        .send(with_key(composed(simple()), Some(NARROW_KEY)))
        .await
        .unwrap();
    let err = client
        .send(with_key(composed(elsewhere.clone()), Some(NARROW_KEY)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("elsewhere.test"), "{err:?}");
    let mut spoof = composed(simple());
    spoof.envelope = Some(Envelope {
        mail_from: "x@elsewhere.test".into(),
        rcpt_to: vec!["one@dest.test".into()],
    });
    let err = client.send(with_key(spoof, Some(NARROW_KEY))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let reply = client
        .send_batch(with_key(
            SendBatchRequest {
                messages: vec![composed(simple()), composed(elsewhere)],
            },
            Some(NARROW_KEY),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        reply.results[0].result,
        Some(send_result::Result::Ok(_))
    ));
    match &reply.results[1].result {
        Some(send_result::Result::Error(e)) => assert_eq!(e.code, Code::PermissionDenied as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.total_jobs().await, 4);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_request_over_the_size_limit_is_refused_as_unauthenticated() {
    let h = Harness::start(true).await;
    let mut client = h.client().await;
    // 8 MiB: over the decode limit of both methods (Send: 64 KiB + 1 MiB, SendBatch: 4 × 64 KiB + 1 MiB).
    let huge = raw_of_size(8 * 1024 * 1024);

    let err = client.send(with_key(huge.clone(), None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(
        err.message(),
        "missing API key: send the metadata `authorization: Bearer <key>`"
    );
    let err = client
        .send(with_key(huge.clone(), Some("wrong-key")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "invalid API key");
    let mut basic = Request::new(huge.clone());
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {GOOD_KEY}").parse().unwrap());
    let err = client.send(basic).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().starts_with("malformed authorization"), "{err:?}");
    let err = client
        .send_batch(with_key(
            SendBatchRequest {
                messages: vec![huge.clone()],
            },
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // The same body with a valid key does reach the decoder, which refuses it for its size: the refusals
    // above came before the body was decoded.
    let err = client.send(with_key(huge, Some(GOOD_KEY))).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    assert_eq!(h.total_jobs().await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_request_is_refused_without_waiting_for_its_body() {
    let h = Harness::start(true).await;
    for key in [None, Some("wrong-key")] {
        let started = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(10), stalled_send(h.channel().await, key))
            .await
            .expect("refused while the body is still open, not after it ends");
        assert_eq!(status.code(), Code::Unauthenticated, "{key:?}: {status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(h.total_jobs().await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_limited_to_one_message_while_send_batch_keeps_room_for_several() {
    let h = Harness::start(false).await;
    let mut client = h.client().await;
    // Over Send's decode limit (64 KiB + 1 MiB), under SendBatch's (4 × 64 KiB + 1 MiB).
    let big = raw_of_size(MAX_SIZE + 1024 * 1024 + 16 * 1024);
    let err = client.send(big.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let reply = client
        .send_batch(SendBatchRequest {
            messages: vec![big, composed(simple())],
        })
        .await
        .unwrap()
        .into_inner();
    match &reply.results[0].result {
        Some(send_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.starts_with("raw: message too large"), "{e:?}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(
        reply.results[1].result,
        Some(send_result::Result::Ok(_))
    ));
    assert_eq!(h.total_jobs().await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_is_cut_off_at_its_deadline_while_other_calls_wait_for_its_slot() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    // One slot; a Send's deadline is 1 s plus its 64 KiB + 1 MiB at 1 MiB/s: about 2.06 s.
    let limits = CallLimits {
        request_timeout: Duration::from_secs(1),
        max_in_flight: 1,
    };
    let h = Harness::start_with(true, limits).await;
    let started = Instant::now();
    let stalled = tokio::spawn(stalled_send(h.channel().await, Some(GOOD_KEY)));
    tokio::time::sleep(Duration::from_millis(700)).await;

    // While the stalled call holds the only slot: health answers, and a call without a key is refused at
    // once (the key is checked before the budget).
    let t = Instant::now();
    let status = HealthClient::new(h.channel().await)
        .check(HealthCheckRequest {
            service: "tern.v1.Submission".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let err = send(&h, composed(simple())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());

    // A valid call waits for the slot, and runs once the stalled call is cut off.
    let waiting_since = Instant::now();
    let reply = h
        .client()
        .await
        .send(with_key(composed(simple()), Some(GOOD_KEY)))
        .await
        .unwrap()
        .into_inner();
    let waited = waiting_since.elapsed();
    let status = stalled.await.unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("same idempotency_key"), "{status:?}");
    let cut_off_after = started.elapsed();
    assert!(
        cut_off_after >= Duration::from_secs(2),
        "cut off after {cut_off_after:?}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "the second call did not wait for the slot: {waited:?}"
    );
    let jobs = h.claim_all().await;
    assert_eq!(jobs.len(), 1, "only the call that completed is queued");
    assert_eq!(jobs[0].job.id.message.to_string(), reply.message_id);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_errors_other_than_an_invalid_message_give_unavailable() {
    let h = Harness::start(false).await;
    // Damaged idempotency records, on every shard (the default 16; keys are `{<prefix>:sNN}:idem:<key>`):
    // a record that is not a message id (a corrupt record) and one of the wrong type (a backend error).
    for shard in 0..16 {
        let tag = format!("{{grpc-test:s{shard:02}}}");
        h.redis
            .cli(&["SET", &format!("{tag}:idem:corrupt"), "not-a-message-id"])
            .unwrap();
        h.redis
            .cli(&["RPUSH", &format!("{tag}:idem:wrongtype"), "x"])
            .unwrap();
    }
    for (key, want) in [
        ("corrupt", "corrupt queue record"),
        ("wrongtype", "queue backend error"),
    ] {
        let mut req = composed(simple());
        req.idempotency_key = key.into();
        let err = send(&h, req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{key}: {err:?}");
        assert!(
            err.message().contains("retry later") && err.message().contains(want),
            "{key}: {err:?}"
        );
        // A batch the queue failed entirely fails as a whole, so that retry policies repeat it.
        let err = h
            .client()
            .await
            .send_batch(SendBatchRequest { messages: vec![req] })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{key}: {err:?}");
    }
    assert_eq!(h.total_jobs().await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_listener_without_keys_does_not_start() {
    let redis = RedisServer::start().expect("start redis-server");
    let queue: Arc<dyn Queue> = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let settings = GrpcSettings {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..GrpcSettings::default()
    };
    let err = GrpcServer::bind(&settings, queue.clone()).await.unwrap_err();
    assert!(
        matches!(err, GrpcError::Auth(AuthError::NoKeysOnPublicListener { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("ingest.api_keys_file"), "{err}");
    let bad_file = GrpcSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys_file: Some(PathBuf::from("/nonexistent/tern-keys")),
        ..GrpcSettings::default()
    };
    let err = GrpcServer::bind(&bad_file, queue).await.unwrap_err();
    assert!(
        matches!(err, GrpcError::Auth(AuthError::KeysFile { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_down_gives_unavailable() {
    let mut h = Harness::start(false).await;
    send(&h, composed(simple())).await.unwrap();
    h.redis.stop().expect("stop redis");
    let err = send(&h, composed(simple())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("queue is unavailable"), "{err:?}");
    let err = h
        .client()
        .await
        .send_batch(SendBatchRequest {
            messages: vec![composed(simple()), composed(simple())],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // Validation still comes first: a bad message is INVALID_ARGUMENT even while the queue is down.
    let err = send(&h, raw("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_only_submission_health_and_reflection_and_health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let h = Harness::start(true).await;
    let mut reflection = ServerReflectionClient::new(h.channel().await);
    let request = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = futures::stream::iter(vec![
        request(MessageRequest::ListServices(String::new())),
        request(MessageRequest::FileContainingSymbol("tern.v1.SendRequest".into())),
    ]);
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().expect("a reply");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("{first:?}")
    };
    let mut names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    // Exactly what this port serves: not the control plane's QueueAdmin and Events, which it would answer
    // with UNIMPLEMENTED.
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "tern.v1.Submission",
        ]
    );
    let second = responses.message().await.unwrap().expect("a reply");
    let Some(MessageResponse::FileDescriptorResponse(files)) = &second.message_response else {
        panic!("{second:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    // Nor does it describe them.
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request(
            MessageRequest::FileContainingSymbol("tern.v1.QueueAdmin".into()),
        )]))
        .await
        .unwrap()
        .into_inner();
    let err = responses.message().await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Health needs no API key.
    let mut health = HealthClient::new(h.channel().await);
    for service in ["", "tern.v1.Submission"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    // The role can report that it cannot work (a later readiness check will, when the queue is down).
    h.health.set_not_serving().await;
    for service in ["", "tern.v1.Submission"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }
    h.stop().await;
}

/// The proto works outside Rust: `examples/python/send.py` (grpcio) against the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_can_send() {
    let python = tern_testkit::python_with_packages(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &["grpcio", "grpcio-tools"],
    )
    .unwrap_or_else(|e| panic!("the Python grpcio peer is missing: {e:#}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let gen_status = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .arg(root.join("proto/tern/v1/submission.proto"))
        .status()
        .unwrap();
    assert!(gen_status.success(), "grpc_tools.protoc failed");

    let h = Harness::start(true).await;
    let addr = h.addr.to_string();
    let script = root.join("examples/python/send.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .args([
                "--target",
                &addr,
                "--key",
                GOOD_KEY,
                "--from",
                "py@allowed.test",
                "--to",
                "you@dest.test",
            ])
            .env("PYTHONPATH", out.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "send.py failed:\n{stdout}\n{}",
        text(&output.stderr)
    );
    eprintln!("{stdout}");
    assert!(stdout.contains("composed: queued as "), "{stdout}");
    assert!(
        stdout
            .contains("batch[1]: error INVALID_ARGUMENT: composed.to[0]: invalid address \"not-an-address\""),
        "{stdout}"
    );
    let jobs = h.claim_all().await;
    assert_eq!(jobs.len(), 3, "composed, raw and one of the batch");
    let tagged = jobs
        .iter()
        .find(|j| j.job.tags.get("source").map(String::as_str) == Some("python-example"));
    let body = text(&tagged.expect("the composed message").body);
    assert!(
        body.contains("Subject: Hello from Python") && body.contains("X-Example: python"),
        "{body}"
    );
    h.stop().await;
}
