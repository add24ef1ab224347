//! tern's control plane: the `tern.v1.QueueAdmin` and `tern.v1.Events` gRPC services
//! (`proto/tern/v1/admin.proto`), `tern.v1.MtaSts` (`proto/tern/v1/mta_sts.proto`) and KEDA's external scaler
//! (`proto/keda/externalscaler.proto`), on `control.grpc_listen`: the listener every role's gRPC server gets
//! from [`tern_server::grpc`], with its health service, reflection (listing only these four services) and
//! transport limits (keepalive, streams per connection, connections), the same as the ingest port's.
//!
//! Operators inspect and repair the queue through it (with `ternctl`) without touching Redis. Calls carry
//! `authorization: Bearer <admin key>`, checked against `control.api_keys_file` by [`tern_server::auth`] (the
//! ingest keys file format, separate keys); without a keys file the listener must be a loopback address. TLS is optional
//! (`control.tls_cert`, `control.tls_key`), and so is mutual TLS (`control.client_ca`).
//!
//! ```no_run
//! # async fn demo(queue: std::sync::Arc<dyn tern_queue::Queue>) -> Result<(), tern_control::ControlError> {
//! let shutdown = tern_core::Shutdown::new();
//! let server = tern_control::ControlServer::bind(&tern_config::ControlConfig::default(), queue).await?;
//! println!("control plane on {}", server.local_addr());
//! server.run(shutdown).await
//! # }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`admin`] | QueueAdmin: status, shape, listing, suspensions |
//! | [`actions`] | QueueAdmin: retry, bounce, delete, hold, release (ids or a filter, dry run, audit line) |
//! | [`history`] | QueueAdmin: one message, queued or finished; FindMessages |
//! | [`routes`] | QueueAdmin: domain routes |
//! | [`trace`] | SmtpTrace: live SMTP conversations from every worker |
//! | [`events`] | Events: Watch |
//! | [`mta_sts`] | MtaSts: the cluster-shared MTA-STS policy cache (get, refresh, list, evict) |
//! | [`tls_rpt`] | MtaSts: TLS reporting (a domain's counts, a report run on demand) |
//! | [`scaler`] | KEDA's external scaler (`externalscaler.ExternalScaler`): due jobs per worker, no admin key |
//! | [`shape`] | the qshape age buckets (pure) |
//! | [`convert`] | queue model to protobuf, filters, error statuses |
#![forbid(unsafe_code)]

pub mod actions;
pub mod admin;
pub mod convert;
pub mod events;
pub mod history;
pub mod mta_sts;
pub mod routes;
pub mod scaler;
pub mod shape;
pub mod tls_rpt;
pub mod trace;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tern_config::ControlConfig;
use tern_core::Shutdown;
use tern_proto::keda::external_scaler_server::ExternalScalerServer;
use tern_proto::v1::FILE_DESCRIPTOR_SET;
use tern_proto::v1::events_server::EventsServer;
use tern_proto::v1::mta_sts_server::MtaStsServer;
use tern_proto::v1::queue_admin_server::QueueAdminServer;
use tern_proto::v1::smtp_trace_server::SmtpTraceServer;
use tern_queue::{HistoryStore, Queue, RouteStore, TraceBus};
use tern_server::auth::{AuthError, AuthInterceptor, Authenticator};
use tern_server::grpc::{BoundGrpcServer, GrpcServerBuilder, GrpcServerError, HealthHandle, ServerLimits};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use admin::AdminService;
pub use events::EventsService;
pub use mta_sts::{MTA_STS_SERVICE, MtaStsService};
pub use scaler::ScalerService;
pub use trace::TraceService;

/// The former name of [`tern_core::Shutdown`], kept so that callers outside the role crates that still use
/// it (ternctl's tests) build; new code names [`tern_core::Shutdown`].
pub use tern_core::Shutdown as CancellationToken;

pub use tern_proto::v1::{EVENTS_SERVICE, QUEUE_ADMIN_SERVICE, SMTP_TRACE_SERVICE};

/// Why the control plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The admin keys file is unusable, or there is none for a listener that is not on loopback (anyone
    /// who can reach it could empty the queue).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A TLS file could not be read, or the TLS settings are unusable.
    #[error("control TLS: {0}")]
    Tls(String),
    /// The listener could not be bound, or failed while serving.
    #[error("control plane: {0}")]
    Server(#[from] GrpcServerError),
}

/// What `tern.v1.MtaSts` serves: the process's MTA-STS policy cache and its TLS reporter; a part that is
/// `None` (off in the configuration) answers FAILED_PRECONDITION.
#[derive(Clone, Debug, Default)]
pub struct StsServices {
    /// The policy cache (`delivery.mta_sts`): Get, Refresh, List, Evict.
    pub cache: Option<tern_mta_sts::PolicyCache>,
    /// The TLS reporter (`delivery.tls_rpt`): Report, SendReports.
    pub reporter: Option<tern_mta_sts::TlsReporter>,
}

/// The queue store's side stores the operator's toolkit needs: messages' history (finished messages,
/// FindMessages), domain routes, and the live SMTP trace bus. Normally the queue's own backend; without them
/// those calls answer FAILED_PRECONDITION and `tern.v1.SmtpTrace` is not served.
#[derive(Clone, Debug)]
pub struct OperatorStores {
    /// Messages' history.
    pub history: Arc<dyn HistoryStore>,
    /// Domain routes.
    pub routes: Arc<dyn RouteStore>,
    /// The live SMTP trace bus.
    pub traces: Arc<dyn TraceBus>,
}

