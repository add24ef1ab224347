//! ESMTP parameters of `MAIL FROM` and `RCPT TO` (RFC 5321 section 4.1.2,
//! `esmtp-param`), and the parameters tern understands:
//!
//! * `MAIL`: `SIZE=n` (RFC 1870), `BODY=7BIT|8BITMIME|BINARYMIME`
//!   (RFC 6152, RFC 3030), `SMTPUTF8` (RFC 6531), `RET=FULL|HDRS` and
//!   `ENVID=xtext` (RFC 3461), `AUTH=xtext|<>` (RFC 4954),
//!   `REQUIRETLS` (RFC 8689).
//! * `RCPT`: `NOTIFY=...` and `ORCPT=addr-type;xtext` (RFC 3461).
//!
//! Keywords and the enumerated values are case-insensitive. A parameter
//! given twice with different values is a syntax error
//! ([`ParamError::Duplicate`], `501`); repeated word for word it is taken
//! once (Python's `smtplib.send_message` adds `SMTPUTF8` itself, so a caller
//! passing it too sends it twice, and nothing is ambiguous about that); an
//! unknown or unsupported keyword is [`ParamError::Unknown`] (`555`, RFC
//! 5321 section 4.1.1.11).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::xtext::{xtext_decode, xtext_encode};

/// Maximum length of an `ENVID` value (RFC 3461 section 4.4).
pub const MAX_ENVID_LEN: usize = 100;
/// Maximum length of an `ORCPT` value (RFC 3461 section 4.2).
pub const MAX_ORCPT_LEN: usize = 500;

/// Why the parameters of a `MAIL` or `RCPT` command were rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParamError {
    /// Not `keyword[=value]` (empty value, bad keyword character, ...).
    #[error("malformed parameter {0:?}")]
    Syntax(String),
    /// A keyword we do not know or do not support for this command.
    #[error("unsupported parameter {0}")]
    Unknown(String),
    /// The same keyword given twice.
    #[error("duplicate parameter {0}")]
    Duplicate(String),
    /// A known keyword with a bad, missing or unexpected value.
    #[error("bad value for {keyword}: {reason}")]
    BadValue {
        /// The keyword, upper-cased.
        keyword: &'static str,
        /// A short reason.
        reason: &'static str,
    },
}

fn bad(keyword: &'static str, reason: &'static str) -> ParamError {
    ParamError::BadValue { keyword, reason }
}

/// The `BODY=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Body {
    /// `7BIT`.
    SevenBit,
    /// `8BITMIME` (RFC 6152).
    EightBitMime,
    /// `BINARYMIME` (RFC 3030); requires BDAT.
    BinaryMime,
}

impl Body {
    /// The wire keyword value.
    pub fn as_str(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

impl fmt::Display for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Body {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("7BIT") {
            Ok(Body::SevenBit)
        } else if s.eq_ignore_ascii_case("8BITMIME") {
            Ok(Body::EightBitMime)
        } else if s.eq_ignore_ascii_case("BINARYMIME") {
            Ok(Body::BinaryMime)
        } else {
            Err(bad("BODY", "expected 7BIT, 8BITMIME or BINARYMIME"))
        }
    }
}

/// The DSN `RET=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Ret {
    /// `FULL`: return the whole message in DSNs.
    Full,
    /// `HDRS`: return only the headers.
    Hdrs,
}

impl Ret {
    /// The wire keyword value.
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Ret {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("FULL") {
            Ok(Ret::Full)
        } else if s.eq_ignore_ascii_case("HDRS") {
            Ok(Ret::Hdrs)
        } else {
            Err(bad("RET", "expected FULL or HDRS"))
        }
    }
}

/// The DSN `NOTIFY=` parameter. All three flags false means `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Notify {
    /// Notify on successful delivery.
    pub success: bool,
    /// Notify on failure.
    pub failure: bool,
    /// Notify on delay.
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// True if this is `NEVER`.
    pub fn is_never(&self) -> bool {
        *self == Notify::NEVER
    }
}

