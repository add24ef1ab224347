//! tern's control plane: the `tern.v1.QueueAdmin` and `tern.v1.Events` gRPC services
//! (`proto/tern/v1/admin.proto`), with server reflection and `grpc.health.v1`, on `control.grpc_listen`.
//!
//! Operators inspect and repair the queue through it (with `ternctl`) without touching Redis. Calls carry
//! `authorization: Bearer <admin key>`, checked against `control.api_keys_file` (the ingest keys file format,
//! separate keys); without a keys file the listener must be a loopback address. TLS is optional
//! (`control.tls_cert`, `control.tls_key`), and so is mutual TLS (`control.client_ca`).
//!
//! ```no_run
//! # async fn demo(queue: std::sync::Arc<dyn tern_queue::Queue>) -> Result<(), tern_control::ControlError> {
//! let shutdown = tern_control::CancellationToken::new();
//! let server = tern_control::ControlServer::bind(&tern_config::ControlConfig::default(), queue).await?;
//! println!("control plane on {}", server.local_addr());
//! server.run(shutdown).await
//! # }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`admin`] | QueueAdmin: status, shape, listing, one message, retry/bounce/delete, suspensions |
//! | [`events`] | Events: Watch |
//! | [`shape`] | the qshape age buckets (pure) |
//! | [`convert`] | queue model to protobuf, filters, error statuses |
#![forbid(unsafe_code)]

pub mod admin;
pub mod convert;
pub mod events;
pub mod shape;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tern_config::ControlConfig;
use tern_ingest::grpc::Authenticator;
use tern_proto::v1::FILE_DESCRIPTOR_SET;
use tern_proto::v1::events_server::EventsServer;
use tern_proto::v1::queue_admin_server::QueueAdminServer;
use tern_queue::Queue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use admin::AdminService;
pub use events::EventsService;
pub use tokio_util::sync::CancellationToken;

pub use tern_proto::v1::{EVENTS_SERVICE, QUEUE_ADMIN_SERVICE};

/// Why the control plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The listener could not be bound.
    #[error("cannot listen for the control plane on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin keys file could not be read or has a bad line.
    #[error("control.api_keys_file: {0}")]
    KeysFile(String),
    /// No keys file, and the listener is not on loopback: anyone who can reach it could empty the queue.
    #[error(
        "control.grpc_listen {0} is not a loopback address but control.api_keys_file is not set: set an admin \
         keys file (see `tern apikey`) or listen on 127.0.0.1"
    )]
    NoKeysOnPublicListener(SocketAddr),
    /// A TLS file could not be read, or the TLS settings are unusable.
    #[error("control TLS: {0}")]
    Tls(String),
    /// The server failed while running.
    #[error("control gRPC server: {0}")]
    Serve(String),
}

/// The control-plane server.
#[derive(Debug)]
pub struct ControlServer;

impl ControlServer {
    /// Loads the admin keys and the TLS files, checks that a keyless listener is on loopback, and binds.
    pub async fn bind(config: &ControlConfig, queue: Arc<dyn Queue>) -> Result<Bound, ControlError> {
        let listen = config.grpc_listen;
        let auth = match config.api_keys_file.as_deref() {
            Some(path) => Authenticator::for_listener(listen, Some(path))
                .map_err(|e| ControlError::KeysFile(e.to_string()))?,
            None if listen.ip().is_loopback() => Authenticator::Open,
            None => return Err(ControlError::NoKeysOnPublicListener(listen)),
        };
        if let Authenticator::Keys(keys) = &auth
            && keys.is_empty()
        {
            tracing::warn!("the admin keys file lists no key: every control call will be refused");
        }
        let tls = tls_config(config)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ControlError::Bind { addr: listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ControlError::Bind { addr: listen, source })?;
        Ok(Bound {
            listener,
            local_addr,
            auth: Arc::new(auth),
            tls,
            queue,
        })
    }
}

/// The TLS settings named by `config`, if any.
fn tls_config(config: &ControlConfig) -> Result<Option<ServerTlsConfig>, ControlError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if config.client_ca.is_none() => return Ok(None),
        _ => {
            return Err(ControlError::Tls(
                "tls_cert and tls_key go together, and client_ca needs both".into(),
            ));
        }
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| ControlError::Tls(format!("{}: {e}", p.display())));
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// A bound control-plane server, not yet serving.
pub struct Bound {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    auth: Arc<Authenticator>,
    tls: Option<ServerTlsConfig>,
    queue: Arc<dyn Queue>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The address actually bound (the port is known here when the configuration said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves QueueAdmin, Events, reflection and health until `shutdown` is cancelled; then health reports
    /// NOT_SERVING, no new connection is accepted, and calls in progress finish (open Watch streams end).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ControlError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in [QUEUE_ADMIN_SERVICE, EVENTS_SERVICE] {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ControlError::Serve(format!("reflection: {e}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ControlError::Serve(format!("reflection: {e}")))?;
        let admin_auth = Arc::clone(&self.auth);
        let admin = QueueAdminServer::with_interceptor(
            AdminService::new(Arc::clone(&self.queue)),
            move |req: tonic::Request<()>| admin_auth.authenticate(req.metadata()).map(|_| req),
        );
        let events_auth = Arc::clone(&self.auth);
        let events = EventsServer::with_interceptor(
            EventsService::new(Arc::clone(&self.queue)),
            move |req: tonic::Request<()>| events_auth.authenticate(req.metadata()).map(|_| req),
        );
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| ControlError::Tls(e.to_string()))?;
        }
        tracing::info!(addr = %self.local_addr, "control plane listening");
        let stop = shutdown.clone();
        let signal = async move {
            stop.cancelled().await;
            for name in [QUEUE_ADMIN_SERVICE, EVENTS_SERVICE] {
                health
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        };
        builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(admin)
            .add_service(events)
            .serve_with_incoming_shutdown(TcpIncoming::from(self.listener).with_nodelay(Some(true)), signal)
            .await
            .map_err(|e| ControlError::Serve(e.to_string()))
    }
}

/// Binds with `config` and serves until `shutdown` is cancelled.
pub async fn serve(
    config: &ControlConfig,
    queue: Arc<dyn Queue>,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    ControlServer::bind(config, queue).await?.run(shutdown).await
}
