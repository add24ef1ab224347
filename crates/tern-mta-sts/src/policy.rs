//! The MTA-STS policy (RFC 8461 §3.2): the model and the parser of the policy file.
//!
//! The file is `key: value` lines separated by LF or CRLF. `version` (which must be `STSv1`), `mode` and
//! `max_age` are required once, `mx` at least once unless the mode is `none`. Of a field other than `mx`
//! that appears more than once only the first counts; fields the RFC does not define are ignored, but every
//! line must still be well formed (the ABNF's `sts-policy-extension`). Keys and the known values are
//! case-sensitive (RFC 7405 `%s`).
//!
//! The RFC's grammar puts the fields in any order: `version` need not be the first line.
//!
//! One leniency beyond the grammar: blank lines are skipped (they cannot change what a policy says, and
//! refusing them would turn a stray newline into "no policy", a downgrade). An `mx` pattern may end with a
//! dot, which matching ignores anyway.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::matching;

/// The largest `max_age` RFC 8461 allows, in seconds (about a year).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// The only policy version RFC 8461 defines.
pub const POLICY_VERSION: &str = "STSv1";

/// What a policy asks of senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only to matching MX hosts over TLS with a certificate valid for the MX name.
    Enforce,
    /// Check as for `enforce`, report failures, but deliver anyway.
    Testing,
    /// The domain has no active policy.
    None,
}

impl Mode {
    /// The mode as written in a policy: `enforce`, `testing` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = PolicyError;

    /// Exactly `enforce`, `testing` or `none` (case-sensitive, as the RFC's grammar says).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "testing" => Ok(Mode::Testing),
            "none" => Ok(Mode::None),
            other => Err(PolicyError::Mode(other.to_owned())),
        }
    }
}