impl fmt::Display for Notify {
    /// `NEVER`, or the set flags in the order `SUCCESS,FAILURE,DELAY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            return f.write_str("NEVER");
        }
        let mut sep = "";
        for (on, name) in [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ] {
            if on {
                f.write_str(sep)?;
                f.write_str(name)?;
                sep = ",";
            }
        }
        Ok(())
    }
}

impl FromStr for Notify {
    type Err = ParamError;
    /// RFC 3461 section 4.1: `NEVER` alone, or a comma-separated list of
    /// `SUCCESS`, `FAILURE`, `DELAY` (case-insensitive, each at most once).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify::NEVER);
        }
        let mut n = Notify::NEVER;
        for item in s.split(',') {
            let flag = if item.eq_ignore_ascii_case("SUCCESS") {
                &mut n.success
            } else if item.eq_ignore_ascii_case("FAILURE") {
                &mut n.failure
            } else if item.eq_ignore_ascii_case("DELAY") {
                &mut n.delay
            } else if item.eq_ignore_ascii_case("NEVER") {
                return Err(bad("NOTIFY", "NEVER must appear alone"));
            } else {
                return Err(bad("NOTIFY", "expected NEVER or SUCCESS,FAILURE,DELAY"));
            };
            if *flag {
                return Err(bad("NOTIFY", "repeated value"));
            }
            *flag = true;
        }
        Ok(n)
    }
}

/// The DSN `ORCPT=` parameter: the original recipient address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OriginalRecipient {
    /// The address type as written, usually `rfc822`.
    pub addr_type: String,
    /// The address, xtext-decoded.
    pub address: String,
}

impl OriginalRecipient {
    /// An `rfc822` original recipient.
    pub fn rfc822(address: impl Into<String>) -> Self {
        OriginalRecipient {
            addr_type: "rfc822".to_owned(),
            address: address.into(),
        }
    }

    /// The parameter value to pass on: `addr-type;xtext-encoded-address`.
    pub fn to_param_value(&self) -> String {
        format!("{};{}", self.addr_type, xtext_encode(&self.address))
    }
}

impl fmt::Display for OriginalRecipient {
    /// Same as [`OriginalRecipient::to_param_value`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, xtext_encode(&self.address))
    }
}

impl FromStr for OriginalRecipient {
    type Err = ParamError;
    /// Parses `addr-type;xtext` (RFC 3461 section 4.2).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ORCPT_LEN {
            return Err(bad("ORCPT", "longer than 500 characters"));
        }
        let (ty, addr) = s
            .split_once(';')
            .ok_or(bad("ORCPT", "expected addr-type;address"))?;
        if ty.is_empty()
            || !ty
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
        {
            return Err(bad("ORCPT", "bad address type"));
        }
        let address = xtext_decode(addr).map_err(|_| bad("ORCPT", "bad xtext"))?;
        Ok(OriginalRecipient {
            addr_type: ty.to_owned(),
            address,
        })
    }
}

/// Parameters of `MAIL FROM`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MailParams {
    /// `SIZE=n`: the client's size estimate in octets.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<Body>,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded.
    pub envid: Option<String>,
    /// `AUTH=`: the xtext-decoded authenticated sender, or the literal
    /// `"<>"` for "unknown/not authenticated".
    pub auth: Option<String>,
    /// `REQUIRETLS` was given.
    pub requiretls: bool,
}

/// Parameters of `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RcptParams {
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<OriginalRecipient>,
}

