//! When the daily report run happens, and which day it reports: the arithmetic of UTC days in Unix
//! milliseconds, kept pure so that it is tested without waiting for midnight.
//!
//! A run happens `send_at` after midnight UTC and reports the day before. A process that starts after
//! today's send time runs at once for yesterday (the domains already sent are skipped), so that a node
//! that was down at the send time does not lose the day.

use std::time::Duration;

use tern_queue::tls_report::utc_day;

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
