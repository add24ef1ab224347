//! SMTP replies (RFC 5321 section 4.2) with enhanced status codes
//! (RFC 3463, RFC 2034): building them on the server side and parsing them
//! incrementally on the client side.
//!
//! Wire form: every line is `ddd` followed by `-` (more lines follow) or a
//! space (last line) and the text; a last line may also be the bare code.
//! When a reply carries an enhanced code it is written at the start of the
//! text of every line (RFC 2034 section 3).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463).
///
/// With the `serde` feature it serializes as its string form, e.g. `"5.1.1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(into = "String", try_from = "String")
)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject, 0..=999.
    pub subject: u16,
    /// The detail, 0..=999.
    pub detail: u16,
}

/// A string that is not a valid enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid enhanced status code")]
pub struct EnhancedCodeError;

impl EnhancedCode {
    /// Builds a code. Not validated; see [`EnhancedCode::is_valid`].
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// True if the class is 2, 4 or 5 and subject and detail are at most
    /// three digits.
    pub fn is_valid(&self) -> bool {
        matches!(self.class, 2 | 4 | 5) && self.subject <= 999 && self.detail <= 999
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Parses `1*3DIGIT` into a number.
fn parse_1_3_digits(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 3 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

fn parse_enhanced(s: &[u8]) -> Option<EnhancedCode> {
    let mut parts = s.splitn(3, |&b| b == b'.');
    let class = parts.next()?;
    let subject = parse_1_3_digits(parts.next()?)?;
    let detail = parse_1_3_digits(parts.next()?)?;
    let class = match class {
        b"2" => 2,
        b"4" => 4,
        b"5" => 5,
        _ => return None,
    };
    Some(EnhancedCode::new(class, subject, detail))
}

impl FromStr for EnhancedCode {
    type Err = EnhancedCodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_enhanced(s.as_bytes()).ok_or(EnhancedCodeError)
    }
}

impl From<EnhancedCode> for String {
    fn from(c: EnhancedCode) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for EnhancedCode {
    type Error = EnhancedCodeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Things [`Reply::new`] accepts as the enhanced code: an [`EnhancedCode`],
/// an `Option<EnhancedCode>`, or a `&str` such as `"5.1.1"` (an empty or
/// invalid string means no enhanced code; invalid strings also trip a
/// debug assertion).
pub trait IntoEnhancedCode {
    /// Converts to an optional enhanced code.
    fn into_enhanced_code(self) -> Option<EnhancedCode>;
}

impl IntoEnhancedCode for EnhancedCode {
    fn into_enhanced_code(self) -> Option<EnhancedCode> {
        Some(self)
    }
}

impl IntoEnhancedCode for Option<EnhancedCode> {
    fn into_enhanced_code(self) -> Option<EnhancedCode> {
        self
    }
}

impl IntoEnhancedCode for &str {
    fn into_enhanced_code(self) -> Option<EnhancedCode> {
        if self.is_empty() {
            return None;
        }
        let c = self.parse().ok();
        debug_assert!(c.is_some(), "invalid enhanced code {self:?}");
        c
    }
}

/// The class of a reply, from its first digit (RFC 5321 4.2.1).
///
/// This is tern's one reply classification: the server side, the delivery client and its retry decisions
/// all start from it (`tern-core` re-exports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ReplyClass {
    /// 2yz.
    PositiveCompletion,
    /// 3yz.
    PositiveIntermediate,
    /// 4yz.
    TransientNegative,
    /// 5yz (and, from [`Reply::class`], defensively any code outside 200..=599).
    PermanentNegative,
}

impl ReplyClass {
    /// The class of a reply code, from its first digit; `None` for a code outside 200..=599, which is no
    /// SMTP reply (1yz is never used by SMTP, and nothing starts with 0 or 6..9).
    pub const fn from_code(code: u16) -> Option<ReplyClass> {
        match code {
            200..=299 => Some(ReplyClass::PositiveCompletion),
            300..=399 => Some(ReplyClass::PositiveIntermediate),
            400..=499 => Some(ReplyClass::TransientNegative),
            500..=599 => Some(ReplyClass::PermanentNegative),
            _ => None,
        }
    }
}

/// An SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, written on every line.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, without code, separator or enhanced code.
    /// An empty vector is sent like a single empty line.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply. `enhanced` may be an [`EnhancedCode`], `None`, or a
    /// string like `"5.1.1"` (see [`IntoEnhancedCode`]).
    pub fn new(code: u16, enhanced: impl IntoEnhancedCode, text: impl Into<String>) -> Reply {
        debug_assert!((200..=599).contains(&code), "reply code {code}");
        Reply {
            code,
            enhanced: enhanced.into_enhanced_code(),
            lines: vec![text.into()],
        }
    }

    /// Builder: appends a line, making the reply multiline.
    #[must_use]
    pub fn line(mut self, text: impl Into<String>) -> Reply {
        self.lines.push(text.into());
        self
    }

    /// Appends a line in place.
    pub fn push_line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    /// The class from the first digit of the code ([`ReplyClass::from_code`]); a code outside 200..=599
    /// counts as [`ReplyClass::PermanentNegative`].
    pub fn class(&self) -> ReplyClass {
        match ReplyClass::from_code(self.code) {
            Some(class) => class,
            None => ReplyClass::PermanentNegative,
        }
    }

    /// True for 2yz.
    pub fn is_positive(&self) -> bool {
        self.class() == ReplyClass::PositiveCompletion
    }

    /// True for 3yz.
    pub fn is_intermediate(&self) -> bool {
        self.class() == ReplyClass::PositiveIntermediate
    }

    /// True for 4yz.
    pub fn is_transient(&self) -> bool {
        self.class() == ReplyClass::TransientNegative
    }

    /// True for 5yz.
    pub fn is_permanent(&self) -> bool {
        self.class() == ReplyClass::PermanentNegative
    }

    /// All lines' text joined with single spaces (no code, no enhanced code).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Appends the wire form to `out`. CR, LF and NUL in the text are
    /// replaced by spaces so a reply can never inject extra lines.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        let code = self.code.to_string();
        let enhanced = self.enhanced.map(|e| e.to_string());
        for (i, text) in lines.iter().enumerate() {
            out.extend_from_slice(code.as_bytes());
            let last = i + 1 == lines.len();
            let sep = if last { b' ' } else { b'-' };
            match &enhanced {
                Some(e) => {
                    out.push(sep);
                    out.extend_from_slice(e.as_bytes());
                    if !text.is_empty() {
                        out.push(b' ');
                    }
                }
                None if text.is_empty() && last => {}
                None => out.push(sep),
            }
            out.extend(
                text.bytes()
                    .map(|b| if matches!(b, b'\r' | b'\n' | 0) { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form: `"250-first\r\n250 last\r\n"`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.lines.iter().map(|l| l.len() + 16).sum::<usize>());
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    /// One line: `550 5.1.1 text`, lines joined with spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// Why the [`ReplyParser`] rejected input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// A line that does not start with a valid three-digit code followed by
    /// a space, a hyphen or the end of the line.
    #[error("malformed reply line")]
    Syntax,
    /// A continuation line carried a different code from the first line.
    #[error("reply code changed within a multiline reply: {expected} then {found}")]
    MismatchedCode {
        /// The code of the first line.
        expected: u16,
        /// The code of the offending line.
        found: u16,
    },
    /// A line longer than the parser's line limit.
    #[error("reply line too long")]
    LineTooLong,
    /// A multiline reply longer in total than the parser's reply limit.
    #[error("reply too long")]
    ReplyTooLong,
}

/// Default maximum octets of one reply line (excluding the LF).
pub const DEFAULT_MAX_REPLY_LINE: usize = 4096;
/// Default maximum octets of one whole (multiline) reply.
pub const DEFAULT_MAX_REPLY: usize = 64 * 1024;

/// Incremental client-side reply parser.
///
/// Push bytes as they arrive, then call [`ReplyParser::next_reply`] until it
/// returns `None`. Results do not depend on how the input was split.
///
/// * Lines end at LF; a CR before it is removed (a bare LF is tolerated on
///   the client side).
/// * Enhanced codes are recognised only when their class digit equals the
///   reply's first digit (RFC 3463: a `250 5.0.0` text is just text). They
///   are taken from the first line; on later lines a leading enhanced code is
///   stripped only if the first line had one.
/// * A line over the line limit (default [`DEFAULT_MAX_REPLY_LINE`]) is an
///   error ([`ReplyError::LineTooLong`]), reported once as soon as the limit
///   is passed; the rest of that line is discarded without buffering it. A
///   reply whose lines add up to more than the reply limit (default
///   [`DEFAULT_MAX_REPLY`]) gives [`ReplyError::ReplyTooLong`]. Memory is
///   therefore bounded by the limits plus whatever one `push` hands over.
/// * After any error the partial reply is dropped and parsing resumes at
///   the next line. A client will normally close the connection instead.
#[derive(Debug, Clone)]
pub struct ReplyParser {
    buf: Vec<u8>,
    start: usize,
    scan: usize,
    discarding: bool,
    pending: Option<Reply>,
    pending_len: usize,
    max_line: usize,
    max_reply: usize,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser::new()
    }
}

impl ReplyParser {
    /// A parser with the default limits.
    pub fn new() -> Self {
        ReplyParser::with_limits(DEFAULT_MAX_REPLY_LINE, DEFAULT_MAX_REPLY)
    }

    /// A parser with the given line and whole-reply limits in octets.
    pub fn with_limits(max_line: usize, max_reply: usize) -> Self {
        ReplyParser {
            buf: Vec::new(),
            start: 0,
            scan: 0,
            discarding: false,
            pending: None,
            pending_len: 0,
            max_line,
            max_reply,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// True if bytes of an incomplete reply are buffered.
    pub fn has_partial(&self) -> bool {
        self.pending.is_some() || self.start < self.buf.len()
    }

    /// Bytes received but not yet consumed by a complete reply line.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn fail(&mut self, e: ReplyError) -> Option<Result<Reply, ReplyError>> {
        self.pending = None;
        self.pending_len = 0;
        Some(Err(e))
    }

    /// Returns the next complete reply, an error, or `None` if more input
    /// is needed.
    pub fn next_reply(&mut self) -> Option<Result<Reply, ReplyError>> {
        loop {
            let Some(off) = memchr::memchr(b'\n', &self.buf[self.scan..]) else {
                if self.discarding {
                    self.buf.truncate(self.start);
                    self.scan = self.start;
                    return None;
                }
                if self.buf.len() - self.start > self.max_line {
                    self.discarding = true;
                    self.buf.truncate(self.start);
                    self.scan = self.start;
                    return self.fail(ReplyError::LineTooLong);
                }
                self.scan = self.buf.len();
                return None;
            };
            let lf = self.scan + off;
            let line_start = self.start;
            self.start = lf + 1;
            self.scan = self.start;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            if lf - line_start > self.max_line {
                return self.fail(ReplyError::LineTooLong);
            }
            let mut line = &self.buf[line_start..lf];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let (code, more, text) = match parse_line(line) {
                Some(p) => p,
                None => return self.fail(ReplyError::Syntax),
            };
            self.pending_len += line.len();
            if self.pending_len > self.max_reply {
                return self.fail(ReplyError::ReplyTooLong);
            }
            let class = (code / 100) as u8;
            let text_enh = split_enhanced(class, text);
            match &mut self.pending {
                None => {
                    let (enhanced, text) = match text_enh {
                        Some((e, t)) => (Some(e), t),
                        None => (None, text),
                    };
                    self.pending = Some(Reply {
                        code,
                        enhanced,
                        lines: vec![String::from_utf8_lossy(text).into_owned()],
                    });
                }
                Some(r) => {
                    if r.code != code {
                        let expected = r.code;
                        return self.fail(ReplyError::MismatchedCode {
                            expected,
                            found: code,
                        });
                    }
                    let text = match (r.enhanced, text_enh) {
                        (Some(_), Some((_, t))) => t,
                        _ => text,
                    };
                    r.lines.push(String::from_utf8_lossy(text).into_owned());
                }
            }
            if !more {
                self.pending_len = 0;
                return self.pending.take().map(Ok);
            }
        }
    }
}

/// Splits a reply line into (code, more-lines-follow, text).
fn parse_line(line: &[u8]) -> Option<(u16, bool, &[u8])> {
    let (digits, rest) = line.split_at_checked(3)?;
    let [a, b, c] = [digits[0], digits[1], digits[2]];
    if !(b'2'..=b'5').contains(&a) || !(b'0'..=b'5').contains(&b) || !c.is_ascii_digit() {
        return None;
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    match rest.split_first() {
        None => Some((code, false, rest)),
        Some((b' ', text)) => Some((code, false, text)),
        Some((b'-', text)) => Some((code, true, text)),
        Some(_) => None,
    }
}

/// If `text` starts with an enhanced code of the given class followed by a
/// space or the end, returns it and the remaining text.
fn split_enhanced(class: u8, text: &[u8]) -> Option<(EnhancedCode, &[u8])> {
    if text.first() != Some(&(b'0' + class)) {
        return None;
    }
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let code = parse_enhanced(&text[..end])?;
    let rest = text.get(end + 1..).unwrap_or(&[]);
    Some((code, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<Result<Reply, ReplyError>> {
        let mut p = ReplyParser::new();
        p.push(bytes);
        std::iter::from_fn(|| p.next_reply()).collect()
    }

    #[test]
    fn enhanced_code_displays_and_parses() {
        let c: EnhancedCode = "5.1.1".parse().unwrap();
        assert_eq!(c, EnhancedCode::new(5, 1, 1));
        assert_eq!(c.to_string(), "5.1.1");
        assert_eq!("4.7.123".parse::<EnhancedCode>().unwrap().detail, 123);
    }

    #[test]
    fn enhanced_code_rejects_bad_class_and_long_fields() {
        for s in ["3.1.1", "5.1", "5.1.1.1", "5.1234.1", "5..1", "x.1.1", ""] {
            assert!(s.parse::<EnhancedCode>().is_err(), "{s}");
        }
    }

    #[test]
    fn single_line_reply_with_enhanced_code_serialises() {
        let r = Reply::new(550, "5.1.1", "no such user");
        assert_eq!(r.to_bytes(), b"550 5.1.1 no such user\r\n");
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
    }

    #[test]
    fn multiline_reply_repeats_enhanced_code_on_every_line() {
        let r = Reply::new(250, EnhancedCode::new(2, 0, 0), "first").line("second");
        assert_eq!(r.to_bytes(), b"250-2.0.0 first\r\n250 2.0.0 second\r\n");
        assert_eq!(r.text(), "first second");
    }

    #[test]
    fn reply_without_enhanced_code_or_text_is_bare_code() {
        let r = Reply::new(250, None, "");
        assert_eq!(r.to_bytes(), b"250\r\n");
        assert_eq!(r.to_string(), "250");
    }

    #[test]
    fn reply_text_cannot_inject_lines() {
        let r = Reply::new(250, None, "a\r\n250 b");
        assert_eq!(r.to_bytes(), b"250 a  250 b\r\n");
    }

    #[test]
    fn class_follows_first_digit() {
        assert_eq!(Reply::new(250, None, "").class(), ReplyClass::PositiveCompletion);
        assert_eq!(
            Reply::new(354, None, "").class(),
            ReplyClass::PositiveIntermediate
        );
        assert!(Reply::new(451, None, "").is_transient());
        assert!(Reply::new(554, None, "").is_permanent());
    }

    #[test]
    fn class_from_code_covers_2yz_to_5yz_only() {
        assert_eq!(ReplyClass::from_code(200), Some(ReplyClass::PositiveCompletion));
        assert_eq!(ReplyClass::from_code(251), Some(ReplyClass::PositiveCompletion));
        assert_eq!(ReplyClass::from_code(354), Some(ReplyClass::PositiveIntermediate));
        assert_eq!(ReplyClass::from_code(421), Some(ReplyClass::TransientNegative));
        assert_eq!(ReplyClass::from_code(599), Some(ReplyClass::PermanentNegative));
        for odd in [0, 100, 199, 600, 999] {
            assert_eq!(ReplyClass::from_code(odd), None, "{odd}");
        }
        let odd = Reply {
            code: 999,
            enhanced: None,
            lines: Vec::new(),
        };
        assert_eq!(odd.class(), ReplyClass::PermanentNegative);
    }

    #[test]
    fn parser_reads_multiline_reply_with_bare_last_line() {
        let got = parse_all(b"250-mx.example.test\r\n250-PIPELINING\r\n250\r\n");
        assert_eq!(
            got,
            vec![Ok(Reply {
                code: 250,
                enhanced: None,
                lines: vec!["mx.example.test".into(), "PIPELINING".into(), String::new()],
            })]
        );
    }

    #[test]
    fn parser_strips_enhanced_code_from_every_line() {
        let got = parse_all(b"550-5.1.1 no such\r\n550 5.1.1 user\r\n");
        assert_eq!(got, vec![Ok(Reply::new(550, "5.1.1", "no such").line("user"))]);
    }

    #[test]
    fn parser_ignores_enhanced_code_of_wrong_class() {
        let got = parse_all(b"250 5.0.0 looks like a code\r\n");
        assert_eq!(got, vec![Ok(Reply::new(250, None, "5.0.0 looks like a code"))]);
    }

    #[test]
    fn parser_rejects_mismatched_codes() {
        let got = parse_all(b"250-a\r\n251 b\r\n220 ok\r\n");
        assert_eq!(
            got,
            vec![
                Err(ReplyError::MismatchedCode {
                    expected: 250,
                    found: 251
                }),
                Ok(Reply::new(220, None, "ok")),
            ]
        );
    }

    #[test]
    fn parser_rejects_garbage_lines() {
        for g in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"250x\r\n",
            b"199 x\r\n",
            b"260 x\r\n",
        ] {
            assert_eq!(parse_all(g), vec![Err(ReplyError::Syntax)], "{g:?}");
        }
    }

    #[test]
    fn parser_tolerates_bare_lf() {
        assert_eq!(parse_all(b"250 ok\n"), vec![Ok(Reply::new(250, None, "ok"))]);
    }

    #[test]
    fn parser_reports_overlong_line_once_and_recovers() {
        let mut p = ReplyParser::with_limits(10, 100);
        p.push(b"250 aaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(p.next_reply(), Some(Err(ReplyError::LineTooLong)));
        assert_eq!(p.next_reply(), None);
        p.push(b"aaaaaaaaaaaaaaaaa");
        assert_eq!(p.next_reply(), None);
        assert!(p.buffered().is_empty());
        p.push(b"aaa\r\n250 ok\r\n");
        assert_eq!(p.next_reply(), Some(Ok(Reply::new(250, None, "ok"))));
    }

    #[test]
    fn parser_limits_total_reply_size() {
        let mut p = ReplyParser::with_limits(100, 30);
        p.push(b"250-aaaaaaaaaa\r\n250-aaaaaaaaaa\r\n250-aaaaaaaaaa\r\n");
        assert_eq!(p.next_reply(), Some(Err(ReplyError::ReplyTooLong)));
    }

    #[test]
    fn parser_needs_more_for_partial_line() {
        let mut p = ReplyParser::new();
        p.push(b"250-a\r\n250 b");
        assert_eq!(p.next_reply(), None);
        assert!(p.has_partial());
        p.push(b"\r\n");
        assert_eq!(p.next_reply(), Some(Ok(Reply::new(250, None, "a").line("b"))));
        assert!(!p.has_partial());
    }

    #[test]
    fn enhanced_code_with_empty_text_round_trips() {
        let r = Reply::new(250, "2.0.0", "");
        assert_eq!(r.to_bytes(), b"250 2.0.0\r\n");
        assert_eq!(parse_all(&r.to_bytes()), vec![Ok(r)]);
    }
}
