//! The gRPC bootstrap over real loopback connections with real tonic clients: health as a handle,
//! reflection of exactly the listener's services, the connection limit and the first-bytes deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_proto::v1 as pb;
use tern_proto::v1::submission_server::{Submission, SubmissionServer};
use tern_server::Shutdown;
use tern_server::grpc::{BoundGrpcServer, GrpcServerBuilder, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// A Submission service that answers every call with `ABORTED`: enough to tell it apart from a route
/// that does not exist (`UNIMPLEMENTED`).
#[derive(Clone, Debug)]
struct Stub;

#[tonic::async_trait]
impl Submission for Stub {
    async fn send(&self, _: Request<pb::SendRequest>) -> Result<Response<pb::SendResponse>, Status> {
        Err(Status::aborted("stub"))
    }

    async fn send_batch(
        &self,
        _: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchResponse>, Status> {
        Err(Status::aborted("stub"))
    }
}

async fn bound(limits: ServerLimits) -> BoundGrpcServer {
    GrpcServerBuilder::new(limits)
        .service(SubmissionServer::new(Stub), pb::FILE_DESCRIPTOR_SET)
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

/// Serves `server` in the background; cancel the returned token to stop it.
fn serve(server: BoundGrpcServer) -> Shutdown {
    let shutdown = Shutdown::new();
    tokio::spawn(server.serve(shutdown.clone()));
    shutdown
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health_of(channel: &Channel, service: &str) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn list_services(channel: &Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn health_starts_serving_and_follows_the_handle() {
    let server = bound(ServerLimits::default()).await;
    let addr = server.local_addr();
    let health = server.health();
    let shutdown = serve(server);
    let channel = channel(addr).await;
    for service in ["", pb::SUBMISSION_SERVICE] {
        assert_eq!(health_of(&channel, service).await, ServingStatus::Serving as i32);
    }
    health.set_not_serving().await;
    for service in ["", pb::SUBMISSION_SERVICE] {
        assert_eq!(
            health_of(&channel, service).await,
            ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    health.set_serving().await;
    assert_eq!(
        health_of(&channel, pb::SUBMISSION_SERVICE).await,
        ServingStatus::Serving as i32
    );
    shutdown.cancel();
}

#[tokio::test]
async fn reflection_lists_only_the_services_of_the_listener() {
    let server = bound(ServerLimits::default()).await;
    let addr = server.local_addr();
    let shutdown = serve(server);
    let channel = channel(addr).await;
    assert_eq!(
        list_services(&channel).await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            pb::SUBMISSION_SERVICE,
        ]
    );
    // The descriptor set also defines the control plane's services: they are neither described...
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            pb::QUEUE_ADMIN_SERVICE.into(),
        )),
    };
    let mut replies = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    // tonic's reflection ends the stream with the status rather than sending an ErrorResponse.
    let err = replies.message().await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "QueueAdmin is described here: {err:?}"
    );
    // ...nor served, while the listener's own service is.
    let err = pb::queue_admin_client::QueueAdminClient::new(channel.clone())
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = pb::submission_client::SubmissionClient::new(channel)
        .send(pb::SendRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    shutdown.cancel();
}

/// Whether the server closes `stream` within `within` (a read gives end of file or a reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the server's HTTP/2 SETTINGS
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_connection_over_the_limit_is_closed_and_a_freed_slot_is_reused() {
    let limits = ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    };
    let server = bound(limits).await;
    let addr = server.local_addr();
    let shutdown = serve(server);

    let first = channel(addr).await;
    assert_eq!(health_of(&first, "").await, ServingStatus::Serving as i32);
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut second, Duration::from_secs(5)).await,
        "a second connection was kept open over a limit of one"
    );
    drop(first);
    // The slot is freed when the server notices the first connection has gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let third = channel(addr).await;
        let answered = tokio::time::timeout(
            Duration::from_millis(500),
            HealthClient::new(third).check(HealthCheckRequest::default()),
        )
        .await;
        if matches!(answered, Ok(Ok(_))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of a closed connection was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let limits = ServerLimits {
        handshake_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let server = bound(limits).await;
    let addr = server.local_addr();
    let shutdown = serve(server);

    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a silent connection stayed open"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");

    // A client that speaks is not cut off by the deadline once its first bytes arrived.
    let talking = channel(addr).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(health_of(&talking, "").await, ServingStatus::Serving as i32);
    // And a raw connection that sent something stays open past the deadline.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(
        !closed_within(&mut raw, Duration::from_millis(700)).await,
        "closed although it spoke"
    );
    shutdown.cancel();
}

/// The SETTINGS the server sends first on an HTTP/2 connection to `addr`, as (identifier, value) pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
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
async fn the_stream_limit_is_announced_in_the_http2_settings() {
    let limits = ServerLimits {
        max_concurrent_streams: 7,
        ..ServerLimits::default()
    };
    let server = bound(limits).await;
    let addr = server.local_addr();
    let shutdown = serve(server);
    let settings = tokio::time::timeout(Duration::from_secs(5), server_settings(addr))
        .await
        .expect("the server's SETTINGS");
    // SETTINGS_MAX_CONCURRENT_STREAMS is identifier 0x3 (RFC 9113 section 6.5.2).
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_serve_returns() {
    let server = bound(ServerLimits::default()).await;
    let addr = server.local_addr();
    let health = server.health();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(server.serve(shutdown.clone()));
    let probe = channel(addr).await;
    assert_eq!(health_of(&probe, "").await, ServingStatus::Serving as i32);
    // A watcher on the open connection sees the change as it happens.
    let mut watch = HealthClient::new(probe.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    shutdown.cancel();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    drop(watch);
    drop(probe);
    drop(health);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returns once the clients are gone")
        .unwrap()
        .unwrap();
}
