//! The `_smtp._tls.<domain>` TXT record (RFC 8460 §3): where a policy domain wants its TLS reports.
//!
//! Of the TXT records at the name, those that do not begin with `v=TLSRPTv1` and a `;` are discarded; if
//! not exactly one remains, or it does not parse, the domain wants no reports. The record is
//! `v=TLSRPTv1; rua=<uri>[,<uri>...]` with optional extension fields `name=value` (ignored); fields are
//! separated by `;` with optional spaces or tabs around it, and a final `;` is allowed. A URI in `rua` has
//! its commas and exclamation points percent-encoded, so a comma separates URIs (spaces or tabs around it
//! allowed).
//!
//! RFC 8460 supports two schemes, `mailto:` and `https:`. As with DMARC's `rua` (which RFC 8460 points
//! to), a URI of another scheme is skipped rather than spoiling the record: the domain still gets its
//! reports at the URIs that can be used. A record left with none is [`TlsRptRecordError::NoUsableUri`].
//! A `mailto:` or `https:` URI that is malformed spoils the record. A record's several character strings
//! are one record: the caller concatenates them before handing the records over.

use crate::policy::valid_field_name;
use crate::txt::{NotOne, is_versioned, is_wsp, the_one, valid_ext_value};

/// The version tag every TLS-RPT TXT record starts with.
pub const TLSRPT_VERSION: &str = "v=TLSRPTv1";

/// Why the TXT records of a domain ask for no reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsRptRecordError {
    /// No record begins with `v=TLSRPTv1;`.
    #[error("no TXT record begins with \"v=TLSRPTv1;\"")]
    NoRecord,
    /// More than one record begins with `v=TLSRPTv1;`.
    #[error("{0} TXT records begin with \"v=TLSRPTv1;\" (exactly one is allowed)")]
    Multiple(usize),
    /// The record is not well formed.
    #[error("the TLS-RPT TXT record is malformed: {0}")]
    Syntax(String),
    /// The record has no `rua` field.
    #[error("the TLS-RPT TXT record has no rua")]
    MissingRua,
    /// A `mailto:` or `https:` URI is malformed.
    #[error("the TLS-RPT TXT record's rua URI {0:?} is malformed")]
    BadUri(String),
    /// No URI of `rua` has a scheme reports can be sent to (`mailto:`, `https:`).
    #[error("the TLS-RPT TXT record's rua has no mailto: or https: URI")]
    NoUsableUri,
}

/// Where to send a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportUri {
    /// By mail, to this address (percent-decoded, without the URI's `?` part).
    Mailto(String),
    /// By HTTPS POST, to this URL (as the record gives it).
    Https(String),
}

/// A parsed TLS-RPT TXT record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// Where to send reports, in the record's order: at least one.
    pub rua: Vec<ReportUri>,
    /// The `rua` URIs of other schemes, skipped (for an operator to see).
    pub unsupported: Vec<String>,
}

impl TlsRptRecord {
    /// Parses one record (its strings already concatenated).
    pub fn parse(record: &str) -> Result<TlsRptRecord, TlsRptRecordError> {
        let Some(rest) = record.strip_prefix(TLSRPT_VERSION) else {
            return Err(TlsRptRecordError::Syntax(format!(
                "it does not begin with {TLSRPT_VERSION:?}"
            )));
        };
        let mut parts = rest.trim_end_matches(is_wsp).split(';');
        if parts
            .next()
            .is_none_or(|before| !before.trim_matches(is_wsp).is_empty())
        {
            return Err(TlsRptRecordError::Syntax(format!(
                "{TLSRPT_VERSION:?} is not followed by ';'"
            )));
        }
        let fields: Vec<&str> = parts.map(|f| f.trim_matches(is_wsp)).collect();
        let last = fields.len().saturating_sub(1);
        let mut rua: Option<&str> = None;
        for (i, field) in fields.into_iter().enumerate() {
            if field.is_empty() {
                // Only the record's final ';' may be followed by nothing.
                if i == last {
                    continue;
                }
                return Err(TlsRptRecordError::Syntax("an empty field".into()));
            }
            let Some((name, value)) = field.split_once('=') else {
                return Err(TlsRptRecordError::Syntax(format!("field {field:?} has no '='")));
            };
            if name == "rua" {
                // As for MTA-STS's fields, a repeated one counts the first time.
                rua.get_or_insert(value);
            } else if !valid_field_name(name) {
                return Err(TlsRptRecordError::Syntax(format!("{name:?} is not a field name")));
            } else if !valid_ext_value(value) {
                return Err(TlsRptRecordError::Syntax(format!(
                    "field {name:?} has the bad value {value:?}"
                )));
            }
        }
        let rua = rua.ok_or(TlsRptRecordError::MissingRua)?;
        let mut record = TlsRptRecord {
            rua: Vec::new(),
            unsupported: Vec::new(),
        };
        for uri in rua.split(',').map(|u| u.trim_matches(is_wsp)) {
            match parse_uri(uri)? {
                Some(usable) => record.rua.push(usable),
                None => record.unsupported.push(uri.to_owned()),
            }
        }
        if record.rua.is_empty() {
            return Err(TlsRptRecordError::NoUsableUri);
        }
        Ok(record)
    }
}

