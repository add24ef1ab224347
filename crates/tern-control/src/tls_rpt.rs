//! The TLS reporting calls of `tern.v1.MtaSts` (`Report`, `SendReports`), over the process's
//! [`TlsReporter`]: a policy domain's counts of a day, read from the queue's store, and a report run on
//! demand. Without a reporter (`delivery.tls_rpt.enabled = false`) both are FAILED_PRECONDITION.

use tern_core::time::now_ms;
use tern_mta_sts::reporter::schedule;
use tern_mta_sts::{ReporterError, RunSummary, TlsReporter};
use tern_proto::v1 as pb;
use tern_queue::TlsSessionKey;
use tern_queue::tls_report::{day_start_ms, utc_day};
use tonic::Status;

use crate::convert::{invalid, queue_status};
use crate::mta_sts::policy_domain;

/// What both calls answer without a reporter.
pub const OFF: &str = "TLS reporting is off (delivery.tls_rpt.enabled = false)";

/// The reporter, or FAILED_PRECONDITION.
pub fn reporter(reporter: Option<&TlsReporter>) -> Result<&TlsReporter, Status> {
    reporter.ok_or_else(|| Status::failed_precondition(OFF))
}

/// A day as given: `YYYY-MM-DD` (a real date), or `default` when empty. The error names `day`.
fn day_or(raw: &str, default: impl FnOnce() -> String) -> Result<String, Status> {
    let day = raw.trim();
    if day.is_empty() {
        return Ok(default());
    }
    if day_start_ms(day).is_none() {
        return Err(invalid("day", format!("{day:?} is not a UTC day YYYY-MM-DD")));
    }
    Ok(day.to_owned())
}

/// The day of a Report request: empty is today.
pub fn report_day(raw: &str) -> Result<String, Status> {
    day_or(raw, || utc_day(now_ms()))
}

/// The day of a SendReports request: empty is yesterday (what the daily run reports), `today` is today
/// (whose reports the reporter sends partial, without marking the day sent).
pub fn send_day(raw: &str) -> Result<String, Status> {
    if raw.trim().eq_ignore_ascii_case("today") {
        return Ok(utc_day(now_ms()));
    }
    day_or(raw, || schedule::report_day(now_ms()))
}

/// One counter as the API shows it.
pub fn counter(key: &TlsSessionKey, count: u64) -> pb::ReportCounter {
    pb::ReportCounter {
        result_type: key.result_type.clone().unwrap_or_default(),
        policy_type: key.policy_type.clone(),
        mx_host: key.mx_host.clone(),
        sending_mta_ip: key.sending_mta_ip.clone(),
        receiving_ip: key.receiving_ip.clone(),
        count,
        policy_string: key.policy_string.clone(),
        failure_reason_code: key.failure_reason_code.clone().unwrap_or_default(),
    }
}

/// A domain's counters with the day's totals.
pub fn counts(domain: &str, day: &str, counters: &[(TlsSessionKey, u64)]) -> pb::ReportCounts {
    let mut out = pb::ReportCounts {
        domain: domain.to_owned(),
        day: day.to_owned(),
        ..Default::default()
    };
    for (key, count) in counters {
        if key.is_success() {
            out.total_successful = out.total_successful.saturating_add(*count);
        } else {
            out.total_failure = out.total_failure.saturating_add(*count);
        }
        out.rows.push(counter(key, *count));
    }
    out
}

/// `Report`: the counts of one domain on one day.
pub async fn report(
    reporter: Option<&TlsReporter>,
    request: pb::ReportRequest,
) -> Result<pb::ReportCounts, Status> {
    let reporter = self::reporter(reporter)?;
    let domain = policy_domain("domain", &request.domain)?;
    let day = report_day(&request.day)?;
    let counters = reporter
        .store()
        .tls_report_read(&day, &domain)
        .await
        .map_err(queue_status)?;
    Ok(counts(&domain, &day, &counters))
}

/// A run's summary as the API answers it; ABORTED when another node held the lock from the start.
pub fn run_response(summary: RunSummary) -> Result<pb::SendReportsResponse, Status> {
    if let Some(owner) = &summary.held_by
        && summary.domains.is_empty()
    {
        return Err(Status::aborted(format!(
            "{owner} is sending the TLS reports of {}",
            summary.day
        )));
    }
    Ok(pb::SendReportsResponse {
        incomplete: summary.held_by.is_some() || summary.stopped,
        partial: summary.partial,
        day: summary.day,
        domains: summary
            .domains
            .into_iter()
            .map(|d| pb::DomainReportResult {
                domain: d.domain,
                status: d.status.as_str().to_owned(),
                sent_to: d.sent_to,
                errors: d.errors,
                retry_later: d.retry_later,
            })
            .collect(),
    })
}

