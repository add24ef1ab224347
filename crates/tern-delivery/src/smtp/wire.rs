//! The wire under a client: a TCP or TLS stream, reply framing, per-command deadlines, and the one place
//! every command and reply passes, so that the transcript hook sees them all and a broken connection (a
//! 421, a dropped socket, a timeout) is noticed wherever it happens.

use std::time::Duration;

use tern_smtp::{Command, Reply, ReplyParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::transcript::{CommandLine, TranscriptEntry, TranscriptHook};

/// Size of each write of message data (each bounded by the data block timeout).
const DATA_BLOCK: usize = 64 * 1024;

/// Room for a pipelined group's commands (RSET, MAIL, a few RCPT, DATA) in the buffer they are written
/// into, so that it seldom grows while they are.
const GROUP_ROOM: usize = 512;

/// Why a session broke. Every variant is a transient failure of the host, never of a recipient.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// No reply (or no progress writing) within the deadline.
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    /// The peer closed the connection.
    #[error("connection dropped during {0}")]
    Dropped(&'static str),
    /// A socket error.
    #[error("network error during {0}: {1}")]
    Io(&'static str, String),
    /// The peer broke the protocol (unparsable reply, bytes where none may be).
    #[error("protocol error during {0}: {1}")]
    Protocol(&'static str, String),
    /// TLS failed on an established TLS session (an alert, a record that does not decrypt).
    #[error("TLS error during {0}: {1}")]
    Tls(&'static str, String),
}

impl WireError {
    /// The failure as the reply it stands for: a dropped or failed connection counts as 451.
    pub fn as_reply(&self) -> Reply {
        Reply::new(451, "4.4.2", self.to_string())
    }

    /// The same failure, said of `what`: a write that carried several things failed for each of them.
    pub(crate) fn during(&self, what: &'static str) -> WireError {
        match self {
            WireError::Timeout(_) => WireError::Timeout(what),
            WireError::Dropped(_) => WireError::Dropped(what),
            WireError::Io(_, e) => WireError::Io(what, e.clone()),
            WireError::Protocol(_, e) => WireError::Protocol(what, e.clone()),
            WireError::Tls(_, e) => WireError::Tls(what, e.clone()),
        }
    }
}

/// A plain or TLS stream.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// No stream: taken for a TLS handshake that did not give one back.
    Closed,
}

/// A connection with its reply parser and transcript.
pub(crate) struct Wire {
    stream: Stream,
    parser: ReplyParser,
    buf: Box<[u8]>,
    transcript: Option<TranscriptHook>,
    /// A 421 was read, or the connection failed: nothing more can be done on it.
    broken: bool,
    /// A message's data and terminating dot, encoded but not written yet ([`Wire::hold_data`]): they go
    /// out in the same write as whatever is sent next, or before the next reply is read.
    held: Vec<u8>,
}

impl Wire {
    /// Wraps a stream.
    pub(crate) fn new(stream: Stream, transcript: Option<TranscriptHook>) -> Wire {
        Wire {
            stream,
            parser: ReplyParser::new(),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            transcript,
            broken: false,
            held: Vec::new(),
        }
    }

    /// Whether the connection can take another command: no 421 and no failure so far.
    pub(crate) fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Marks the connection as unusable (a refused RSET, a refusal that ends the session).
    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Hands `entry` to the transcript hook, if there is one.
    pub(crate) fn note(&self, entry: TranscriptEntry<'_>) {
        if let Some(hook) = &self.transcript {
            hook.record(entry);
        }
    }

    /// The connection failed with `e`: it is unusable, and the transcript says why (once: a session that
    /// already broke says nothing more).
    fn failed(&mut self, e: &WireError) {
        if !self.broken && self.transcript.is_some() {
            self.note(TranscriptEntry::Error(&e.to_string()));
        }
        self.broken = true;
    }

    /// Writes the held data ([`Wire::hold_data`]) and then all of `data`, in one write, within `timeout`.
    async fn write(&mut self, data: &[u8], timeout: Duration, what: &'static str) -> Result<(), WireError> {
        if self.held.is_empty() {
            return self.write_now(data, timeout, what).await;
        }
        let mut out = std::mem::take(&mut self.held);
        out.extend_from_slice(data);
        self.write_now(&out, timeout, what).await
    }

    /// Writes all of `data` within `timeout`.
    async fn write_now(
        &mut self,
        data: &[u8],
        timeout: Duration,
        what: &'static str,
    ) -> Result<(), WireError> {
        let fut = async {
            match &mut self.stream {
                Stream::Plain(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Stream::Tls(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Stream::Closed => Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        };
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error(what, &e)),
            Err(_) => Err(WireError::Timeout(what)),
        };
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    /// Sends one command.
    pub(crate) async fn send(&mut self, cmd: &Command, timeout: Duration) -> Result<(), WireError> {
        self.note(TranscriptEntry::Command(CommandLine::command(cmd)));
        self.write(&cmd.to_bytes(), timeout, cmd.verb()).await
    }

    /// Sends several commands in one write (a pipelined group, RFC 2920).
    pub(crate) async fn send_group(
        &mut self,
        cmds: &[&Command],
        timeout: Duration,
        what: &'static str,
    ) -> Result<(), WireError> {
        // After the held data, when there is some: one buffer, one write.
        let mut buf = std::mem::take(&mut self.held);
        buf.reserve(GROUP_ROOM);
        for cmd in cmds {
            self.note(TranscriptEntry::Command(CommandLine::command(cmd)));
            cmd.write_wire(&mut buf);
        }
        self.write_now(&buf, timeout, what).await
    }

    /// Sends a message after a 354: dot-stuffed, CRLF-normalised, then the terminating dot. Each block
    /// written has `block_timeout`. The transcript sees the size only.
    pub(crate) async fn send_data(&mut self, body: &[u8], block_timeout: Duration) -> Result<(), WireError> {
        self.note(TranscriptEntry::Body { octets: body.len() });
        let mut enc = tern_smtp::DataEncoder::new();
        // Sized to the message, not to a whole block: most mail is a few KiB, and glibc consolidates its
        // heap whenever a chunk of 64 KiB or more is freed.
        let block = body.len().min(DATA_BLOCK);
        let mut out = Vec::with_capacity(block + block / 16 + 8);
        let mut chunks = body.chunks(DATA_BLOCK).peekable();
        while let Some(chunk) = chunks.next() {
            out.clear();
            enc.encode(chunk, &mut out);
            if chunks.peek().is_none() {
                // The terminating dot goes with the last block: one segment for a small message, not two.
                enc.finish(&mut out);
            }
            self.write(&out, block_timeout, "message data").await?;
        }
        if body.is_empty() {
            out.clear();
            enc.finish(&mut out);
            self.write(&out, block_timeout, "message data").await?;
        }
        Ok(())
    }

    /// Encodes a message after a 354 as [`Wire::send_data`] does, terminating dot included, without writing
    /// it: it goes out with the next command group (RFC 2920 §3.1 lets a client send the next transaction's
    /// commands right after the end of data), so that a connection carrying one message after another
    /// writes once per message, and the server answers the end of data and the next group in one reply
    /// packet. Anything else written, or a reply read, writes it first. `false` (nothing held) when the
    /// message is larger than one data block: it is sent with [`Wire::send_data`] instead.
    pub(crate) fn hold_data(&mut self, body: &[u8]) -> bool {
        if body.len() > DATA_BLOCK {
            return false;
        }
        self.note(TranscriptEntry::Body { octets: body.len() });
        let mut enc = tern_smtp::DataEncoder::new();
        // With room for the next group's commands, which are written after it into the same buffer.
        self.held.reserve(body.len() + body.len() / 16 + 8 + GROUP_ROOM);
        enc.encode(body, &mut self.held);
        enc.finish(&mut self.held);
        true
    }

    /// Sends one BDAT chunk (RFC 3030): the command line and the chunk's octets as they are (no
    /// dot-stuffing, no terminator), in one write bounded by `block_timeout`. The transcript sees
    /// `BDAT <n> [LAST]` and the chunk's size, never its bytes.
    pub(crate) async fn send_chunk(
        &mut self,
        chunk: &[u8],
        last: bool,
        block_timeout: Duration,
    ) -> Result<(), WireError> {
        let cmd = Command::Bdat {
            size: chunk.len() as u64,
            last,
        };
        if self.transcript.is_some() {
            self.note(TranscriptEntry::Command(CommandLine::command(&cmd)));
            self.note(TranscriptEntry::Body { octets: chunk.len() });
        }
        let line = cmd.to_bytes();
        let mut out = Vec::with_capacity(line.len() + chunk.len());
        out.extend_from_slice(&line);
        out.extend_from_slice(chunk);
        self.write(&out, block_timeout, "BDAT").await
    }

    /// Sends a line that is no command, such as a SASL response (RFC 4954): the transcript sees `shown`
    /// instead of the line (credentials masked).
    pub(crate) async fn send_line(
        &mut self,
        line: &str,
        shown: &str,
        timeout: Duration,
        what: &'static str,
    ) -> Result<(), WireError> {
        self.note(TranscriptEntry::Command(CommandLine::text(shown)));
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.write(&out, timeout, what).await
    }

    /// Sends the terminating dot alone (after a 354 when no recipient was accepted, RFC 2920 3.1).
    pub(crate) async fn send_dot(&mut self, timeout: Duration) -> Result<(), WireError> {
        self.note(TranscriptEntry::Command(CommandLine::text(".")));
        self.write(b".\r\n", timeout, "DATA").await
    }

    /// Reads the next complete reply within `timeout`.
    pub(crate) async fn read_reply(
        &mut self,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Reply, WireError> {
        let result = if self.held.is_empty() {
            self.read_reply_inner(timeout, what).await
        } else {
            // The reply waited for cannot come before the held data went out.
            match self.write(&[], timeout, what).await {
                Ok(()) => self.read_reply_inner(timeout, what).await,
                Err(e) => Err(e),
            }
        };
        match &result {
            Ok(reply) => {
                self.note(TranscriptEntry::Reply(reply));
                // 421: the server is closing the connection (RFC 5321 3.8).
                self.broken |= reply.code == 421;
            }
            Err(e) => self.failed(e),
        }
        result
    }

    async fn read_reply_inner(&mut self, timeout: Duration, what: &'static str) -> Result<Reply, WireError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.parser.next_reply() {
                return r.map_err(|e| WireError::Protocol(what, e.to_string()));
            }
            let read = async {
                match &mut self.stream {
                    Stream::Plain(s) => s.read(&mut self.buf).await,
                    Stream::Tls(s) => s.read(&mut self.buf).await,
                    Stream::Closed => Ok(0),
                }
            };
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(0)) => return Err(WireError::Dropped(what)),
                Ok(Ok(n)) => self.parser.push(&self.buf[..n]),
                Ok(Err(e)) => return Err(io_error(what, &e)),
                Err(_) => return Err(WireError::Timeout(what)),
            }
        }
    }

    /// Sends a command and reads its reply.
    pub(crate) async fn command(&mut self, cmd: &Command, timeout: Duration) -> Result<Reply, WireError> {
        self.send(cmd, timeout).await?;
        self.read_reply(timeout, cmd.verb()).await
    }

    /// Whether bytes beyond the last reply have arrived.
    pub(crate) fn has_unread(&self) -> bool {
        self.parser.has_partial()
    }

    /// Whether bytes are already waiting on a plain socket (a non-blocking check; consumes them). Bytes
    /// that arrive later are fed to the TLS handshake, which then fails.
    pub(crate) fn try_read_ahead(&mut self) -> bool {
        match &mut self.stream {
            Stream::Plain(s) => {
                let mut b = [0u8; 64];
                matches!(s.try_read(&mut b), Ok(n) if n > 0)
            }
            Stream::Tls(_) | Stream::Closed => false,
        }
    }

    /// Takes the plain TCP stream out for a TLS handshake, leaving the wire closed (and unusable) until
    /// [`Wire::resume_tls`]; `None` when the stream is not plain TCP.
    pub(crate) fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(tcp) => {
                self.broken = true;
                Some(tcp)
            }
            other => {
                self.stream = other;
                None
            }
        }
    }

    /// Continues over the TLS stream made from the plain one [`Wire::take_plain`] took.
    pub(crate) fn resume_tls(&mut self, stream: TlsStream<TcpStream>, description: &str) {
        self.stream = Stream::Tls(Box::new(stream));
        self.broken = false;
        self.note(TranscriptEntry::Tls(description));
    }

    /// Closes the socket (no QUIT) within `timeout`: over TLS that first writes a close_notify, which waits
    /// for room in the socket's send buffer, and a peer that stopped reading never makes any. Past the
    /// deadline the socket is just dropped.
    pub(crate) async fn shutdown(&mut self, timeout: Duration) {
        let close = async {
            match &mut self.stream {
                Stream::Plain(s) => s.shutdown().await,
                Stream::Tls(s) => s.shutdown().await,
                Stream::Closed => Ok(()),
            }
        };
        let _ = tokio::time::timeout(timeout, close).await;
        self.held.clear();
        self.stream = Stream::Closed;
        self.broken = true;
    }
}

