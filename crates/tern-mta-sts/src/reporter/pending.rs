//! The reports this process marked sent but could not hand to every `rua` URI, kept in memory so that a
//! later run of the same day on this node offers them again ([`Pending`]).
//!
//! A domain is marked sent before its report goes out because the store can only test-and-mark
//! ([`TlsReportStore::tls_report_sent`](tern_queue::TlsReportStore::tls_report_sent)): it has no read of
//! the mark and no unmark, so marking after the sending would let every repeated run, and every other node,
//! send the report again. The mark is the claim that this node sends the report; what it could not send
//! yet is remembered here, with the report as it was made (the same id and bytes), until a later run
//! delivers it or the day's counters are dropped. It is lost when the process stops first.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use tern_queue::tls_report::{KEEP_AFTER_DAY, day_start_ms};

use super::Made;
use super::schedule::DAY_MS;
use crate::report::ReportUri;

/// A report and the URIs that have yet to take it.
pub(super) struct Retry {
    pub(super) made: Made,
    pub(super) uris: Vec<ReportUri>,
}

/// The reports to offer again, by day and domain.
#[derive(Default)]
pub(super) struct Pending {
    by_day: Mutex<BTreeMap<(String, String), Retry>>,
}

impl Pending {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Retry>> {
        // A poisoned lock only means a panic between two whole updates of the map.
        self.by_day.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `made` for `uris` (nothing when there are none).
    pub(super) fn put(&self, made: Made, uris: Vec<ReportUri>) {
        if uris.is_empty() {
            return;
        }
        let key = (made.day.clone(), made.domain.clone());
        self.map().insert(key, Retry { made, uris });
    }

    /// Takes the report of `domain` on `day` to offer it again (whoever takes it puts back what fails).
    pub(super) fn take(&self, day: &str, domain: &str) -> Option<Retry> {
        self.map().remove(&(day.to_owned(), domain.to_owned()))
    }

    /// Drops the reports of the days whose counters the store has dropped by `now` (Unix ms): no run
    /// reports those days any more (`u64::MAX`: every report, at shutdown). Returns what was dropped:
    /// (day, domain, the URIs never reached).
    pub(super) fn prune(&self, now: u64) -> Vec<(String, String, Vec<String>)> {
        let keep = u64::try_from(KEEP_AFTER_DAY.as_millis()).unwrap_or(u64::MAX);
        let mut map = self.map();
        let old: Vec<(String, String)> = map
            .keys()
            .filter(|(day, _)| {
                day_start_ms(day).is_none_or(|start| start.saturating_add(DAY_MS).saturating_add(keep) <= now)
            })
            .cloned()
            .collect();
        old.into_iter()
            .filter_map(|key| {
                let retry = map.remove(&key)?;
                let uris = retry.uris.iter().map(super::uri_text).collect();
                Some((key.0, key.1, uris))
            })
            .collect()
    }

    /// How many reports wait.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tern_queue::tls_report::utc_day;

    use super::*;

    fn made(day: &str, domain: &str) -> Made {
        Made {
            day: day.into(),
            domain: domain.into(),
            id: format!("{day}_{domain}@r.test"),
            filename: "f.json.gz".into(),
            gz: Bytes::from_static(b"gz"),
        }
    }

    #[test]
    fn a_report_is_taken_once_and_nothing_is_kept_without_uris() {
        let p = Pending::default();
        p.put(made("2026-05-01", "a.test"), vec![]);
        assert_eq!(p.len(), 0);
        p.put(
            made("2026-05-01", "a.test"),
            vec![ReportUri::Https("https://c.test/r".into())],
        );
        assert!(p.take("2026-05-01", "b.test").is_none());
        let retry = p.take("2026-05-01", "a.test").expect("kept");
        assert_eq!(retry.made.id, "2026-05-01_a.test@r.test");
        assert_eq!(retry.uris.len(), 1);
        assert!(p.take("2026-05-01", "a.test").is_none());
    }

    #[test]
    fn reports_of_days_whose_counters_are_gone_are_dropped() {
        let p = Pending::default();
        let uris = || vec![ReportUri::Mailto("r@c.test".into())];
        p.put(made("2026-05-01", "a.test"), uris());
        p.put(made("2026-05-02", "a.test"), uris());
        let may_1 = day_start_ms("2026-05-01").unwrap();
        let keep = u64::try_from(KEEP_AFTER_DAY.as_millis()).unwrap();
        assert!(p.prune(may_1 + DAY_MS + keep - 1).is_empty());
        let dropped = p.prune(may_1 + DAY_MS + keep);
        assert_eq!(
            dropped,
            [(
                "2026-05-01".to_owned(),
                "a.test".to_owned(),
                vec!["mailto:r@c.test".to_owned()]
            )]
        );
        assert_eq!(p.len(), 1);
        assert_eq!(utc_day(may_1 + DAY_MS), "2026-05-02");
    }
}
