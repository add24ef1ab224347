//! Delivering a report (RFC 8460 §5): gzip, its file name, and the mail for a `mailto:` address.
//!
//! The mail is a `multipart/report; report-type="tlsrpt"` message with the `TLS-Report-Domain` and
//! `TLS-Report-Submitter` headers, the subject `Report Domain: <d> Submitter: <s> Report-ID: <<id>>`, a
//! short text part and the gzipped report as an `application/tlsrpt+gzip` attachment. Its Message-ID is the
//! report id, so that a report sent twice is recognisably one. Signing it (RFC 8460 §3 wants DKIM) is the
//! sender's business: the reporter signs it with the `[[dkim]]` keys of the reporting address's domain
//! before it queues it (`TlsReporter::with_dkim`).

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;

use super::ReportError;
use super::json::{day_bounds, report_bounds};

/// The media type of a gzipped report.
pub const TLSRPT_GZIP: &str = "application/tlsrpt+gzip";

/// Compresses a report's JSON with gzip.
pub fn gzip(json: &[u8]) -> Result<Vec<u8>, ReportError> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(json)
        .map_err(|e| ReportError::Gzip(e.to_string()))?;
    encoder.finish().map_err(|e| ReportError::Gzip(e.to_string()))
}

/// The file name of a gzipped report (RFC 8460 §5.3):
/// `<sender>!<policy-domain>!<begin-timestamp>!<end-timestamp>[!<unique-id>].json.gz`, the timestamps the
/// Unix seconds of the day's first and last second. The domains are lower-cased and must hold no `!`, `/`
/// or space; a unique id is letters and digits.
pub fn report_filename(
    sender: &str,
    policy_domain: &str,
    day: &str,
    unique_id: Option<&str>,
) -> Result<String, ReportError> {
    filename(sender, policy_domain, day_bounds(day)?, unique_id)
}

/// The file name of a report of a day not over yet ([`build_partial_report`](super::build_partial_report)):
/// as [`report_filename`], its end timestamp `until` (Unix seconds, within the day).
pub fn partial_report_filename(
    sender: &str,
    policy_domain: &str,
    day: &str,
    until: u64,
    unique_id: Option<&str>,
) -> Result<String, ReportError> {
    filename(sender, policy_domain, report_bounds(day, Some(until))?, unique_id)
}

fn filename(
    sender: &str,
    policy_domain: &str,
    (begin, end): (u64, u64),
    unique_id: Option<&str>,
) -> Result<String, ReportError> {
    for domain in [sender, policy_domain] {
        if domain.is_empty()
            || domain
                .bytes()
                .any(|b| !b.is_ascii_graphic() || b"!/\\".contains(&b))
        {
            return Err(ReportError::Name(domain.to_owned()));
        }
    }
    let mut name = format!(
        "{}!{}!{begin}!{end}",
        sender.to_ascii_lowercase(),
        policy_domain.to_ascii_lowercase()
    );
    if let Some(id) = unique_id {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ReportError::Name(id.to_owned()));
        }
        name.push('!');
        name.push_str(id);
    }
    name.push_str(".json.gz");
    Ok(name)
}

/// What goes into a report mail.
#[derive(Clone, Debug)]
pub struct ReportMail<'a> {
    /// The From address (the reporting address).
    pub from: &'a str,
    /// The `mailto:` address of the record's `rua`.
    pub to: &'a str,
    /// The policy domain reported on.
    pub policy_domain: &'a str,
    /// The submitter's domain.
    pub submitter: &'a str,
    /// The report id (without angle brackets), as in the report.
    pub report_id: &'a str,
    /// The attachment's file name ([`report_filename`]).
    pub filename: &'a str,
    /// The gzipped report ([`gzip`]).
    pub report_gz: &'a [u8],
    /// The Date header's time (Unix seconds).
    pub date: u64,
}

/// The subject RFC 8460 §5.3 asks for.
pub fn report_subject(policy_domain: &str, submitter: &str, report_id: &str) -> String {
    format!("Report Domain: {policy_domain} Submitter: {submitter} Report-ID: <{report_id}>")
}

/// Builds the report mail (CRLF line ends), ready to queue.
pub fn build_report_mail(mail: &ReportMail<'_>) -> Result<Vec<u8>, ReportError> {
    for value in [
        mail.from,
        mail.to,
        mail.policy_domain,
        mail.submitter,
        mail.report_id,
    ] {
        // Header values come from configuration and DNS: a line break would forge headers.
        if value.is_empty() || value.contains(['\r', '\n']) {
            return Err(ReportError::Mail(format!("bad header value {value:?}")));
        }
    }
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {} for {}.\r\n\
         The report is attached: {}.\r\n",
        mail.submitter, mail.policy_domain, mail.filename
    );
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
        vec![
            MimePart::new("text/plain", text),
            MimePart::new(TLSRPT_GZIP, mail.report_gz).attachment(mail.filename),
        ],
    );
    MessageBuilder::new()
        .from(mail.from)
        .to(mail.to)
        .subject(report_subject(mail.policy_domain, mail.submitter, mail.report_id))
        .message_id(MessageId::new(mail.report_id))
        .date(Date::new(i64::try_from(mail.date).unwrap_or(i64::MAX)))
        .header(
            "TLS-Report-Domain",
            HeaderType::from(Raw::new(mail.policy_domain)),
        )
        .header("TLS-Report-Submitter", HeaderType::from(Raw::new(mail.submitter)))
        .body(body)
        .write_to_vec()
        .map_err(|e| ReportError::Mail(e.to_string()))
}
