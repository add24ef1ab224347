//! The cluster-wide SMTP TLS reporting counters (TLS-RPT, RFC 8460), kept in the queue's store:
//! [`TlsReportStore`].
//!
//! Every delivery worker counts the TLS sessions it tried, per UTC day and per policy domain, and once a
//! day one node of the cluster sends each policy domain its report. So the counters live where the queue
//! lives (Redis, or the embedded store) and are added to, never set: many workers add to one counter at
//! once without losing a count. What a counter counts is a [`TlsSessionKey`] (the policy applied, the
//! receiving MX, the result, the addresses); what the report looks like is `tern-mta-sts`'s business.
//!
//! Every backend keeps the same rules (the conformance suite checks them):
//!
//! - A day is `YYYY-MM-DD` (UTC; [`utc_day`] gives it). Another form is [`QueueError::InvalidMessage`].
//! - Policy domains are matched without regard to case and stored lower-case; an empty one is refused.
//! - Counters of a day are kept until [`KEEP_AFTER_DAY`] after the day ends, then forgotten, as is the
//!   mark of its reports sent. A day already past that reads as empty, and adding to it does nothing.
//! - Two keys are the same counter when every field is equal (the caller normalises, such as lower-casing
//!   host names, before adding).

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::QueueError;
use crate::sts::LockOutcome;

/// How long a day's counters are kept after the day ends (7 days, so 8 days from its start): long enough
/// for a report run that failed to try again the next days, short enough that abandoned domains vanish.
pub const KEEP_AFTER_DAY: Duration = Duration::from_secs(7 * DAY_SECS);

const DAY_SECS: u64 = 24 * 3600;
const DAY_MS: u64 = DAY_SECS * 1000;

/// What one counter counts: TLS sessions (or attempts that failed before one) to a policy domain's MX
/// hosts, with one outcome, under one policy. A report's entry per policy and its failure details are
/// made from these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TlsSessionKey {
    /// The RFC 8460 `policy-type`: `sts`, `no-policy-found` (and later `tlsa`).
    pub policy_type: String,
    /// The RFC 8460 `policy-string`: the policy's lines (for MTA-STS, the policy's `key: value` lines;
    /// empty with no policy). Its `mx:` patterns are the report's `mx-host`.
    #[serde(default)]
    pub policy_string: Vec<String>,
    /// The receiving MX host name (the report's `receiving-mx-hostname`); empty when no MX was tried (a
    /// policy that could not be fetched).
    #[serde(default)]
    pub mx_host: String,
    /// The RFC 8460 `result-type` of a failure (for example `certificate-host-mismatch`); `None` for a
    /// successful session.
    #[serde(default)]
    pub result_type: Option<String>,
    /// The sending MTA's IP address (`sending-mta-ip`).
    #[serde(default)]
    pub sending_mta_ip: String,
    /// The receiving MX's IP address (`receiving-ip`); empty when none was reached.
    #[serde(default)]
    pub receiving_ip: String,
    /// The receiving MX's EHLO name (`receiving-mx-helo`), when it greeted.
    #[serde(default)]
    pub receiving_mx_helo: Option<String>,
    /// A more precise reason (`failure-reason-code`), for example the TLS alert.
    #[serde(default)]
    pub failure_reason_code: Option<String>,
}

impl TlsSessionKey {
    /// Whether the key counts successful sessions (no result type).
    pub fn is_success(&self) -> bool {
        self.result_type.is_none()
    }

    /// The key's stored form: its JSON, with the fields in declaration order, so that equal keys give
    /// equal text (a Redis hash field, an embedded store key).
    pub(crate) fn to_stored(&self) -> Result<String, QueueError> {
        serde_json::to_string(self).map_err(|e| QueueError::Backend(format!("TLS-RPT counter key: {e}")))
    }

    /// A key from its stored form.
    pub(crate) fn from_stored(text: &str) -> Result<TlsSessionKey, QueueError> {
        serde_json::from_str(text)
            .map_err(|e| QueueError::Corrupt(format!("TLS-RPT counter key {text:?}: {e}")))
    }
}

/// The TLS-RPT counters, shared by every node of the queue's store.
///
/// Every method is safe to call concurrently from many tasks and nodes. After
/// [`QueueError::Unavailable`] an add may or may not have counted (repeating it may count twice: a
/// report is statistics, a count off by one is harmless); every other method is safe to repeat.
#[async_trait]
pub trait TlsReportStore: Send + Sync + Debug {
    /// Adds `count` sessions to the counter `key` of `policy_domain` (any case) on `day`. Zero adds
    /// nothing; more than `i64::MAX` at once is [`QueueError::InvalidMessage`].
    async fn tls_report_add(
        &self,
        day: &str,
        policy_domain: &str,
        key: &TlsSessionKey,
        count: u64,
    ) -> Result<(), QueueError>;

    /// Every counter of `policy_domain` on `day` with its count, in key order ([`TlsSessionKey`]'s
    /// `Ord`); empty when there is none.
    async fn tls_report_read(
        &self,
        day: &str,
        policy_domain: &str,
    ) -> Result<Vec<(TlsSessionKey, u64)>, QueueError>;

    /// The policy domains with counters on `day`, lower-case, sorted, each once.
    async fn tls_report_domains(&self, day: &str) -> Result<Vec<String>, QueueError>;

