//! Mailboxes and the `<path>` syntax of `MAIL FROM` / `RCPT TO`
//! (RFC 5321 section 4.1.2, extended for UTF-8 by RFC 6531 section 3.3).
//!
//! ```text
//! Reverse-path   = Path / "<>"
//! Forward-path   = Path
//! Path           = "<" [ A-d-l ":" ] Mailbox ">"
//! A-d-l          = At-domain *( "," At-domain )      ; source route, ignored
//! Mailbox        = Local-part "@" ( Domain / address-literal )
//! Local-part     = Dot-string / Quoted-string
//! ```
//!
//! Limits (RFC 5321 section 4.5.3.1): local part 64 octets, domain 255
//! octets, path 256 octets including the angle brackets. Domain labels are
//! at most 63 octets. CR, LF and NUL are never accepted.
//!
//! Non-ASCII (UTF-8) local parts and U-label domains are accepted only when
//! the caller says SMTPUTF8 is in effect; otherwise they give
//! [`PathError::NonAscii`], which the command layer maps to `553 5.6.7`.
//! The local part is stored exactly as written (a quoted local part keeps its
//! quotes and escapes), and the domain keeps its case; use
//! [`Mailbox::domain_for_routing`] for a lower-cased lookup key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// Maximum octets in a local part (RFC 5321 section 4.5.3.1.1).
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// Maximum octets in a domain (RFC 5321 section 4.5.3.1.2).
pub const MAX_DOMAIN_LEN: usize = 255;
/// Maximum octets in a path, including `<` and `>` (RFC 5321 section 4.5.3.1.3).
pub const MAX_PATH_LEN: usize = 256;
/// Maximum octets in one domain label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a path or mailbox was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The path is not enclosed in `<` and `>`.
    #[error("path must be enclosed in angle brackets")]
    MissingBrackets,
    /// CR, LF or NUL appeared.
    #[error("control character in address")]
    ControlChar,
    /// Non-ASCII characters without SMTPUTF8.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    /// The whole path is over 256 octets.
    #[error("path longer than 256 octets")]
    PathTooLong,
    /// The local part is over 64 octets.
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    /// The domain is over 255 octets.
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    /// No `@` between the local part and the domain.
    #[error("missing @domain")]
    MissingDomain,
    /// The local part is not a valid dot-string or quoted-string.
    #[error("bad local part: {0}")]
    BadLocalPart(&'static str),
    /// The domain is not a valid domain name.
    #[error("bad domain: {0}")]
    BadDomain(&'static str),
    /// An address literal (`[...]`) that is not a valid IPv4 or `IPv6:` address.
    #[error("bad or unsupported address literal")]
    BadAddressLiteral,
    /// A malformed source route (`@a,@b:`).
    #[error("bad source route")]
    BadSourceRoute,
    /// `<>` where a mailbox is required (forward paths).
    #[error("null path not allowed here")]
    NullNotAllowed,
}

/// The domain of a mailbox: a name or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Domain {
    /// A domain name as written (case kept). May contain U-labels when it
    /// was parsed with SMTPUTF8.
    Name(String),
    /// An address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    Literal(IpAddr),
}

impl Domain {
    /// Parses a domain name or address literal.
    pub fn parse(s: &str, smtputf8: bool) -> Result<Domain, PathError> {
        check_chars(s, smtputf8)?;
        parse_domain(s)
    }

    /// True if the domain is all ASCII (address literals always are).
    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(n) => n.is_ascii(),
            Domain::Literal(_) => true,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(IpAddr::V4(a)) => write!(f, "[{a}]"),
            Domain::Literal(IpAddr::V6(a)) => write!(f, "[IPv6:{a}]"),
        }
    }
}

impl FromStr for Domain {
    type Err = PathError;
    /// Parses a domain, allowing U-labels.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse(s, true)
    }
}

/// A mailbox, `local-part@domain`.
///
/// With the `serde` feature it serializes as its string form and
/// deserializes by parsing it (UTF-8 allowed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(into = "String", try_from = "String")
)]
pub struct Mailbox {
    /// The local part as written, including quotes if it was quoted.
    pub local_part: String,
    /// The domain.
    pub domain: Domain,
}

