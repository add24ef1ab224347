//! The gRPC Send API: the `tern.v1.Submission` service (`proto/tern/v1/submission.proto`) on the listener
//! that [`tern_server::grpc`] sets up for every role, with its health service and reflection (listing only
//! Submission) and its transport limits.
//!
//! ```no_run
//! # use tern_ingest::grpc::GrpcError;
//! # async fn demo(queue: std::sync::Arc<dyn tern_queue::Queue>) -> Result<(), GrpcError> {
//! use tern_ingest::grpc::{GrpcServer, GrpcSettings};
//!
//! let shutdown = tern_core::Shutdown::new();
//! let server = GrpcServer::bind(&GrpcSettings::default(), queue).await?;
//! println!("gRPC on {}", server.local_addr());
//! server.run(shutdown).await
//! # }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`service`] | the Submission implementation: status codes, idempotency, batches |
//! | [`limit`] | request sizes, deadlines, the in-flight budget |
//! | [`compose`] | composed parts to MIME (mail-builder); raw messages checked (mail-parser); Bcc removal |
//! | [`validate`] | field checks whose errors name the field path |
//!
//! The API keys file and the Bearer check (an interceptor, before the body is read) are
//! [`tern_server::auth`], shared with the control plane.

pub mod compose;
pub mod limit;
pub mod service;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tern_core::Shutdown;
use tern_proto::v1::FILE_DESCRIPTOR_SET;
use tern_proto::v1::submission_server::SubmissionServer;
use tern_queue::Queue;
use tern_server::auth::{AuthError, Authenticator};
use tern_server::grpc::{GrpcServerBuilder, GrpcServerError, HealthHandle, ServerLimits};
use tonic::service::interceptor::InterceptedService;

use crate::enqueue::EnqueueRetry;
use limit::{LimitedSubmission, Route};

pub use limit::{CallLimits, CallsInProgress};
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
    /// The host name in generated Message-IDs (`ingest.hostname`); `None`: the system's host name
    /// ([`tern_server::system_hostname`]).
    pub hostname: Option<String>,
    /// Deadlines and the in-flight budget of Submission calls (no configuration keys: the defaults).
    pub limits: CallLimits,
    /// The transport limits of the listener, the same as every gRPC listener's (no configuration keys: the
    /// defaults).
    pub server_limits: ServerLimits,
    /// How long a queue write whose outcome is unknown is repeated (`ingest.enqueue_retry_for`).
    pub enqueue_retry: EnqueueRetry,
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
            limits: CallLimits::default(),
            server_limits: ServerLimits::default(),
            enqueue_retry: EnqueueRetry::from_config(cfg),
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
            limits: CallLimits::default(),
            server_limits: ServerLimits::default(),
            enqueue_retry: EnqueueRetry::default(),
        }
    }
}

/// Why the gRPC listener could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The API keys file is unusable, or there is none for a listener that is not on loopback.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The listener could not be bound, or failed while serving.
    #[error(transparent)]
    Server(#[from] GrpcServerError),
}

/// The gRPC server, built from its settings.
#[derive(Debug)]
pub struct GrpcServer;

impl GrpcServer {
    /// The check [`GrpcServer::bind`] makes before it binds: the keys file loads, and a listener without one
    /// is on loopback. What `tern check-config` runs.
    pub fn check(settings: &GrpcSettings) -> Result<(), GrpcError> {
        Authenticator::for_listener("ingest", settings.listen, settings.api_keys_file.as_deref())?;
        Ok(())
    }

    /// Loads the keys file, checks that a keyless listener is on loopback, and binds the listener.
    pub async fn bind(settings: &GrpcSettings, queue: Arc<dyn Queue>) -> Result<BoundGrpcServer, GrpcError> {
        Self::bind_with_dkim(settings, queue, None).await
    }

