//! Server-side command line framing.
//!
//! [`LineFramer`] buffers received bytes and hands out complete command
//! lines. Decisions:
//!
//! * Only CRLF ends a line (RFC 5321 section 2.3.8: "a server ... SHOULD
//!   NOT recognize" a bare LF or bare CR as a line ending). A bare LF or CR
//!   stays inside the line, where [`crate::parse_command`] rejects it with
//!   `501 5.5.2`. This keeps command framing and DATA framing consistent,
//!   which is what defeats SMTP smuggling. A client that ends lines with a
//!   bare LF will not be understood (its "lines" run together until the
//!   length limit).
//! * A line longer than its limit (including CRLF) is reported as
//!   [`LineError::TooLong`] exactly once, as soon as enough bytes have
//!   arrived to know it, and the rest of that line is then discarded as it
//!   arrives, up to and including its CRLF. The buffer never holds more
//!   than one limit's worth of an incomplete line (plus whatever one
//!   `push` delivered).
//! * The limit depends on the verb (see [`crate::command::max_line_len`]):
//!   512 for most commands, 1012 for `MAIL` and `RCPT` (DSN parameters),
//!   12288 for `AUTH` (RFC 4954 section 4).
//!   [`LineFramer::next_line_with_limit`] sets it explicitly, e.g. for
//!   SASL continuation lines.
//! * After `DATA` is accepted, or for `BDAT` chunks, the bytes that already
//!   arrived after the command line are available through
//!   [`LineFramer::buffered`] / [`LineFramer::consume`] /
//!   [`LineFramer::take_buffered`].

use thiserror::Error;

use crate::command::max_line_len;

/// A framing error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LineError {
    /// The line exceeds its length limit; reply `500 5.5.2 Line too long`.
    #[error("line too long")]
    TooLong,
}

/// Incremental CRLF line framer. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct LineFramer {
    buf: Vec<u8>,
    start: usize,
    scan: usize,
    /// Discarding the rest of an overlong line.
    discarding: bool,
    /// While discarding: the last discarded byte was CR.
    discard_cr: bool,
}

impl LineFramer {
    /// An empty framer.
    pub fn new() -> Self {
        LineFramer::default()
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

    /// The bytes received but not yet returned as lines.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Drops the first `n` buffered bytes (e.g. a BDAT chunk taken from
    /// [`LineFramer::buffered`]). `n` is capped at the buffered length.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        self.scan = self.scan.max(self.start);
    }

