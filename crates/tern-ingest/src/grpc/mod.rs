//! The gRPC Send API: the `tern.v1.Submission` service (`proto/tern/v1/submission.proto`), with server
//! reflection and the standard health service (`grpc.health.v1.Health`) on the same listener.
//!
//! ```no_run
//! # use tern_ingest::grpc::GrpcError;
//! # async fn demo(queue: std::sync::Arc<dyn tern_queue::Queue>) -> Result<(), GrpcError> {
//! use tern_ingest::grpc::{GrpcServer, GrpcSettings};
//!
//! let shutdown = tern_ingest::CancellationToken::new();
//! let server = GrpcServer::bind(&GrpcSettings::default(), queue).await?;
//! println!("gRPC on {}", server.local_addr());
//! server.run(shutdown).await
//! # }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`service`] | the Submission implementation: status codes, idempotency, batches |
//! | [`auth`] | the API keys file, the Bearer check (an interceptor, before the body is read), sender domains per key |
//! | [`limit`] | request sizes, deadlines, the in-flight budget, HTTP/2 streams and keepalive |
//! | [`compose`] | composed parts to MIME (mail-builder); raw messages checked (mail-parser); Bcc removal |
//! | [`validate`] | field checks whose errors name the field path |

pub mod auth;
pub mod compose;
pub mod limit;
pub mod service;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tern_proto::v1::FILE_DESCRIPTOR_SET;
use tern_proto::v1::submission_server::SubmissionServer;
use tern_queue::Queue;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use limit::{LimitedSubmission, Route};

pub use auth::{ApiKeys, AuthInterceptor, Authenticator, Principal};
pub use limit::ServerLimits;
pub use service::{Limits, SubmissionService};

/// The default gRPC listener (`ingest.grpc_listen`).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7071);

/// Room for protobuf framing and the other fields around a message of the maximum size (envelope,
/// recipients, headers, tags).
const REQUEST_OVERHEAD: usize = 1024 * 1024;

/// The messages' worth of bytes a `SendBatch` request may carry: the decode limit of the batch is this many
/// times `max_message_size`, plus [`REQUEST_OVERHEAD`].
const BATCH_MESSAGES: usize = 4;

/// The settings of the gRPC listener, taken from the `[ingest]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcSettings {
    /// Where to listen (`ingest.grpc_listen`).
    pub listen: SocketAddr,
    /// The API keys file (`ingest.api_keys_file`). Without one, calls need no key, which is allowed only
    /// on a loopback listener.
    pub api_keys_file: Option<PathBuf>,
    /// The largest message as queued, in bytes (`ingest.max_message_size`). A `Send` request may be up to
    /// this plus 1 MiB (for the other fields), a `SendBatch` request up to four times this plus 1 MiB (it
    /// carries several messages); a larger one is refused by the transport with `OUT_OF_RANGE`, as soon as
    /// its length is read and before its body is.
    pub max_message_size: usize,
    /// Recipients per message (`ingest.max_recipients`); the rest come back as rejected.
    pub max_recipients: usize,
    /// The host name in generated Message-IDs (`ingest.hostname`); `None`: the system's host name.
    pub hostname: Option<String>,
    /// Deadlines, the in-flight budget, streams per connection and keepalive (no configuration keys: the
    /// defaults).
    pub limits: ServerLimits,
}

impl GrpcSettings {
    /// The settings named by an `[ingest]` section: its gRPC keys, and the limits and host name it shares
    /// with SMTP submission.
    pub fn from_config(cfg: &tern_config::IngestConfig) -> Self {
        GrpcSettings {
            listen: cfg.grpc_listen,
            api_keys_file: cfg.api_keys_file.clone(),
            max_message_size: usize::try_from(cfg.max_message_size).unwrap_or(usize::MAX),
            max_recipients: cfg.max_recipients as usize,
            hostname: cfg.hostname.clone(),
            limits: ServerLimits::default(),
        }
    }
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            listen: DEFAULT_LISTEN,
            api_keys_file: None,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            hostname: None,
            limits: ServerLimits::default(),
        }
    }
}

