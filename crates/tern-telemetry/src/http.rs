//! The metrics and health listener (`telemetry.metrics_listen`): plain HTTP/1.1 with three paths.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | every metric as Prometheus text (exposition format 0.0.4) |
//! | `GET /healthz` | `200 ok` while the process runs (the liveness probe) |
//! | `GET /readyz` | `200 ready`, or `503` with the reason (starting, queue store unreachable, draining) |
//!
//! It keeps answering during a drain, so that `/readyz` says `draining` and the last metrics can be scraped,
//! and stops when the process stops.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use tern_core::Shutdown;

use crate::TelemetryError;
use crate::readiness::Readiness;

/// What the handlers read.
#[derive(Clone)]
struct Shared {
    registry: prometheus::Registry,
    readiness: Readiness,
}

/// The listener, bound and not yet serving.
#[derive(Debug)]
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    registry: prometheus::Registry,
    readiness: Readiness,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) for `registry`'s metrics and `readiness`.
    pub async fn bind(
        addr: SocketAddr,
        registry: prometheus::Registry,
        readiness: Readiness,
    ) -> Result<HttpServer, TelemetryError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        Ok(HttpServer {
            listener,
            local_addr,
            registry,
            readiness,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `stop`; requests in progress finish.
    pub async fn serve(self, stop: Shutdown) -> Result<(), TelemetryError> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(Shared {
                registry: self.registry,
                readiness: self.readiness,
            });
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(TelemetryError::Serve)
    }
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let families = shared.registry.gather();
    let mut body = Vec::new();
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, String) {
    let state = shared.readiness.state();
    let status = if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", state.reason()))
}
