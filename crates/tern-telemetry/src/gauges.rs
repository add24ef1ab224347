//! The queue gauges (`tern_queue_jobs`, `tern_queue_oldest_age_seconds`, `tern_queue_domain_jobs`) and the
//! sampler that feeds them.
//!
//! Every process runs the sampler: every [`SAMPLE_EVERY`] it reads [`Queue::counts`] and
//! [`Queue::domain_depths`] (one call per shard each) and keeps a [`QueueSnapshot`]; the gauges report the
//! latest snapshot when `/metrics` is scraped or OTLP exports. So several pods report the same queue: read
//! the gauges with `max()`, never `sum()` (the dashboard and the alerts do). While the queue cannot be read
//! the gauges report nothing rather than stale numbers; `tern_queue_store_errors_total` tells why.
//!
//! `tern_queue_jobs{state}`:
//!
//! | state | jobs |
//! |---|---|
//! | `due` | waiting and due now in domains that are not suspended: what workers can claim (KEDA's metric) |
//! | `scheduled` | waiting, due or not (never attempted or deferred), as `ternctl queue status` counts them |
//! | `in_flight` | claimed by a worker |
//! | `deferred` | waiting after at least one attempt (a part of `scheduled`) |
//! | `held` | flagged for an operator's bounce, waiting for their DSN |
//! | `suspended` | of suspended domains |
//!
//! `tern_queue_domain_jobs{domain}` has the [`TOP_DOMAINS`] deepest domains and `other` for the rest, so its
//! label values stay bounded whatever the number of domains.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableGauge};
use tern_core::Shutdown;
use tern_queue::{BOUNCE_SCHEDULE, DomainDepth, Queue, QueueCounts};
use tokio::task::JoinHandle;

/// How often the sampler reads the queue.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How many domains `tern_queue_domain_jobs` names; the rest are summed as `other`.
pub const TOP_DOMAINS: usize = 10;

/// What the queue gauges report, from one reading of the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Waiting jobs due now in domains not suspended.
    pub due: u64,
    /// Waiting jobs, due or not.
    pub scheduled: u64,
    /// Claimed jobs.
    pub in_flight: u64,
    /// Waiting jobs attempted before.
    pub deferred: u64,
    /// Jobs waiting for an operator's bounce.
    pub held: u64,
    /// Jobs of suspended domains.
    pub suspended: u64,
    /// Age of the oldest message in the queue, in seconds (0 when empty).
    pub oldest_age_seconds: u64,
    /// The deepest domains with their jobs, deepest first, then `other`.
    pub domains: Vec<(String, u64)>,
}

impl QueueSnapshot {
    /// The snapshot of one reading at `now_ms`.
    pub fn from_queue(counts: &QueueCounts, depths: &[DomainDepth], now_ms: u64) -> QueueSnapshot {
        let suspended = depths
            .iter()
            .filter(|d| d.suspension.is_some())
            .map(|d| d.total)
            .sum();
        let mut domains: Vec<(&str, u64)> = depths
            .iter()
            .filter(|d| d.domain != BOUNCE_SCHEDULE && d.total > 0)
            .map(|d| (d.domain.as_str(), d.total))
            .collect();
        domains.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let other: u64 = domains.iter().skip(TOP_DOMAINS).map(|(_, n)| n).sum();
        let mut top: Vec<(String, u64)> = domains
            .into_iter()
            .take(TOP_DOMAINS)
            .map(|(d, n)| (d.to_string(), n))
            .collect();
        top.push(("other".to_string(), other));
        QueueSnapshot {
            due: due_jobs(depths),
            scheduled: counts.queued + counts.deferred,
            in_flight: counts.in_flight,
            deferred: counts.deferred,
            held: counts.bounce_pending,
            suspended,
            oldest_age_seconds: counts
                .oldest_message_ms
                .map_or(0, |t| now_ms.saturating_sub(t) / 1000),
            domains: top,
        }
    }

