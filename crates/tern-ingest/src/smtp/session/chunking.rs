//! BDAT (RFC 3030) in a session: reading a chunk's octets, whatever the reply, and gathering the chunks of
//! one message.

use std::time::Instant;

use tern_smtp::{Body, Reply};
use tracing::{info, warn};

use super::deadline::TransferClock;
use super::{Flow, Input, Session, bad_sequence, describe};
use crate::log_fields;
use crate::smtp::body::LineChecker;

/// The message received so far by BDAT.
#[derive(Default)]
pub(super) struct Chunks {
    body: Vec<u8>,
    total: u64,
    overflow: bool,
    checker: LineChecker,
}

impl Chunks {
    pub(super) fn push(&mut self, data: &[u8], max: u64, binary: bool) {
        self.total = self.total.saturating_add(data.len() as u64);
        if self.total > max {
            if !self.overflow {
                self.overflow = true;
                self.body = Vec::new();
            }
            return;
        }
        self.body.extend_from_slice(data);
        if !binary {
            self.checker.feed(data);
        }
    }
}

impl Session {
    /// Reads `size` octets of a BDAT chunk (from what is buffered, then the socket) into `sink`, if any.
    pub(super) async fn read_chunk(
        &mut self,
        size: u64,
        mut sink: Option<&mut Chunks>,
        binary: bool,
    ) -> Flow {
        let max = self.shared.max_message_size;
        let buffered = self.framer.buffered();
        let k = usize::try_from(size).unwrap_or(usize::MAX).min(buffered.len());
        if let Some(s) = sink.as_deref_mut() {
            s.push(&buffered[..k], max, binary);
        }
        self.framer.consume(k);
        let mut left = size - k as u64;
        let mut clock = TransferClock::new(Instant::now(), self.shared.idle_timeout, size);
        while left > 0 {
            let n = match self.read_input(false, Some(clock.deadline())).await {
                Input::Data(n) => n,
                Input::Closed => return Flow::Close,
            };
            let k = usize::try_from(left).unwrap_or(usize::MAX).min(n);
            clock.received(k);
            if let Some(s) = sink.as_deref_mut() {
                s.push(&self.rbuf[..k], max, binary);
            }
            left -= k as u64;
            if k < n {
                self.framer.push(&self.rbuf[k..n]);
            }
            self.grow_read_buffer_if_filled(n);
        }
        Flow::Continue
    }

    /// BDAT (RFC 3030): the chunk is always read, whatever the reply, so that its octets are never taken for
    /// commands.
    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Flow {
        if size > self.shared.max_message_size.saturating_mul(2) {
            // A chunk far larger than any message taken here is not read: that could tie the connection up
            // for up to 2^64 octets. The session ends instead (its octets would otherwise be taken for
            // commands). A chunk a little over the limit is read and refused, and the session goes on.
            info!(size, "BDAT chunk over twice the message size limit: closing");
            self.tx = None;
            self.reply(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
            self.out.extend_from_slice(
                &Reply::new(421, "4.7.0", "Chunk too big to read, closing connection").to_bytes(),
            );
            return Flow::Close;
        }
        let refusal = match &self.tx {
            None => Some(bad_sequence("Need MAIL before BDAT")),
            Some(tx) if tx.rcpts.is_empty() => Some(Reply::new(554, "5.5.1", "No valid recipients")),
            Some(_) => None,
        };
        let binary = self
            .tx
            .as_ref()
            .is_some_and(|t| t.params.body == Some(Body::BinaryMime));
        let mut chunks = self.tx.as_mut().and_then(|t| t.bdat.take()).unwrap_or_default();
        let sink = if refusal.is_none() {
            Some(&mut chunks)
        } else {
            None
        };
        if self.read_chunk(size, sink, binary).await == Flow::Close {
            return Flow::Close;
        }
        if let Some(r) = refusal {
            return self.reply(r);
        }
        if !last {
            let overflow = chunks.overflow;
            if let Some(tx) = &mut self.tx {
                tx.bdat = Some(chunks);
            }
            if overflow {
                return self.reply(Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ));
            }
            return self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
        let Some(tx) = self.tx.take() else {
            return Flow::Close;
        };
        if chunks.overflow {
            info!(
                message_id = %tx.id, sender = log_fields::sender(&tx.from),
                recipients = log_fields::recipients(&tx.rcpts), domain = log_fields::domains(&tx.rcpts),
                size = chunks.total, "message refused: too big"
            );
            return self.message_reply(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        let v = chunks.checker.finish();
        if !binary && v.any() {
            warn!(
                message_id = %tx.id, sender = log_fields::sender(&tx.from),
                recipients = log_fields::recipients(&tx.rcpts), domain = log_fields::domains(&tx.rcpts),
                violations = log_fields::violations(v), "message refused: malformed line endings"
            );
            return self.message_reply(Reply::new(554, "5.6.0", describe(v)));
        }
        self.submit(tx, chunks.body).await
    }
}

/// Whether a command line is a BDAT command (whatever its arguments).
pub(super) fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && line
            .get(4)
            .is_none_or(|c| *c == b' ' || *c == b'\r' || *c == b'\n')
}
