//! tern's metrics: the instruments every role records into, through the OpenTelemetry metrics API.
//!
//! Each role calls one function per fact (`message_received`, `delivery`, `dns_lookup`...) with typed
//! labels, so the label values are a closed set and every name is the one of the telemetry contract
//! (`docs/operations.md`, "Metrics"). They are served as Prometheus text at `/metrics` (counters get the
//! `_total` suffix there) and exported over OTLP when `telemetry.otlp_endpoint` is set.
//!
//! Before [`crate::Telemetry::init`] installs the meter provider, recording goes nowhere (the global
//! provider is a no-op): libraries and their tests can call these functions freely.

use std::sync::{Arc, OnceLock, RwLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use crate::gauges::QueueSnapshot;

/// The instrumentation scope of every instrument.
pub const METER_NAME: &str = "tern";

/// Which front door a message came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// SMTP submission with optional STARTTLS (`ingest.smtp_listen`).
    Smtp,
    /// SMTP submission over implicit TLS (`ingest.smtps_listen`).
    Smtps,
    /// The gRPC Send API.
    Grpc,
}

/// How a submission was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Queued (250, or a gRPC success).
    Accepted,
    /// Refused for good (5xx, INVALID_ARGUMENT...).
    Rejected,
    /// Refused for now (451 after a queue failure, UNAVAILABLE).
    Tempfail,
}

/// What one delivery attempt did for one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Accepted by the remote server.
    Delivered,
    /// To be tried again.
    Deferred,
    /// Failed for good (a DSN goes to the sender).
    Bounced,
    /// Given up after `delivery.max_age`.
    Expired,
}

/// The class of the remote reply behind an outcome; `None` when no server replied (no route, no
/// connection, a timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2xx.
    Success,
    /// 4xx.
    Transient,
    /// 5xx.
    Permanent,
    /// No remote reply.
    None,
}

impl ReplyClass {
    /// The class of a reply code (a remote one).
    pub fn of_code(code: u16) -> ReplyClass {
        match code / 100 {
            2 => ReplyClass::Success,
            4 => ReplyClass::Transient,
            5 => ReplyClass::Permanent,
            _ => ReplyClass::None,
        }
    }
}

/// A connection to a remote server: opened anew, or reused for another message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    /// A new connection took a session.
    Opened,
    /// A message went over a connection that had carried one before (or waited idle in the pool).
    Reused,
}

/// The record type of a DNS lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsKind {
    /// MX.
    Mx,
    /// A (delivery's MX hosts, MTA-STS policy hosts).
    A,
    /// AAAA (delivery's MX hosts, MTA-STS policy hosts).
    Aaaa,
    /// TXT (MTA-STS `_mta-sts` and TLS-RPT `_smtp._tls` records).
    Txt,
}

/// How a DNS lookup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Records found.
    Ok,
    /// The name does not exist.
    NxDomain,
    /// The name exists without records of the type.
    NoData,
    /// No answer: SERVFAIL, a timeout, a refused query.
    Error,
}

/// A queue operation, for store errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOperation {
    /// Enqueue (ingest, DSNs).
    Enqueue,
    /// Claim (workers).
    Claim,
    /// Complete (workers).
    Complete,
    /// Anything else: extend, release, reap, reads, admin.
    Other,
}

/// The MTA-STS policy mode of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtaStsMode {
    /// `enforce`.
    Enforce,
    /// `testing`.
    Testing,
    /// No policy.
    None,
}

macro_rules! label_names {
    ($($ty:ident { $($variant:ident => $name:literal),* $(,)? })*) => {
        $(impl $ty {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),* }
            }
        })*
    };
}

label_names! {
    Listener { Smtp => "smtp", Smtps => "smtps", Grpc => "grpc" }
    Received { Accepted => "accepted", Rejected => "rejected", Tempfail => "tempfail" }
    DeliveryOutcome { Delivered => "delivered", Deferred => "deferred", Bounced => "bounced", Expired => "expired" }
    ReplyClass { Success => "2xx", Transient => "4xx", Permanent => "5xx", None => "none" }
    ConnectionKind { Opened => "opened", Reused => "reused" }
    DnsKind { Mx => "mx", A => "a", Aaaa => "aaaa", Txt => "txt" }
    DnsOutcome { Ok => "ok", NxDomain => "nxdomain", NoData => "nodata", Error => "error" }
    StoreOperation { Enqueue => "enqueue", Claim => "claim", Complete => "complete", Other => "other" }
    MtaStsMode { Enforce => "enforce", Testing => "testing", None => "none" }
}

/// Queued-to-delivered buckets (seconds): from sub-second to a day.
const LATENCY_BUCKETS: [f64; 16] = [
    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];