/// `SendReports`: one report run now.
pub async fn send_reports(
    reporter: Option<&TlsReporter>,
    request: pb::SendReportsRequest,
) -> Result<pb::SendReportsResponse, Status> {
    let reporter = self::reporter(reporter)?.clone();
    let day = send_day(&request.day)?;
    // On its own task: a client that goes away (or times out) must not cut a run between marking a
    // domain sent and sending its report.
    let run = tokio::spawn(async move { reporter.run_once(&day).await });
    let summary = run
        .await
        .map_err(|e| Status::internal(format!("the report run failed: {e}")))?
        .map_err(|e| match e {
            ReporterError::Day(d) => invalid("day", format!("{d:?} is not a UTC day YYYY-MM-DD")),
            ReporterError::Store(q) => queue_status(q),
            other => Status::internal(other.to_string()),
        })?;
    tracing::info!(
        day = %summary.day, domains = summary.domains.len(), sent = summary.sent(), partial = summary.partial,
        "control: TLS reports sent on demand"
    );
    run_response(summary)
}

#[cfg(test)]
mod tests {
    use tern_mta_sts::{DomainOutcome, DomainStatus};

    use super::*;

    fn key(mx: &str, result: Option<&str>) -> TlsSessionKey {
        TlsSessionKey {
            policy_type: "sts".into(),
            policy_string: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_host: mx.into(),
            result_type: result.map(str::to_owned),
            sending_mta_ip: "192.0.2.1".into(),
            receiving_ip: "192.0.2.25".into(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_add_up_successes_and_failures_and_keep_every_counter() {
        let c = counts(
            "example.com",
            "2026-05-01",
            &[
                (key("mx.example.com", None), 40),
                (key("mx.example.com", Some("certificate-expired")), 2),
                (key("mx2.example.com", Some("starttls-not-supported")), 3),
            ],
        );
        assert_eq!((c.total_successful, c.total_failure), (40, 5));
        assert_eq!(c.rows.len(), 3);
        assert_eq!(c.rows[0].result_type, "", "a success has no result type");
        assert_eq!(c.rows[1].result_type, "certificate-expired");
        assert_eq!(c.rows[2].mx_host, "mx2.example.com");
        assert_eq!(c.rows[2].count, 3);
        assert_eq!(c.rows[0].policy_string, ["version: STSv1", "mode: enforce"]);
        assert_eq!((c.domain.as_str(), c.day.as_str()), ("example.com", "2026-05-01"));
    }

    #[test]
    fn days_default_to_today_for_counts_and_yesterday_for_a_run() {
        let today = utc_day(now_ms());
        assert_eq!(report_day("").unwrap(), today);
        assert_eq!(send_day("today").unwrap(), today);
        assert_eq!(send_day("").unwrap(), schedule::report_day(now_ms()));
        assert_eq!(report_day(" 2024-02-29 ").unwrap(), "2024-02-29");
        for bad in ["2023-02-29", "yesterday", "2024-1-1"] {
            let e = send_day(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().starts_with("day: "), "{}", e.message());
        }
    }

    #[test]
    fn a_run_locked_by_another_node_is_aborted_and_a_cut_run_is_incomplete() {
        let locked = RunSummary {
            day: "2026-05-01".into(),
            held_by: Some("node-b".into()),
            ..Default::default()
        };
        let e = run_response(locked.clone()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted);
        assert_eq!(e.message(), "node-b is sending the TLS reports of 2026-05-01");
        let cut = RunSummary {
            domains: vec![DomainOutcome {
                domain: "a.example".into(),
                status: DomainStatus::Sent,
                sent_to: vec!["mailto:r@a.example".into()],
                errors: vec!["https://c.a.example/r: timed out".into()],
                retry_later: vec!["https://c.a.example/r".into()],
            }],
            ..locked
        };
        let r = run_response(cut).unwrap();
        assert!(r.incomplete);
        assert!(!r.partial);
        assert_eq!(r.domains[0].status, "sent");
        assert_eq!(r.domains[0].sent_to, ["mailto:r@a.example"]);
        assert_eq!(r.domains[0].retry_later, ["https://c.a.example/r"]);
        let today = RunSummary {
            day: "2026-05-01".into(),
            partial: true,
            ..Default::default()
        };
        let r = run_response(today).unwrap();
        assert!(r.partial && !r.incomplete);
    }

    #[tokio::test]
    async fn without_a_reporter_both_calls_say_reporting_is_off() {
        let e = report(None, pb::ReportRequest::default()).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::FailedPrecondition, OFF));
        let e = send_reports(None, pb::SendReportsRequest::default())
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::FailedPrecondition, OFF));
    }
}