    fn states(&self) -> [(&'static str, u64); 6] {
        [
            ("due", self.due),
            ("scheduled", self.scheduled),
            ("in_flight", self.in_flight),
            ("deferred", self.deferred),
            ("held", self.held),
            ("suspended", self.suspended),
        ]
    }
}

/// Jobs due now that a worker could claim: due jobs of every domain that is not suspended. (Admin bounces
/// waiting for their DSN are not among them: no store lists the bounce schedule as a domain.)
pub fn due_jobs(depths: &[DomainDepth]) -> u64 {
    depths
        .iter()
        .filter(|d| d.suspension.is_none())
        .map(|d| d.due)
        .sum()
}

/// Registers the three queue gauges on `meter`, reading `snapshot` at each collection.
pub(crate) fn register(
    meter: &Meter,
    snapshot: &Arc<RwLock<Option<QueueSnapshot>>>,
) -> Vec<ObservableGauge<u64>> {
    let read = |snapshot: &Arc<RwLock<Option<QueueSnapshot>>>| {
        snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    };
    let jobs = Arc::clone(snapshot);
    let oldest = Arc::clone(snapshot);
    let domains = Arc::clone(snapshot);
    vec![
        meter
            .u64_observable_gauge("tern_queue_jobs")
            .with_description("Queue jobs by state (every process reports the same queue: read with max()).")
            .with_callback(move |observer| {
                if let Some(s) = read(&jobs) {
                    for (state, n) in s.states() {
                        observer.observe(n, &[KeyValue::new("state", state)]);
                    }
                }
            })
            .build(),
        meter
            .u64_observable_gauge("tern_queue_oldest_age_seconds")
            .with_unit("s")
            .with_description("Age of the oldest message in the queue.")
            .with_callback(move |observer| {
                if let Some(s) = read(&oldest) {
                    observer.observe(s.oldest_age_seconds, &[]);
                }
            })
            .build(),
        meter
            .u64_observable_gauge("tern_queue_domain_jobs")
            .with_description("Jobs of the deepest destination domains; the rest as domain=\"other\".")
            .with_callback(move |observer| {
                if let Some(s) = read(&domains) {
                    for (domain, n) in &s.domains {
                        observer.observe(*n, &[KeyValue::new("domain", domain.clone())]);
                    }
                }
            })
            .build(),
    ]
}

/// Reads the queue every `every` into the process's queue gauges until `shutdown`.
pub fn spawn_sampler(queue: Arc<dyn Queue>, every: Duration, shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let reading = async {
                let counts = queue.counts().await?;
                let depths = queue.domain_depths().await?;
                Ok::<_, tern_queue::QueueError>(QueueSnapshot::from_queue(
                    &counts,
                    &depths,
                    tern_core::time::now_ms(),
                ))
            };
            let snapshot = tokio::select! {
                r = reading => r,
                () = shutdown.cancelled() => return,
            };
            match snapshot {
                Ok(s) => crate::metrics().set_queue_snapshot(Some(s)),
                Err(e) => {
                    tracing::debug!(error = %e, "queue gauges: cannot read the queue");
                    crate::metrics().set_queue_snapshot(None);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(domain: &str, total: u64, due: u64, suspended: bool) -> DomainDepth {
        DomainDepth {
            domain: domain.into(),
            waiting: total,
            due,
            held: 0,
            total,
            earliest_due_ms: None,
            active_claims: 0,
            concurrency_limit: None,
            suspension: suspended.then(|| tern_queue::Suspension {
                domain: domain.into(),
                reason: "test".into(),
                since_ms: 0,
                until_ms: None,
            }),
        }
    }

    #[test]
    fn a_snapshot_names_the_top_domains_and_sums_the_rest() {
        let mut depths: Vec<DomainDepth> = (0..15)
            .map(|i| depth(&format!("d{i:02}.test"), 100 - i, 1, false))
            .collect();
        depths.push(depth("held.test", 7, 7, true));
        depths.push(depth("empty.test", 0, 0, false));
        depths.push(depth(BOUNCE_SCHEDULE, 2, 2, false));
        let counts = QueueCounts {
            queued: 30,
            deferred: 5,
            in_flight: 4,
            bounce_pending: 2,
            oldest_message_ms: Some(1_000),
            ..QueueCounts::default()
        };
        let s = QueueSnapshot::from_queue(&counts, &depths, 61_000);
        assert_eq!(s.due, 15 + 2, "suspended domains are not due");
        assert_eq!(s.suspended, 7);
        assert_eq!((s.scheduled, s.in_flight, s.deferred, s.held), (35, 4, 5, 2));
        assert_eq!(s.oldest_age_seconds, 60);
        assert_eq!(s.domains.len(), TOP_DOMAINS + 1);
        assert_eq!(s.domains[0], ("d00.test".to_string(), 100));
        let other = s.domains.last().unwrap();
        assert_eq!(other.0, "other");
        // d10..d14 (90..86) and held.test (7) are beyond the top 10.
        assert_eq!(other.1, 90 + 89 + 88 + 87 + 86 + 7);
    }
}