/// Why the gRPC listener could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The listener could not be bound.
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The API keys file could not be read or has a bad line.
    #[error("API keys file {}: {message}", path.display())]
    KeysFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the line number).
        message: String,
    },
    /// No keys file, and the listener is not on loopback: anyone who can reach it could send mail.
    #[error(
        "gRPC listener {0} is not on a loopback address but no API keys file is set: set \
         ingest.api_keys_file (see `tern apikey`) or listen on 127.0.0.1"
    )]
    NoKeysOnPublicListener(SocketAddr),
    /// The server failed while running.
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// The gRPC server, built from its settings.
#[derive(Debug)]
pub struct GrpcServer;

impl GrpcServer {
    /// Loads the keys file, checks that a keyless listener is on loopback, and binds the listener.
    pub async fn bind(settings: &GrpcSettings, queue: Arc<dyn Queue>) -> Result<BoundGrpcServer, GrpcError> {
        let auth = Authenticator::for_listener(settings.listen, settings.api_keys_file.as_deref())?;
        if let Authenticator::Keys(keys) = &auth
            && keys.is_empty()
        {
            tracing::warn!("the API keys file lists no key: every gRPC call will be refused");
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| GrpcError::Bind {
                addr: settings.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| GrpcError::Bind {
            addr: settings.listen,
            source,
        })?;
        let hostname = settings.hostname.clone().unwrap_or_else(system_hostname);
        let limits = Limits {
            max_message_size: settings.max_message_size,
            max_recipients: settings.max_recipients,
            hostname,
        };
        Ok(BoundGrpcServer {
            listener,
            local_addr,
            max_send: settings.max_message_size.saturating_add(REQUEST_OVERHEAD),
            max_batch: settings
                .max_message_size
                .saturating_mul(BATCH_MESSAGES)
                .saturating_add(REQUEST_OVERHEAD),
            limits: settings.limits.clone(),
            service: SubmissionService::new(queue, auth, limits),
        })
    }
}

/// A bound gRPC server, not yet serving.
#[derive(Debug)]
pub struct BoundGrpcServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    /// The decode limit of a `Send` request.
    max_send: usize,
    /// The decode limit of a `SendBatch` request.
    max_batch: usize,
    limits: ServerLimits,
    service: SubmissionService,
}

impl BoundGrpcServer {
    /// The address actually bound (the port is known here when the settings said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves Submission, reflection and health until `shutdown` is cancelled; then health reports
    /// NOT_SERVING, no new connection is accepted, and calls in progress finish.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GrpcError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SubmissionServer<SubmissionService>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| GrpcError::Serve(format!("reflection: {e}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| GrpcError::Serve(format!("reflection: {e}")))?;
        let limits = &self.limits;
        let route = |max_request: usize, weight: u32| Route {
            server: SubmissionServer::new(self.service.clone())
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(max_request),
            weight,
            deadline: limit::call_deadline(limits.request_timeout, max_request),
        };
        let send = route(self.max_send, 1);
        let batch = route(self.max_batch, limit::BATCH_WEIGHT);
        // The interceptor is outermost: a call without a valid key is answered from its metadata alone,
        // before it takes a slot of the budget and before tonic reads its body.
        let submission = InterceptedService::new(
            LimitedSubmission::new(send, batch, limits.max_in_flight),
            self.service.interceptor(),
        );
        tracing::info!(
            addr = %self.local_addr,
            max_send = self.max_send,
            max_batch = self.max_batch,
            max_in_flight = limits.max_in_flight,
            "gRPC Send API listening"
        );
        let signal = async move {
            shutdown.cancelled().await;
            health
                .set_not_serving::<SubmissionServer<SubmissionService>>()
                .await;
        };
        Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(submission)
            .serve_with_incoming_shutdown(TcpIncoming::from(self.listener).with_nodelay(Some(true)), signal)
            .await
            .map_err(|e| GrpcError::Serve(e.to_string()))
    }
}

/// Binds with `settings` and serves until `shutdown` is cancelled.
pub async fn serve(
    settings: &GrpcSettings,
    queue: Arc<dyn Queue>,
    shutdown: CancellationToken,
) -> Result<(), GrpcError> {
    GrpcServer::bind(settings, queue).await?.run(shutdown).await
}

/// The kernel's host name, or `localhost`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
        .unwrap_or_else(|| "localhost".to_owned())
}
