//! The report itself (RFC 8460 §4): one policy domain's TLS sessions of one UTC day, as JSON.
//!
//! [`build_report`] turns the day's counters ([`TlsSessionKey`] and count, as the queue's
//! [`TlsReportStore`](tern_queue::TlsReportStore) reads them back) into a [`Report`]: one entry of
//! `policies` per policy applied (a domain whose policy changed during the day has two), its summary
//! (successful and failed sessions), and one `failure-details` entry per failure counter. Optional fields
//! with nothing to say are left out rather than sent empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_core::time::rfc3339_utc;
use tern_queue::TlsSessionKey;
use tern_queue::tls_report::day_start_ms;

use super::ReportError;

/// Who makes the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitter {
    /// `organization-name`: the organisation responsible for the report.
    pub organization_name: String,
    /// `contact-info`: how to reach it (an address).
    pub contact_info: String,
    /// The submitter's domain: the `TLS-Report-Submitter` header, the subject's `Submitter:`, the sender
    /// part of the file name and the right side of the report id.
    pub domain: String,
}

/// An RFC 8460 report (the fields' names are the RFC's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The organisation responsible for the report.
    #[serde(rename = "organization-name")]
    pub organization_name: String,
    /// The time range the report covers: one UTC day.
    #[serde(rename = "date-range")]
    pub date_range: DateRange,
    /// How to reach the organisation.
    #[serde(rename = "contact-info")]
    pub contact_info: String,
    /// The report's unique id.
    #[serde(rename = "report-id")]
    pub report_id: String,
    /// One entry per policy applied.
    pub policies: Vec<PolicyReport>,
}

/// A report's time range (RFC 3339 date-times, UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateRange {
    /// The day's first second, `YYYY-MM-DDT00:00:00Z`.
    #[serde(rename = "start-datetime")]
    pub start_datetime: String,
    /// The day's last second, `YYYY-MM-DDT23:59:59Z` (as the RFC's example).
    #[serde(rename = "end-datetime")]
    pub end_datetime: String,
}

/// The sessions under one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// The policy.
    pub policy: PolicyDetails,
    /// Its sessions, counted.
    pub summary: Summary,
    /// Its failed sessions, by what failed and where (empty when none failed).
    #[serde(rename = "failure-details", default)]
    pub failure_details: Vec<FailureDetails>,
}

/// The policy applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDetails {
    /// `sts`, `tlsa` or `no-policy-found`.
    #[serde(rename = "policy-type")]
    pub policy_type: String,
    /// The policy's lines (left out with no policy).
    #[serde(rename = "policy-string", default, skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    /// The policy domain.
    #[serde(rename = "policy-domain")]
    pub policy_domain: String,
    /// For MTA-STS, the policy's `mx` patterns (left out when there are none).
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

/// Sessions counted under one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Sessions that succeeded.
    #[serde(rename = "total-successful-session-count")]
    pub total_successful_session_count: u64,
    /// Sessions that failed.
    #[serde(rename = "total-failure-session-count")]
    pub total_failure_session_count: u64,
}

/// Failed sessions alike in what failed and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetails {
    /// What failed, for example `certificate-expired`.
    #[serde(rename = "result-type")]
    pub result_type: String,
    /// The sending MTA's IP address.
    #[serde(rename = "sending-mta-ip", default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<String>,
    /// The receiving MX's host name.
    #[serde(
        rename = "receiving-mx-hostname",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub receiving_mx_hostname: Option<String>,
    /// The name the receiving MX greeted with.
    #[serde(
        rename = "receiving-mx-helo",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub receiving_mx_helo: Option<String>,
    /// The receiving MX's IP address.
    #[serde(rename = "receiving-ip", default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    /// How many sessions failed so.
    #[serde(rename = "failed-session-count")]
    pub failed_session_count: u64,
    /// A more precise reason.
    #[serde(
        rename = "failure-reason-code",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_reason_code: Option<String>,
}

impl Report {
    /// The report as JSON text.
    pub fn to_json(&self) -> Result<Vec<u8>, ReportError> {
        serde_json::to_vec(self).map_err(|e| ReportError::Json(e.to_string()))
    }
}

/// A report id that is the same each time the report of `day` for `policy_domain` is made:
/// `<day>_<policy-domain>@<submitter-domain>`, usable as the mail's `Report-ID:` and Message-ID, so that a
/// report sent again (after a run that failed half-way) can be recognised as the same.
pub fn report_id(day: &str, policy_domain: &str, submitter_domain: &str) -> String {
    format!(
        "{day}_{}@{}",
        policy_domain.to_ascii_lowercase(),
        submitter_domain.to_ascii_lowercase()
    )
}

