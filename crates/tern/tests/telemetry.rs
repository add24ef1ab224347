//! Telemetry of a real `tern all` over a real redis-server, smtp-sink and dnsmasq: the Prometheus text at
//! `/metrics` after deliveries, the same metrics pushed over OTLP to a real receiver (the collector's
//! MetricsService on loopback), `/readyz` and gRPC health while Redis is stopped (SIGSTOP) and after, and
//! JSON log lines that parse with unique keys and carry no colour codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::http::{get, parse_strict, redis_pid, sample, signal, sum_of};
use common::nodes::{Ports, Sections, config, grpc_send, spawn, wait_ready};
use common::otlp::OtlpReceiver;
use tern_testkit::ports::wait_until;
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, SmtpSink, free_port};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A `tern all` with an MX for `metrics.test` on a sink, and its peers.
struct Setup {
    tern: ChildGuard,
    ports: Ports,
    redis: RedisServer,
    sink: SmtpSink,
    _dns: Dnsmasq,
    _dir: tempfile::TempDir,
}

fn start(mx_ip: u8, telemetry: &str) -> Setup {
    let mx_port = free_port().unwrap();
    let ip = Ipv4Addr::new(127, 0, 0, mx_ip);
    let dns = Dnsmasq::builder()
        .mx("metrics.test", "mx.metrics.test", 10)
        .host("mx.metrics.test", ip)
        .start()
        .unwrap();
    let sink = SmtpSink::start(ip, mx_port).unwrap();
    let redis = RedisServer::start().unwrap();
    let ports = Ports::free();
    let dir = tempfile::tempdir().unwrap();
    let extra = Sections {
        telemetry: telemetry.to_string(),
        ..Sections::default()
    };
    let text = config(&redis.url(), dns.addr(), mx_port, &ports, &extra);
    let tern = spawn("all", "tern-all", dir.path(), &text, &ports, &[]);
    Setup {
        tern,
        ports,
        redis,
        sink,
        _dns: dns,
        _dir: dir,
    }
}

