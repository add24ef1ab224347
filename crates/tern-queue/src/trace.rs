//! Live SMTP traces from every worker of the cluster: [`TraceBus`].
//!
//! `ternctl trace [--domain D] [--mx HOST]` shows, as it happens, what remote servers answer (KumoMTA
//! `kcli trace-smtp-client`, Postfix `debug_peer_list`). The control plane opens a trace on the bus, which
//! registers its filter cluster-wide for as long as the trace stays open; workers look at the registered
//! filters every second or so, and only while one matches a delivery do they publish its conversation
//! (commands and replies, TLS details; never message bodies, and AUTH payloads masked) on the bus.
//!
//! The bus lives in the queue's store: Redis (a registration hash and a pub/sub channel) or, in one process,
//! the embedded store (in memory). It carries records at most once and keeps none: a trace shows what
//! happens while it is open.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::QueueError;

/// Which deliveries a trace shows; empty fields match every delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceFilter {
    /// The destination domain (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The MX host name (case-insensitive, a trailing dot ignored) or IP address connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
}

impl TraceFilter {
    /// Whether a delivery to `domain` through `mx` (host name) at `ip` passes. `mx` and `ip` are `None`
    /// before the connection is made: a filter on the MX then passes, and the records are checked again.
    pub fn matches(&self, domain: &str, mx: Option<&str>, ip: Option<&str>) -> bool {
        let same = |a: &str, b: &str| {
            a.trim_end_matches('.')
                .eq_ignore_ascii_case(b.trim_end_matches('.'))
        };
        if let Some(want) = &self.domain
            && !same(want, domain)
        {
            return false;
        }
        match (&self.mx, mx, ip) {
            (None, _, _) | (Some(_), None, None) => true,
            (Some(want), mx, ip) => mx.is_some_and(|m| same(want, m)) || ip.is_some_and(|i| same(want, i)),
        }
    }
}

/// Whether `record` passes `filter` (its empty MX host and IP address standing for none yet).
pub(crate) fn record_passes(filter: &TraceFilter, record: &TraceRecord) -> bool {
    fn given(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }
    filter.matches(&record.domain, given(&record.mx), given(&record.ip))
}

/// One line of a traced SMTP conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// When (Unix ms).
    pub time_ms: u64,
    /// The worker (its queue owner name).
    pub worker: String,
    /// The connection: unique per SMTP session, so that interleaved sessions can be told apart.
    pub session: String,
    /// The destination domain.
    pub domain: String,
    /// The MX host name (empty before one is chosen).
    #[serde(default)]
    pub mx: String,
    /// The IP address connected to (empty before the connection).
    #[serde(default)]
    pub ip: String,
    /// What the line is: `connect`, `send` (a command tern sent), `recv` (a reply), `tls` (the handshake's
    /// outcome: version, cipher, certificate), `close`, or `error`.
    pub kind: String,
    /// The line (a command, a reply line, or a description), with AUTH payloads masked.
    pub text: String,
}

/// An open trace: the records that match its filter, until dropped (which unregisters it).
#[derive(Debug)]
pub struct TraceSubscription {
    records: mpsc::Receiver<TraceRecord>,
    /// Ends what keeps the registration alive when the subscription is dropped.
    _keeper: Option<KeeperGuard>,
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct KeeperGuard(tokio::task::AbortHandle);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TraceSubscription {
    /// A subscription fed by `records`; `keeper` (if any) is aborted when the subscription is dropped.
    pub fn new(records: mpsc::Receiver<TraceRecord>, keeper: Option<tokio::task::AbortHandle>) -> Self {
        TraceSubscription {
            records,
            _keeper: keeper.map(KeeperGuard),
        }
    }

    /// The next record; `None` when the bus closed (the store went away: open the trace again).
    pub async fn next(&mut self) -> Option<TraceRecord> {
        self.records.recv().await
    }
}

/// The bus that carries live SMTP traces from the workers to the control plane.
#[async_trait]
pub trait TraceBus: Send + Sync + Debug {
    /// The filters of every trace open anywhere in the cluster; empty when no one traces (a worker then
    /// records nothing). Cheap enough for every worker to call every second.
    async fn trace_filters(&self) -> Result<Vec<TraceFilter>, QueueError>;

    /// Sends records to every open trace (each applies its own filter). Best effort: a record no one
    /// receives is dropped.
    async fn publish_trace(&self, records: &[TraceRecord]) -> Result<(), QueueError>;

    /// Opens a trace: registers `filter` cluster-wide for as long as the subscription lives, and streams
    /// the records that pass it.
    async fn open_trace(&self, filter: TraceFilter) -> Result<TraceSubscription, QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_on_the_mx_passes_before_the_connection_and_then_checks_the_host_or_ip() {
        let f = TraceFilter {
            domain: Some("Example.com".into()),
            mx: Some("mx1.example.com.".into()),
        };
        assert!(f.matches("example.com", None, None));
        assert!(f.matches("example.com", Some("MX1.example.com"), Some("192.0.2.1")));
        assert!(!f.matches("example.com", Some("mx2.example.com"), Some("192.0.2.2")));
        assert!(!f.matches("other.example", None, None));
        let by_ip = TraceFilter {
            domain: None,
            mx: Some("192.0.2.1".into()),
        };
        assert!(by_ip.matches("x.example", Some("mx1.example.com"), Some("192.0.2.1")));
        assert!(TraceFilter::default().matches("any.example", None, None));
    }
}