fn io_error(what: &'static str, e: &std::io::Error) -> WireError {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => WireError::Dropped(what),
        // How tokio-rustls reports a TLS failure (rustls's error inside): never a network failure.
        InvalidData => WireError::Tls(what, e.to_string()),
        _ => WireError::Io(what, e.to_string()),
    }
}

/// A reply as one line for logs, events and DSNs: `550 5.1.1 User unknown` (its `Display` form).
pub fn reply_line(r: &Reply) -> String {
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::net::TcpListener;

    use crate::smtp::TlsClients;

    /// A TLS peer that finishes the handshake and then never reads. Once the socket's buffers are full,
    /// closing over TLS (a close_notify to write first) can make no progress: the close gives up at its
    /// deadline instead of hanging.
    #[tokio::test]
    async fn closing_a_tls_session_whose_peer_stopped_reading_ends_at_the_deadline() {
        let cert = tern_testkit::TestCa::new()
            .unwrap()
            .issue(&["mx.b.test"])
            .unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let session = acceptor.accept(tcp).await.unwrap();
            tokio::time::sleep(Duration::from_secs(120)).await;
            drop(session);
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = TlsClients::new(None)
            .unwrap()
            .handshake(tcp, "mx.b.test", false, Duration::from_secs(5))
            .await
            .unwrap();
        let mut wire = Wire::new(Stream::Tls(Box::new(stream)), None);
        let block = vec![b'x'; 64 * 1024];
        let mut full = false;
        for _ in 0..2000 {
            if wire
                .write(&block, Duration::from_millis(200), "filling")
                .await
                .is_err()
            {
                full = true;
                break;
            }
        }
        assert!(full, "the buffers never filled");
        let started = std::time::Instant::now();
        let closed =
            tokio::time::timeout(Duration::from_secs(20), wire.shutdown(Duration::from_millis(500))).await;
        assert!(closed.is_ok(), "the close hung");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        peer.abort();
    }
}
