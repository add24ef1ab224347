//! SMTP TLS reporting (TLS-RPT, RFC 8460): where a domain wants its reports, the report, and its mail.
//!
//! | part | what |
//! |---|---|
//! | [`record`] | [`TlsRptRecord`]: the `_smtp._tls.<domain>` TXT record ([`select_tlsrpt_record`]) and its `rua` URIs |
//! | [`json`] | [`build_report`]: the RFC 8460 §4 JSON [`Report`] of one policy domain's day, from the counters the queue keeps ([`tern_queue::TlsReportStore`]) |
//! | [`mail`] | [`gzip`], the file name ([`report_filename`]) and the mail for a `mailto:` URI ([`build_report_mail`]) |
//!
//! Once a day, the node holding the day's report lock, for each policy domain with counters: looks up its
//! record, builds the report, gzips it, marks the domain's report sent, and sends it to each URI (a mail
//! through tern's own queue for `mailto:`, DKIM-signed when the reporting domain has keys; an HTTPS POST
//! of the gzip with `Content-Type: application/tlsrpt+gzip` for `https:`); see [`crate::reporter`]. A
//! report of a day not over yet (a run forced for today) is a partial one ([`build_partial_report`],
//! [`partial_report_id`], [`partial_report_filename`]) and marks nothing.

pub mod json;
pub mod mail;
pub mod record;

pub use json::{
    DateRange, FailureDetails, PolicyDetails, PolicyReport, Report, Submitter, Summary, build_partial_report,
    build_report, partial_report_id, report_id,
};
pub use mail::{
    ReportMail, TLSRPT_GZIP, build_report_mail, gzip, partial_report_filename, report_filename,
    report_subject,
};
pub use record::{
    ReportUri, TLSRPT_VERSION, TlsRptRecord, TlsRptRecordError, is_tlsrpt_record, select_tlsrpt_record,
    tlsrpt_record_name,
};

/// Why a report could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The day is not `YYYY-MM-DD` (a real UTC date).
    #[error("a report's day is YYYY-MM-DD, not {0:?}")]
    Day(String),
    /// A domain or unique id cannot be part of a report's file name.
    #[error("{0:?} cannot be part of a report's file name")]
    Name(String),
    /// The report could not be written as JSON.
    #[error("writing the report as JSON: {0}")]
    Json(String),
    /// The report could not be compressed.
    #[error("compressing the report: {0}")]
    Gzip(String),
    /// The report's mail could not be made.
    #[error("making the report's mail: {0}")]
    Mail(String),
}

#[cfg(test)]
mod tests;
