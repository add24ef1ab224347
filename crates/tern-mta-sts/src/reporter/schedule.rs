//! When the daily report run happens, and which day it reports: the arithmetic of UTC days in Unix
//! milliseconds, kept pure so that it is tested without waiting for midnight.
//!
//! A run happens `send_at` after midnight UTC and reports the day before. A process that starts after
//! today's send time runs at once for yesterday (the domains already sent are skipped), so that a node
//! that was down at the send time does not lose the day. A run that failed, or left the day unfinished
//! (another node held its lock, a shutdown stopped it, a TXT lookup failed), is tried again for the same
//! day a little later, until the next day's run is due ([`after_run`]).

use std::time::Duration;

use tern_queue::tls_report::utc_day;

use super::{DomainStatus, RunSummary};

/// A day in milliseconds.
pub const DAY_MS: u64 = 24 * 3600 * 1000;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Midnight UTC of the day holding `ms`.
pub fn day_start(ms: u64) -> u64 {
    ms - ms % DAY_MS
}

/// The day a run at `run_ms` reports: the UTC day before the run's.
pub fn report_day(run_ms: u64) -> String {
    utc_day(day_start(run_ms).saturating_sub(DAY_MS))
}

/// The first run of a process started at `now`: today's send time if it is still ahead, else now (to
/// catch up on yesterday).
pub fn first_run_ms(now: u64, send_at: Duration) -> u64 {
    let today = day_start(now).saturating_add(millis(send_at));
    today.max(now)
}

/// The run after one at `run_ms`: the next day's send time.
pub fn next_run_ms(run_ms: u64, send_at: Duration) -> u64 {
    day_start(run_ms)
        .saturating_add(DAY_MS)
        .saturating_add(millis(send_at))
}

/// When to try again after a run at `run_ms` failed at `now`: `retry` later if that is still the same
/// UTC day (so it reports the same day), else the next day's run.
pub fn retry_run_ms(run_ms: u64, now: u64, retry: Duration, send_at: Duration) -> u64 {
    let again = now.saturating_add(millis(retry));
    if day_start(again) == day_start(run_ms) {
        again
    } else {
        next_run_ms(run_ms, send_at)
    }
}

/// Whether a run left its day unfinished, so that a later run of the same day may do more: another node
/// held the day's lock (its run may fail or be cut short), a shutdown stopped it, a domain's TXT lookup
/// failed (the domain is not marked sent), or some URI did not take a report for a reason that may pass
/// (this node offers it again: [`DomainOutcome::retry_later`](super::DomainOutcome::retry_later)).
pub fn unfinished(summary: &RunSummary) -> bool {
    summary.held_by.is_some()
        || summary.stopped
        || summary
            .domains
            .iter()
            .any(|d| d.status == DomainStatus::LookupFailed || !d.retry_later.is_empty())
}

/// The next run after one for the day of the regular run at `slot` that ended at `now`: the same day again
/// `retry` later when `retry` is given (the run failed or left the day unfinished) and that is still before
/// the next day's run; else the next day's run. Returns the time and whether it retries `slot`'s day.
pub fn after_run(slot: u64, now: u64, retry: Option<Duration>, send_at: Duration) -> (u64, bool) {
    let next = next_run_ms(slot, send_at);
    match retry {
        Some(pause) if now.saturating_add(millis(pause)) < next => (now.saturating_add(millis(pause)), true),
        _ => (next, false),
    }
}

#[cfg(test)]
mod tests {
    use tern_queue::tls_report::day_start_ms;

    use super::*;

    const MIN: u64 = 60_000;
    const HALF_PAST: Duration = Duration::from_secs(30 * 60);

    fn at(day: &str, ms_after_midnight: u64) -> u64 {
        day_start_ms(day).unwrap() + ms_after_midnight
    }

    #[test]
    fn a_run_reports_the_day_before_its_own() {
        assert_eq!(report_day(at("2026-03-01", 30 * MIN)), "2026-02-28");
        assert_eq!(report_day(at("2024-03-01", 0)), "2024-02-29");
        assert_eq!(report_day(at("2026-01-01", DAY_MS - 1)), "2025-12-31");
    }

    #[test]
    fn a_process_started_before_the_send_time_waits_for_it() {
        let now = at("2026-05-10", 10 * MIN);
        assert_eq!(first_run_ms(now, HALF_PAST), at("2026-05-10", 30 * MIN));
        assert_eq!(
            first_run_ms(at("2026-05-10", 0), Duration::ZERO),
            at("2026-05-10", 0)
        );
    }

