//! tern's telemetry: logs, traces, metrics and health, set up once per process from `[telemetry]` and
//! recorded into by every role.
//!
//! * **Logs** ([`logs`]): `tracing` events to standard error, `text` or `json`, filtered by
//!   `telemetry.log_level` (the `RUST_LOG` syntax); JSON lines have unique keys, and no colour codes are
//!   written unless standard error is a terminal.
//! * **Traces** ([`trace`], [`TracedQueue`]): `tracing` spans go to OpenTelemetry and are exported over
//!   OTLP/gRPC when `telemetry.otlp_endpoint` is set. A message's trace context is stored with it in the
//!   queue and continued by the worker that delivers it.
//! * **Metrics** ([`metrics`], [`gauges`]): instruments of the OpenTelemetry metrics API, read by two readers:
//!   a Prometheus registry served at `/metrics`, and an OTLP exporter when `telemetry.otlp_endpoint` is set.
//!   The Prometheus text comes from `opentelemetry-prometheus` (the OpenTelemetry project's exporter, of the
//!   same release as the SDK): it builds with the workspace's versions and needs no encoder of our own.
//! * **Health** ([`readiness`], [`http`]): `/healthz`, `/readyz` and `/metrics` on `telemetry.metrics_listen`.
//!
//! ```no_run
//! # async fn demo(cfg: &tern_config::TelemetryConfig) -> Result<(), tern_telemetry::TelemetryError> {
//! let telemetry = tern_telemetry::Telemetry::init(cfg, "worker")?;
//! tern_telemetry::metrics().connection(tern_telemetry::metrics::ConnectionKind::Opened);
//! telemetry.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod gauges;
pub mod http;
pub mod logs;
pub mod metrics;
mod queue;
pub mod readiness;
pub mod trace;

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tern_config::TelemetryConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use metrics::{Metrics, metrics};
pub use queue::{TracedQueue, is_store_error};
pub use readiness::Readiness;

/// How often metrics are pushed over OTLP.
const OTLP_METRICS_EVERY: Duration = Duration::from_secs(30);

/// What spans go to OpenTelemetry: tern's at `info` and above, never those of the exporter's own transport
/// (they would trace every export).
const TRACE_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Why telemetry could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `telemetry.log_level` is not a filter.
    #[error("telemetry.log_level {value:?} is not a valid filter: {reason}")]
    Filter {
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// An exporter or the logger could not be set up.
    #[error("telemetry: {0}")]
    Setup(String),
    /// The metrics listener could not be bound.
    #[error("cannot listen for metrics on {addr} (telemetry.metrics_listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics listener failed.
    #[error("metrics listener: {0}")]
    Serve(std::io::Error),
}

/// The metric reader behind `/metrics`: the instruments' names as they are (the contract's names carry
/// their unit already), counters with `_total`, and no `otel_scope_*` labels or `target_info` series.
pub fn prometheus_reader(
    registry: &prometheus::Registry,
) -> Result<opentelemetry_prometheus::PrometheusExporter, TelemetryError> {
    opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_units()
        .without_target_info()
        .scope_info_enabled(false)
        .build()
        .map_err(|e| TelemetryError::Setup(format!("Prometheus exporter: {e}")))
}

/// The process's telemetry, set up: keep it for the process's life and [`Telemetry::shutdown`] it at the
/// end, which flushes the spans and metrics not exported yet.
#[derive(Debug)]
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sets up logs, traces and metrics from `cfg` for a process running `role` (`ingest`, `worker`,
    /// `control`, `all`), and installs them for the whole process. Must run inside a tokio runtime: the
    /// OTLP exporters' gRPC channels live on it. Fails on a bad filter, or when a logger is installed already.
    pub fn init(cfg: &TelemetryConfig, role: &str) -> Result<Telemetry, TelemetryError> {
        let log_filter = EnvFilter::try_new(&cfg.log_level).map_err(|e| TelemetryError::Filter {
            value: cfg.log_level.clone(),
            reason: e.to_string(),
        })?;
        let resource = Resource::builder()
            .with_service_name("tern")
            .with_attributes([
                KeyValue::new("tern.role", role.to_string()),
                KeyValue::new("process.pid", i64::from(std::process::id())),
            ])
            .build();
        let endpoint = cfg.otlp_endpoint.trim();
        let endpoint = (!endpoint.is_empty()).then_some(endpoint);

        let registry = prometheus::Registry::new();
        let prometheus_reader = prometheus_reader(&registry)?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prometheus_reader);
        if let Some(endpoint) = endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| TelemetryError::Setup(format!("OTLP metrics exporter: {e}")))?;
            meters = meters.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(OTLP_METRICS_EVERY)
                    .build(),
            );
        }
        let meters = meters.build();
        opentelemetry::global::set_meter_provider(meters.clone());
        if !metrics::install(&meters.meter(metrics::METER_NAME)) {
            return Err(TelemetryError::Setup(
                "metrics were recorded before telemetry was set up".into(),
            ));
        }

        let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![
            logs::layer(cfg.log_format, std::io::stderr, logs::stderr_is_terminal())
                .with_filter(log_filter)
                .boxed(),
        ];
        let tracer = match endpoint {
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(|e| TelemetryError::Setup(format!("OTLP span exporter: {e}")))?;
                let provider = SdkTracerProvider::builder()
                    .with_resource(resource)
                    .with_batch_exporter(exporter)
                    .build();
                opentelemetry::global::set_tracer_provider(provider.clone());
                opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
                let filter = EnvFilter::try_new(TRACE_FILTER)
                    .map_err(|e| TelemetryError::Setup(format!("trace filter: {e}")))?;
                layers.push(
                    tracing_opentelemetry::layer()
                        .with_tracer(provider.tracer(metrics::METER_NAME))
                        .with_filter(filter)
                        .boxed(),
                );
                Some(provider)
            }
            None => None,
        };
        tracing_subscriber::registry()
            .with(layers)
            .try_init()
            .map_err(|e| TelemetryError::Setup(format!("cannot install the logger: {e}")))?;
        Ok(Telemetry {
            registry,
            meters,
            tracer,
        })
    }

    /// The Prometheus registry `/metrics` serves.
    pub fn registry(&self) -> prometheus::Registry {
        self.registry.clone()
    }

    /// Whether spans are exported (an OTLP endpoint is set).
    pub fn traces_exported(&self) -> bool {
        self.tracer.is_some()
    }

    /// Exports what is left (spans, the last metrics) and stops the exporters. The exporters block their
    /// thread while they flush, so this runs on a blocking thread, not on the runtime's.
    pub async fn shutdown(self) {
        let Telemetry { meters, tracer, .. } = self;
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(tracer) = tracer
                && let Err(e) = tracer.shutdown()
            {
                eprintln!("tern: telemetry: flushing spans failed: {e}");
            }
            if let Err(e) = meters.shutdown() {
                eprintln!("tern: telemetry: flushing metrics failed: {e}");
            }
        })
        .await;
        if let Err(e) = flushed {
            eprintln!("tern: telemetry: shutdown failed: {e}");
        }
    }
}
