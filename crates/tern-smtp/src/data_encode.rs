//! Encoding a message for the `DATA` phase, client side (RFC 5321 section
//! 4.5.2): line endings normalised to CRLF, dot-stuffing, and the
//! `.<CRLF>` terminator.
//!
//! Every bare LF, bare CR and CRLF becomes one CRLF (so `\r\r\n` becomes two
//! line breaks). Long lines are not wrapped — that would change the
//! content; message producers should use a transfer encoding instead.

/// Streaming encoder: feed the body chunk by chunk with
/// [`DataEncoder::encode`], then call [`DataEncoder::finish`]. State (line
/// start, a CR at the end of a chunk) carries across chunks, so the output
/// does not depend on how the body was split.
#[derive(Debug, Clone)]
pub struct DataEncoder {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder::new()
    }
}

impl DataEncoder {
    /// A new encoder at the start of a message.
    pub fn new() -> Self {
        DataEncoder {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Encodes one chunk of the body, appending to `out`.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + chunk.len() / 64);
        let mut i = 0;
        while i < chunk.len() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if chunk[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.at_line_start {
                if chunk[i] == b'.' {
                    out.push(b'.');
                }
                self.at_line_start = false;
            }
            let rest = &chunk[i..];
            match memchr::memchr2(b'\r', b'\n', rest) {
                None => {
                    out.extend_from_slice(rest);
                    return;
                }
                Some(k) => {
                    out.extend_from_slice(&rest[..k]);
                    if rest[k] == b'\n' {
                        out.extend_from_slice(b"\r\n");
                        self.at_line_start = true;
                    } else {
                        self.pending_cr = true;
                    }
                    i += k + 1;
                }
            }
        }
    }

    /// Ends the message: completes the last line with CRLF if needed and
    /// appends `.\r\n`. The encoder is then ready for a new message.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DataEncoder::new();
    }
}

/// Encodes a whole body for `DATA`: normalised line endings, dot-stuffing
/// and the terminator (a CRLF is added first if the body does not end with
/// a line break; an empty body gives just `.\r\n`).
pub fn encode_data(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut enc = DataEncoder::new();
    enc.encode(body, &mut out);
    enc.finish(&mut out);
    out
}

/// Converts every bare LF, bare CR and CRLF to CRLF, with no dot-stuffing
/// and no terminator. This is the form a message has after an
/// [`encode_data`] / [`crate::DataDecoder`] round trip (which additionally
/// ends a non-empty body with CRLF), and the form to send with `BDAT` for
/// text bodies.
pub fn normalize_line_endings(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64);
    let mut i = 0;
    while let Some(k) = memchr::memchr2(b'\r', b'\n', &body[i..]) {
        out.extend_from_slice(&body[i..i + k]);
        out.extend_from_slice(b"\r\n");
        i += k + 1;
        if body[i - 1] == b'\r' && body.get(i) == Some(&b'\n') {
            i += 1;
        }
    }
    out.extend_from_slice(&body[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_is_just_the_terminator() {
        assert_eq!(encode_data(b""), b".\r\n");
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(encode_data(b"abc"), b"abc\r\n.\r\n");
        assert_eq!(encode_data(b"abc\r\n"), b"abc\r\n.\r\n");
    }

    #[test]
    fn bare_lf_and_bare_cr_become_crlf() {
        assert_eq!(encode_data(b"a\nb\rc\r\n"), b"a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(encode_data(b"a\r\r\nb"), b"a\r\n\r\nb\r\n.\r\n");
    }

    #[test]
    fn dots_at_line_start_are_doubled() {
        assert_eq!(encode_data(b".\n..x\nx.\n"), b"..\r\n...x\r\nx.\r\n.\r\n");
    }

    #[test]
    fn lone_dot_body_is_stuffed() {
        assert_eq!(encode_data(b"."), b"..\r\n.\r\n");
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_break() {
        let mut enc = DataEncoder::new();
        let mut out = Vec::new();
        enc.encode(b"a\r", &mut out);
        enc.encode(b"\n.b", &mut out);
        enc.finish(&mut out);
        assert_eq!(out, b"a\r\n..b\r\n.\r\n");
    }

    #[test]
    fn trailing_bare_cr_is_completed_at_finish() {
        assert_eq!(encode_data(b"a\r"), b"a\r\n.\r\n");
    }

    #[test]
    fn normalize_line_endings_converts_all_breaks() {
        assert_eq!(
            normalize_line_endings(b"a\nb\rc\r\nd\r\r\n"),
            b"a\r\nb\r\nc\r\nd\r\n\r\n"
        );
    }
}
