//! The wire under a session: a TCP or TLS stream, reply framing and per-command deadlines.

use std::time::Duration;

use tern_smtp::{Command, Reply, ReplyParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

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
}

impl WireError {
    /// The failure as the reply it stands for: a dropped or failed connection counts as 451.
    pub fn as_reply(&self) -> Reply {
        Reply::new(451, "4.4.2", self.to_string())
    }
}

/// A plain or TLS stream.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection with its reply parser.
pub struct Wire {
    pub(crate) stream: Stream,
    pub(crate) parser: ReplyParser,
    buf: Box<[u8]>,
}

impl Wire {
    /// Wraps a stream.
    pub fn new(stream: Stream) -> Wire {
        Wire {
            stream,
            parser: ReplyParser::new(),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
        }
    }

    /// Writes all of `data` within `timeout`.
    pub async fn write(
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
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error(what, &e)),
            Err(_) => Err(WireError::Timeout(what)),
        }
    }

    /// Sends one command.
    pub async fn send(&mut self, cmd: &Command, timeout: Duration) -> Result<(), WireError> {
        self.write(&cmd.to_bytes(), timeout, cmd.verb()).await
    }

    /// Reads the next complete reply within `timeout`.
    pub async fn read_reply(&mut self, timeout: Duration, what: &'static str) -> Result<Reply, WireError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.parser.next_reply() {
                return r.map_err(|e| WireError::Protocol(what, e.to_string()));
            }
            let read = async {
                match &mut self.stream {
                    Stream::Plain(s) => s.read(&mut self.buf).await,
                    Stream::Tls(s) => s.read(&mut self.buf).await,
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
    pub async fn command(&mut self, cmd: &Command, timeout: Duration) -> Result<Reply, WireError> {
        self.send(cmd, timeout).await?;
        self.read_reply(timeout, cmd.verb()).await
    }

    /// Whether bytes beyond the last reply have arrived.
    pub fn has_unread(&self) -> bool {
        self.parser.has_partial()
    }

    /// Whether bytes are already waiting on a plain socket (a non-blocking check; consumes them). Bytes
    /// that arrive later are fed to the TLS handshake, which then fails.
    pub fn try_read_ahead(&mut self) -> bool {
        match &mut self.stream {
            Stream::Plain(s) => {
                let mut b = [0u8; 64];
                matches!(s.try_read(&mut b), Ok(n) if n > 0)
            }
            Stream::Tls(_) => false,
        }
    }

    /// Closes the socket (no QUIT).
    pub async fn shutdown(&mut self) {
        let _ = match &mut self.stream {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        };
    }
}

fn io_error(what: &'static str, e: &std::io::Error) -> WireError {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => WireError::Dropped(what),
        _ => WireError::Io(what, e.to_string()),
    }
}

/// A reply as one line for logs, events and DSNs: `550 5.1.1 User unknown`.
pub fn reply_line(r: &Reply) -> String {
    let mut s = r.code.to_string();
    if let Some(e) = r.enhanced {
        s.push(' ');
        s.push_str(&e.to_string());
    }
    let text = r.text();
    if !text.is_empty() {
        s.push(' ');
        s.push_str(&text);
    }
    s
}
