//! The gRPC server bootstrap every listener of tern goes through, so that each has the same transport
//! limits, health and reflection, whatever role serves on it.
//!
//! ```no_run
//! # use tern_proto::v1::submission_server::{Submission, SubmissionServer};
//! # async fn demo(
//! #     submission: SubmissionServer<impl Submission>,
//! #     shutdown: tern_server::Shutdown,
//! # ) -> Result<(), tern_server::grpc::GrpcServerError> {
//! use tern_server::grpc::{GrpcServerBuilder, ServerLimits};
//!
//! let server = GrpcServerBuilder::new(ServerLimits::default())
//!     .service(submission, tern_proto::v1::FILE_DESCRIPTOR_SET)
//!     .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
//!     .await?;
//! println!("gRPC on {}", server.local_addr());
//! let health = server.health(); // for the role to report whether it can work
//! server.serve(shutdown).await
//! # }
//! ```
//!
//! What a listener serves, besides the role's services:
//!
//! * `grpc.health.v1.Health`: one status for the server and each of its services, SERVING from the bind,
//!   NOT_SERVING from shutdown; the role sets it in between through a [`HealthHandle`];
//! * `grpc.reflection.v1` and `v1alpha`: listing the role's services, health and reflection, nothing else
//!   (`reflection`);
//! * the limits of [`ServerLimits`]: connections, first bytes (and TLS handshake), streams per connection,
//!   keepalive ([`mod@limits`], enforced partly by `incoming`).
//!
//! Shutdown: when the [`Shutdown`] is cancelled, health turns NOT_SERVING, the listener closes, and calls in
//! progress finish; [`BoundGrpcServer::serve`] returns once every connection has closed (a caller wanting a
//! bound on that wait aborts the task after a grace period).
//!
//! | module | what |
//! |---|---|
//! | [`mod@limits`] | [`ServerLimits`] and their defaults |
//! | `incoming` | the accept loop: connection limit, first-bytes deadline |
//! | `health` | [`HealthHandle`] |
//! | `reflection` | reflection limited to the listener's services |

mod health;
mod incoming;
pub mod limits;
mod reflection;

use std::convert::Infallible;
use std::net::SocketAddr;

use tern_core::Shutdown;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, Bytes, Service, StdError, http};
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::{Server, ServerTlsConfig};

pub use health::HealthHandle;
pub use limits::ServerLimits;
pub use reflection::STANDARD_SERVICES;

/// Why a gRPC listener could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServerError {
    /// The listener could not be bound.
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS settings are unusable.
    #[error("gRPC TLS: {0}")]
    Tls(String),
    /// The reflection service could not be built from the descriptor sets.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// The server failed while running.
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// The services of one listener and its settings, before it is bound.
#[derive(Debug)]
pub struct GrpcServerBuilder {
    limits: ServerLimits,
    tls: Option<ServerTlsConfig>,
    routes: RoutesBuilder,
    services: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
}

impl GrpcServerBuilder {
    /// A listener with `limits`, serving nothing yet.
    pub fn new(limits: ServerLimits) -> Self {
        GrpcServerBuilder {
            limits,
            tls: None,
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            descriptor_sets: Vec::new(),
        }
    }

    /// Speaks TLS with `tls` (None: plaintext). The handshake must finish within
    /// [`ServerLimits::handshake_timeout`].
    pub fn tls(mut self, tls: Option<ServerTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves `service` (any tonic server, possibly wrapped in an interceptor or a limit of the role's),
    /// under its [`NamedService::NAME`]. `descriptor_set` is an encoded `FileDescriptorSet` that defines it,
    /// for reflection; it may define other services too, which are not listed.
    pub fn service<S, B>(mut self, service: S, descriptor_set: &'static [u8]) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError>,
    {
        self.routes.add_service(service);
        self.services.push(S::NAME);
        if !self.descriptor_sets.contains(&descriptor_set) {
            self.descriptor_sets.push(descriptor_set);
        }
        self
    }

    /// Builds health and reflection, checks the TLS settings and binds `addr` (port 0 picks a free port).
    /// Health reports SERVING from now on.
    pub async fn bind(mut self, addr: SocketAddr) -> Result<BoundGrpcServer, GrpcServerError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = HealthHandle::new(reporter, self.services.clone());
        health.set_serving().await;
        self.routes.add_service(health_service);
        reflection::add_reflection(&mut self.routes, &self.services, &self.descriptor_sets)?;

        let limits = &self.limits;
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_concurrent_streams(limits.max_concurrent_streams);
        if let Some(tls) = self.tls {
            server = server
                .tls_config(tls.timeout(limits.handshake_timeout))
                .map_err(|e| GrpcServerError::Tls(e.to_string()))?;
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| GrpcServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| GrpcServerError::Bind { addr, source })?;
        Ok(BoundGrpcServer {
            listener,
            local_addr,
            server,
            routes: self.routes.routes(),
            health,
            limits: self.limits,
            services: self.services,
        })
    }
}

/// A bound gRPC listener with its services, not yet serving.
#[derive(Debug)]
pub struct BoundGrpcServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    server: Server,
    routes: Routes,
    health: HealthHandle,
    limits: ServerLimits,
    services: Vec<&'static str>,
}

impl BoundGrpcServer {
    /// The address actually bound (the port is known here when the bind asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's health status, for the role to report whether it can do its work.
    pub fn health(&self) -> HealthHandle {
        self.health.clone()
    }

    /// The fully qualified names of the role's services on this listener (health and reflection aside).
    pub fn services(&self) -> &[&'static str] {
        &self.services
    }

    /// Serves until `shutdown` is cancelled; then health reports NOT_SERVING, no new connection is accepted,
    /// and calls in progress finish. Returns once every connection has closed.
    pub async fn serve(mut self, shutdown: Shutdown) -> Result<(), GrpcServerError> {
        let health = self.health;
        let signal = async move {
            shutdown.cancelled().await;
            health.set_not_serving().await;
        };
        let incoming = incoming::incoming(self.listener, &self.limits);
        self.server
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|e| GrpcServerError::Serve(e.to_string()))
    }
}
