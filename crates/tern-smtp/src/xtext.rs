//! `xtext` encoding from RFC 3461 section 4, used by the DSN `ENVID` and
//! `ORCPT` parameters and by the `AUTH=` parameter of `MAIL` (RFC 4954).
//!
//! ```text
//! xtext   = *( xchar / hexchar )
//! xchar   = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
//!           except for "+" and "="
//! hexchar = ASCII "+" immediately followed by two upper case
//!           hexadecimal digits
//! ```
//!
//! Encoding always produces upper-case hex digits. Decoding also accepts
//! lower-case hex digits (being liberal in what we accept), but rejects
//! everything else that is not valid xtext, and requires the decoded octets
//! to be UTF-8 because the values are carried as [`String`]s.

use thiserror::Error;

/// Why an `xtext` string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XtextError {
    /// A character outside `!`..`~`, or a bare `=`, appeared in the input.
    #[error("invalid character {0:?} in xtext")]
    InvalidChar(char),
    /// A `+` was not followed by two hexadecimal digits.
    #[error("malformed hexchar escape in xtext")]
    BadEscape,
    /// The decoded octets are not valid UTF-8.
    #[error("xtext does not decode to UTF-8")]
    InvalidUtf8,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_xchar(b: u8) -> bool {
    (33..=126).contains(&b) && b != b'+' && b != b'='
}

/// Encodes `s` as xtext: every octet that is not an `xchar` becomes `+XX`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_xchar(b) {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes an xtext string. See the module docs for what is accepted.
pub fn xtext_decode(s: &str) -> Result<String, XtextError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                _ => return Err(XtextError::BadEscape),
            }
            i += 3;
        } else if is_xchar(b) {
            out.push(b);
            i += 1;
        } else {
            let c = s[i..].chars().next().unwrap_or('\u{fffd}');
            return Err(XtextError::InvalidChar(c));
        }
    }
    String::from_utf8(out).map_err(|_| XtextError::InvalidUtf8)
}

/// Returns true if `s` is syntactically valid xtext (without decoding it).
pub fn is_valid_xtext(s: &str) -> bool {
    xtext_decode(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_equals_space_and_controls_are_hex_escaped() {
        assert_eq!(xtext_encode("a+b=c d\r"), "a+2Bb+3Dc+20d+0D");
    }

    #[test]
    fn printable_ascii_is_left_alone() {
        assert_eq!(xtext_encode("user@example.test"), "user@example.test");
    }

    #[test]
    fn utf8_is_escaped_octet_by_octet_and_decodes_back() {
        let enc = xtext_encode("é");
        assert_eq!(enc, "+C3+A9");
        assert_eq!(xtext_decode(&enc).unwrap(), "é");
    }

    #[test]
    fn decode_accepts_lowercase_hex() {
        assert_eq!(xtext_decode("a+2bb").unwrap(), "a+b");
    }

    #[test]
    fn decode_rejects_truncated_escape() {
        assert_eq!(xtext_decode("abc+4"), Err(XtextError::BadEscape));
        assert_eq!(xtext_decode("abc+"), Err(XtextError::BadEscape));
        assert_eq!(xtext_decode("+ZZ"), Err(XtextError::BadEscape));
    }

    #[test]
    fn decode_rejects_bare_equals_space_and_non_ascii() {
        assert_eq!(xtext_decode("a=b"), Err(XtextError::InvalidChar('=')));
        assert_eq!(xtext_decode("a b"), Err(XtextError::InvalidChar(' ')));
        assert_eq!(xtext_decode("aé"), Err(XtextError::InvalidChar('é')));
    }

    #[test]
    fn decode_rejects_escapes_that_are_not_utf8() {
        assert_eq!(xtext_decode("+FF"), Err(XtextError::InvalidUtf8));
    }
}
