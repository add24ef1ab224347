//! The TLS-RPT counters ([`TlsReportStore`]) in the embedded store.
//!
//! Counters live in the state (`State::tls_reports`: day → domain → the session key's stored form → count)
//! and on disk one row per counter in the `tls_report` table, the sent marks in `tls_report_sent`. Every
//! change goes through the writer like any other operation, so many adds of a batch cost one sync, and a
//! counter changed many times in a batch is written once. A day's rows are dropped by the first write
//! after its keep time ([`KEEP_AFTER_DAY`](crate::tls_report::KEEP_AFTER_DAY) after it ends); reads of
//! such a day answer empty before that.
//!
//! The day's report lock is kept in memory, as the MTA-STS refresh locks are: every node that could
//! contend for it is this process.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use tern_core::time::now_ms;

use super::EmbeddedQueue;
use super::state::State;
use super::store::store_error;
use crate::QueueError;
use crate::sts::LockOutcome;
use crate::tls_report::{
    TlsReportStore, TlsSessionKey, checked_count, day_start_ms, keep_until_ms, live_day, report_domain,
};

/// (day, domain, session key's stored form) → count.
const COUNTERS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("tls_report");
/// (day, domain) → when its report was marked sent (Unix ms).
const SENT: TableDefinition<(&str, &str), u64> = TableDefinition::new("tls_report_sent");

/// One policy domain's day.
#[derive(Debug, Default)]
struct DomainDay {
    /// Session key (stored form) → count.
    counters: BTreeMap<String, u64>,
    /// When the report was marked sent.
    sent: Option<u64>,
}

/// The counters in memory: day → domain → its day.
#[derive(Debug, Default)]
pub(crate) struct TlsReports {
    days: BTreeMap<String, BTreeMap<String, DomainDay>>,
}

impl TlsReports {
    fn domain_day(&mut self, day: &str, domain: &str) -> &mut DomainDay {
        self.days
            .entry(day.to_string())
            .or_default()
            .entry(domain.to_string())
            .or_default()
    }
}

/// What a batch changed, to write (or delete when gone from memory).
#[derive(Debug, Default)]
pub(crate) struct TlsReportChanges {
    counters: HashSet<(String, String, String)>,
    sent: HashSet<(String, String)>,
}

impl TlsReportChanges {
    /// Whether anything is to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.sent.is_empty()
    }
}

impl State {
    /// Drops the days whose keep time has passed (once a day there is one).
    fn tls_report_prune(&mut self, now: u64) {
        while let Some(day) = self.tls_reports.days.keys().next().cloned() {
            // A day that does not parse was never let in; drop it all the same.
            if day_start_ms(&day).map_or(0, keep_until_ms) > now {
                return;
            }
            let Some(domains) = self.tls_reports.days.remove(&day) else {
                return;
            };
            let changes = &mut self.changes.tls_report;
            for (domain, domain_day) in domains {
                if domain_day.sent.is_some() {
                    changes.sent.insert((day.clone(), domain.clone()));
                }
                for field in domain_day.counters.into_keys() {
                    changes.counters.insert((day.clone(), domain.clone(), field));
                }
            }
        }
    }

    pub(crate) fn tls_report_add(
        &mut self,
        day: String,
        domain: String,
        field: String,
        count: u64,
        now: u64,
    ) {
        self.tls_report_prune(now);
        let counter = self
            .tls_reports
            .domain_day(&day, &domain)
            .counters
            .entry(field.clone())
            .or_insert(0);
        *counter = counter.saturating_add(count);
        self.changes.tls_report.counters.insert((day, domain, field));
    }

