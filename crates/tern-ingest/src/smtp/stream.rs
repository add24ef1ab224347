//! A connection that is plain TCP or TLS, and can be upgraded by STARTTLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The connection of a session.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// Left behind while a STARTTLS handshake holds the TCP stream; reads end, writes fail.
    Closed,
}

impl Stream {
    /// Ends the session's side of the connection, all replies written: TLS sends its `close_notify` and
    /// shuts down the TCP write side. Plain TCP after `QUIT` does nothing: dropping the socket right after
    /// closes it with the same FIN, and a `shutdown(2)` there is one system call per message for nothing (in
    /// the benchmark most of them failed: the client had closed first). A close for an error still shuts
    /// down first, so that the FIN leaves before the client's unread commands make the close a reset.
    pub(crate) async fn finish(&mut self, after_quit: bool) -> io::Result<()> {
        if after_quit && matches!(self, Stream::Plain(_)) {
            return Ok(());
        }
        tokio::io::AsyncWriteExt::shutdown(self).await
    }

    /// Hands the kernel `data`, the last reply of a plain session that closes right after, to be sent with
    /// the close's FIN: `MSG_MORE` holds it until the close adds the FIN to the same segment, so the client
    /// gets its reply and the end of the connection in one segment instead of two (on loopback each segment
    /// is one more trip through both TCP stacks, in the sender's system call). Returns how many bytes the
    /// kernel took: 0 for TLS (its `close_notify` follows), off Linux, or when the socket would block; the
    /// caller writes the rest the usual way, which sends everything at once. A client that sent more after
    /// `QUIT`, still unread at the close, gets a reset without this reply (the kernel drops what it held),
    /// where it used to get the reply and then the reset: so only the `221` is held, never a reply to a
    /// message.
    pub(crate) fn write_before_close(&self, data: &[u8]) -> usize {
        #[cfg(target_os = "linux")]
        if let Stream::Plain(tcp) = self {
            return socket2::SockRef::from(tcp)
                .send_with_flags(data, libc::MSG_MORE | libc::MSG_NOSIGNAL)
                .unwrap_or(0);
        }
        let _ = data;
        0
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// On loopback a segment sent is in the peer's receive queue when `send` returns, so a reply the client
    /// cannot see yet is one held back for the close. Held data is not held for ever (a probe timer of at
    /// least 200 ms sends it), so a look that came late, on a stalled machine, is not counted: the attempt
    /// is made again.
    #[tokio::test]
    async fn the_last_reply_waits_for_the_close_and_arrives_whole_before_the_end_of_the_stream() {
        let reply = b"221 2.0.0 Bye\r\n";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for _attempt in 0..5 {
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let client = client.into_std().unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream = Stream::Plain(tcp);
            let sent = Instant::now();
            let taken = stream.write_before_close(reply);
            let mut early = [0u8; 64];
            let seen = client.peek(&mut early);
            let in_time = sent.elapsed() < Duration::from_millis(100);
            if cfg!(target_os = "linux") {
                assert_eq!(taken, reply.len());
                if !in_time {
                    continue;
                }
                assert!(
                    matches!(&seen, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                    "the reply left before the close: {seen:?}"
                );
            } else {
                assert_eq!(taken, 0);
                tokio::io::AsyncWriteExt::write_all(&mut stream, reply)
                    .await
                    .unwrap();
            }
            drop(stream);
            let mut got = Vec::new();
            TcpStream::from_std(client)
                .unwrap()
                .read_to_end(&mut got)
                .await
                .unwrap();
            assert_eq!(got, reply);
            return;
        }
        panic!("no attempt looked at the client's side within 100 ms of the send");
    }

    #[test]
    fn a_stream_left_closed_by_starttls_takes_nothing_before_the_close() {
        assert_eq!(Stream::Closed.write_before_close(b"221 2.0.0 Bye\r\n"), 0);
    }
}