/// Splits an ESMTP parameter list (the text after the path) into
/// `(keyword, value)` pairs, checking only the generic syntax
/// (`esmtp-keyword ["=" esmtp-value]`, separated by spaces).
///
/// Runs of spaces between parameters are tolerated. Values may contain
/// UTF-8 (RFC 6531 section 3.3); the individual parameters then decide.
pub fn split_params(s: &str) -> Result<Vec<(&str, Option<&str>)>, ParamError> {
    let mut out = Vec::new();
    for item in s.split(' ').filter(|p| !p.is_empty()) {
        let (kw, val) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let kw_ok = kw.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && kw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let val_ok =
            val.is_none_or(|v| !v.is_empty() && v.chars().all(|c| c > ' ' && c != '=' && c != '\u{7f}'));
        if !kw_ok || !val_ok {
            return Err(ParamError::Syntax(item.to_owned()));
        }
        out.push((kw, val));
    }
    Ok(out)
}

fn need_value<'a>(keyword: &'static str, v: Option<&'a str>) -> Result<&'a str, ParamError> {
    v.ok_or(bad(keyword, "value required"))
}

fn no_value(keyword: &'static str, v: Option<&str>) -> Result<(), ParamError> {
    match v {
        None => Ok(()),
        Some(_) => Err(bad(keyword, "takes no value")),
    }
}

fn set_once<T: PartialEq>(slot: &mut Option<T>, kw: &str, v: T) -> Result<(), ParamError> {
    match slot {
        Some(existing) if *existing == v => Ok(()),
        Some(_) => Err(ParamError::Duplicate(kw.to_ascii_uppercase())),
        None => {
            *slot = Some(v);
            Ok(())
        }
    }
}

/// A flag parameter repeated says nothing new, so it is taken once.
fn set_flag(flag: &mut bool, _kw: &str) -> Result<(), ParamError> {
    *flag = true;
    Ok(())
}

impl MailParams {
    /// Parses the parameter text after `MAIL FROM:<path>`.
    pub fn parse(s: &str) -> Result<MailParams, ParamError> {
        let mut p = MailParams::default();
        for (kw, v) in split_params(s)? {
            if kw.eq_ignore_ascii_case("SIZE") {
                let v = need_value("SIZE", v)?;
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("SIZE", "expected a number"));
                }
                let n = v.parse().map_err(|_| bad("SIZE", "number too large"))?;
                set_once(&mut p.size, kw, n)?;
            } else if kw.eq_ignore_ascii_case("BODY") {
                let b = need_value("BODY", v)?.parse()?;
                set_once(&mut p.body, kw, b)?;
            } else if kw.eq_ignore_ascii_case("SMTPUTF8") {
                no_value("SMTPUTF8", v)?;
                set_flag(&mut p.smtputf8, kw)?;
            } else if kw.eq_ignore_ascii_case("RET") {
                let r = need_value("RET", v)?.parse()?;
                set_once(&mut p.ret, kw, r)?;
            } else if kw.eq_ignore_ascii_case("ENVID") {
                let v = need_value("ENVID", v)?;
                if v.len() > MAX_ENVID_LEN {
                    return Err(bad("ENVID", "longer than 100 characters"));
                }
                let d = xtext_decode(v).map_err(|_| bad("ENVID", "bad xtext"))?;
                set_once(&mut p.envid, kw, d)?;
            } else if kw.eq_ignore_ascii_case("AUTH") {
                let v = need_value("AUTH", v)?;
                let d = if v == "<>" {
                    v.to_owned()
                } else {
                    xtext_decode(v).map_err(|_| bad("AUTH", "bad xtext"))?
                };
                set_once(&mut p.auth, kw, d)?;
            } else if kw.eq_ignore_ascii_case("REQUIRETLS") {
                no_value("REQUIRETLS", v)?;
                set_flag(&mut p.requiretls, kw)?;
            } else {
                return Err(ParamError::Unknown(kw.to_ascii_uppercase()));
            }
        }
        Ok(p)
    }

    /// True if no parameter is set.
    pub fn is_empty(&self) -> bool {
        *self == MailParams::default()
    }
}