    pub(crate) fn tls_report_counters(&self, day: &str, domain: &str) -> Vec<(String, u64)> {
        self.tls_reports
            .days
            .get(day)
            .and_then(|domains| domains.get(domain))
            .map(|d| d.counters.iter().map(|(k, n)| (k.clone(), *n)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn tls_report_domains(&self, day: &str) -> Vec<String> {
        self.tls_reports
            .days
            .get(day)
            .map(|domains| {
                domains
                    .iter()
                    .filter(|(_, d)| !d.counters.is_empty())
                    .map(|(domain, _)| domain.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks the domain's report of the day sent; whether this call did.
    pub(crate) fn tls_report_mark_sent(&mut self, day: String, domain: String, now: u64) -> bool {
        self.tls_report_prune(now);
        let domain_day = self.tls_reports.domain_day(&day, &domain);
        if domain_day.sent.is_some() {
            return false;
        }
        domain_day.sent = Some(now);
        self.changes.tls_report.sent.insert((day, domain));
        true
    }
}

/// Makes the tables (a store of before had none).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), QueueError> {
    txn.open_table(COUNTERS).map_err(store_error)?;
    txn.open_table(SENT).map_err(store_error)?;
    Ok(())
}

/// Reads the counters and sent marks into the state.
pub(crate) fn load(txn: &ReadTransaction, state: &mut State) -> Result<(), QueueError> {
    for row in txn
        .open_table(COUNTERS)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (key, count) = row.map_err(store_error)?;
        let (day, domain, field) = key.value();
        state
            .tls_reports
            .domain_day(day, domain)
            .counters
            .insert(field.to_string(), count.value());
    }
    for row in txn
        .open_table(SENT)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (key, at) = row.map_err(store_error)?;
        let (day, domain) = key.value();
        state.tls_reports.domain_day(day, domain).sent = Some(at.value());
    }
    Ok(())
}

/// Writes a batch's changes: what memory holds is written, what it no longer holds is deleted.
pub(crate) fn write(
    txn: &WriteTransaction,
    state: &State,
    changes: &TlsReportChanges,
) -> Result<(), QueueError> {
    let day_of = |day: &str, domain: &str| {
        state
            .tls_reports
            .days
            .get(day)
            .and_then(|domains| domains.get(domain))
    };
    if !changes.counters.is_empty() {
        let mut table = txn.open_table(COUNTERS).map_err(store_error)?;
        for (day, domain, field) in &changes.counters {
            let key = (day.as_str(), domain.as_str(), field.as_str());
            match day_of(day, domain).and_then(|d| d.counters.get(field)) {
                Some(count) => table.insert(key, *count).map_err(store_error)?,
                None => table.remove(key).map_err(store_error)?,
            };
        }
    }
    if !changes.sent.is_empty() {
        let mut table = txn.open_table(SENT).map_err(store_error)?;
        for (day, domain) in &changes.sent {
            let key = (day.as_str(), domain.as_str());
            match day_of(day, domain).and_then(|d| d.sent) {
                Some(at) => table.insert(key, at).map_err(store_error)?,
                None => table.remove(key).map_err(store_error)?,
            };
        }
    }
    Ok(())
}

#[async_trait]
impl TlsReportStore for EmbeddedQueue {
    async fn tls_report_add(
        &self,
        day: &str,
        policy_domain: &str,
        key: &TlsSessionKey,
        count: u64,
    ) -> Result<(), QueueError> {
        let domain = report_domain(policy_domain)?;
        let count = checked_count(count)?;
        if live_day(day, now_ms())?.is_none() || count == 0 {
            return Ok(());
        }
        let (day, field) = (day.to_string(), key.to_stored()?);
        self.writer
            .run(move |s| s.tls_report_add(day, domain, field, count, now_ms()))
            .await
    }

    async fn tls_report_read(
        &self,
        day: &str,
        policy_domain: &str,
    ) -> Result<Vec<(TlsSessionKey, u64)>, QueueError> {
        let domain = report_domain(policy_domain)?;
        if live_day(day, now_ms())?.is_none() {
            return Ok(Vec::new());
        }
        let day = day.to_string();
        let counters = self
            .writer
            .run(move |s| s.tls_report_counters(&day, &domain))
            .await?;
        let mut out = counters
            .into_iter()
            .map(|(field, count)| Ok((TlsSessionKey::from_stored(&field)?, count)))
            .collect::<Result<Vec<_>, QueueError>>()?;
        out.sort();
        Ok(out)
    }

    async fn tls_report_domains(&self, day: &str) -> Result<Vec<String>, QueueError> {
        if live_day(day, now_ms())?.is_none() {
            return Ok(Vec::new());
        }
        let day = day.to_string();
        self.writer.run(move |s| s.tls_report_domains(&day)).await
    }

    async fn tls_report_sent(&self, day: &str, policy_domain: &str) -> Result<bool, QueueError> {
        let domain = report_domain(policy_domain)?;
        if live_day(day, now_ms())?.is_none() {
            return Ok(false);
        }
        let day = day.to_string();
        self.writer
            .run(move |s| s.tls_report_mark_sent(day, domain, now_ms()))
            .await
    }

    async fn tls_report_try_lock(
        &self,
        day: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, QueueError> {
        live_day(day, 0)?;
        Ok(self.tls_report_locks.try_lock(day.to_string(), owner, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedQueueOptions;
    use crate::tls_report::utc_day;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn a_day_is_dropped_by_the_first_write_after_its_keep_time() {
        let mut s = State::new(10, 10);
        let start = day_start_ms("2024-05-01").expect("a day");
        let keep = keep_until_ms(start);
        s.tls_report_add("2024-05-01".into(), "a.test".into(), "k".into(), 2, start);
        assert!(s.tls_report_mark_sent("2024-05-01".into(), "a.test".into(), start));
        s.changes = Default::default();
        s.tls_report_add("2024-05-08".into(), "a.test".into(), "k".into(), 1, keep - 1);
        assert_eq!(
            s.tls_report_counters("2024-05-01", "a.test"),
            [("k".to_string(), 2)]
        );
        s.tls_report_add("2024-05-09".into(), "a.test".into(), "k".into(), 1, keep);
        assert!(s.tls_report_counters("2024-05-01", "a.test").is_empty());
        let changes = &s.changes.tls_report;
        assert!(
            changes
                .counters
                .contains(&("2024-05-01".into(), "a.test".into(), "k".into()))
        );
        assert!(changes.sent.contains(&("2024-05-01".into(), "a.test".into())));
        assert_eq!(s.tls_report_domains("2024-05-08"), ["a.test"]);
    }

    #[tokio::test]
    async fn counters_and_sent_marks_outlive_a_reopen_and_locks_do_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = EmbeddedQueueOptions {
            path: dir.path().to_path_buf(),
            ..Default::default()
        };
        let today = utc_day(now_ms());
        let yesterday = utc_day(now_ms() - DAY_MS);
        let key = TlsSessionKey {
            policy_type: "sts".into(),
            policy_string: vec!["version: STSv1".into()],
            mx_host: "mx.a.test".into(),
            ..TlsSessionKey::default()
        };
        let q = EmbeddedQueue::open(opts.clone()).expect("open");
        q.tls_report_add(&today, "A.test", &key, 3).await.expect("add");
        q.tls_report_add(&today, "a.test", &key, 4).await.expect("add");
        q.tls_report_add(&yesterday, "b.test", &key, 1)
            .await
            .expect("add");
        assert!(q.tls_report_sent(&yesterday, "b.test").await.expect("sent"));
        let ttl = Duration::from_secs(60);
        assert_eq!(
            q.tls_report_try_lock(&today, "w1", ttl).await.expect("lock"),
            LockOutcome::Acquired
        );
        drop(q);

        let q = EmbeddedQueue::open(opts).expect("reopen");
        assert_eq!(
            q.tls_report_read(&today, "a.test").await.expect("read"),
            [(key.clone(), 7)]
        );
        assert_eq!(
            q.tls_report_domains(&yesterday).await.expect("domains"),
            ["b.test"]
        );
        assert!(!q.tls_report_sent(&yesterday, "b.test").await.expect("sent"));
        assert!(q.tls_report_sent(&today, "a.test").await.expect("sent"));
        assert_eq!(
            q.tls_report_try_lock(&today, "w2", ttl).await.expect("lock"),
            LockOutcome::Acquired,
            "a lock belongs to its process"
        );
    }
}
