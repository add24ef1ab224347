//! The control plane's listener has the transport limits of every tern gRPC listener (it once had none of
//! the ingest port's): checked on the wire, in the HTTP/2 SETTINGS the server announces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 section 6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// The SETTINGS the server sends first on an HTTP/2 connection to `addr`, as (identifier, value) pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The client connection preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.unwrap();
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await.unwrap();
        let (kind, flags) = (header[3], header[4]);
        if kind == 0x4 && flags & 0x1 == 0 {
            return payload
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
        }
    }
}

#[tokio::test]
async fn the_control_port_limits_streams_per_connection_like_the_ingest_port() {
    let control = common::start(None).await;
    let addr: SocketAddr = control.url.trim_start_matches("http://").parse().unwrap();
    let settings = tokio::time::timeout(Duration::from_secs(5), server_settings(addr))
        .await
        .expect("the server's SETTINGS");
    let streams = settings
        .iter()
        .find(|(id, _)| *id == MAX_CONCURRENT_STREAMS)
        .map(|(_, value)| *value);
    assert_eq!(
        streams,
        Some(tern_server::grpc::limits::DEFAULT_MAX_CONCURRENT_STREAMS),
        "{settings:?}"
    );
}