    /// [`GrpcServer::bind`], signing every message with the DKIM keys of `dkim` before it is queued.
    pub async fn bind_with_dkim(
        settings: &GrpcSettings,
        queue: Arc<dyn Queue>,
        dkim: Option<Arc<tern_dkim::SharedSigners>>,
    ) -> Result<BoundGrpcServer, GrpcError> {
        let auth = Authenticator::for_listener("ingest", settings.listen, settings.api_keys_file.as_deref())?;
        let hostname = settings
            .hostname
            .clone()
            .unwrap_or_else(tern_server::system_hostname);
        // Cancelled when the server is told to stop (see `run`): calls repeating a queue write stop then.
        let stop = Shutdown::new();
        let service = SubmissionService::new(
            queue,
            auth,
            Limits {
                max_message_size: settings.max_message_size,
                max_recipients: settings.max_recipients,
                hostname,
            },
        )
        .with_enqueue_retry(settings.enqueue_retry)
        .with_stop(stop.clone())
        .with_dkim(dkim);
        let max_send = settings.max_message_size.saturating_add(REQUEST_OVERHEAD);
        let max_batch = settings
            .max_message_size
            .saturating_mul(BATCH_MESSAGES)
            .saturating_add(REQUEST_OVERHEAD);
        let limits = &settings.limits;
        let route = |max_request: usize, weight: u32| Route {
            server: SubmissionServer::new(service.clone())
                .max_decoding_message_size(max_request)
                .max_encoding_message_size(max_request),
            weight,
            deadline: limit::call_deadline(limits.request_timeout, max_request),
        };
        // The interceptor is outermost: a call without a valid key is answered from its metadata alone,
        // before it takes a slot of the budget and before tonic reads its body.
        let limited = LimitedSubmission::new(
            route(max_send, 1),
            route(max_batch, limit::BATCH_WEIGHT),
            limits.max_in_flight,
        );
        let calls = limited.calls();
        let submission = InterceptedService::new(limited, service.interceptor());
        let listener = GrpcServerBuilder::new(settings.server_limits.clone())
            .service(submission, FILE_DESCRIPTOR_SET)
            .bind(settings.listen)
            .await?;
        Ok(BoundGrpcServer {
            listener,
            max_send,
            max_batch,
            max_in_flight: limits.max_in_flight,
            stop,
            calls,
        })
    }
}

/// A bound gRPC server, not yet serving.
#[derive(Debug)]
pub struct BoundGrpcServer {
    listener: tern_server::grpc::BoundGrpcServer,
    /// The decode limit of a `Send` request.
    max_send: usize,
    /// The decode limit of a `SendBatch` request.
    max_batch: usize,
    max_in_flight: u32,
    /// The service's stop signal, cancelled with the `shutdown` given to [`BoundGrpcServer::run`].
    stop: Shutdown,
    calls: CallsInProgress,
}

impl BoundGrpcServer {
    /// The address actually bound (the port is known here when the settings said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The listener's health status (SERVING from the bind until shutdown), for the role to report
    /// whether it can queue mail.
    pub fn health(&self) -> HealthHandle {
        self.listener.health()
    }

    /// The Submission calls in progress, for a shutdown to wait until they have answered before it closes
    /// the client connections left (tonic's graceful shutdown waits for those to close, which an idle
    /// client channel never does).
    pub fn calls_in_progress(&self) -> CallsInProgress {
        self.calls.clone()
    }

    /// Serves Submission, reflection and health until `shutdown` is cancelled; then health reports
    /// NOT_SERVING, no new connection is accepted, and calls in progress finish: a call repeating a queue
    /// write stops repeating once its attempt in progress ends (at most the queue's own timeout), and answers
    /// `UNAVAILABLE`, saying whether the message may have been queued.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), GrpcError> {
        tracing::info!(
            addr = %self.local_addr(),
            max_send = self.max_send,
            max_batch = self.max_batch,
            max_in_flight = self.max_in_flight,
            "gRPC Send API listening"
        );
        let stop = self.stop;
        let signal = shutdown.clone();
        let relay = tokio::spawn(async move {
            signal.cancelled().await;
            stop.cancel();
        });
        let served = self.listener.serve(shutdown).await;
        relay.abort();
        Ok(served?)
    }
}

/// Binds with `settings` and serves until `shutdown` is cancelled.
pub async fn serve(
    settings: &GrpcSettings,
    queue: Arc<dyn Queue>,
    shutdown: Shutdown,
) -> Result<(), GrpcError> {
    GrpcServer::bind(settings, queue).await?.run(shutdown).await
}
