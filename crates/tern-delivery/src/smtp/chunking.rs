//! The message by BDAT (RFC 3030 CHUNKING), for servers that offer it: the octets go as they are, in
//! chunks of [`CHUNK_SIZE`], the last one `BDAT <n> LAST`, with no dot-stuffing and no terminating dot.
//! Where PIPELINING is offered too, up to [`WINDOW`] chunks are in flight before their replies are read
//! (RFC 3030 4.2 allows BDAT in a pipelined group); otherwise each chunk waits for its reply.
//!
//! Every chunk gets a reply. The first one that is not 2xx decides the message for all its recipients:
//! no chunk goes out after it (RFC 3030 2: the transaction has failed and the server discards what it
//! had), the replies to the chunks already sent are read, and the next transaction on the session begins
//! with RSET (the server may still be inside the failed one; after an accepted last chunk none is sent).

use std::borrow::Cow;

use tern_core::Envelope;
use tern_smtp::{Body, Reply};

use super::client::Timeouts;
use super::wire::{Wire, WireError};

/// The size of each BDAT chunk but the last.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// How many chunks may be in flight (sent, their reply not read yet) on a pipelining session.
pub const WINDOW: usize = 4;

/// The octets to send by BDAT: a `BODY=BINARYMIME` message as it is; any other with its line endings made
/// CRLF and a final CRLF, the form it has after DATA, so that a message reads the same whichever way it
/// went.
pub(crate) fn bdat_payload<'a>(envelope: &Envelope, body: &'a [u8]) -> Cow<'a, [u8]> {
    if envelope.body == Some(Body::BinaryMime) {
        return Cow::Borrowed(body);
    }
    let mut out = tern_smtp::normalize_line_endings(body);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Cow::Owned(out)
}

/// Sends `payload` as BDAT chunks of `chunk_size` (an empty payload as one `BDAT 0 LAST`), up to
/// `window` in flight (1: each waits for its reply). Returns the reply that decides the message: the first
/// failure, or else the reply to the last chunk. A 421 ends the reading (the server is closing).
pub(crate) async fn send_chunks(
    wire: &mut Wire,
    payload: &[u8],
    chunk_size: usize,
    window: usize,
    t: &Timeouts,
) -> Result<Reply, WireError> {
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(chunk_size.max(1)).collect()
    };
    let n = chunks.len();
    let window = window.max(1);
    let (mut sent, mut read) = (0usize, 0usize);
    let mut failure: Option<Reply> = None;
    let mut last: Option<Reply> = None;
    while read < n {
        while failure.is_none() && sent < n && sent - read < window {
            wire.send_chunk(chunks[sent], sent + 1 == n, t.data_block).await?;
            sent += 1;
        }
        if read == sent {
            break;
        }
        let timeout = if read + 1 == n { t.data_done } else { t.data_block };
        let reply = wire.read_reply(timeout, "BDAT").await?;
        read += 1;
        if !reply.is_positive() && failure.is_none() {
            failure = Some(reply.clone());
        }
        if reply.code == 421 {
            return Ok(failure.unwrap_or(reply));
        }
        last = Some(reply);
    }
    Ok(failure
        .or(last)
        .unwrap_or_else(|| Reply::new(451, "4.4.2", "no reply to BDAT")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::ReversePath;

    fn env(body: Option<Body>) -> Envelope {
        let mut e = Envelope::new(ReversePath::Null, Vec::new());
        e.body = body;
        e
    }

    #[test]
    fn binarymime_payload_is_sent_as_it_is() {
        let raw = b"a\nb\rc\0\xff";
        assert_eq!(&*bdat_payload(&env(Some(Body::BinaryMime)), raw), raw);
    }

    #[test]
    fn text_payload_has_crlf_line_endings_and_a_final_crlf() {
        assert_eq!(&*bdat_payload(&env(None), b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n");
        assert_eq!(&*bdat_payload(&env(Some(Body::EightBitMime)), b""), b"");
    }
}