impl fmt::Display for MailParams {
    /// The wire form, parameters separated by single spaces, no leading
    /// space (empty if there are none). Values are xtext-encoded as needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut item = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            let r = f.write_str(sep).and_then(|()| f.write_fmt(args));
            sep = " ";
            r
        };
        if let Some(n) = self.size {
            item(f, format_args!("SIZE={n}"))?;
        }
        if let Some(b) = self.body {
            item(f, format_args!("BODY={b}"))?;
        }
        if self.smtputf8 {
            item(f, format_args!("SMTPUTF8"))?;
        }
        if let Some(r) = self.ret {
            item(f, format_args!("RET={r}"))?;
        }
        if let Some(e) = &self.envid {
            item(f, format_args!("ENVID={}", xtext_encode(e)))?;
        }
        if let Some(a) = &self.auth {
            if a == "<>" {
                item(f, format_args!("AUTH=<>"))?;
            } else {
                item(f, format_args!("AUTH={}", xtext_encode(a)))?;
            }
        }
        if self.requiretls {
            item(f, format_args!("REQUIRETLS"))?;
        }
        Ok(())
    }
}

impl RcptParams {
    /// Parses the parameter text after `RCPT TO:<path>`.
    pub fn parse(s: &str) -> Result<RcptParams, ParamError> {
        let mut p = RcptParams::default();
        for (kw, v) in split_params(s)? {
            if kw.eq_ignore_ascii_case("NOTIFY") {
                let n = need_value("NOTIFY", v)?.parse()?;
                set_once(&mut p.notify, kw, n)?;
            } else if kw.eq_ignore_ascii_case("ORCPT") {
                let o = need_value("ORCPT", v)?.parse()?;
                set_once(&mut p.orcpt, kw, o)?;
            } else {
                return Err(ParamError::Unknown(kw.to_ascii_uppercase()));
            }
        }
        Ok(p)
    }

    /// True if no parameter is set.
    pub fn is_empty(&self) -> bool {
        *self == RcptParams::default()
    }
}

impl fmt::Display for RcptParams {
    /// The wire form, like [`MailParams`]'s.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.notify, &self.orcpt) {
            (Some(n), Some(o)) => write!(f, "NOTIFY={n} ORCPT={o}"),
            (Some(n), None) => write!(f, "NOTIFY={n}"),
            (None, Some(o)) => write!(f, "ORCPT={o}"),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_never_displays_as_never() {
        assert_eq!(Notify::NEVER.to_string(), "NEVER");
        assert!(Notify::NEVER.is_never());
    }

    #[test]
    fn notify_flags_display_in_rfc_order() {
        let n = Notify {
            success: true,
            failure: true,
            delay: false,
        };
        assert_eq!(n.to_string(), "SUCCESS,FAILURE");
        let all = Notify {
            success: true,
            failure: true,
            delay: true,
        };
        assert_eq!(all.to_string(), "SUCCESS,FAILURE,DELAY");
    }

    #[test]
    fn notify_parses_case_insensitively_in_any_order() {
        let n: Notify = "delay,Success".parse().unwrap();
        assert!(n.success && n.delay && !n.failure);
        assert_eq!("never".parse::<Notify>().unwrap(), Notify::NEVER);
    }

    #[test]
    fn notify_never_combined_with_others_is_rejected() {
        assert!("NEVER,SUCCESS".parse::<Notify>().is_err());
        assert!("SUCCESS,NEVER".parse::<Notify>().is_err());
    }