/// The control-plane server.
#[derive(Debug)]
pub struct ControlServer;

impl ControlServer {
    /// The checks [`ControlServer::bind`] makes before it binds: the admin keys file loads (or a keyless
    /// listener is on loopback) and the TLS files are readable. What `tern check-config` runs.
    pub fn check(config: &ControlConfig) -> Result<(), ControlError> {
        Authenticator::for_listener("control", config.grpc_listen, config.api_keys_file.as_deref())?;
        tls_config(config)?;
        Ok(())
    }

    /// Loads the admin keys and the TLS files, checks that a keyless listener is on loopback, and binds.
    pub async fn bind(config: &ControlConfig, queue: Arc<dyn Queue>) -> Result<Bound, ControlError> {
        Self::bind_with(config, queue, None).await
    }

    /// [`ControlServer::bind`], also serving `tern.v1.MtaSts` over `sts`, the process's MTA-STS policy cache
    /// (`None`: MTA-STS is off, and the service answers FAILED_PRECONDITION), without TLS reporting.
    pub async fn bind_with(
        config: &ControlConfig,
        queue: Arc<dyn Queue>,
        sts: Option<tern_mta_sts::PolicyCache>,
    ) -> Result<Bound, ControlError> {
        let services = StsServices {
            cache: sts,
            reporter: None,
        };
        Self::bind_with_services(config, queue, services).await
    }

    /// [`ControlServer::bind`], also serving `tern.v1.MtaSts` over the process's MTA-STS `services`.
    pub async fn bind_with_services(
        config: &ControlConfig,
        queue: Arc<dyn Queue>,
        services: StsServices,
    ) -> Result<Bound, ControlError> {
        Self::bind_all(config, queue, services, None).await
    }

    /// [`ControlServer::bind_with_services`], also serving the operator's toolkit over `stores`: finished
    /// messages, FindMessages, routes and `tern.v1.SmtpTrace`. What `tern control` and `tern all` bind.
    pub async fn bind_all(
        config: &ControlConfig,
        queue: Arc<dyn Queue>,
        services: StsServices,
        stores: Option<OperatorStores>,
    ) -> Result<Bound, ControlError> {
        let auth = Arc::new(Authenticator::for_listener(
            "control",
            config.grpc_listen,
            config.api_keys_file.as_deref(),
        )?);
        let tls = tls_config(config)?;
        let has_tls = tls.is_some();
        let mut admin_service = AdminService::new(Arc::clone(&queue));
        if let Some(stores) = &stores {
            admin_service =
                admin_service.with_stores(Arc::clone(&stores.history), Arc::clone(&stores.routes));
        }
        let admin =
            QueueAdminServer::with_interceptor(admin_service, AuthInterceptor::new(Arc::clone(&auth)));
        let trace = stores.map(|s| {
            SmtpTraceServer::with_interceptor(
                TraceService::new(s.traces),
                AuthInterceptor::new(Arc::clone(&auth)),
            )
        });
        let events = EventsServer::with_interceptor(
            EventsService::new(Arc::clone(&queue)),
            AuthInterceptor::new(Arc::clone(&auth)),
        );
        // Served even when MTA-STS is off, so that a client learns why (FAILED_PRECONDITION) rather than
        // meeting UNIMPLEMENTED.
        let service = MtaStsService::with_reporter(services.cache, services.reporter);
        let mta_sts = MtaStsServer::with_interceptor(service, AuthInterceptor::new(auth));
        // No admin key: KEDA sends none, and the scaler only tells how many jobs are due (see `scaler`).
        let scaler = ExternalScalerServer::new(ScalerService::new(queue));
        let mut builder = GrpcServerBuilder::new(ServerLimits::default())
            .tls(tls)
            .service(admin, FILE_DESCRIPTOR_SET)
            .service(events, FILE_DESCRIPTOR_SET)
            .service(mta_sts, FILE_DESCRIPTOR_SET)
            .service(scaler, tern_proto::keda::FILE_DESCRIPTOR_SET);
        if let Some(trace) = trace {
            builder = builder.service(trace, FILE_DESCRIPTOR_SET);
        }
        let listener = builder.bind(config.grpc_listen).await?;
        Ok(Bound { listener, has_tls })
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
#[derive(Debug)]
pub struct Bound {
    listener: BoundGrpcServer,
    has_tls: bool,
}

impl Bound {
    /// The address actually bound (the port is known here when the configuration said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The listener's health status (SERVING from the bind until shutdown), for the role to report whether
    /// it can reach the queue.
    pub fn health(&self) -> HealthHandle {
        self.listener.health()
    }

    /// Serves QueueAdmin, Events, MtaSts, the scaler, reflection and health until `shutdown` is cancelled;
    /// then health reports NOT_SERVING, no new connection is accepted, and calls in progress finish (open
    /// Watch streams end).
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ControlError> {
        tracing::info!(grpc = %self.local_addr(), tls = self.has_tls, "control plane listening");
        Ok(self.listener.serve(shutdown).await?)
    }
}

/// Binds with `config` and serves until `shutdown` is cancelled.
pub async fn serve(
    config: &ControlConfig,
    queue: Arc<dyn Queue>,
    shutdown: Shutdown,
) -> Result<(), ControlError> {
    ControlServer::bind(config, queue).await?.run(shutdown).await
}