    #[test]
    fn a_process_started_after_the_send_time_catches_up_at_once() {
        let now = at("2026-05-10", 15 * 60 * MIN);
        assert_eq!(first_run_ms(now, HALF_PAST), now);
        assert_eq!(report_day(first_run_ms(now, HALF_PAST)), "2026-05-09");
        let exactly = at("2026-05-10", 30 * MIN);
        assert_eq!(first_run_ms(exactly, HALF_PAST), exactly);
    }

    #[test]
    fn the_next_run_is_the_next_days_send_time_whenever_the_run_was() {
        for run in [at("2026-05-10", 30 * MIN), at("2026-05-10", 23 * 60 * MIN)] {
            assert_eq!(next_run_ms(run, HALF_PAST), at("2026-05-11", 30 * MIN));
        }
        // Across a month and a year.
        assert_eq!(
            next_run_ms(at("2025-12-31", 30 * MIN), HALF_PAST),
            at("2026-01-01", 30 * MIN)
        );
        assert_eq!(
            report_day(next_run_ms(at("2024-02-29", 30 * MIN), HALF_PAST)),
            "2024-02-29"
        );
    }

    fn summary(held_by: Option<&str>, stopped: bool, statuses: &[DomainStatus]) -> RunSummary {
        RunSummary {
            day: "2026-05-09".into(),
            held_by: held_by.map(str::to_owned),
            stopped,
            partial: false,
            domains: statuses
                .iter()
                .map(|&status| super::super::DomainOutcome {
                    domain: "example.test".into(),
                    status,
                    sent_to: vec![],
                    errors: vec![],
                    retry_later: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn a_run_held_elsewhere_stopped_or_with_a_failed_lookup_is_unfinished() {
        use DomainStatus::*;
        assert!(unfinished(&summary(Some("node-2"), false, &[])));
        assert!(unfinished(&summary(None, true, &[Sent])));
        assert!(unfinished(&summary(None, false, &[Sent, LookupFailed])));
        assert!(!unfinished(&summary(
            None,
            false,
            &[Sent, Undelivered, AlreadySent, NoRecord, NotMade]
        )));
        assert!(!unfinished(&summary(None, false, &[])));
        // A URI to offer a report to again.
        let mut waiting = summary(None, false, &[Sent, Undelivered]);
        waiting.domains[1].retry_later = vec!["https://c.test/r".into()];
        assert!(unfinished(&waiting));
    }

    #[test]
    fn an_unfinished_run_is_tried_again_for_its_day_until_the_next_days_run() {
        let slot = at("2026-05-10", 30 * MIN);
        let retry = Some(Duration::from_secs(600));
        let (again, same_day) = after_run(slot, slot + MIN, retry, HALF_PAST);
        assert_eq!((again, same_day), (slot + 11 * MIN, true));
        // Past midnight it still reports 2026-05-09 (the caller keeps the slot), until the next run is due.
        let late = at("2026-05-11", 5 * MIN);
        assert_eq!(after_run(slot, late, retry, HALF_PAST), (late + 10 * MIN, true));
        let too_late = at("2026-05-11", 25 * MIN);
        assert_eq!(
            after_run(slot, too_late, retry, HALF_PAST),
            (at("2026-05-11", 30 * MIN), false)
        );
        // A finished run (or no retries left) moves to the next day.
        assert_eq!(
            after_run(slot, slot + MIN, None, HALF_PAST),
            (at("2026-05-11", 30 * MIN), false)
        );
    }

    #[test]
    fn a_failed_run_is_tried_again_the_same_day_only() {
        let run = at("2026-05-10", 30 * MIN);
        let retry = Duration::from_secs(300);
        let now = run + MIN;
        assert_eq!(retry_run_ms(run, now, retry, HALF_PAST), now + 5 * MIN);
        assert_eq!(report_day(retry_run_ms(run, now, retry, HALF_PAST)), "2026-05-09");
        // Past midnight the next run is due anyway: it reports the next day, at its send time.
        let late = at("2026-05-10", DAY_MS - 2 * MIN);
        assert_eq!(
            retry_run_ms(run, late, retry, HALF_PAST),
            at("2026-05-11", 30 * MIN)
        );
    }
}