    #[test]
    fn notify_rejects_empty_repeated_and_unknown_items() {
        for s in ["", "SUCCESS,", "SUCCESS,SUCCESS", "SOMETIMES"] {
            assert!(s.parse::<Notify>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn orcpt_is_xtext_decoded_and_re_encoded_for_passing_on() {
        let o: OriginalRecipient = "rfc822;a+2Bb@example.test".parse().unwrap();
        assert_eq!(o.addr_type, "rfc822");
        assert_eq!(o.address, "a+b@example.test");
        assert_eq!(o.to_param_value(), "rfc822;a+2Bb@example.test");
        assert_eq!(o.to_string(), "rfc822;a+2Bb@example.test");
    }

    #[test]
    fn orcpt_without_semicolon_is_rejected() {
        assert!("a@example.test".parse::<OriginalRecipient>().is_err());
    }

    #[test]
    fn orcpt_over_500_chars_is_rejected() {
        let s = format!("rfc822;{}", "a".repeat(500));
        assert!(s.parse::<OriginalRecipient>().is_err());
    }

    #[test]
    fn mail_params_parse_all_known_keywords() {
        let p = MailParams::parse(
            "size=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=abc+2Bd AUTH=u+40x REQUIRETLS",
        )
        .unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("abc+d"));
        assert_eq!(p.auth.as_deref(), Some("u@x"));
        assert!(p.requiretls);
        assert_eq!(
            p.to_string(),
            "SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2Bd AUTH=u@x REQUIRETLS"
        );
    }

    #[test]
    fn mail_auth_null_is_kept_as_angle_brackets() {
        let p = MailParams::parse("AUTH=<>").unwrap();
        assert_eq!(p.auth.as_deref(), Some("<>"));
        assert_eq!(p.to_string(), "AUTH=<>");
    }

    #[test]
    fn conflicting_repeated_mail_parameter_is_reported_as_duplicate() {
        assert_eq!(
            MailParams::parse("SIZE=1 size=2"),
            Err(ParamError::Duplicate("SIZE".into()))
        );
        assert_eq!(
            MailParams::parse("BODY=7BIT BODY=8BITMIME"),
            Err(ParamError::Duplicate("BODY".into()))
        );
    }

    #[test]
    fn parameter_repeated_word_for_word_is_taken_once() {
        let p = MailParams::parse("SMTPUTF8 SMTPUTF8 SIZE=10 SIZE=10").unwrap();
        assert!(p.smtputf8);
        assert_eq!(p.size, Some(10));
    }

    #[test]
    fn unknown_mail_parameter_is_reported_as_unknown() {
        assert_eq!(
            MailParams::parse("X-FOO=1"),
            Err(ParamError::Unknown("X-FOO".into()))
        );
    }

    #[test]
    fn rcpt_keyword_on_mail_is_unknown() {
        assert!(matches!(
            MailParams::parse("NOTIFY=NEVER"),
            Err(ParamError::Unknown(_))
        ));
    }

    #[test]
    fn size_must_be_digits_and_fit_in_u64() {
        assert!(MailParams::parse("SIZE=-1").is_err());
        assert!(MailParams::parse("SIZE=99999999999999999999").is_err());
        assert!(MailParams::parse("SIZE").is_err());
    }

    #[test]
    fn envid_over_100_chars_is_rejected() {
        let s = format!("ENVID={}", "a".repeat(101));
        assert!(MailParams::parse(&s).is_err());
    }

    #[test]
    fn flag_parameters_reject_values() {
        assert!(MailParams::parse("SMTPUTF8=yes").is_err());
        assert!(MailParams::parse("REQUIRETLS=1").is_err());
    }

    #[test]
    fn empty_value_is_a_syntax_error() {
        assert_eq!(
            MailParams::parse("SIZE="),
            Err(ParamError::Syntax("SIZE=".into()))
        );
    }

    #[test]
    fn rcpt_params_parse_and_display() {
        let p = RcptParams::parse("NOTIFY=FAILURE,DELAY ORCPT=rfc822;x@y.test").unwrap();
        assert_eq!(
            p.notify,
            Some(Notify {
                success: false,
                failure: true,
                delay: true
            })
        );
        assert_eq!(p.to_string(), "NOTIFY=FAILURE,DELAY ORCPT=rfc822;x@y.test");
    }

    #[test]
    fn empty_params_display_as_nothing() {
        assert_eq!(MailParams::default().to_string(), "");
        assert_eq!(RcptParams::default().to_string(), "");
        assert!(MailParams::parse("").unwrap().is_empty());
    }
}