/// SMTP transaction buckets (seconds).
const TRANSACTION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Every instrument, made once from one meter.
pub struct Metrics {
    messages_received: Counter<u64>,
    deliveries: Counter<u64>,
    delivery_latency: Histogram<f64>,
    smtp_transaction: Histogram<f64>,
    connections: Counter<u64>,
    dns_lookups: Counter<u64>,
    mta_sts: Counter<u64>,
    store_errors: Counter<u64>,
    /// The queue gauges read the sampler's latest snapshot when a reader collects.
    snapshot: Arc<RwLock<Option<QueueSnapshot>>>,
    _gauges: Vec<ObservableGauge<u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Makes every instrument on `meter`.
    pub fn new(meter: &Meter) -> Metrics {
        let snapshot: Arc<RwLock<Option<QueueSnapshot>>> = Arc::default();
        let gauges = crate::gauges::register(meter, &snapshot);
        Metrics {
            messages_received: meter
                .u64_counter("tern_messages_received")
                .with_description("Messages submitted, by listener and how they were answered.")
                .build(),
            deliveries: meter
                .u64_counter("tern_deliveries")
                .with_description("Delivery attempts per recipient, by outcome and remote reply class.")
                .build(),
            delivery_latency: meter
                .f64_histogram("tern_delivery_latency_seconds")
                .with_unit("s")
                .with_description("Time from queued to delivered, per recipient.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            smtp_transaction: meter
                .f64_histogram("tern_smtp_transaction_duration_seconds")
                .with_unit("s")
                .with_description(
                    "Duration of one outbound SMTP transaction (MAIL to the reply to the data).",
                )
                .with_boundaries(TRANSACTION_BUCKETS.to_vec())
                .build(),
            connections: meter
                .u64_counter("tern_connections")
                .with_description("Outbound SMTP connections opened, and messages sent over a reused one.")
                .build(),
            dns_lookups: meter
                .u64_counter("tern_dns_lookups")
                .with_description("DNS lookups by record type and outcome.")
                .build(),
            mta_sts: meter
                .u64_counter("tern_mta_sts")
                .with_description("MTA-STS policy checks by mode and outcome.")
                .build(),
            store_errors: meter
                .u64_counter("tern_queue_store_errors")
                .with_description("Queue (Redis) operations that failed for the store's sake, by operation.")
                .build(),
            snapshot,
            _gauges: gauges,
        }
    }

    /// The instruments' latest queue snapshot, as the gauges report it.
    pub fn queue_snapshot(&self) -> Option<QueueSnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the queue snapshot the gauges report (the sampler calls it).
    pub fn set_queue_snapshot(&self, snapshot: Option<QueueSnapshot>) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
    }

    /// Counts one submission.
    pub fn message_received(&self, listener: Listener, outcome: Received) {
        self.messages_received.add(
            1,
            &[
                KeyValue::new("listener", listener.as_str()),
                KeyValue::new("outcome", outcome.as_str()),
            ],
        );
    }

    /// Counts `recipients` recipients of one attempt with the same outcome and reply class.
    pub fn delivery(&self, outcome: DeliveryOutcome, reply_class: ReplyClass, recipients: u64) {
        self.deliveries.add(
            recipients,
            &[
                KeyValue::new("outcome", outcome.as_str()),
                KeyValue::new("reply_class", reply_class.as_str()),
            ],
        );
    }

    /// Records the time from queued to delivered of one recipient.
    pub fn delivery_latency(&self, seconds: f64) {
        self.delivery_latency.record(seconds.max(0.0), &[]);
    }

    /// Records one SMTP transaction's duration.
    pub fn smtp_transaction(&self, seconds: f64) {
        self.smtp_transaction.record(seconds.max(0.0), &[]);
    }

    /// Counts a connection opened or reused.
    pub fn connection(&self, kind: ConnectionKind) {
        self.connections.add(1, &[KeyValue::new("kind", kind.as_str())]);
    }

    /// Counts one DNS lookup.
    pub fn dns_lookup(&self, kind: DnsKind, outcome: DnsOutcome) {
        self.dns_lookups.add(
            1,
            &[
                KeyValue::new("kind", kind.as_str()),
                KeyValue::new("outcome", outcome.as_str()),
            ],
        );
    }

    /// Counts one MTA-STS policy check (`ok` true: the delivery met the policy).
    pub fn mta_sts(&self, mode: MtaStsMode, ok: bool) {
        self.mta_sts.add(
            1,
            &[
                KeyValue::new("mode", mode.as_str()),
                KeyValue::new("outcome", if ok { "ok" } else { "failure" }),
            ],
        );
    }

    /// Counts one failed queue operation.
    pub fn store_error(&self, operation: StoreOperation) {
        self.store_errors
            .add(1, &[KeyValue::new("operation", operation.as_str())]);
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's instruments: those of [`crate::Telemetry::init`]'s meter provider, or no-ops before it.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter(METER_NAME)))
}

/// Makes the process's instruments on `meter` (from `Telemetry::init`). `false` when something recorded
/// before: those instruments stay no-ops.
pub(crate) fn install(meter: &Meter) -> bool {
    METRICS.set(Metrics::new(meter)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_classes_follow_the_first_digit() {
        assert_eq!(ReplyClass::of_code(250), ReplyClass::Success);
        assert_eq!(ReplyClass::of_code(421), ReplyClass::Transient);
        assert_eq!(ReplyClass::of_code(554), ReplyClass::Permanent);
        assert_eq!(ReplyClass::of_code(0), ReplyClass::None);
        assert_eq!(ReplyClass::Transient.as_str(), "4xx");
        assert_eq!(DnsOutcome::NxDomain.as_str(), "nxdomain");
    }
}
