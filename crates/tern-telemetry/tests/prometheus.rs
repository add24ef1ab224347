//! The Prometheus text of every instrument, through the same reader `/metrics` uses: the names and labels
//! of the telemetry contract, including those a single-node run does not produce (MTA-STS, store errors).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};
use tern_telemetry::Metrics;
use tern_telemetry::gauges::QueueSnapshot;
use tern_telemetry::metrics::{
    ConnectionKind, DeliveryOutcome, DnsKind, DnsOutcome, Listener, MtaStsMode, Received, ReplyClass,
    StoreOperation,
};

#[test]
fn every_instrument_renders_under_its_contract_name() {
    let registry = prometheus::Registry::new();
    let provider = SdkMeterProvider::builder()
        .with_reader(tern_telemetry::prometheus_reader(&registry).unwrap())
        .build();
    let metrics = Metrics::new(&provider.meter("tern"));
    metrics.message_received(Listener::Smtps, Received::Tempfail);
    metrics.delivery(DeliveryOutcome::Expired, ReplyClass::Transient, 3);
    metrics.delivery_latency(42.0);
    metrics.smtp_transaction(0.2);
    metrics.connection(ConnectionKind::Reused);
    metrics.dns_lookup(DnsKind::Aaaa, DnsOutcome::NoData);
    metrics.mta_sts(MtaStsMode::Enforce, false);
    metrics.store_error(StoreOperation::Claim);
    metrics.set_queue_snapshot(Some(QueueSnapshot {
        due: 7,
        oldest_age_seconds: 90,
        domains: vec![("example.test".into(), 7), ("other".into(), 0)],
        ..QueueSnapshot::default()
    }));

    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for line in [
        r#"tern_messages_received_total{listener="smtps",outcome="tempfail"} 1"#,
        r#"tern_deliveries_total{outcome="expired",reply_class="4xx"} 3"#,
        r#"tern_delivery_latency_seconds_bucket{le="60"} 1"#,
        "tern_delivery_latency_seconds_sum 42",
        "tern_smtp_transaction_duration_seconds_count 1",
        r#"tern_connections_total{kind="reused"} 1"#,
        r#"tern_dns_lookups_total{kind="aaaa",outcome="nodata"} 1"#,
        r#"tern_mta_sts_total{mode="enforce",outcome="failure"} 1"#,
        r#"tern_queue_store_errors_total{operation="claim"} 1"#,
        r#"tern_queue_jobs{state="due"} 7"#,
        r#"tern_queue_jobs{state="held"} 0"#,
        "tern_queue_oldest_age_seconds 90",
        r#"tern_queue_domain_jobs{domain="example.test"} 7"#,
        r#"tern_queue_domain_jobs{domain="other"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
    assert!(!text.contains("otel_scope"), "{text}");
    assert!(!text.contains("target_info"), "{text}");

    // Without a snapshot (the queue cannot be read) the gauges report nothing rather than stale numbers.
    metrics.set_queue_snapshot(None);
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("tern_queue_jobs{"), "{text}");
}