/// One message over SMTP and two over gRPC are delivered to one domain, each once the one before has
/// reached the sink, so that the later ones go over the connection the first one opened (idle in the pool
/// in between); `/metrics` then names every contract metric that has data, with the contract's labels, and
/// the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_deliveries_carry_the_contract_names() {
    let s = start(131, "");
    let delivered = |n: u64| {
        s.sink
            .wait_for_messages(n, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", s.tern.logs()));
    };
    let queued = common::smtp_submit(
        s.ports.smtp_addr(),
        "app@sender.test",
        "user@metrics.test",
        "Subject: over smtp\r\n\r\nhello",
    );
    assert!(queued.starts_with("250"), "{queued}");
    delivered(1);
    for n in 2..=3 {
        grpc_send(
            &s.ports.grpc_url(),
            "app@sender.test",
            "user@metrics.test",
            "over grpc",
        )
        .await;
        delivered(n);
    }

    let mut text = String::new();
    wait_until(
        "the gauges and counters",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            text = get(s.ports.metrics_addr(), "/metrics").1;
            Ok(
                sum_of(&text, "tern_deliveries_total", "outcome=\"delivered\"") >= 3.0
                    && text.contains("tern_queue_jobs{"),
            )
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{text}\n{}", s.tern.logs()));

    let expect = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
    };
    assert_eq!(
        expect(
            "tern_messages_received_total",
            r#"listener="smtp",outcome="accepted""#
        ),
        1.0
    );
    assert_eq!(
        expect(
            "tern_messages_received_total",
            r#"listener="grpc",outcome="accepted""#
        ),
        2.0
    );
    assert_eq!(
        expect(
            "tern_deliveries_total",
            r#"outcome="delivered",reply_class="2xx""#
        ),
        3.0
    );
    assert_eq!(expect("tern_delivery_latency_seconds_count", ""), 3.0);
    assert!(expect("tern_delivery_latency_seconds_bucket", r#"le="+Inf""#) >= 3.0);
    assert_eq!(expect("tern_smtp_transaction_duration_seconds_count", ""), 3.0);
    // Three messages: the first opened a connection, the others went over it (a stale one reopened would
    // count both).
    let opened = expect("tern_connections_total", r#"kind="opened""#);
    let reused = expect("tern_connections_total", r#"kind="reused""#);
    assert!(
        opened >= 1.0 && reused >= 1.0,
        "opened {opened}, reused {reused}\n{text}"
    );
    assert!(opened + reused >= 3.0, "opened {opened}, reused {reused}\n{text}");
    assert!(expect("tern_dns_lookups_total", r#"kind="mx",outcome="ok""#) >= 1.0);
    assert!(expect("tern_dns_lookups_total", r#"kind="a",outcome="ok""#) >= 1.0);
    // The MTA-STS discovery's TXT lookup (`_mta-sts.metrics.test`: no such name).
    assert!(expect("tern_dns_lookups_total", r#"kind="txt",outcome="nxdomain""#) >= 1.0);
    for state in ["due", "scheduled", "in_flight", "deferred", "held", "suspended"] {
        expect("tern_queue_jobs", &format!("state=\"{state}\""));
    }
    expect("tern_queue_oldest_age_seconds", "");
    expect("tern_queue_domain_jobs", r#"domain="other""#);
    for (name, kind) in [
        ("tern_messages_received_total", "counter"),
        ("tern_deliveries_total", "counter"),
        ("tern_queue_jobs", "gauge"),
        ("tern_delivery_latency_seconds", "histogram"),
        ("tern_smtp_transaction_duration_seconds", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} is a {kind}:\n{text}"
        );
    }
    // No colour codes in a log written to a file.
    assert!(!s.tern.stderr().contains('\u{1b}'), "{}", s.tern.stderr());
}

/// With `telemetry.otlp_endpoint` set, the process pushes its metrics over OTLP every
/// `otlp_metrics_interval`: after one delivery the receiver holds the counters (cumulative), the
/// histograms and the queue gauges, sent with the process's resource attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_over_otlp() {
    let receiver = OtlpReceiver::start();
    let s = start(
        134,
        &format!(
            "otlp_endpoint = \"{}\"\notlp_metrics_interval = \"1s\"",
            receiver.endpoint()
        ),
    );
    let queued = common::smtp_submit(
        s.ports.smtp_addr(),
        "app@sender.test",
        "user@metrics.test",
        "Subject: over otlp\r\n\r\nhello",
    );
    assert!(queued.starts_with("250"), "{queued}");
    s.sink
        .wait_for_messages(1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", s.tern.logs()));

    let pid = i64::from(s.tern.pid());
    let delivered = &[("outcome", "delivered"), ("reply_class", "2xx")][..];
    wait_until(
        "the delivery to be pushed over OTLP",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || Ok(receiver.latest(pid, "tern_deliveries", delivered) == Some(1.0)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\npoints: {:#?}\n{}", receiver.points(), s.tern.logs()));
    let accepted = &[("listener", "smtp"), ("outcome", "accepted")][..];
    assert_eq!(
        receiver.latest(pid, "tern_messages_received", accepted),
        Some(1.0)
    );
    assert_eq!(
        receiver.latest(pid, "tern_delivery_latency_seconds", &[]),
        Some(1.0),
        "a histogram's count"
    );
    assert!(receiver.latest(pid, "tern_connections", &[("kind", "opened")]) >= Some(1.0));
    assert!(receiver.latest(pid, "tern_dns_lookups", &[("kind", "mx")]) >= Some(1.0));
    let points = receiver.points();
    let gauge = points
        .iter()
        .find(|p| p.metric == "tern_queue_jobs" && p.pid == pid)
        .unwrap_or_else(|| panic!("no tern_queue_jobs point: {points:#?}"));
    assert_eq!((gauge.kind, gauge.role.as_str()), ("gauge", "all"), "{gauge:#?}");
}

async fn health(port: u16) -> i32 {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .connect()
        .await
    else {
        return -1;
    };
    let mut client = HealthClient::new(channel);
    match client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner().status,
        Err(_) => -1,
    }
}

async fn wait_health(ports: &Ports, status: ServingStatus, logs: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ingest, control) = (health(ports.grpc).await, health(ports.control).await);
        if ingest == status as i32 && control == status as i32 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health of ingest {ingest}, control {control}; expected {status:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// While Redis is stopped (SIGSTOP), `/readyz` answers 503 and both gRPC ports say NOT_SERVING, `/healthz`
/// still answers 200, and the store errors are counted; after SIGCONT everything is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_grpc_health_follow_the_queue_store() {
    let s = start(132, "");
    let logs = || s.tern.logs();
    wait_ready(&s.ports, 200, Duration::from_secs(20), logs);
    wait_health(&s.ports, ServingStatus::Serving, logs).await;
    assert_eq!(get(s.ports.metrics_addr(), "/healthz"), (200, "ok\n".to_string()));

    let pid = redis_pid(&s.redis);
    signal(pid, "-STOP");
    wait_ready(&s.ports, 503, Duration::from_secs(15), logs);
    let (_, reason) = get(s.ports.metrics_addr(), "/readyz");
    assert_eq!(reason.trim(), "queue store unreachable");
    wait_health(&s.ports, ServingStatus::NotServing, logs).await;
    assert_eq!(get(s.ports.metrics_addr(), "/healthz").0, 200);
    let mut text = String::new();
    wait_until(
        "store errors to be counted",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            text = get(s.ports.metrics_addr(), "/metrics").1;
            Ok(sum_of(&text, "tern_queue_store_errors_total", "operation=") > 0.0)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{text}"));

    signal(pid, "-CONT");
    wait_ready(&s.ports, 200, Duration::from_secs(20), logs);
    wait_health(&s.ports, ServingStatus::Serving, logs).await;
}

/// With `log_format = "json"`, every line tern writes is one JSON object without a repeated key (the
/// gRPC "queued via gRPC" line carries the message id as `message_id`, next to the event's `message`), and
/// no line carries a colour code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_with_unique_keys_and_no_colour() {
    let mut s = start(
        133,
        "log_format = \"json\"\nlog_level = \"debug,h2=info,hyper=info,tonic=info,tower=info\"",
    );
    let id = grpc_send(
        &s.ports.grpc_url(),
        "app@sender.test",
        "user@metrics.test",
        "json logs",
    )
    .await;
    let queued = common::smtp_submit(
        s.ports.smtp_addr(),
        "app@sender.test",
        "user@metrics.test",
        "Subject: json\r\n\r\nhello",
    );
    assert!(queued.starts_with("250"), "{queued}");
    s.sink.wait_for_messages(2, Duration::from_secs(30)).unwrap();
    s.tern.terminate(Duration::from_secs(20)).unwrap();
    let stderr = s.tern.stderr();
    assert!(!stderr.contains('\u{1b}'), "colour codes in:\n{stderr}");
    let mut lines = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value = parse_strict(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(value.get(key).is_some(), "no {key}: {line}");
        }
        lines.push(value);
    }
    assert!(lines.len() > 10, "{stderr}");
    let grpc = lines
        .iter()
        .find(|l| l["message"] == "queued via gRPC")
        .unwrap_or_else(|| panic!("no 'queued via gRPC' line:\n{stderr}"));
    assert_eq!(grpc["message_id"], id.as_str(), "{grpc}");
    let smtp = lines
        .iter()
        .find(|l| l["message"] == "message queued")
        .unwrap_or_else(|| panic!("no 'message queued' line:\n{stderr}"));
    assert_eq!(smtp["span"]["name"], "message_receive", "{smtp}");
    assert_eq!(smtp["spans"][0]["name"], "smtp_session", "{smtp}");
    assert!(
        lines.iter().any(|l| l["message"] == "delivery attempt finished"),
        "{stderr}"
    );
}