/// Whether a TXT record is a TLS-RPT record: it begins with `v=TLSRPTv1`, then optional spaces or tabs
/// and `;`. Records that are not are discarded before counting.
pub fn is_tlsrpt_record(record: &str) -> bool {
    is_versioned(record, TLSRPT_VERSION)
}

/// Picks the TLS-RPT record out of all the TXT records at `_smtp._tls.<domain>` and parses it: exactly
/// one must begin with `v=TLSRPTv1;`, and it must parse. Any error means the domain wants no reports.
pub fn select_tlsrpt_record(records: &[String]) -> Result<TlsRptRecord, TlsRptRecordError> {
    match the_one(records, TLSRPT_VERSION) {
        Ok(one) => TlsRptRecord::parse(one),
        Err(NotOne::None) => Err(TlsRptRecordError::NoRecord),
        Err(NotOne::Many(n)) => Err(TlsRptRecordError::Multiple(n)),
    }
}

/// The DNS name whose TXT records say where a domain wants its reports: `_smtp._tls.<domain>`.
pub fn tlsrpt_record_name(domain: &str) -> String {
    format!("_smtp._tls.{}", domain.trim_end_matches('.'))
}

/// A `rua` URI: `Some` for a usable one, `None` for another scheme, an error for a malformed one.
fn parse_uri(uri: &str) -> Result<Option<ReportUri>, TlsRptRecordError> {
    let bad = || TlsRptRecordError::BadUri(uri.to_owned());
    if uri.is_empty() || uri.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(bad());
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(bad());
    };
    if scheme.eq_ignore_ascii_case("mailto") {
        // The address is the part before any `?header=value` (RFC 6068).
        let address = rest.split_once('?').map_or(rest, |(a, _)| a);
        let address = percent_decode(address).ok_or_else(bad)?;
        match address.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !address.contains(',') => {
                Ok(Some(ReportUri::Mailto(address)))
            }
            _ => Err(bad()),
        }
    } else if scheme.eq_ignore_ascii_case("https") {
        let host = rest
            .strip_prefix("//")
            .map(|r| r.split(['/', '?', '#']).next().unwrap_or_default())
            .unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Err(bad());
        }
        Ok(Some(ReportUri::Https(uri.to_owned())))
    } else if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        Err(bad())
    } else {
        Ok(None)
    }
}

