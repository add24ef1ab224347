//! `ternctl sts report` and `ternctl sts send-reports`: the cluster's TLS reports (TLS-RPT, RFC 8460)
//! through `tern.v1.MtaSts` (`Report`, `SendReports`).

use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::v1 as pb;

use super::output::{failed, mta_sts, req, table};
use crate::cli::Global;
use crate::grpc::CALL_TIMEOUT;

/// How long a report run may take: every domain's TXT lookup, and each URI's attempts (a POST has 30 s,
/// three attempts 10 s apart).
const SEND_TIMEOUT: Duration = Duration::from_secs(1800);

/// The statuses of a domain whose report went out, or that wants none: anything else makes the command
/// fail.
const FINE: [&str; 3] = ["sent", "already-sent", "no-record"];

/// `ternctl sts report D [--day YYYY-MM-DD]`.
pub async fn report(global: &Global, domain: String, day: Option<String>) -> anyhow::Result<()> {
    let mut client = mta_sts(global, CALL_TIMEOUT).await?;
    let request = pb::ReportRequest {
        domain,
        day: day.unwrap_or_default(),
    };
    let counts = client
        .report(req(global, request)?)
        .await
        .map_err(failed(global))?
        .into_inner();
    if global.json {
        println!("{}", counts_json(&counts));
    } else {
        print!("{}", counts_text(&counts));
    }
    Ok(())
}

/// `ternctl sts send-reports [--day YYYY-MM-DD|today]`. Today's reports are partial and leave the day
/// unmarked (the server decides; the output says so).
pub async fn send_reports(global: &Global, day: Option<String>) -> anyhow::Result<()> {
    let mut client = mta_sts(global, SEND_TIMEOUT).await?;
    let request = pb::SendReportsRequest {
        day: day.unwrap_or_default(),
    };
    let run = client
        .send_reports(req(global, request)?)
        .await
        .map_err(failed(global))?
        .into_inner();
    if global.json {
        println!("{}", run_json(&run));
    } else {
        print!("{}", run_text(&run));
    }
    let bad: Vec<&str> = run
        .domains
        .iter()
        .filter(|d| !FINE.contains(&d.status.as_str()))
        .map(|d| d.domain.as_str())
        .collect();
    if !bad.is_empty() {
        anyhow::bail!("the TLS reports of {} were not sent: {}", run.day, bad.join(", "));
    }
    if run.incomplete {
        anyhow::bail!("the TLS report run of {} stopped before its end", run.day);
    }
    Ok(())
}

/// `Some(s)` unless empty: JSON says null for "none".
fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn counts_json(c: &pb::ReportCounts) -> Value {
    let rows: Vec<Value> = c
        .rows
        .iter()
        .map(|r| {
            json!({
                "result_type": some(&r.result_type),
                "policy_type": r.policy_type,
                "mx_host": some(&r.mx_host),
                "sending_mta_ip": some(&r.sending_mta_ip),
                "receiving_ip": some(&r.receiving_ip),
                "count": r.count,
                "policy_string": r.policy_string,
                "failure_reason_code": some(&r.failure_reason_code),
            })
        })
        .collect();
    json!({
        "domain": c.domain,
        "day": c.day,
        "total_successful": c.total_successful,
        "total_failure": c.total_failure,
        "rows": rows,
    })
}

/// `-` for an empty cell.
fn cell(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_owned() }
}

/// The counts for people: a line of totals, then one row per counter.
fn counts_text(c: &pb::ReportCounts) -> String {
    if c.rows.is_empty() {
        return format!("{} on {}: no TLS sessions counted\n", c.domain, c.day);
    }
    let rows: Vec<Vec<String>> = c
        .rows
        .iter()
        .map(|r| {
            vec![
                if r.result_type.is_empty() {
                    "success".into()
                } else {
                    r.result_type.clone()
                },
                r.policy_type.clone(),
                cell(&r.mx_host),
                cell(&r.sending_mta_ip),
                cell(&r.receiving_ip),
                r.count.to_string(),
            ]
        })
        .collect();
    format!(
        "{} on {}: {} successful, {} failed TLS sessions\n{}",
        c.domain,
        c.day,
        c.total_successful,
        c.total_failure,
        table(
            &["RESULT", "POLICY", "MX", "SENDING IP", "RECEIVING IP", "COUNT"],
            &rows
        )
    )
}

fn run_json(r: &pb::SendReportsResponse) -> Value {
    let domains: Vec<Value> = r
        .domains
        .iter()
        .map(|d| {
            json!({
                "domain": d.domain,
                "status": d.status,
                "sent_to": d.sent_to,
                "errors": d.errors,
                "retry_later": d.retry_later,
            })
        })
        .collect();
    json!({ "day": r.day, "incomplete": r.incomplete, "partial": r.partial, "domains": domains })
}

/// What a run for a day not over yet says.
const PARTIAL: &str = "the day is not over: these reports are partial and the day is not marked sent; \
                       the regular report after midnight still covers the whole day";