/// Why a policy file, or the parts of a policy, are not a valid policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The body is not UTF-8.
    #[error("the policy is not UTF-8 text")]
    NotUtf8,
    /// A line is not a well-formed `key: value` field.
    #[error("policy line {line}: {reason}")]
    Syntax {
        /// The line, counting from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A required field is missing.
    #[error("the policy has no `{0}` field")]
    MissingField(&'static str),
    /// `version` is not `STSv1`.
    #[error("unsupported policy version {0:?} (only STSv1 is defined)")]
    Version(String),
    /// `mode` is not one of the three modes.
    #[error("unknown policy mode {0:?} (expected enforce, testing or none)")]
    Mode(String),
    /// `max_age` is not 1 to 10 decimal digits.
    #[error("max_age {0:?} is not a non-negative integer of at most 10 digits")]
    MaxAge(String),
    /// `max_age` is above [`MAX_AGE_LIMIT`].
    #[error("max_age {0} is above the limit of {MAX_AGE_LIMIT} seconds")]
    MaxAgeTooLarge(u64),
    /// An `mx` value is neither a domain name nor `*.` and a domain name.
    #[error("mx pattern {0:?} is not a domain name, optionally after \"*.\"")]
    MxPattern(String),
    /// The mode is `enforce` or `testing` and no `mx` is given.
    #[error("a policy in mode {0} needs at least one mx pattern")]
    MissingMx(Mode),
}

/// A valid MTA-STS policy. Construct it with [`Policy::parse`] or [`Policy::new`]; both check every rule,
/// so a `Policy` value always is a valid policy (deserializing checks them too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicyFields", into = "PolicyFields")]
pub struct Policy {
    mode: Mode,
    mx: Vec<String>,
    max_age: u32,
}

/// The serialized form: `{"mode": "enforce", "mx": ["..."], "max_age": 604800}`.
#[derive(Serialize, Deserialize)]
struct PolicyFields {
    mode: Mode,
    mx: Vec<String>,
    max_age: u32,
}

impl TryFrom<PolicyFields> for Policy {
    type Error = PolicyError;

    fn try_from(f: PolicyFields) -> Result<Self, Self::Error> {
        Policy::new(f.mode, f.mx, f.max_age)
    }
}

impl From<Policy> for PolicyFields {
    fn from(p: Policy) -> Self {
        PolicyFields {
            mode: p.mode,
            mx: p.mx,
            max_age: p.max_age,
        }
    }
}

impl Policy {
    /// A policy from its parts, checked as the parser checks them: every `mx` a valid pattern, at least
    /// one unless `mode` is `none`, `max_age` at most [`MAX_AGE_LIMIT`].
    pub fn new(mode: Mode, mx: Vec<String>, max_age: u32) -> Result<Self, PolicyError> {
        if u64::from(max_age) > u64::from(MAX_AGE_LIMIT) {
            return Err(PolicyError::MaxAgeTooLarge(max_age.into()));
        }
        if let Some(bad) = mx.iter().find(|p| !valid_mx_pattern(p)) {
            return Err(PolicyError::MxPattern(bad.clone()));
        }
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::MissingMx(mode));
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// Parses a policy body as fetched (RFC 8461 §3.2); the body must be UTF-8.
    pub fn parse_bytes(body: &[u8]) -> Result<Self, PolicyError> {
        let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotUtf8)?;
        Policy::parse(text)
    }

    /// Parses a policy file (RFC 8461 §3.2).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut version: Option<&str> = None;
        let mut mode: Option<&str> = None;
        let mut max_age: Option<&str> = None;
        let mut mx: Vec<String> = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim_matches(is_wsp).is_empty() {
                continue;
            }
            let (key, value) =
                split_field(line).map_err(|reason| PolicyError::Syntax { line: i + 1, reason })?;
            // Of a repeated field other than mx only the first counts: later ones are not even checked.
            match key {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" => {
                    mode.get_or_insert(value);
                }
                "max_age" => {
                    max_age.get_or_insert(value);
                }
                "mx" => mx.push(value.to_owned()),
                _ => {}
            }
        }
        let version = version.ok_or(PolicyError::MissingField("version"))?;
        if version != POLICY_VERSION {
            return Err(PolicyError::Version(version.to_owned()));
        }
        let mode: Mode = mode.ok_or(PolicyError::MissingField("mode"))?.parse()?;
        let max_age = parse_max_age(max_age.ok_or(PolicyError::MissingField("max_age"))?)?;
        Policy::new(mode, mx, max_age)
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The `mx` patterns in the order the policy gives them.
    pub fn mx(&self) -> &[String] {
        &self.mx
    }

    /// `max_age` in seconds (at most [`MAX_AGE_LIMIT`]).
    pub fn max_age(&self) -> u32 {
        self.max_age
    }

    /// `max_age` as a duration: how long the policy may be cached after it was fetched.
    pub fn max_age_duration(&self) -> Duration {
        Duration::from_secs(self.max_age.into())
    }

    /// Whether `host` (an MX host name) matches one of the policy's patterns (RFC 8461 §4.1).
    pub fn matches_mx(&self, host: &str) -> bool {
        matching::matches_any(&self.mx, host)
    }

    /// The policy as the lines of a policy file, in a fixed order (`version`, `mode`, each `mx`,
    /// `max_age`): the `policy-string` of an RFC 8460 report, and what [`Policy::to_text`] joins.
    pub fn to_lines(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.mx.len() + 3);
        lines.push(format!("version: {POLICY_VERSION}"));
        lines.push(format!("mode: {}", self.mode));
        lines.extend(self.mx.iter().map(|m| format!("mx: {m}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }

    /// The policy as a policy file with CRLF line ends; [`Policy::parse`] reads it back to an equal policy.
    pub fn to_text(&self) -> String {
        let mut text = self.to_lines().join("\r\n");
        text.push_str("\r\n");
        text
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::parse(s)
    }
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits `key: value` (ABNF: the field name, `":" *WSP`, the value, then `*WSP`), checking the name
/// as `sts-policy-ext-name` (which every defined name also is) and the value as `sts-policy-ext-value`.
fn split_field(line: &str) -> Result<(&str, &str), String> {
    let Some((key, rest)) = line.split_once(':') else {
        return Err("no ':' between a field name and its value".into());
    };
    if !valid_field_name(key) {
        return Err(format!("{key:?} is not a field name"));
    }
    let value = rest.trim_matches(is_wsp);
    if value.is_empty() {
        return Err(format!("field {key:?} has no value"));
    }
    // sts-policy-vchar: printable ASCII or any non-ASCII UTF-8, with WSP (space or tab) inside; no other
    // controls.
    if let Some(c) = value
        .chars()
        .find(|&c| !is_wsp(c) && (c.is_ascii_control() || c == '\u{7f}'))
    {
        return Err(format!(
            "field {key:?} holds the control character {:#04x}",
            u32::from(c)
        ));
    }
    Ok((key, value))
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`: the grammar of field names in the policy and
/// of extension names in the TXT record.
pub(crate) fn valid_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// `1*10(DIGIT)`, then at most [`MAX_AGE_LIMIT`].
fn parse_max_age(value: &str) -> Result<u32, PolicyError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError::MaxAge(value.to_owned()));
    }
    let n: u64 = value.parse().map_err(|_| PolicyError::MaxAge(value.to_owned()))?;
    match u32::try_from(n) {
        Ok(v) if v <= MAX_AGE_LIMIT => Ok(v),
        _ => Err(PolicyError::MaxAgeTooLarge(n)),
    }
}

/// `["*."] Domain` (RFC 5321 `Domain`: dot-separated labels of letters, digits and inner hyphens;
/// A-labels only, as RFC 8461 requires for internationalized names). One trailing dot is accepted.
fn valid_mx_pattern(pattern: &str) -> bool {
    let domain = pattern.strip_prefix("*.").unwrap_or(pattern);
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty() && domain.len() <= 253 && domain.split('.').all(valid_label)
}

fn valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        body: String,
        valid: bool,
        mode: Option<String>,
        max_age: Option<u32>,
        mx: Option<Vec<String>>,
        why: Option<String>,
    }

    #[test]
    fn every_policy_vector_parses_as_the_vector_says() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/vectors/mta_sts_policy.json"
        );
        let text = std::fs::read_to_string(path).expect("the vectors file");
        let cases: Vec<Case> = serde_json::from_str(&text).expect("vectors JSON");
        assert!(!cases.is_empty());
        for c in cases {
            let why = c.why.as_deref().unwrap_or("");
            match Policy::parse(&c.body) {
                Ok(p) => {
                    assert!(c.valid, "{:?} parsed but must be refused ({why})", c.body);
                    assert_eq!(Some(p.mode().as_str()), c.mode.as_deref(), "{:?}", c.body);
                    assert_eq!(Some(p.max_age()), c.max_age, "{:?}", c.body);
                    assert_eq!(Some(p.mx().to_vec()), c.mx, "{:?}", c.body);
                }
                Err(e) => assert!(!c.valid, "{:?} refused ({e}) but is valid ({why})", c.body),
            }
        }
    }

    const GOOD: &str = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n";

    #[test]
    fn fields_may_come_in_any_order_and_version_need_not_be_first() {
        let p =
            Policy::parse("mode: testing\r\nmx: a.example.test\r\nmax_age: 60\r\nversion: STSv1").unwrap();
        assert_eq!(p.mode(), Mode::Testing);
        assert_eq!(p.max_age(), 60);
    }

    #[test]
    fn trailing_whitespace_and_tabs_after_the_colon_are_allowed() {
        let p =
            Policy::parse("version:\tSTSv1  \nmode:   enforce\t\nmx: a.example.test \nmax_age: 5\n").unwrap();
        assert_eq!(p.mx(), ["a.example.test"]);
    }

    #[test]
    fn the_last_line_needs_no_line_end_and_blank_lines_are_skipped() {
        let p = Policy::parse("\r\nversion: STSv1\r\n\r\nmode: none\r\nmax_age: 0").unwrap();
        assert_eq!(p.mode(), Mode::None);
        assert_eq!(p.max_age(), 0);
    }

    #[test]
    fn max_age_at_the_limit_is_valid_and_ten_digits_above_it_are_refused() {
        let at = GOOD.replace("86400", "31557600");
        assert_eq!(Policy::parse(&at).unwrap().max_age(), MAX_AGE_LIMIT);
        let big = GOOD.replace("86400", "9999999999");
        assert_eq!(
            Policy::parse(&big),
            Err(PolicyError::MaxAgeTooLarge(9_999_999_999))
        );
        let long = GOOD.replace("86400", "00000000001");
        assert!(matches!(Policy::parse(&long), Err(PolicyError::MaxAge(_))));
        let plus = GOOD.replace("86400", "+5");
        assert!(matches!(Policy::parse(&plus), Err(PolicyError::MaxAge(_))));
    }

    #[test]
    fn keys_and_values_are_case_sensitive() {
        assert_eq!(
            Policy::parse(&GOOD.replace("mode: enforce", "mode: Enforce")),
            Err(PolicyError::Mode("Enforce".into()))
        );
        assert_eq!(
            Policy::parse(&GOOD.replace("STSv1", "stsv1")),
            Err(PolicyError::Version("stsv1".into()))
        );
        // "Mode" is an unknown (extension) field, so the policy has no mode.
        assert_eq!(
            Policy::parse(&GOOD.replace("mode:", "Mode:")),
            Err(PolicyError::MissingField("mode"))
        );
    }

    #[test]
    fn a_malformed_line_makes_the_policy_invalid() {
        for bad in [
            "mode enforce",
            "mode : enforce",
            " mode: enforce",
            "_x: y",
            "x:",
            "x: a\u{1}b",
        ] {
            let body = format!("{GOOD}{bad}\n");
            assert!(
                matches!(Policy::parse(&body), Err(PolicyError::Syntax { line: 5, .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn extension_values_may_hold_inner_spaces_and_utf8() {
        let body = format!("{GOOD}note: hello world ü\n");
        assert!(Policy::parse(&body).is_ok());
    }

    #[test]
    fn values_may_hold_inner_tabs_like_spaces() {
        let body = format!("{GOOD}note: hello\tworld \t again\n");
        assert!(Policy::parse(&body).is_ok());
        let mode = "version: STSv1\nmode:\tenforce\t\nmx: a.example.test\nmax_age: 5\n";
        assert_eq!(Policy::parse(mode).unwrap().mode(), Mode::Enforce);
    }

    #[test]
    fn mx_patterns_are_checked() {
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "-a.test",
            "a-.test",
            "mail_1.test",
            "ü.test",
            "*.*.a.test",
            "a.*.test",
        ] {
            assert!(
                Policy::new(Mode::Enforce, vec![bad.into()], 1).is_err(),
                "{bad:?} accepted"
            );
        }
        for good in [
            "a.test",
            "*.a.test",
            "xn--bcher-kva.test",
            "mx.test.",
            "1.2.3.4",
            "a",
        ] {
            assert!(
                Policy::new(Mode::Enforce, vec![good.into()], 1).is_ok(),
                "{good:?} refused"
            );
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused() {
        assert_eq!(
            Policy::parse_bytes(b"version: STSv1\nmode: \xff\n"),
            Err(PolicyError::NotUtf8)
        );
    }

    #[test]
    fn to_text_parses_back_to_the_same_policy() {
        let p =
            Policy::parse("version: STSv1\nmode: enforce\nmx: a.test\nmx: *.b.test\nmax_age: 604800\nx: y\n")
                .unwrap();
        assert_eq!(
            p.to_text(),
            "version: STSv1\r\nmode: enforce\r\nmx: a.test\r\nmx: *.b.test\r\nmax_age: 604800\r\n"
        );
        assert_eq!(Policy::parse(&p.to_text()).unwrap(), p);
    }

    #[test]
    fn serde_round_trips_and_deserializing_checks_the_rules() {
        let p = Policy::parse(GOOD).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"mode":"enforce","mx":["mx.example.test"],"max_age":86400}"#
        );
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
        assert!(serde_json::from_str::<Policy>(r#"{"mode":"enforce","mx":[],"max_age":1}"#).is_err());
        assert!(serde_json::from_str::<Policy>(r#"{"mode":"none","mx":[],"max_age":31557601}"#).is_err());
    }

    #[test]
    fn errors_read_clearly() {
        assert_eq!(
            PolicyError::MissingMx(Mode::Enforce).to_string(),
            "a policy in mode enforce needs at least one mx pattern"
        );
        assert_eq!(
            PolicyError::MaxAgeTooLarge(31557601).to_string(),
            "max_age 31557601 is above the limit of 31557600 seconds"
        );
    }
}
