//! Incremental decoder for the `DATA` phase (RFC 5321 section 4.1.1.4 and
//! 4.5.2), server side.
//!
//! * The end of data is recognised only as `<CRLF>.<CRLF>`. The start of the
//!   data counts as following a CRLF, so `.\r\n` as the very first bytes is
//!   an empty message. Anything else that merely looks like an end marker
//!   (`\n.\n`, `\r.\r`, `\r\n.\n`, ... — the "SMTP smuggling" family) is
//!   message content, and is recorded as a violation.
//! * Transparency: a line starting with `.` has that first `.` removed.
//! * Violations are recorded, not repaired: bare CR, bare LF and NUL octets
//!   are passed through to the output and flagged, as are lines longer than
//!   998 octets (RFC 5321 section 4.5.3.1.6). The server decides what to
//!   do (tern rejects messages with bare CR/LF/NUL after draining).
//! * Every input byte is examined exactly once; runs of ordinary bytes are
//!   found with `memchr` and copied in bulk.
//! * With [`DataDecoder::with_max_size`], output past the limit is counted
//!   but not stored, so the server can drain the message and then reply
//!   `552`.

/// Maximum octets of a text line, excluding CRLF (RFC 5321 4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 998;

/// Protocol violations seen in the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Violations {
    /// A CR not followed by LF.
    pub bare_cr: bool,
    /// An LF not preceded by CR.
    pub bare_lf: bool,
    /// A NUL octet.
    pub nul: bool,
    /// A line longer than 998 octets, excluding CRLF.
    pub long_line: bool,
}

impl Violations {
    /// True if any violation was seen.
    pub fn any(&self) -> bool {
        self.bare_cr || self.bare_lf || self.nul || self.long_line
    }
}

/// Result of [`DataDecoder::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// All input was consumed; the end of data has not been seen yet.
    NeedMore,
    /// The end of data was seen. `consumed` is the number of input bytes up
    /// to and including the terminating `CRLF.CRLF`; the remaining bytes
    /// belong to whatever follows (the next command).
    Done {
        /// Bytes of this input consumed.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start).
    LineStart,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line (or on an empty line).
    Cr,
    /// Saw the terminator.
    Done,
}

/// Incremental `DATA` decoder. See the module docs.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    violations: Violations,
    line_len: usize,
    total: u64,
    max: u64,
}

impl Default for DataDecoder {
    fn default() -> Self {
        DataDecoder::new()
    }
}

impl DataDecoder {
    /// A decoder without a size limit.
    pub fn new() -> Self {
        DataDecoder::with_max_size(u64::MAX)
    }

    /// A decoder that stores at most `max` decoded octets; the rest is
    /// counted (see [`DataDecoder::total_len`]) and dropped.
    pub fn with_max_size(max: u64) -> Self {
        DataDecoder {
            state: State::LineStart,
            violations: Violations::default(),
            line_len: 0,
            total: 0,
            max,
        }
    }

    /// Starts over for a new message, keeping the size limit.
    pub fn reset(&mut self) {
        *self = DataDecoder::with_max_size(self.max);
    }

    /// Violations seen so far.
    pub fn violations(&self) -> Violations {
        self.violations
    }

    /// True if the decoded message is larger than the size limit.
    pub fn overflowed(&self) -> bool {
        self.total > self.max
    }

    /// Decoded octets so far, including those dropped past the limit.
    pub fn total_len(&self) -> u64 {
        self.total
    }