/// A run for people: one row per domain, then each error on a line of its own, and the URIs the server
/// offers a report again; a partial run says so first.
fn run_text(r: &pb::SendReportsResponse) -> String {
    if r.domains.is_empty() {
        return format!("no TLS sessions counted on {}: no reports to send\n", r.day);
    }
    let sent = r.domains.iter().filter(|d| d.status == "sent").count();
    let rows: Vec<Vec<String>> = r
        .domains
        .iter()
        .map(|d| vec![d.domain.clone(), d.status.clone(), cell(&d.sent_to.join(" "))])
        .collect();
    let mut out = format!(
        "TLS reports of {}: {sent} of {} sent now\n",
        r.day,
        super::output::plural(r.domains.len() as u64, "domain")
    );
    if r.partial {
        out.push_str(&format!("{PARTIAL}\n"));
    }
    out.push_str(&table(&["DOMAIN", "STATUS", "SENT TO"], &rows));
    for d in &r.domains {
        for e in &d.errors {
            out.push_str(&format!("{}: {e}\n", d.domain));
        }
        if !d.retry_later.is_empty() {
            out.push_str(&format!(
                "{}: offered again at the day's next report run: {}\n",
                d.domain,
                d.retry_later.join(" ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> pb::ReportCounts {
        let row = |result: &str, mx: &str, count: u64| pb::ReportCounter {
            result_type: result.into(),
            policy_type: "sts".into(),
            mx_host: mx.into(),
            sending_mta_ip: "192.0.2.1".into(),
            receiving_ip: "192.0.2.25".into(),
            count,
            policy_string: vec!["version: STSv1".into()],
            failure_reason_code: String::new(),
        };
        pb::ReportCounts {
            domain: "example.com".into(),
            day: "2026-05-01".into(),
            rows: vec![
                row("", "mx.example.com", 40),
                row("certificate-expired", "mx.example.com", 2),
            ],
            total_successful: 40,
            total_failure: 2,
        }
    }

    #[test]
    fn counts_for_people_are_a_total_line_and_a_row_per_counter() {
        let text = counts_text(&counts());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "example.com on 2026-05-01: 40 successful, 2 failed TLS sessions"
        );
        assert!(lines[1].starts_with("RESULT               POLICY  MX"), "{text}");
        assert!(
            lines[2].starts_with("success              sts     mx.example.com"),
            "{text}"
        );
        assert!(lines[2].ends_with("  40"), "{text}");
        assert!(lines[3].starts_with("certificate-expired  sts"), "{text}");
        let empty = pb::ReportCounts {
            domain: "a.example".into(),
            day: "2026-05-01".into(),
            ..Default::default()
        };
        assert_eq!(
            counts_text(&empty),
            "a.example on 2026-05-01: no TLS sessions counted\n"
        );
    }

    #[test]
    fn counts_as_json_say_null_for_a_success_result_type() {
        let doc = counts_json(&counts());
        assert_eq!(doc["total_successful"], 40);
        assert_eq!(doc["total_failure"], 2);
        assert!(doc["rows"][0]["result_type"].is_null());
        assert_eq!(doc["rows"][1]["result_type"], "certificate-expired");
        assert_eq!(doc["rows"][1]["count"], 2);
        assert!(doc["rows"][1]["failure_reason_code"].is_null());
    }

    #[test]
    fn a_run_for_people_lists_domains_then_errors() {
        let run = pb::SendReportsResponse {
            day: "2026-05-01".into(),
            incomplete: false,
            domains: vec![
                pb::DomainReportResult {
                    domain: "a.example".into(),
                    status: "sent".into(),
                    sent_to: vec!["mailto:r@a.example".into(), "https://c.a.example/r".into()],
                    errors: vec![],
                    retry_later: vec![],
                },
                pb::DomainReportResult {
                    domain: "b.example".into(),
                    status: "no-record".into(),
                    sent_to: vec![],
                    errors: vec!["no TLS-RPT TXT record".into()],
                    retry_later: vec![],
                },
            ],
            partial: false,
        };
        let text = run_text(&run);
        assert_eq!(
            text,
            "TLS reports of 2026-05-01: 1 of 2 domains sent now\n\
             DOMAIN     STATUS     SENT TO\n\
             a.example  sent       mailto:r@a.example https://c.a.example/r\n\
             b.example  no-record  -\n\
             b.example: no TLS-RPT TXT record\n"
        );
        let doc = run_json(&run);
        assert_eq!(doc["domains"][0]["sent_to"][1], "https://c.a.example/r");
        assert_eq!(doc["incomplete"], false);
        assert_eq!(doc["partial"], false);
        assert_eq!(doc["domains"][0]["retry_later"], json!([]));
    }

    #[test]
    fn a_partial_run_says_the_whole_day_follows_and_a_uri_to_retry_is_named() {
        let run = pb::SendReportsResponse {
            day: "2026-05-01".into(),
            incomplete: false,
            partial: true,
            domains: vec![pb::DomainReportResult {
                domain: "a.example".into(),
                status: "sent".into(),
                sent_to: vec!["mailto:r@a.example".into()],
                errors: vec!["https://c.a.example/r: c.a.example answered HTTP status 503".into()],
                retry_later: vec!["https://c.a.example/r".into()],
            }],
        };
        let text = run_text(&run);
        assert_eq!(
            text,
            format!(
                "TLS reports of 2026-05-01: 1 of 1 domain sent now\n\
                 {PARTIAL}\n\
                 DOMAIN     STATUS  SENT TO\n\
                 a.example  sent    mailto:r@a.example\n\
                 a.example: https://c.a.example/r: c.a.example answered HTTP status 503\n\
                 a.example: offered again at the day's next report run: https://c.a.example/r\n"
            )
        );
        assert!(PARTIAL.contains("the regular report after midnight still covers the whole day"));
        let doc = run_json(&run);
        assert_eq!(doc["partial"], true);
        assert_eq!(doc["domains"][0]["retry_later"][0], "https://c.a.example/r");
    }
}
