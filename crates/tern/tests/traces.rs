//! Traces across processes: `tern ingest` and `tern worker` export their spans over OTLP to a real
//! receiver (the collector's TraceService on loopback); each message's trace runs from its reception on the
//! ingest node, through the queue, to the SMTP transaction on the worker, and a gRPC caller's own
//! `traceparent` is continued. The worker delivers over verified STARTTLS, to a `tern ingest` offering it
//! with a certificate from a test CA, so that every span of the telemetry contract is exported: SMTP session,
//! message receive, enqueue, claim, DNS lookup, connect, TLS, SMTP transaction, complete.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::http::{get, sum_of};
use common::nodes::{Ports, Sections, config, raw_request, spawn};
use common::otlp::{OtlpReceiver, ReceivedSpan, summary};
use tern_testkit::ports::wait_until;
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, TestCa, free_port};

/// Faster exports than the SDK's default 5 s, so that the test does not wait.
const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "200")];

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn one<'a>(trace: &[&'a ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<&&ReceivedSpan> = trace.iter().filter(|s| s.name == name).collect();
    assert!(!found.is_empty(), "no {name} span in the trace: {trace:#?}");
    found[0]
}

/// The spans of the trace of the message whose `message_receive`... `delivery` chain carries `message_id`.
fn trace_of<'a>(spans: &'a [ReceivedSpan], message_id: &str) -> Vec<&'a ReceivedSpan> {
    let delivery = spans
        .iter()
        .find(|s| {
            s.name == "delivery" && s.attributes.get("message_id").map(String::as_str) == Some(message_id)
        })
        .unwrap_or_else(|| panic!("no delivery span of {message_id}: {}", summary(spans)));
    spans.iter().filter(|s| s.trace_id == delivery.trace_id).collect()
}

/// Checks one message's trace: received and enqueued on the ingest process, claimed, delivered and
/// completed on the worker, each span a child of the one before.
fn check_chain(trace: &[&ReceivedSpan], ingest_pid: i64, worker_pid: i64) {
    let receive = one(trace, "message_receive");
    let enqueue = one(trace, "enqueue");
    let claim = one(trace, "claim");
    let delivery = one(trace, "delivery");
    let transaction = one(trace, "smtp_transaction");
    let complete = one(trace, "complete");
    for (span, pid) in [
        (receive, ingest_pid),
        (enqueue, ingest_pid),
        (claim, worker_pid),
        (delivery, worker_pid),
        (transaction, worker_pid),
        (complete, worker_pid),
    ] {
        assert_eq!(
            span.pid, pid,
            "{} sent by the wrong process: {trace:#?}",
            span.name
        );
    }
    assert_eq!(receive.role, "ingest");
    assert_eq!(delivery.role, "worker");
    assert_eq!(enqueue.parent_span_id, receive.span_id, "{trace:#?}");
    assert_eq!(claim.parent_span_id, enqueue.span_id, "{trace:#?}");
    assert_eq!(delivery.parent_span_id, enqueue.span_id, "{trace:#?}");
    assert_eq!(transaction.parent_span_id, delivery.span_id, "{trace:#?}");
    assert_eq!(complete.parent_span_id, delivery.span_id, "{trace:#?}");
}

/// The remote MX: a `tern ingest` on its own Redis, offering STARTTLS with a certificate for
/// `mx.traced.test` from the test CA; nothing delivers what it queues. It exports no spans.
struct TlsMx {
    ingest: ChildGuard,
    ports: Ports,
    _redis: RedisServer,
}

