//! The listener's accept loop: the connection limit and the first-bytes deadline (see [`super::limits`]).
//!
//! tonic serves whatever stream of connections it is given; this one accepts from the bound TCP listener,
//! closes a connection at once when [`ServerLimits::max_connections`] are open, and hands the rest over
//! wrapped in a [`Connection`], which holds its slot until tonic drops it and fails its reads once
//! [`ServerLimits::handshake_timeout`] has passed without a byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ServerLimits;

/// How long to pause after a failed accept (out of file descriptors and the like), so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The stream of accepted connections tonic serves. It never ends and never yields an error: accept errors
/// are logged and retried.
pub(crate) type Incoming = Pin<Box<dyn Stream<Item = Result<Connection, io::Error>> + Send>>;

/// Accepts from `listener` within `limits`.
pub(crate) fn incoming(listener: TcpListener, limits: &ServerLimits) -> Incoming {
    let max_connections = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    let first_bytes = limits.handshake_timeout;
    Box::pin(futures::stream::unfold(
        (listener, slots),
        move |(listener, slots)| async move {
            let connection = accept(&listener, &slots, max_connections, first_bytes).await;
            Some((Ok(connection), (listener, slots)))
        },
    ))
}

/// The next connection that gets a slot.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    max_connections: u32,
    first_bytes: Duration,
) -> Connection {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = Arc::clone(slots).try_acquire_owned() else {
                    // Closing at once (rather than leaving it in the backlog) lets the client fail over now.
                    tracing::info!(
                        peer = %peer.ip(),
                        max_connections,
                        "gRPC connection refused: too many connections"
                    );
                    continue;
                };
                // Small replies go out at once; tonic's own TCP settings do not apply to a custom accept loop.
                let _ = stream.set_nodelay(true);
                return Connection {
                    stream,
                    _slot: permit,
                    first_bytes: Some(Box::pin(tokio::time::sleep(first_bytes))),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "gRPC accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// An accepted connection: the TCP stream, its slot of the connection limit, and the deadline for its
/// first bytes (`None` once some have arrived).
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    first_bytes: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = &mut this.first_bytes {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no bytes from the client before the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    /// The same as a plain `TcpStream`'s, so that `Request::remote_addr` works as usual.
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}
