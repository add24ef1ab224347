//! The report's JSON, file name and mail, each read back the way a receiver would.

use std::io::Read;

use flate2::read::GzDecoder;
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};
use tern_queue::TlsSessionKey;

use super::*;

const DOMAIN: &str = "company-y.example";
const DAY: &str = "2016-04-01";

fn submitter() -> Submitter {
    Submitter {
        organization_name: "Company-X".into(),
        contact_info: "sts-reporting@company-x.example".into(),
        domain: "mail.company-x.example".into(),
    }
}

fn policy_lines(mode: &str) -> Vec<String> {
    vec![
        "version: STSv1".into(),
        format!("mode: {mode}"),
        "mx: *.mail.company-y.example".into(),
        "mx:mx-backup.company-y.example".into(),
        "max_age: 86400".into(),
    ]
}

/// A session under the testing policy; a success unless `result` says otherwise.
fn session(mx: &str, sending_ip: &str, result: Option<&str>) -> TlsSessionKey {
    TlsSessionKey {
        policy_type: "sts".into(),
        policy_string: policy_lines("testing"),
        mx_host: mx.into(),
        result_type: result.map(str::to_owned),
        sending_mta_ip: sending_ip.into(),
        receiving_ip: String::new(),
        receiving_mx_helo: None,
        failure_reason_code: None,
    }
}

/// The day's counters: the RFC's example (5326 successes, 303 failures of three kinds) under the
/// testing policy, 7 successes under the enforce policy that replaced it, and a zero counter.
fn counters() -> Vec<(TlsSessionKey, u64)> {
    let expired = session(
        "mx1.mail.company-y.example",
        "2001:db8:abcd:0012::1",
        Some("certificate-expired"),
    );
    let no_starttls = TlsSessionKey {
        receiving_ip: "203.0.113.56".into(),
        ..session(
            "mx2.mail.company-y.example",
            "2001:db8:abcd:0013::1",
            Some("starttls-not-supported"),
        )
    };
    let invalid = TlsSessionKey {
        receiving_ip: "203.0.113.58".into(),
        receiving_mx_helo: Some("mx-backup.company-y.example".into()),
        failure_reason_code: Some("X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED".into()),
        ..session(
            "mx-backup.company-y.example",
            "198.51.100.62",
            Some("validation-failure"),
        )
    };
    let enforce = TlsSessionKey {
        policy_string: policy_lines("enforce"),
        ..session("mx1.mail.company-y.example", "198.51.100.62", None)
    };
    vec![
        (session("mx1.mail.company-y.example", "198.51.100.62", None), 5000),
        (session("mx2.mail.company-y.example", "198.51.100.63", None), 326),
        (expired, 100),
        (no_starttls, 200),
        (invalid, 3),
        (enforce, 7),
        (
            session(
                "mx3.mail.company-y.example",
                "198.51.100.62",
                Some("certificate-expired"),
            ),
            0,
        ),
    ]
}