    /// True once the terminator has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    #[inline]
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let stored = self.total.min(self.max);
        let room = self.max - stored;
        let n = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        out.extend_from_slice(&bytes[..n]);
        self.total += bytes.len() as u64;
    }

    #[inline]
    fn add_line_len(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_TEXT_LINE {
            self.violations.long_line = true;
        }
    }

    /// Decodes `input`, appending message bytes to `out`. After
    /// [`DataStatus::Done`], further calls consume nothing and return
    /// `Done { consumed: 0 }` until [`DataDecoder::reset`].
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataStatus {
        if self.state == State::Done {
            return DataStatus::Done { consumed: 0 };
        }
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Mid => {
                    // Fast path: copy the run of ordinary bytes.
                    let rest = &input[i..];
                    let Some(k) = memchr::memchr3(b'\r', b'\n', 0, rest) else {
                        self.emit(rest, out);
                        self.add_line_len(rest.len());
                        return DataStatus::NeedMore;
                    };
                    if k > 0 {
                        self.emit(&rest[..k], out);
                        self.add_line_len(k);
                    }
                    i += k;
                    self.mid_special(input[i], out);
                    i += 1;
                }
                State::LineStart => {
                    if input[i] == b'.' {
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                        self.mid_byte(input[i], out);
                    }
                    i += 1;
                }
                State::Dot => {
                    // The leading dot is removed whatever follows.
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Mid;
                        self.mid_byte(input[i], out);
                    }
                    i += 1;
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return DataStatus::Done { consumed: i + 1 };
                    }
                    self.bare_cr(out);
                    self.mid_byte(input[i], out);
                    i += 1;
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        self.emit(b"\r\n", out);
                        self.line_len = 0;
                        self.state = State::LineStart;
                    } else {
                        self.bare_cr(out);
                        self.mid_byte(input[i], out);
                    }
                    i += 1;
                }
                // `feed` returns as soon as it enters `Done`.
                State::Done => return DataStatus::Done { consumed: i },
            }
        }
        DataStatus::NeedMore
    }

    /// A CR that turned out not to start a CRLF.
    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        self.violations.bare_cr = true;
        self.emit(b"\r", out);
        self.add_line_len(1);
        self.state = State::Mid;
    }

    /// Handles one byte in the `Mid` state.
    #[inline]
    fn mid_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if matches!(b, b'\r' | b'\n' | 0) {
            self.mid_special(b, out);
        } else {
            self.emit(&[b], out);
            self.add_line_len(1);
        }
    }

    /// Handles CR, LF or NUL inside a line.
    fn mid_special(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.violations.bare_lf = true;
                self.emit(b"\n", out);
                self.add_line_len(1);
                self.state = State::Mid;
            }
            _ => {
                self.violations.nul = true;
                self.emit(&[b], out);
                self.add_line_len(1);
                self.state = State::Mid;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> (Vec<u8>, DataStatus, Violations) {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        let st = d.feed(input, &mut out);
        (out, st, d.violations())
    }

    #[test]
    fn dot_crlf_at_start_is_an_empty_message() {
        let (out, st, v) = decode(b".\r\nQUIT\r\n");
        assert!(out.is_empty());
        assert_eq!(st, DataStatus::Done { consumed: 3 });
        assert!(!v.any());
    }

    #[test]
    fn terminator_consumed_count_leaves_next_command() {
        let input = b"hello\r\n.\r\nQUIT\r\n";
        let (out, st, _) = decode(input);
        assert_eq!(out, b"hello\r\n");
        assert_eq!(st, DataStatus::Done { consumed: 10 });
    }

    #[test]
    fn dot_stuffing_is_removed() {
        let (out, _, v) = decode(b"..a\r\n...\r\n.b\r\n.\r\n");
        assert_eq!(out, b".a\r\n..\r\nb\r\n");
        assert!(!v.any());
    }

    #[test]
    fn dot_not_at_line_start_is_kept() {
        let (out, _, _) = decode(b"a.b\r\n a.\r\n.\r\n");
        assert_eq!(out, b"a.b\r\n a.\r\n");
    }

    #[test]
    fn lf_dot_lf_does_not_end_data_and_is_flagged() {
        let (out, st, v) = decode(b"a\n.\nb\r\n.\r\n");
        assert_eq!(st, DataStatus::Done { consumed: 10 });
        assert_eq!(out, b"a\n.\nb\r\n");
        assert!(v.bare_lf);
    }

    #[test]
    fn crlf_dot_lf_does_not_end_data_and_is_flagged() {
        let (out, st, v) = decode(b"a\r\n.\nb\r\n.\r\n");
        assert_eq!(st, DataStatus::Done { consumed: 11 });
        assert_eq!(out, b"a\r\n\nb\r\n");
        assert!(v.bare_lf && !v.bare_cr);
    }

    #[test]
    fn crlf_dot_cr_does_not_end_data_and_is_flagged() {
        let (_, st, v) = decode(b"a\r\n.\rb\r\n.\r\n");
        assert_eq!(st, DataStatus::Done { consumed: 11 });
        assert!(v.bare_cr);
    }

    #[test]
    fn cr_cr_lf_is_bare_cr_then_line_end() {
        let (out, _, v) = decode(b"a\r\r\n.\r\n");
        assert_eq!(out, b"a\r\r\n");
        assert!(v.bare_cr && !v.bare_lf);
    }

    #[test]
    fn nul_is_passed_through_and_flagged() {
        let (out, _, v) = decode(b"a\0b\r\n.\r\n");
        assert_eq!(out, b"a\0b\r\n");
        assert!(v.nul);
    }

    #[test]
    fn line_of_998_octets_is_fine_but_999_is_long() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(!decode(&ok).2.long_line);
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert!(decode(&long).2.long_line);
    }

    #[test]
    fn dot_stuffed_line_length_counts_without_the_stuffed_dot() {
        let mut line = vec![b'.'; 999];
        line.extend_from_slice(b"\r\n.\r\n");
        assert!(!decode(&line).2.long_line);
    }

    #[test]
    fn bytes_past_max_size_are_counted_not_stored() {
        let mut d = DataDecoder::with_max_size(4);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"abcdef\r\n", &mut out), DataStatus::NeedMore);
        assert_eq!(d.feed(b"gh\r\n.\r\n", &mut out), DataStatus::Done { consumed: 7 });
        assert_eq!(out, b"abcd");
        assert_eq!(d.total_len(), 12);
        assert!(d.overflowed());
    }

    #[test]
    fn message_exactly_at_max_size_does_not_overflow() {
        let mut d = DataDecoder::with_max_size(3);
        let mut out = Vec::new();
        d.feed(b"a\r\n.\r\n", &mut out);
        assert_eq!(out, b"a\r\n");
        assert!(!d.overflowed());
    }

    #[test]
    fn feed_after_done_consumes_nothing_until_reset() {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.feed(b".\r\n", &mut out), DataStatus::Done { consumed: 3 });
        assert!(d.is_done());
        assert_eq!(d.feed(b"x", &mut out), DataStatus::Done { consumed: 0 });
        d.reset();
        assert!(!d.is_done());
        assert_eq!(d.feed(b"x\r\n.\r\n", &mut out), DataStatus::Done { consumed: 6 });
        assert_eq!(out, b"x\r\n");
    }

    #[test]
    fn terminator_split_across_feeds_is_found() {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        for b in b"hi\r\n.\r" {
            assert_eq!(d.feed(&[*b], &mut out), DataStatus::NeedMore);
        }
        assert_eq!(d.feed(b"\nQUIT", &mut out), DataStatus::Done { consumed: 1 });
        assert_eq!(out, b"hi\r\n");
    }
}