/// Decodes `%HH` escapes; `None` for a bad escape or text that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        if b == b'%' {
            let hex = text.get(at + 1..at + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(b);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    fn mailto(a: &str) -> ReportUri {
        ReportUri::Mailto(a.to_owned())
    }

    #[test]
    fn a_good_record_gives_its_uris_in_order() {
        let r = select_tlsrpt_record(&records(&[
            "v=spf1 -all",
            "v=TLSRPTv1; rua=mailto:tls@example.test, https://reports.example.test/tlsrpt",
        ]))
        .unwrap();
        assert_eq!(
            r.rua,
            [
                mailto("tls@example.test"),
                ReportUri::Https("https://reports.example.test/tlsrpt".into())
            ]
        );
        assert!(r.unsupported.is_empty());
        let r =
            TlsRptRecord::parse("v=TLSRPTv1 ;\trua=mailto:a%21b@example.test?subject=x ; ext=1;  ").unwrap();
        assert_eq!(r.rua, [mailto("a!b@example.test")], "decoded, without the query");
        assert_eq!(
            TlsRptRecord::parse("v=TLSRPTv1;rua=MAILTO:x@example.test")
                .unwrap()
                .rua,
            [mailto("x@example.test")],
            "schemes are matched without case"
        );
    }

    #[test]
    fn several_records_or_none_mean_no_reports() {
        assert_eq!(
            select_tlsrpt_record(&records(&[
                "v=TLSRPTv1; rua=mailto:a@example.test",
                "v=TLSRPTv1;rua=mailto:b@example.test",
            ])),
            Err(TlsRptRecordError::Multiple(2))
        );
        assert_eq!(select_tlsrpt_record(&[]), Err(TlsRptRecordError::NoRecord));
        // Neither begins with the version and a ';', so the good one stands alone.
        let r = select_tlsrpt_record(&records(&[
            "v=TLSRPTv1",
            "V=TLSRPTv1; rua=mailto:upper@example.test",
            "v=TLSRPTv10; rua=mailto:ten@example.test",
            "v=TLSRPTv1; rua=mailto:good@example.test",
        ]))
        .unwrap();
        assert_eq!(r.rua, [mailto("good@example.test")]);
    }

    #[test]
    fn other_schemes_are_skipped_and_a_record_with_only_those_is_unusable() {
        let r = TlsRptRecord::parse("v=TLSRPTv1; rua=ftp://x.example.test/r,mailto:ok@example.test").unwrap();
        assert_eq!(r.rua, [mailto("ok@example.test")]);
        assert_eq!(r.unsupported, ["ftp://x.example.test/r"]);
        assert_eq!(
            TlsRptRecord::parse("v=TLSRPTv1; rua=http://reports.example.test/"),
            Err(TlsRptRecordError::NoUsableUri)
        );
    }

    #[test]
    fn malformed_records_mean_no_reports() {
        for (bad, want) in [
            ("v=TLSRPTv1; ext=1", TlsRptRecordError::MissingRua),
            ("v=TLSRPTv1;", TlsRptRecordError::MissingRua),
            (
                "v=TLSRPTv1;; rua=mailto:a@b",
                TlsRptRecordError::Syntax("an empty field".into()),
            ),
            (
                "v=TLSRPTv1; rua=mailto:nobody",
                TlsRptRecordError::BadUri("mailto:nobody".into()),
            ),
            (
                "v=TLSRPTv1; rua=mailto:@b",
                TlsRptRecordError::BadUri("mailto:@b".into()),
            ),
            (
                "v=TLSRPTv1; rua=mailto:a%2@b",
                TlsRptRecordError::BadUri("mailto:a%2@b".into()),
            ),
            (
                "v=TLSRPTv1; rua=https:reports",
                TlsRptRecordError::BadUri("https:reports".into()),
            ),
            (
                "v=TLSRPTv1; rua=https:///x",
                TlsRptRecordError::BadUri("https:///x".into()),
            ),
            ("v=TLSRPTv1; rua=", TlsRptRecordError::BadUri(String::new())),
            (
                "v=TLSRPTv1; rua=mailto:a@b,",
                TlsRptRecordError::BadUri(String::new()),
            ),
            (
                "v=TLSRPTv1; rua=nothing",
                TlsRptRecordError::BadUri("nothing".into()),
            ),
        ] {
            assert_eq!(select_tlsrpt_record(&records(&[bad])), Err(want), "{bad:?}");
        }
        for bad in [
            "v=TLSRPTv1; rua=mailto:a@b; ext",
            "v=TLSRPTv1; rua=mailto:a@b; _x=1",
            "v=TLSRPTv1; rua=mailto:a@b; x=a=b",
            "v=TLSRPTv1 rua=mailto:a@b",
        ] {
            assert!(
                matches!(TlsRptRecord::parse(bad), Err(TlsRptRecordError::Syntax(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_first_of_two_ruas_counts_and_the_name_is_under_the_domain() {
        let r = TlsRptRecord::parse("v=TLSRPTv1; rua=mailto:one@example.test; rua=mailto:two@example.test")
            .unwrap();
        assert_eq!(r.rua, [mailto("one@example.test")]);
        assert_eq!(tlsrpt_record_name("example.test."), "_smtp._tls.example.test");
    }
}
