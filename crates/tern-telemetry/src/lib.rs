//! tern's telemetry: logs, traces, metrics and health, set up once per process from `[telemetry]` and
//! recorded into by every role.
//!
//! * **Logs** ([`logs`]): `tracing` events to standard error, `text` or `json`, filtered by
//!   `telemetry.log_level` (the `RUST_LOG` syntax); JSON lines have unique keys, and no colour codes are
//!   written unless standard error is a terminal.
//! * **Traces** ([`trace`], [`TracedQueue`]): `tracing` spans go to OpenTelemetry and are exported over
//!   OTLP/gRPC when `telemetry.otlp_endpoint` is set (`https://`: over TLS, the collector verified against the
//!   Mozilla roots). A message's trace context is stored with it in the
//!   queue and continued by the worker that delivers it.
//! * **Metrics** ([`metrics`], [`gauges`]): instruments of the OpenTelemetry metrics API, read by two readers:
//!   a Prometheus registry served at `/metrics`, and an OTLP exporter, every
//!   `telemetry.otlp_metrics_interval`, when `telemetry.otlp_endpoint` is set. The MTA-STS code's DNS
//!   lookups are counted through its lookup observer, set here.
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

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tern_config::TelemetryConfig;
use tern_mta_sts::dns::{LookupKind, LookupOutcome};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use metrics::{Metrics, metrics};
pub use queue::{TracedQueue, is_store_error};
pub use readiness::Readiness;

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

/// `endpoint`'s channel settings: TLS for `https://`, verified against the Mozilla roots. (Left alone, the
/// exporter would speak TLS to an `https://` endpoint trusting no root at all, and every export would fail.)
fn tonic_endpoint<B: WithExportConfig + WithTonicConfig>(builder: B, endpoint: &str) -> B {
    let builder = builder.with_endpoint(endpoint);
    if endpoint.starts_with("https://") {
        builder.with_tls_config(ClientTlsConfig::new().with_webpki_roots())
    } else {
        builder
    }
}

/// The OTLP/gRPC metric exporter to `endpoint`. Needs a tokio runtime (the channel lives on it).
fn metric_exporter(endpoint: &str) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    tonic_endpoint(
        opentelemetry_otlp::MetricExporter::builder().with_tonic(),
        endpoint,
    )
    .build()
    .map_err(|e| TelemetryError::Setup(format!("OTLP metrics exporter: {e}")))
}

/// The OTLP/gRPC span exporter to `endpoint`. Needs a tokio runtime (the channel lives on it).
fn span_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    tonic_endpoint(opentelemetry_otlp::SpanExporter::builder().with_tonic(), endpoint)
        .build()
        .map_err(|e| TelemetryError::Setup(format!("OTLP span exporter: {e}")))
}

/// Counts one DNS query of the MTA-STS code (its TXT lookups, and its policy hosts' AAAA and A) in
/// `tern_dns_lookups`, with delivery's own.
fn count_mta_sts_lookup(kind: LookupKind, outcome: LookupOutcome) {
    let kind = match kind {
        LookupKind::Txt => metrics::DnsKind::Txt,
        LookupKind::A => metrics::DnsKind::A,
        LookupKind::Aaaa => metrics::DnsKind::Aaaa,
    };
    let outcome = match outcome {
        LookupOutcome::Ok => metrics::DnsOutcome::Ok,
        LookupOutcome::NxDomain => metrics::DnsOutcome::NxDomain,
        LookupOutcome::NoData => metrics::DnsOutcome::NoData,
        LookupOutcome::Error => metrics::DnsOutcome::Error,
    };
    metrics().dns_lookup(kind, outcome);
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
            meters = meters.with_reader(
                PeriodicReader::builder(metric_exporter(endpoint)?)
                    .with_interval(cfg.otlp_metrics_interval.get())
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
        // Set once per process, as the instruments are: a second `init` fails above.
        tern_mta_sts::dns::observe_lookups(count_mta_sts_lookup);

        let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![
            logs::layer(cfg.log_format, std::io::stderr, logs::stderr_is_terminal())
                .with_filter(log_filter)
                .boxed(),
        ];
        let tracer = match endpoint {
            Some(endpoint) => {
                let exporter = span_exporter(endpoint)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both exporters build for an `https://` collector (the TLS features are on, with roots to verify it)
    /// as for an `http://` one.
    #[tokio::test]
    async fn exporters_build_for_http_and_https_collectors() {
        for endpoint in ["http://127.0.0.1:4317", "https://otel.example.com:4317"] {
            metric_exporter(endpoint).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            span_exporter(endpoint).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        }
    }
}