impl TlsMx {
    fn start(dir: &std::path::Path, ca: &TestCa, dns: std::net::SocketAddr, mx_port: u16) -> TlsMx {
        let cert = ca
            .issue(&["mx.traced.test"])
            .unwrap()
            .write_to(dir, "mx")
            .unwrap();
        let redis = RedisServer::start().unwrap();
        let ports = Ports {
            smtp: mx_port,
            ..Ports::free()
        };
        let extra = Sections {
            ingest: format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                cert.cert.display(),
                cert.key.display()
            ),
            ..Sections::default()
        };
        let text = config(&redis.url(), dns, mx_port, &ports, &extra);
        let ingest = spawn("ingest", "mx", dir, &text, &ports, &[]);
        TlsMx {
            ingest,
            ports,
            _redis: redis,
        }
    }

    /// Waits until it has accepted `n` messages.
    fn wait_for_messages(&self, n: f64, logs: impl Fn() -> String) {
        let mut text = String::new();
        wait_until(
            &format!("the MX to accept {n} messages"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                text = get(self.ports.metrics_addr(), "/metrics").1;
                Ok(sum_of(&text, "tern_messages_received_total", "outcome=\"accepted\"") >= n)
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{text}\n{}\nMX:\n{}", logs(), self.ingest.logs()));
    }
}

/// Two messages (SMTP, then gRPC with the caller's `traceparent`) through an ingest process and a worker
/// process, delivered over verified STARTTLS: each has one trace over both processes, from
/// `message_receive` to `complete`; the first one's also holds the worker's DNS lookups, connect and TLS,
/// and its `message_receive` links to the SMTP session's span; the gRPC one is in the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_trace_runs_from_ingest_to_the_remote_reply_across_processes() {
    let receiver = OtlpReceiver::start();
    let mx_port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("traced.test", "mx.traced.test", 10)
        .host("mx.traced.test", Ipv4Addr::LOCALHOST)
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();
    let mx = TlsMx::start(dir.path(), &ca, dns.addr(), mx_port);
    let redis = RedisServer::start().unwrap();
    let extra = Sections {
        telemetry: format!("otlp_endpoint = \"{}\"", receiver.endpoint()),
        ..Sections::default()
    };
    // Verified TLS or no delivery: the message cannot reach the MX without the `tls` step.
    let worker_extra = Sections {
        delivery: format!("tls = \"required\"\nextra_ca_file = \"{}\"", ca_file.display()),
        ..extra.clone()
    };
    let (ingest_ports, worker_ports) = (Ports::free(), Ports::free());
    let ingest = spawn(
        "ingest",
        "ingest",
        dir.path(),
        &config(&redis.url(), dns.addr(), mx_port, &ingest_ports, &extra),
        &ingest_ports,
        &FAST_EXPORT,
    );
    let worker = spawn(
        "worker",
        "worker",
        dir.path(),
        &config(&redis.url(), dns.addr(), mx_port, &worker_ports, &worker_extra),
        &worker_ports,
        &FAST_EXPORT,
    );
    let logs = || format!("{}\n{}", ingest.logs(), worker.logs());

    let reply = common::smtp_submit(
        ingest_ports.smtp_addr(),
        "app@sender.test",
        "user@traced.test",
        "Subject: traced\r\n\r\nhello",
    );
    let smtp_id = reply
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    mx.wait_for_messages(1.0, logs);

    let mut client = tern_proto::v1::submission_client::SubmissionClient::connect(ingest_ports.grpc_url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(raw_request("app@sender.test", "user@traced.test", "traced"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let grpc_id = client.send(request).await.unwrap().into_inner().message_id;
    mx.wait_for_messages(2.0, logs);

    let has_trace = |spans: &[ReceivedSpan], id: &str, names: &[&str]| {
        spans
            .iter()
            .find(|s| s.name == "delivery" && s.attributes.get("message_id").map(String::as_str) == Some(id))
            .is_some_and(|d| {
                let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == d.trace_id).collect();
                names.iter().all(|n| trace.iter().any(|s| s.name == *n))
            })
    };
    let chain = [
        "message_receive",
        "enqueue",
        "claim",
        "smtp_transaction",
        "complete",
    ];
    let complete_traces = |spans: &[ReceivedSpan]| {
        has_trace(
            spans,
            &smtp_id,
            &[&chain[..], &["dns_lookup", "connect", "tls"]].concat(),
        ) && has_trace(spans, &grpc_id, &chain)
    };
    receiver.wait_for("both messages' traces", Duration::from_secs(30), complete_traces);

    let spans = receiver.spans();
    let (ingest_pid, worker_pid) = (i64::from(ingest.pid()), i64::from(worker.pid()));
    let first = trace_of(&spans, &smtp_id);
    check_chain(&first, ingest_pid, worker_pid);
    let receive = one(&first, "message_receive");
    assert!(receive.parent_span_id.is_empty(), "a new trace per SMTP message");
    // The SMTP session carries many messages: its span is in a trace of its own, linked from each
    // message's. (It ends with the session; the readiness probes' connections have sessions too.)
    let [(link_trace, link_span)] = &receive.links[..] else {
        panic!("message_receive links to one span, its session's: {receive:#?}");
    };
    receiver.wait_for("the SMTP session's span", Duration::from_secs(30), |spans| {
        spans.iter().any(|s| &s.span_id == link_span)
    });
    let spans = receiver.spans();
    let session = spans.iter().find(|s| &s.span_id == link_span).unwrap();
    assert_eq!(session.name, "smtp_session", "{session:#?}");
    assert_eq!(&session.trace_id, link_trace, "{session:#?}");
    assert_ne!(session.trace_id, receive.trace_id, "{session:#?}");
    assert_eq!((session.pid, session.role.as_str()), (ingest_pid, "ingest"));
    // The worker's steps, each a child of the delivery attempt (TLS within the connect).
    let delivery = one(&first, "delivery");
    for kind in ["mx", "a"] {
        let lookup = first
            .iter()
            .find(|s| s.name == "dns_lookup" && s.attributes.get("kind").map(String::as_str) == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} dns_lookup: {first:#?}"));
        assert_eq!(lookup.parent_span_id, delivery.span_id, "{lookup:#?}");
        assert_eq!(lookup.pid, worker_pid);
    }
    let connect = one(&first, "connect");
    assert_eq!(connect.parent_span_id, delivery.span_id);
    let tls = one(&first, "tls");
    assert_eq!(tls.parent_span_id, connect.span_id, "{tls:#?}");
    assert_eq!(tls.pid, worker_pid);
    assert_eq!(
        tls.attributes.get("mx").map(String::as_str),
        Some("mx.traced.test"),
        "{tls:#?}"
    );

    let second = trace_of(&spans, &grpc_id);
    check_chain(&second, ingest_pid, worker_pid);
    let receive = one(&second, "message_receive");
    assert_eq!(receive.trace_id, CALLER_TRACE, "the caller's trace is continued");
    assert_eq!(receive.parent_span_id, CALLER_SPAN);
}
