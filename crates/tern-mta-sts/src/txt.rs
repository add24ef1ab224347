//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1).
//!
//! Of the TXT records at the name, those that do not begin with `v=STSv1` and a `;` are discarded. If
//! not exactly one remains, or it does not parse, the domain has no policy. The record is
//! `v=STSv1; id=<1 to 32 letters and digits>` with optional extension fields `name=value`; fields are
//! separated by `;` with optional spaces or tabs around it, and a final `;` is allowed.
//!
//! The RFC's prose says the record begins `v=STSv1;` while its grammar lets whitespace precede the `;`
//! (errata 6285 notes the conflict); both forms are taken as MTA-STS records here. A record's several
//! character strings are one record: the caller concatenates them before handing the records over.

use crate::policy::valid_field_name;

/// The version tag every MTA-STS TXT record starts with.
pub const TXT_VERSION: &str = "v=STSv1";

/// The longest policy id the RFC allows.
pub const MAX_ID_LEN: usize = 32;

/// Why the TXT records of a domain announce no policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    /// No record begins with `v=STSv1;`.
    #[error("no TXT record begins with \"v=STSv1;\"")]
    NoRecord,
    /// More than one record begins with `v=STSv1;`.
    #[error("{0} TXT records begin with \"v=STSv1;\" (exactly one is allowed)")]
    Multiple(usize),
    /// The record is not well formed.
    #[error("the MTA-STS TXT record is malformed: {0}")]
    Syntax(String),
    /// The record has no `id` field.
    #[error("the MTA-STS TXT record has no id")]
    MissingId,
    /// The `id` is not 1 to 32 letters and digits.
    #[error("the MTA-STS TXT record's id {0:?} is not 1 to 32 letters and digits")]
    BadId(String),
}

/// A parsed MTA-STS TXT record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxtRecord {
    id: String,
    extensions: Vec<(String, String)>,
}

impl TxtRecord {
    /// Parses one record (its strings already concatenated).
    pub fn parse(record: &str) -> Result<Self, TxtError> {
        let Some(rest) = record.strip_prefix(TXT_VERSION) else {
            return Err(TxtError::Syntax(format!(
                "it does not begin with {TXT_VERSION:?}"
            )));
        };
        // Trailing whitespace without a final ';' is tolerated: it cannot change the record's meaning.
        let mut parts = rest.trim_end_matches(is_wsp).split(';');
        if parts
            .next()
            .is_none_or(|before| !before.trim_matches(is_wsp).is_empty())
        {
            return Err(TxtError::Syntax(format!(
                "{TXT_VERSION:?} is not followed by ';'"
            )));
        }
        let fields: Vec<&str> = parts.map(|f| f.trim_matches(is_wsp)).collect();
        let mut id: Option<String> = None;
        let mut extensions = Vec::new();
        let last = fields.len().saturating_sub(1);
        for (i, field) in fields.into_iter().enumerate() {
            if field.is_empty() {
                // Only the record's final ';' may be followed by nothing.
                if i == last {
                    continue;
                }
                return Err(TxtError::Syntax("an empty field".into()));
            }
            let Some((name, value)) = field.split_once('=') else {
                return Err(TxtError::Syntax(format!("field {field:?} has no '='")));
            };
            if name == "id" {
                if !valid_id(value) {
                    return Err(TxtError::BadId(value.to_owned()));
                }
                // As for the policy's fields, a repeated id counts the first time.
                id.get_or_insert_with(|| value.to_owned());
            } else if !valid_field_name(name) {
                return Err(TxtError::Syntax(format!("{name:?} is not a field name")));
            } else if !valid_ext_value(value) {
                return Err(TxtError::Syntax(format!(
                    "field {name:?} has the bad value {value:?}"
                )));
            } else {
                extensions.push((name.to_owned(), value.to_owned()));
            }
        }
        let id = id.ok_or(TxtError::MissingId)?;
        Ok(TxtRecord { id, extensions })
    }

    /// The policy id: it changes whenever the domain changes its policy.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The extension fields, `(name, value)`, in record order.
    pub fn extensions(&self) -> &[(String, String)] {
        &self.extensions
    }
}

/// Whether a TXT record is an MTA-STS record: it begins with `v=STSv1`, then optional spaces or tabs
/// and `;`. Records that are not are discarded before counting.
pub fn is_sts_record(record: &str) -> bool {
    is_versioned(record, TXT_VERSION)
}

/// Whether a TXT record begins with `version` (`v=STSv1`, `v=TLSRPTv1`), then optional spaces or tabs and
/// `;`: the test both RFC 8461 and RFC 8460 apply before counting records.
pub(crate) fn is_versioned(record: &str, version: &str) -> bool {
    record
        .strip_prefix(version)
        .is_some_and(|rest| rest.trim_start_matches(is_wsp).starts_with(';'))
}