impl Mailbox {
    /// Parses a bare mailbox (no angle brackets).
    pub fn parse(s: &str, smtputf8: bool) -> Result<Mailbox, PathError> {
        parse_mailbox(s, smtputf8)
    }

    /// True if both the local part and the domain are ASCII, i.e. the
    /// mailbox can be sent without SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }

    /// The key to route on: the domain name lower-cased, or for an address
    /// literal its bracketed text (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
    pub fn domain_for_routing(&self) -> String {
        match &self.domain {
            Domain::Name(n) => n.to_lowercase(),
            lit @ Domain::Literal(_) => lit.to_string(),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

impl FromStr for Mailbox {
    type Err = PathError;
    /// Parses a bare mailbox (no angle brackets), allowing UTF-8.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_mailbox(s, true)
    }
}

impl From<Mailbox> for String {
    fn from(m: Mailbox) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for Mailbox {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The argument of `MAIL FROM`: a mailbox, or the null path `<>` used for
/// bounces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ReversePath {
    /// `<>`.
    Null,
    /// `<mailbox>`.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// The mailbox, if not null.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    /// True for `<>`.
    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }
}

impl fmt::Display for ReversePath {
    /// The wire form including brackets: `<>` or `<local@domain>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Parses a forward path (`RCPT TO` argument): `<mailbox>`, optionally with
/// a source route, which is checked for syntax and then ignored.
/// `<>` is rejected with [`PathError::NullNotAllowed`].
pub fn parse_forward_path(s: &str, smtputf8: bool) -> Result<Mailbox, PathError> {
    match parse_path(s, smtputf8)? {
        ReversePath::Mailbox(m) => Ok(m),
        ReversePath::Null => Err(PathError::NullNotAllowed),
    }
}

/// Parses a reverse path (`MAIL FROM` argument): like
/// [`parse_forward_path`] but also accepts `<>`.
pub fn parse_reverse_path(s: &str, smtputf8: bool) -> Result<ReversePath, PathError> {
    parse_path(s, smtputf8)
}

fn parse_path(s: &str, smtputf8: bool) -> Result<ReversePath, PathError> {
    check_chars(s, smtputf8)?;
    let inner = s
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(PathError::MissingBrackets)?;
    if s.len() > MAX_PATH_LEN {
        return Err(PathError::PathTooLong);
    }
    if inner.is_empty() {
        return Ok(ReversePath::Null);
    }
    let mailbox = if inner.starts_with('@') {
        // Source route: "@a,@b:" then the mailbox. Route domains cannot
        // contain ':' except inside an IPv6 literal, so find the ':' that is
        // not inside brackets.
        let mut depth = 0u32;
        let mut colon = None;
        for (i, b) in inner.bytes().enumerate() {
            match b {
                b'[' => depth += 1,
                b']' => depth = depth.saturating_sub(1),
                b':' if depth == 0 => {
                    colon = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let colon = colon.ok_or(PathError::BadSourceRoute)?;
        for hop in inner[..colon].split(',') {
            let d = hop.strip_prefix('@').ok_or(PathError::BadSourceRoute)?;
            parse_domain(d).map_err(|_| PathError::BadSourceRoute)?;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    parse_mailbox_checked(mailbox).map(ReversePath::Mailbox)
}

/// Parses a bare mailbox (`local@domain`, no brackets). UTF-8 is allowed
/// only when `smtputf8` is true.
pub fn parse_mailbox(s: &str, smtputf8: bool) -> Result<Mailbox, PathError> {
    check_chars(s, smtputf8)?;
    parse_mailbox_checked(s)
}

fn check_chars(s: &str, smtputf8: bool) -> Result<(), PathError> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(PathError::ControlChar);
    }
    if !smtputf8 && !s.is_ascii() {
        return Err(PathError::NonAscii);
    }
    Ok(())
}

/// Parses a mailbox whose characters were already checked.
fn parse_mailbox_checked(s: &str) -> Result<Mailbox, PathError> {
    let local_len = local_part_len(s)?;
    let local = &s[..local_len];
    let domain = s[local_len..].strip_prefix('@').ok_or(PathError::MissingDomain)?;
    if local.len() > MAX_LOCAL_PART_LEN {
        return Err(PathError::LocalPartTooLong);
    }
    let domain = parse_domain(domain)?;
    Ok(Mailbox {
        local_part: local.to_owned(),
        domain,
    })
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Returns the length in bytes of the local part at the start of `s`
/// (up to but excluding the `@`), validating it.
fn local_part_len(s: &str) -> Result<usize, PathError> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            if escaped {
                // quoted-pairSMTP = %d92 %d32-126
                if !(' '..='~').contains(&c) {
                    return Err(PathError::BadLocalPart("bad quoted pair"));
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                return Ok(i + 2);
            } else if !(c == ' ' || c == '!' || ('#'..='~').contains(&c) || !c.is_ascii()) {
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126 / UTF8-non-ascii
                return Err(PathError::BadLocalPart("bad character in quoted string"));
            }
        }
        Err(PathError::BadLocalPart("unterminated quoted string"))
    } else {
        let end = s.find('@').unwrap_or(s.len());
        let local = &s[..end];
        if local.is_empty() {
            return Err(PathError::BadLocalPart("empty local part"));
        }
        for atom in local.split('.') {
            if atom.is_empty() {
                return Err(PathError::BadLocalPart("empty atom"));
            }
            if !atom.chars().all(is_atext) {
                return Err(PathError::BadLocalPart("bad character"));
            }
        }
        Ok(end)
    }
}

fn parse_domain(d: &str) -> Result<Domain, PathError> {
    if d.is_empty() {
        return Err(PathError::BadDomain("empty domain"));
    }
    if d.len() > MAX_DOMAIN_LEN {
        return Err(PathError::DomainTooLong);
    }
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit.strip_suffix(']').ok_or(PathError::BadAddressLiteral)?;
        return parse_address_literal(lit).map(Domain::Literal);
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(PathError::BadDomain("empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(PathError::BadDomain("label longer than 63 octets"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(PathError::BadDomain("label starts or ends with a hyphen"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        {
            return Err(PathError::BadDomain("bad character"));
        }
    }
    Ok(Domain::Name(d.to_owned()))
}

fn parse_address_literal(lit: &str) -> Result<IpAddr, PathError> {
    if lit.len() >= 5 && lit.as_bytes()[..5].eq_ignore_ascii_case(b"IPv6:") {
        return lit[5..]
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| PathError::BadAddressLiteral);
    }
    // General-address-literals (tag ":" content) and anything else that is
    // not a dotted quad are rejected: we could not deliver to them.
    lit.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| PathError::BadAddressLiteral)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        parse_mailbox(s, false).unwrap()
    }

    #[test]
    fn simple_mailbox_displays_as_written() {
        assert_eq!(mb("User.Name@Example.TEST").to_string(), "User.Name@Example.TEST");
    }

    #[test]
    fn quoted_local_part_keeps_quotes_and_escapes() {
        let m = mb(r#""a\"b c"@example.test"#);
        assert_eq!(m.local_part, r#""a\"b c""#);
        assert_eq!(m.to_string(), r#""a\"b c"@example.test"#);
    }

    #[test]
    fn quoted_local_part_may_contain_at_sign() {
        let m = mb(r#""a@b"@example.test"#);
        assert_eq!(m.local_part, r#""a@b""#);
        assert_eq!(m.domain, Domain::Name("example.test".into()));
    }

    #[test]
    fn unterminated_quoted_local_part_is_rejected() {
        assert!(parse_mailbox(r#""abc@example.test"#, false).is_err());
    }

    #[test]
    fn dot_string_rejects_leading_trailing_and_double_dots() {
        for s in [".a@x.test", "a.@x.test", "a..b@x.test"] {
            assert_eq!(
                parse_mailbox(s, false),
                Err(PathError::BadLocalPart("empty atom")),
                "{s}"
            );
        }
    }

    #[test]
    fn ipv4_literal_displays_in_brackets() {
        let m = mb("u@[192.0.2.1]");
        assert_eq!(m.domain, Domain::Literal("192.0.2.1".parse().unwrap()));
        assert_eq!(m.to_string(), "u@[192.0.2.1]");
        assert_eq!(m.domain_for_routing(), "[192.0.2.1]");
    }

    #[test]
    fn ipv6_tag_is_case_insensitive_and_normalised_on_display() {
        let m = mb("u@[ipv6:2001:DB8:0::1]");
        assert_eq!(m.to_string(), "u@[IPv6:2001:db8::1]");
    }

    #[test]
    fn general_address_literal_is_rejected() {
        assert_eq!(
            parse_mailbox("u@[x-tag:stuff]", false),
            Err(PathError::BadAddressLiteral)
        );
        assert_eq!(
            parse_mailbox("u@[300.1.1.1]", false),
            Err(PathError::BadAddressLiteral)
        );
    }

    #[test]
    fn domain_for_routing_lowercases_names() {
        assert_eq!(mb("A@Example.TEST").domain_for_routing(), "example.test");
    }

    #[test]
    fn label_longer_than_63_octets_is_rejected() {
        let s = format!("u@{}.test", "a".repeat(64));
        assert!(matches!(parse_mailbox(&s, false), Err(PathError::BadDomain(_))));
    }

    #[test]
    fn trailing_dot_in_domain_is_rejected() {
        assert!(parse_mailbox("u@example.test.", false).is_err());
    }

    #[test]
    fn trailing_hyphen_in_label_is_rejected() {
        assert!(parse_mailbox("u@example-.test", false).is_err());
    }

    #[test]
    fn utf8_mailbox_needs_smtputf8() {
        assert_eq!(parse_mailbox("用户@例子.测试", false), Err(PathError::NonAscii));
        let m = parse_mailbox("用户@例子.测试", true).unwrap();
        assert!(!m.is_ascii());
        assert!(mb("a@b.test").is_ascii());
    }

    #[test]
    fn from_str_allows_utf8() {
        let m: Mailbox = "ü@例子.测试".parse().unwrap();
        assert_eq!(m.local_part, "ü");
    }

    #[test]
    fn null_reverse_path_is_accepted_but_not_as_forward_path() {
        assert_eq!(parse_reverse_path("<>", false), Ok(ReversePath::Null));
        assert_eq!(parse_forward_path("<>", false), Err(PathError::NullNotAllowed));
    }

    #[test]
    fn source_route_is_ignored() {
        let m = parse_forward_path("<@a.test,@[192.0.2.1]:u@b.test>", false).unwrap();
        assert_eq!(m.to_string(), "u@b.test");
    }

    #[test]
    fn malformed_source_route_is_rejected() {
        assert_eq!(
            parse_forward_path("<@a.test,b.test:u@b.test>", false),
            Err(PathError::BadSourceRoute)
        );
        assert_eq!(
            parse_forward_path("<@a..test:u@b.test>", false),
            Err(PathError::BadSourceRoute)
        );
    }

    #[test]
    fn path_over_256_octets_is_rejected() {
        let local = "a".repeat(64);
        let label = "b".repeat(63);
        let path = format!("<{local}@{label}.{label}.{label}.{}>", "c".repeat(61));
        assert!(path.len() > MAX_PATH_LEN);
        assert_eq!(parse_forward_path(&path, false), Err(PathError::PathTooLong));
    }

    #[test]
    fn nul_in_path_is_rejected() {
        assert_eq!(
            parse_forward_path("<a\0b@example.test>", false),
            Err(PathError::ControlChar)
        );
    }

    #[test]
    fn reverse_path_displays_with_brackets() {
        assert_eq!(ReversePath::Null.to_string(), "<>");
        let p = parse_reverse_path("<a@b.test>", false).unwrap();
        assert_eq!(p.to_string(), "<a@b.test>");
        assert_eq!(p.mailbox().map(ToString::to_string).as_deref(), Some("a@b.test"));
    }
}