fn report_json() -> Value {
    let id = report_id(DAY, DOMAIN, "mail.company-x.example");
    let report = build_report(&submitter(), DAY, DOMAIN, &id, &counters()).expect("a report");
    serde_json::from_slice(&report.to_json().expect("JSON")).expect("valid JSON")
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn the_report_has_the_rfc_fields_for_the_whole_utc_day() {
    let r = report_json();
    assert_eq!(
        keys(&r),
        [
            "contact-info",
            "date-range",
            "organization-name",
            "policies",
            "report-id"
        ]
    );
    assert_eq!(r["organization-name"], "Company-X");
    assert_eq!(r["contact-info"], "sts-reporting@company-x.example");
    assert_eq!(
        r["report-id"],
        "2016-04-01_company-y.example@mail.company-x.example"
    );
    assert_eq!(
        r["date-range"],
        json!({"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"})
    );
}

/// 2016-04-01T13:45:02Z.
const CUT: u64 = 1_459_518_302;

#[test]
fn a_partial_report_ends_when_it_was_cut_and_has_an_id_of_its_own() {
    let id = partial_report_id(CUT, "Company-Y.example", "Mail.Company-X.example");
    assert_eq!(id, "2016-04-01T134502Z_company-y.example@mail.company-x.example");
    assert_ne!(id, report_id(DAY, DOMAIN, "mail.company-x.example"));
    let partial = build_partial_report(&submitter(), DAY, CUT, DOMAIN, &id, &counters()).expect("a report");
    let whole = build_report(&submitter(), DAY, DOMAIN, &id, &counters()).expect("a report");
    assert_eq!(partial.date_range.start_datetime, "2016-04-01T00:00:00Z");
    assert_eq!(partial.date_range.end_datetime, "2016-04-01T13:45:02Z");
    assert_eq!(partial.report_id, id);
    // Only the range differs: the counts are those read.
    assert_eq!(partial.policies, whole.policies);
    // The cut must fall within the day.
    let day_start = 1_459_468_800;
    for outside in [day_start - 1, day_start + 86_400] {
        assert!(matches!(
            build_partial_report(&submitter(), DAY, outside, DOMAIN, &id, &counters()),
            Err(ReportError::Day(_))
        ));
    }
    assert!(build_partial_report(&submitter(), DAY, day_start, DOMAIN, &id, &counters()).is_ok());
    assert_eq!(
        partial_report_filename("mail.sender.example", "example.net", DAY, CUT, None),
        Ok(format!(
            "mail.sender.example!example.net!{day_start}!{CUT}.json.gz"
        ))
    );
    assert!(partial_report_filename("mail.sender.example", "example.net", DAY, 5, None).is_err());
}

#[test]
fn each_policy_has_its_string_domain_mx_patterns_and_counts() {
    let r = report_json();
    let policies = r["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 2, "one per policy applied that day");
    for p in policies {
        assert_eq!(keys(p), ["failure-details", "policy", "summary"]);
    }
    // Key order: the enforce policy's lines sort before the testing policy's.
    let (enforce, testing) = (&policies[0], &policies[1]);
    assert_eq!(
        testing["policy"],
        json!({
            "policy-type": "sts",
            "policy-string": policy_lines("testing"),
            "policy-domain": "company-y.example",
            "mx-host": ["*.mail.company-y.example", "mx-backup.company-y.example"],
        })
    );
    assert_eq!(
        testing["summary"],
        json!({"total-successful-session-count": 5326, "total-failure-session-count": 303})
    );
    assert_eq!(enforce["policy"]["policy-string"], json!(policy_lines("enforce")));
    assert_eq!(
        enforce["summary"],
        json!({"total-successful-session-count": 7, "total-failure-session-count": 0})
    );
    assert_eq!(enforce["failure-details"], json!([]));
}

#[test]
fn failure_details_say_what_failed_where_and_leave_out_what_is_unknown() {
    let r = report_json();
    let details = r["policies"][1]["failure-details"]
        .as_array()
        .expect("failure details");
    let mut details = details.clone();
    details.sort_by_key(|d| d["result-type"].as_str().map(str::to_owned));
    assert_eq!(
        details,
        [
            json!({
                "result-type": "certificate-expired",
                "sending-mta-ip": "2001:db8:abcd:0012::1",
                "receiving-mx-hostname": "mx1.mail.company-y.example",
                "failed-session-count": 100,
            }),
            json!({
                "result-type": "starttls-not-supported",
                "sending-mta-ip": "2001:db8:abcd:0013::1",
                "receiving-mx-hostname": "mx2.mail.company-y.example",
                "receiving-ip": "203.0.113.56",
                "failed-session-count": 200,
            }),
            json!({
                "result-type": "validation-failure",
                "sending-mta-ip": "198.51.100.62",
                "receiving-mx-hostname": "mx-backup.company-y.example",
                "receiving-mx-helo": "mx-backup.company-y.example",
                "receiving-ip": "203.0.113.58",
                "failed-session-count": 3,
                "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED",
            }),
        ]
    );
    let counted: u64 = details
        .iter()
        .filter_map(|d| d["failed-session-count"].as_u64())
        .sum();
    assert_eq!(
        Some(counted),
        r["policies"][1]["summary"]["total-failure-session-count"].as_u64()
    );
}

#[test]
fn a_domain_without_a_policy_is_reported_without_policy_string_or_mx_host() {
    let fetch_failed = TlsSessionKey {
        policy_type: "no-policy-found".into(),
        result_type: Some("sts-policy-fetch-error".into()),
        sending_mta_ip: "192.0.2.1".into(),
        ..TlsSessionKey::default()
    };
    let delivered = TlsSessionKey {
        policy_type: "no-policy-found".into(),
        mx_host: "mx.plain.example".into(),
        ..TlsSessionKey::default()
    };
    let report = build_report(
        &submitter(),
        DAY,
        "Plain.Example",
        "x@y",
        &[(fetch_failed, 2), (delivered, 9)],
    )
    .expect("a report");
    let r: Value = serde_json::from_slice(&report.to_json().expect("JSON")).expect("valid JSON");
    assert_eq!(
        r["policies"],
        json!([{
            "policy": {"policy-type": "no-policy-found", "policy-domain": "plain.example"},
            "summary": {"total-successful-session-count": 9, "total-failure-session-count": 2},
            "failure-details": [{
                "result-type": "sts-policy-fetch-error",
                "sending-mta-ip": "192.0.2.1",
                "failed-session-count": 2,
            }],
        }])
    );
    let empty = build_report(&submitter(), DAY, DOMAIN, "x@y", &[]).expect("a report");
    assert!(empty.policies.is_empty());
    assert_eq!(
        build_report(&submitter(), "2016-02-30", DOMAIN, "x@y", &[]),
        Err(ReportError::Day("2016-02-30".into()))
    );
}

#[test]
fn the_report_reads_back_through_its_own_types() {
    let id = report_id(DAY, DOMAIN, "mail.company-x.example");
    let report = build_report(&submitter(), DAY, DOMAIN, &id, &counters()).expect("a report");
    let back: Report = serde_json::from_slice(&report.to_json().expect("JSON")).expect("parses");
    assert_eq!(back, report);
}

#[test]
fn the_file_name_follows_rfc_8460() {
    assert_eq!(
        report_filename("Mail.Sender.example", "example.net", "2016-08-01", Some("001")),
        Ok("mail.sender.example!example.net!1470009600!1470095999!001.json.gz".into())
    );
    assert_eq!(
        report_filename("mail.sender.example", "example.net", DAY, None),
        Ok("mail.sender.example!example.net!1459468800!1459555199.json.gz".into())
    );
    assert_eq!(
        report_filename("a!b", "example.net", DAY, None),
        Err(ReportError::Name("a!b".into()))
    );
    assert_eq!(
        report_filename("a.example", "", DAY, None),
        Err(ReportError::Name(String::new()))
    );
    assert_eq!(
        report_filename("a.example", "b.example", DAY, Some("x-1")),
        Err(ReportError::Name("x-1".into()))
    );
    assert_eq!(
        report_filename("a.example", "b.example", "2016-4-1", None),
        Err(ReportError::Day("2016-4-1".into()))
    );
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
    out
}

#[test]
fn the_mail_carries_the_rfc_headers_and_the_gzipped_report() {
    let id = report_id(DAY, DOMAIN, "mail.company-x.example");
    let report = build_report(&submitter(), DAY, DOMAIN, &id, &counters()).expect("a report");
    let json = report.to_json().expect("JSON");
    let gz = gzip(&json).expect("gzip");
    assert_eq!(gunzip(&gz), json);
    let filename = report_filename("mail.company-x.example", DOMAIN, DAY, None).expect("a name");
    let raw = build_report_mail(&ReportMail {
        from: "tlsrpt@company-x.example",
        to: "tls-reports@company-y.example",
        policy_domain: DOMAIN,
        submitter: "mail.company-x.example",
        report_id: &id,
        filename: &filename,
        report_gz: &gz,
        date: 1_459_555_200,
    })
    .expect("a mail");
    assert!(
        raw.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'),
        "CRLF line ends"
    );

    let mail = MessageParser::default().parse(&raw).expect("parses");
    assert_eq!(
        mail.subject(),
        Some(
            "Report Domain: company-y.example Submitter: mail.company-x.example Report-ID: \
             <2016-04-01_company-y.example@mail.company-x.example>"
        )
    );
    assert_eq!(mail.header_raw("TLS-Report-Domain").map(str::trim), Some(DOMAIN));
    assert_eq!(
        mail.header_raw("TLS-Report-Submitter").map(str::trim),
        Some("mail.company-x.example")
    );
    assert_eq!(mail.message_id(), Some(id.as_str()));
    assert_eq!(
        mail.from().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("tlsrpt@company-x.example")
    );
    assert_eq!(
        mail.to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("tls-reports@company-y.example")
    );
    assert_eq!(mail.date().map(|d| d.to_timestamp()), Some(1_459_555_200));
    let top = mail.content_type().expect("a content type");
    assert_eq!((top.ctype(), top.subtype()), ("multipart", Some("report")));
    assert_eq!(top.attribute("report-type"), Some("tlsrpt"));
    let text = mail.body_text(0).expect("a text part");
    assert!(text.contains("aggregate TLS report"), "{text}");

    let attachments: Vec<_> = mail.attachments().collect();
    assert_eq!(attachments.len(), 1);
    let report_part = attachments[0];
    let ct = report_part.content_type().expect("a content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("application", Some("tlsrpt+gzip")));
    assert_eq!(report_part.attachment_name(), Some(filename.as_str()));
    assert_eq!(report_part.contents(), gz.as_slice());
    let back: Report = serde_json::from_slice(&gunzip(report_part.contents())).expect("the report");
    assert_eq!(back, report);
}

#[test]
fn a_line_break_in_a_header_value_is_refused() {
    let mail = ReportMail {
        from: "tlsrpt@company-x.example",
        to: "tls-reports@company-y.example",
        policy_domain: "company-y.example\r\nBcc: victim@example.test",
        submitter: "mail.company-x.example",
        report_id: "x@y",
        filename: "f.json.gz",
        report_gz: b"",
        date: 0,
    };
    assert!(matches!(build_report_mail(&mail), Err(ReportError::Mail(_))));
}
