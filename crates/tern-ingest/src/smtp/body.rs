//! Line checks of message content received with BDAT (RFC 3030), which, unlike DATA, is not framed by lines.
//!
//! DATA content is checked by [`tern_smtp::DataDecoder`]. BDAT chunks are raw octets, so the same rules (no
//! bare CR, no bare LF, no NUL, no line over 998 octets) are applied here, across chunk boundaries. Messages
//! declared `BODY=BINARYMIME` are exempt: binary content may hold any octet.

use tern_smtp::Violations;
use tern_smtp::data::MAX_TEXT_LINE;

/// Incremental line checker. Feed every chunk, then call [`LineChecker::finish`].
#[derive(Debug, Clone, Default)]
pub struct LineChecker {
    violations: Violations,
    line_len: usize,
    prev_cr: bool,
}

impl LineChecker {
    /// A checker at the start of a message.
    pub fn new() -> Self {
        LineChecker::default()
    }

    /// Checks the next octets of the message.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.prev_cr {
                self.prev_cr = false;
                if b == b'\n' {
                    self.line_len = 0;
                    continue;
                }
                self.violations.bare_cr = true;
                self.add_len(1);
            }
            match b {
                b'\r' => self.prev_cr = true,
                b'\n' => {
                    self.violations.bare_lf = true;
                    self.line_len = 0;
                }
                0 => {
                    self.violations.nul = true;
                    self.add_len(1);
                }
                _ => self.add_len(1),
            }
        }
    }

    fn add_len(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_TEXT_LINE {
            self.violations.long_line = true;
        }
    }

    /// The violations of the whole message (a CR as the very last octet is a bare CR).
    pub fn finish(&self) -> Violations {
        let mut v = self.violations;
        if self.prev_cr {
            v.bare_cr = true;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(chunks: &[&[u8]]) -> Violations {
        let mut c = LineChecker::new();
        for ch in chunks {
            c.feed(ch);
        }
        c.finish()
    }

    #[test]
    fn clean_text_has_no_violation_whatever_the_split() {
        assert!(!check(&[b"a\r", b"\nb\r\n"]).any());
        assert!(!check(&[b"", b"x\r\n"]).any());
    }

    #[test]
    fn each_violation_is_found_across_chunks() {
        assert!(check(&[b"a\r", b"b\r\n"]).bare_cr);
        assert!(check(&[b"a\r"]).bare_cr);
        assert!(check(&[b"a\n.\n"]).bare_lf);
        assert!(check(&[b"a\0\r\n"]).nul);
        assert!(!check(&[&[b'x'; 998], b"\r\n"]).long_line);
        assert!(check(&[&[b'x'; 500], &[b'x'; 499], b"\r\n"]).long_line);
    }
}