/// The id of a report of a day that is not over yet, cut at `until` (Unix seconds):
/// `<YYYY-MM-DD>T<hhmmss>Z_<policy-domain>@<submitter-domain>`. It differs from the whole day's
/// [`report_id`] on purpose: the whole day's report, sent after midnight, must not be taken for a repeat of
/// this one (by a collector that drops repeated ids, or by the idempotency key of its mail in the queue).
pub fn partial_report_id(until: u64, policy_domain: &str, submitter_domain: &str) -> String {
    // `2026-05-10T13:45:02Z` without its colons, which have no place in a Message-ID or a file name.
    let cut = rfc3339_utc(until.saturating_mul(1000)).replace(':', "");
    format!(
        "{cut}_{}@{}",
        policy_domain.to_ascii_lowercase(),
        submitter_domain.to_ascii_lowercase()
    )
}

/// The first and last second (Unix) of a UTC day.
pub(crate) fn day_bounds(day: &str) -> Result<(u64, u64), ReportError> {
    let start = day_start_ms(day).ok_or_else(|| ReportError::Day(day.to_owned()))? / 1000;
    Ok((start, start + 24 * 3600 - 1))
}

/// The first second of `day` and the last second a report of it covers: the day's last, or `until` for a
/// report of a day not over yet (which must fall within the day).
pub(crate) fn report_bounds(day: &str, until: Option<u64>) -> Result<(u64, u64), ReportError> {
    let (start, end) = day_bounds(day)?;
    match until {
        None => Ok((start, end)),
        Some(until) if (start..=end).contains(&until) => Ok((start, until)),
        Some(until) => Err(ReportError::Day(format!(
            "{day} cut at {}",
            rfc3339_utc(until.saturating_mul(1000))
        ))),
    }
}

/// Builds the report of `policy_domain` for `day` (`YYYY-MM-DD`) from the day's counters. Counters of
/// zero are left out; policies come in key order.
pub fn build_report(
    submitter: &Submitter,
    day: &str,
    policy_domain: &str,
    report_id: &str,
    counters: &[(TlsSessionKey, u64)],
) -> Result<Report, ReportError> {
    build(submitter, day, None, policy_domain, report_id, counters)
}

/// Builds the report of a day that is not over yet, from its counters so far: as [`build_report`], but its
/// `date-range` ends at `until` (Unix seconds, within the day), when the counters were read. Give it a
/// [`partial_report_id`].
pub fn build_partial_report(
    submitter: &Submitter,
    day: &str,
    until: u64,
    policy_domain: &str,
    report_id: &str,
    counters: &[(TlsSessionKey, u64)],
) -> Result<Report, ReportError> {
    build(submitter, day, Some(until), policy_domain, report_id, counters)
}

fn build(
    submitter: &Submitter,
    day: &str,
    until: Option<u64>,
    policy_domain: &str,
    report_id: &str,
    counters: &[(TlsSessionKey, u64)],
) -> Result<Report, ReportError> {
    let (_, end) = report_bounds(day, until)?;
    let mut policies: BTreeMap<(&str, &[String]), PolicyReport> = BTreeMap::new();
    for (key, count) in counters.iter().filter(|(_, n)| *n > 0) {
        let entry = policies
            .entry((key.policy_type.as_str(), key.policy_string.as_slice()))
            .or_insert_with(|| PolicyReport {
                policy: PolicyDetails {
                    policy_type: key.policy_type.clone(),
                    policy_string: key.policy_string.clone(),
                    policy_domain: policy_domain.to_ascii_lowercase(),
                    mx_host: mx_patterns(&key.policy_type, &key.policy_string),
                },
                summary: Summary {
                    total_successful_session_count: 0,
                    total_failure_session_count: 0,
                },
                failure_details: Vec::new(),
            });
        let summary = &mut entry.summary;
        match &key.result_type {
            None => {
                summary.total_successful_session_count =
                    summary.total_successful_session_count.saturating_add(*count);
            }
            Some(result_type) => {
                summary.total_failure_session_count =
                    summary.total_failure_session_count.saturating_add(*count);
                entry.failure_details.push(FailureDetails {
                    result_type: result_type.clone(),
                    sending_mta_ip: non_empty(&key.sending_mta_ip),
                    receiving_mx_hostname: non_empty(&key.mx_host),
                    receiving_mx_helo: key.receiving_mx_helo.as_deref().and_then(non_empty),
                    receiving_ip: non_empty(&key.receiving_ip),
                    failed_session_count: *count,
                    failure_reason_code: key.failure_reason_code.as_deref().and_then(non_empty),
                });
            }
        }
    }
    Ok(Report {
        organization_name: submitter.organization_name.clone(),
        date_range: DateRange {
            start_datetime: format!("{day}T00:00:00Z"),
            end_datetime: rfc3339_utc(end.saturating_mul(1000)),
        },
        contact_info: submitter.contact_info.clone(),
        report_id: report_id.to_owned(),
        policies: policies.into_values().collect(),
    })
}

/// The `mx` patterns of an MTA-STS policy's lines (`mx: <pattern>`); none for other policy types.
fn mx_patterns(policy_type: &str, lines: &[String]) -> Vec<String> {
    if policy_type != "sts" {
        return Vec::new();
    }
    lines
        .iter()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == "mx").then(|| value.trim().to_owned())
        })
        .filter(|pattern| !pattern.is_empty())
        .collect()
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}