    /// Removes and returns all buffered bytes (e.g. the start of the DATA
    /// stream), leaving the framer empty.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let out = self.buf.split_off(self.start);
        self.clear();
        out
    }

    /// Whether part of a line has arrived and not been returned yet: the
    /// bytes of an incomplete line are buffered, or the rest of an over-long
    /// line is being discarded. A server times the completion of a line
    /// from here (a client sending one byte at a time is never idle).
    pub fn partial(&self) -> bool {
        self.discarding || self.start < self.buf.len()
    }

    /// Empties the framer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scan = 0;
        self.discarding = false;
        self.discard_cr = false;
    }

    /// The next command line (without CRLF), using the per-verb limits.
    /// `None` means more input is needed.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        self.next_line_inner(None)
    }

    /// Like [`LineFramer::next_line`] but with an explicit limit in octets,
    /// including the CRLF.
    pub fn next_line_with_limit(&mut self, max: usize) -> Option<Result<Vec<u8>, LineError>> {
        self.next_line_inner(Some(max))
    }

    fn next_line_inner(&mut self, fixed: Option<usize>) -> Option<Result<Vec<u8>, LineError>> {
        loop {
            if self.discarding {
                let rest = &self.buf[self.start..];
                if rest.is_empty() {
                    return None;
                }
                if self.discard_cr && rest.first() == Some(&b'\n') {
                    self.discarding = false;
                    self.discard_cr = false;
                    self.consume(1);
                    continue;
                }
                match memchr::memmem::find(rest, b"\r\n") {
                    Some(k) => {
                        self.discarding = false;
                        self.discard_cr = false;
                        self.consume(k + 2);
                        continue;
                    }
                    None => {
                        self.discard_cr = rest.last() == Some(&b'\r');
                        self.buf.truncate(self.start);
                        self.scan = self.start;
                        return None;
                    }
                }
            }
            let limit = fixed.unwrap_or_else(|| max_line_len(&self.buf[self.start..]));
            match memchr::memchr(b'\n', &self.buf[self.scan..]) {
                Some(k) => {
                    let lf = self.scan + k;
                    if lf > self.start && self.buf[lf - 1] == b'\r' {
                        let line_end = lf - 1;
                        let start = self.start;
                        self.start = lf + 1;
                        self.scan = self.start;
                        if line_end - start + 2 > limit {
                            return Some(Err(LineError::TooLong));
                        }
                        return Some(Ok(self.buf[start..line_end].to_vec()));
                    }
                    // A bare LF: part of the line.
                    self.scan = lf + 1;
                }
                None => {
                    self.scan = self.buf.len();
                    let n = self.buf.len() - self.start;
                    // The shortest possible complete line from here.
                    let min_total = if self.buf.last() == Some(&b'\r') {
                        n + 1
                    } else {
                        n + 2
                    };
                    if n > 0 && min_total > limit {
                        self.discarding = true;
                        self.discard_cr = false;
                        // Keep a trailing CR: it may pair with the next LF.
                        let keep = usize::from(self.buf.last() == Some(&b'\r'));
                        self.start = self.buf.len() - keep;
                        self.scan = self.start;
                        return Some(Err(LineError::TooLong));
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut LineFramer) -> Vec<Result<Vec<u8>, LineError>> {
        std::iter::from_fn(|| f.next_line()).collect()
    }

    #[test]
    fn crlf_terminated_lines_are_returned_without_crlf() {
        let mut f = LineFramer::new();
        f.push(b"EHLO a\r\nQUIT\r\nNO");
        assert_eq!(lines(&mut f), vec![Ok(b"EHLO a".to_vec()), Ok(b"QUIT".to_vec())]);
        assert_eq!(f.buffered(), b"NO");
    }

    #[test]
    fn bare_lf_does_not_end_a_line() {
        let mut f = LineFramer::new();
        f.push(b"QUIT\nNOOP\r\n");
        assert_eq!(lines(&mut f), vec![Ok(b"QUIT\nNOOP".to_vec())]);
    }

    #[test]
    fn crlf_split_across_pushes_is_found() {
        let mut f = LineFramer::new();
        f.push(b"QUIT\r");
        assert_eq!(f.next_line(), None);
        f.push(b"\n");
        assert_eq!(f.next_line(), Some(Ok(b"QUIT".to_vec())));
    }

    #[test]
    fn line_of_exactly_512_octets_is_accepted() {
        let mut f = LineFramer::new();
        let mut line = vec![b'x'; 510];
        line.extend_from_slice(b"\r\n");
        f.push(&line);
        assert_eq!(f.next_line(), Some(Ok(vec![b'x'; 510])));
    }

    #[test]
    fn overlong_line_is_reported_once_before_its_end_arrives() {
        let mut f = LineFramer::new();
        f.push(&[b'x'; 600]);
        assert_eq!(f.next_line(), Some(Err(LineError::TooLong)));
        assert_eq!(f.next_line(), None);
        assert!(f.buffered().is_empty());
        f.push(&[b'x'; 10_000]);
        assert_eq!(f.next_line(), None);
        assert!(f.buffered().len() <= 1);
        f.push(b"xx\r");
        assert_eq!(f.next_line(), None);
        f.push(b"\nQUIT\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"QUIT".to_vec())));
    }

    #[test]
    fn overlong_complete_line_is_reported_and_skipped() {
        let mut f = LineFramer::new();
        let mut data = vec![b'x'; 600];
        data.extend_from_slice(b"\r\nQUIT\r\n");
        f.push(&data);
        assert_eq!(lines(&mut f), vec![Err(LineError::TooLong), Ok(b"QUIT".to_vec())]);
    }

    #[test]
    fn mail_and_rcpt_lines_get_1012_octets_and_auth_lines_more() {
        let mut f = LineFramer::new();
        for verb in ["MAIL FROM:<a@b.test> AUTH=", "RCPT TO:<a@b.test> ORCPT=rfc822;"] {
            let mut fits = verb.as_bytes().to_vec();
            fits.resize(1010, b'e');
            fits.extend_from_slice(b"\r\n");
            f.push(&fits);
            assert_eq!(f.next_line(), Some(Ok(fits[..1010].to_vec())), "{verb}");
            let mut over = verb.as_bytes().to_vec();
            over.resize(1011, b'e');
            over.extend_from_slice(b"\r\n");
            f.push(&over);
            assert_eq!(f.next_line(), Some(Err(LineError::TooLong)), "{verb}");
        }
        let mut noop = b"NOOP ".to_vec();
        noop.resize(511, b'n');
        noop.extend_from_slice(b"\r\n");
        f.push(&noop);
        assert_eq!(f.next_line(), Some(Err(LineError::TooLong)));
        let mut auth = b"AUTH PLAIN ".to_vec();
        auth.extend(std::iter::repeat_n(b'A', 5000));
        auth.extend_from_slice(b"\r\n");
        f.push(&auth);
        assert!(matches!(f.next_line(), Some(Ok(_))));
    }

    #[test]
    fn partial_is_true_from_the_first_byte_of_a_line_to_its_crlf() {
        let mut f = LineFramer::new();
        assert!(!f.partial());
        f.push(b"NO");
        assert_eq!(f.next_line(), None);
        assert!(f.partial());
        f.push(b"OP\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"NOOP".to_vec())));
        assert!(!f.partial());
        // The discarded rest of an over-long line is still part of a line.
        f.push(&[b'x'; 600]);
        assert_eq!(f.next_line(), Some(Err(LineError::TooLong)));
        assert!(f.buffered().is_empty());
        assert!(f.partial());
        f.push(b"\r\n");
        assert_eq!(f.next_line(), None);
        assert!(!f.partial());
    }

    #[test]
    fn explicit_limit_overrides_verb_limit() {
        let mut f = LineFramer::new();
        f.push(b"abcdef\r\n");
        assert_eq!(f.next_line_with_limit(5), Some(Err(LineError::TooLong)));
    }

    #[test]
    fn take_buffered_returns_bytes_after_the_last_line() {
        let mut f = LineFramer::new();
        f.push(b"DATA\r\nSubject: x\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"DATA".to_vec())));
        assert_eq!(f.take_buffered(), b"Subject: x\r\n");
        assert!(f.buffered().is_empty());
    }

    #[test]
    fn consume_skips_a_bdat_chunk() {
        let mut f = LineFramer::new();
        f.push(b"BDAT 3\r\nabcQUIT\r\n");
        assert_eq!(f.next_line(), Some(Ok(b"BDAT 3".to_vec())));
        assert_eq!(&f.buffered()[..3], b"abc");
        f.consume(3);
        assert_eq!(f.next_line(), Some(Ok(b"QUIT".to_vec())));
    }
}