/// How many of a name's TXT records carry `version` when it is not exactly one.
pub(crate) enum NotOne {
    /// None does.
    None,
    /// This many do.
    Many(usize),
}

/// The one TXT record of `records` that begins with `version` ([`is_versioned`]).
pub(crate) fn the_one<'a>(records: &'a [String], version: &str) -> Result<&'a str, NotOne> {
    let mut found = records.iter().filter(|r| is_versioned(r, version));
    match (found.next(), found.count()) {
        (None, _) => Err(NotOne::None),
        (Some(one), 0) => Ok(one),
        (Some(_), more) => Err(NotOne::Many(more + 1)),
    }
}

/// Picks the MTA-STS record out of all the TXT records at `_mta-sts.<domain>` and parses it: exactly one
/// must begin with `v=STSv1;`, and it must parse. Any error means the domain has no policy.
pub fn select_record(records: &[String]) -> Result<TxtRecord, TxtError> {
    match the_one(records, TXT_VERSION) {
        Ok(one) => TxtRecord::parse(one),
        Err(NotOne::None) => Err(TxtError::NoRecord),
        Err(NotOne::Many(n)) => Err(TxtError::Multiple(n)),
    }
}

/// The DNS name whose TXT records announce a domain's policy: `_mta-sts.<domain>`.
pub fn record_name(domain: &str) -> String {
    format!("_mta-sts.{}", domain.trim_end_matches('.'))
}

pub(crate) fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `1*(%x21-3A / %x3C / %x3E-7E)`: printable ASCII except `=` and `;` (and space); the extension value
/// of both RFC 8461 and RFC 8460 records.
pub(crate) fn valid_ext_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'=' && b != b';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        records: Vec<String>,
        id: Option<String>,
        why: Option<String>,
    }

    #[test]
    fn every_txt_vector_gives_the_id_the_vector_says() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/vectors/mta_sts_txt.json"
        );
        let text = std::fs::read_to_string(path).expect("the vectors file");
        let cases: Vec<Case> = serde_json::from_str(&text).expect("vectors JSON");
        assert!(!cases.is_empty());
        for c in cases {
            let got = select_record(&c.records).ok().map(|r| r.id().to_owned());
            assert_eq!(got, c.id, "{:?} ({})", c.records, c.why.as_deref().unwrap_or(""));
        }
    }

    fn records(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn whitespace_around_the_separators_is_allowed() {
        let r = select_record(&records(&["v=STSv1 ;\tid=abc ; ext=1;  "])).unwrap();
        assert_eq!(r.id(), "abc");
        assert_eq!(r.extensions(), [("ext".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn an_id_of_32_characters_is_valid() {
        let id = "a".repeat(32);
        assert_eq!(
            select_record(&records(&[&format!("v=STSv1; id={id}")]))
                .unwrap()
                .id(),
            id
        );
    }

    #[test]
    fn only_records_beginning_with_the_version_count() {
        // Neither is an MTA-STS record, so the valid one stands alone.
        let r = select_record(&records(&["v=STSv1", "V=STSv1; id=x", "v=STSv1; id=good"])).unwrap();
        assert_eq!(r.id(), "good");
        assert_eq!(select_record(&records(&["hello"])), Err(TxtError::NoRecord));
        assert_eq!(
            select_record(&records(&["v=STSv1; id=a", "v=STSv1;id=b", "v=STSv1; x"])),
            Err(TxtError::Multiple(3))
        );
    }

    #[test]
    fn malformed_records_announce_no_policy() {
        for (bad, want) in [
            ("v=STSv1; id=", TxtError::BadId(String::new())),
            ("v=STSv1; id=a b", TxtError::BadId("a b".into())),
            ("v=STSv1;; id=a", TxtError::Syntax("an empty field".into())),
            ("v=STSv1; ext=1", TxtError::MissingId),
        ] {
            assert_eq!(select_record(&records(&[bad])), Err(want), "{bad:?}");
        }
        for bad in [
            "v=STSv1; id=a; ext",
            "v=STSv1; id=a; _x=1",
            "v=STSv1; id=a; x=a=b",
            "v=STSv1; id=a; x=ü",
        ] {
            assert!(
                matches!(select_record(&records(&[bad])), Err(TxtError::Syntax(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_first_of_two_ids_counts() {
        assert_eq!(TxtRecord::parse("v=STSv1; id=one; id=two").unwrap().id(), "one");
    }

    #[test]
    fn the_record_name_is_under_the_domain() {
        assert_eq!(record_name("example.test."), "_mta-sts.example.test");
    }
}