    /// Marks the report of `policy_domain` for `day` sent: `true` for the first call, `false` for every
    /// later one (from any node), so that a domain gets one report a day. It does not touch the counters.
    async fn tls_report_sent(&self, day: &str, policy_domain: &str) -> Result<bool, QueueError>;

    /// Takes the report lock of `day` for `owner` for `ttl` (at least a millisecond), unless another
    /// owner holds it: one node of the cluster sends a day's reports. A lock whose time ran out is free;
    /// the holder taking it again starts its time anew. There is no unlock: the sender marks each domain
    /// sent ([`TlsReportStore::tls_report_sent`]), and the lock lapses.
    async fn tls_report_try_lock(
        &self,
        day: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, QueueError>;
}

/// The UTC day (`YYYY-MM-DD`) of a time in Unix milliseconds.
pub fn utc_day(ms: u64) -> String {
    let (y, m, d) = civil_from_days(ms / DAY_MS);
    format!("{y:04}-{m:02}-{d:02}")
}

/// When a UTC day (`YYYY-MM-DD`, years 1970 to 9999) begins, in Unix milliseconds; `None` for any other
/// text or a date that does not exist.
pub fn day_start_ms(day: &str) -> Option<u64> {
    let b = day.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = day.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, m, d) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if y < 1970 || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) * DAY_MS)
}

/// Until when (Unix ms) the counters of the day that begins at `day_start` are kept.
pub(crate) fn keep_until_ms(day_start: u64) -> u64 {
    let keep = u64::try_from(KEEP_AFTER_DAY.as_millis()).unwrap_or(u64::MAX);
    day_start.saturating_add(DAY_MS).saturating_add(keep)
}

/// A day as the store takes it: checked, with its keep time; `None` when that time is past at `now`.
pub(crate) fn live_day(day: &str, now: u64) -> Result<Option<u64>, QueueError> {
    let start = day_start_ms(day).ok_or_else(|| {
        QueueError::InvalidMessage(format!("a TLS-RPT day is YYYY-MM-DD (UTC), not {day:?}"))
    })?;
    let keep = keep_until_ms(start);
    Ok((keep > now).then_some(keep))
}

/// A count to add: at most `i64::MAX` (what Redis counts in), for every backend alike.
pub(crate) fn checked_count(count: u64) -> Result<u64, QueueError> {
    if i64::try_from(count).is_err() {
        return Err(QueueError::InvalidMessage(format!(
            "a TLS-RPT count of {count} is more than a counter holds"
        )));
    }
    Ok(count)
}

/// A policy domain as stored: lower-case, and not empty.
pub(crate) fn report_domain(domain: &str) -> Result<String, QueueError> {
    if domain.is_empty() {
        return Err(QueueError::InvalidMessage(
            "a TLS-RPT counter needs a policy domain".into(),
        ));
    }
    Ok(domain.to_ascii_lowercase())
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date on or after it (Howard Hinnant's days-from-civil algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year, month and day of the `days`th day after 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_print_and_parse_as_utc_dates() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_795_872_409_000), "2026-11-28");
        assert_eq!(utc_day(4_102_444_799_999), "2099-12-31");
        for ms in [0, 951_782_400_000, 1_795_872_409_000, 4_102_444_799_999] {
            let start = day_start_ms(&utc_day(ms)).expect("a day");
            assert!(start <= ms && ms < start + DAY_MS, "{ms}");
        }
        assert_eq!(day_start_ms("2000-02-29"), Some(951_782_400_000));
        assert_eq!(day_start_ms("1970-01-01"), Some(0));
    }

    #[test]
    fn only_real_dates_in_the_one_form_are_days() {
        for bad in [
            "",
            "2024-1-01",
            "2024/01/01",
            "24-01-01",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "1969-12-31",
            "+024-01-01",
            "2024-01-0x",
            "2024-01-01 ",
        ] {
            assert_eq!(day_start_ms(bad), None, "{bad:?}");
            assert!(matches!(live_day(bad, 0), Err(QueueError::InvalidMessage(_))));
        }
        assert!(day_start_ms("2024-02-29").is_some());
    }

    #[test]
    fn a_day_is_kept_a_week_after_it_ends() {
        let start = day_start_ms("2024-05-01").expect("a day");
        let keep = start + 8 * DAY_MS;
        assert_eq!(keep_until_ms(start), keep);
        assert_eq!(live_day("2024-05-01", keep - 1), Ok(Some(keep)));
        assert_eq!(live_day("2024-05-01", keep), Ok(None));
    }

    #[test]
    fn keys_round_trip_through_their_stored_form_and_equal_keys_store_alike() {
        let key = TlsSessionKey {
            policy_type: "sts".into(),
            policy_string: vec!["version: STSv1".into(), "mode: \"enforce\"\n".into()],
            mx_host: "mx.example.test".into(),
            result_type: Some("certificate-expired".into()),
            sending_mta_ip: "192.0.2.1".into(),
            receiving_ip: "2001:db8::25".into(),
            receiving_mx_helo: Some("mx ü".into()),
            failure_reason_code: None,
        };
        let stored = key.to_stored().expect("stored");
        assert_eq!(TlsSessionKey::from_stored(&stored), Ok(key.clone()));
        assert_eq!(key.clone().to_stored(), Ok(stored));
        assert!(!key.is_success());
        assert!(TlsSessionKey::default().is_success());
        assert!(matches!(
            TlsSessionKey::from_stored("{"),
            Err(QueueError::Corrupt(_))
        ));
    }
}
