//! A real OTLP/gRPC receiver on loopback: the collector's `TraceService` and `MetricsService` (from
//! `opentelemetry-proto`) served by tonic on its own runtime thread, keeping every span and every metric data
//! point it is sent.
//!
//! (The metrics service is generated when `opentelemetry-proto`'s `metrics` feature is on, which tern's own
//! `opentelemetry-otlp` turns on.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use tern_testkit::ports::wait_until;

/// One span as received.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    /// Hex.
    pub trace_id: String,
    /// Hex.
    pub span_id: String,
    /// Hex; empty for a root.
    pub parent_span_id: String,
    /// The sending process's `tern.role` resource attribute (`ingest`, `worker`, `all`...).
    pub role: String,
    /// The sending process's `process.pid`.
    pub pid: i64,
    /// The span's attributes, as text.
    pub attributes: HashMap<String, String>,
    /// The spans it links to (not its parent): `(trace id, span id)`, hex.
    pub links: Vec<(String, String)>,
}

/// One metric data point as received: a sum's or gauge's value, or a histogram's count.
#[derive(Clone, Debug)]
pub struct ReceivedPoint {
    /// The instrument's name (`tern_messages_received`: OTLP names carry no `_total`).
    pub metric: String,
    /// `sum`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// The point's attributes, as text.
    pub attributes: HashMap<String, String>,
    /// The value; a histogram's count.
    pub value: f64,
    /// The sending process's `tern.role` resource attribute.
    pub role: String,
    /// The sending process's `process.pid`.
    pub pid: i64,
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<ReceivedSpan>>>);

#[derive(Clone, Default)]
struct MetricStore(Arc<Mutex<Vec<ReceivedPoint>>>);

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

fn texts(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            let role = text(attribute(&resource, "tern.role"));
            let pid = text(attribute(&resource, "process.pid")).parse().unwrap_or(-1);
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        role: role.clone(),
                        pid,
                        attributes: texts(&span.attributes),
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        self.0.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for MetricStore {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_metrics in request.into_inner().resource_metrics {
            let resource = resource_metrics
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            let role = text(attribute(&resource, "tern.role"));
            let pid = text(attribute(&resource, "process.pid")).parse().unwrap_or(-1);
            for scope in resource_metrics.scope_metrics {
                for metric in scope.metrics {
                    let mut point = |kind, attributes: &[KeyValue], value| {
                        received.push(ReceivedPoint {
                            metric: metric.name.clone(),
                            kind,
                            attributes: texts(attributes),
                            value,
                            role: role.clone(),
                            pid,
                        });
                    };
                    let number = |v: &Option<number_data_point::Value>| match v {
                        Some(number_data_point::Value::AsDouble(d)) => *d,
                        Some(number_data_point::Value::AsInt(i)) => *i as f64,
                        None => f64::NAN,
                    };
                    match &metric.data {
                        Some(Data::Sum(sum)) => {
                            for p in &sum.data_points {
                                point("sum", &p.attributes, number(&p.value));
                            }
                        }
                        Some(Data::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                point("gauge", &p.attributes, number(&p.value));
                            }
                        }
                        Some(Data::Histogram(histogram)) => {
                            for p in &histogram.data_points {
                                point("histogram", &p.attributes, p.count as f64);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.0.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    store: Store,
    metrics: MetricStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Serves on a free loopback port.
    pub fn start() -> OtlpReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Store::default();
        let service = TraceServiceServer::new(store.clone()).max_decoding_message_size(64 << 20);
        let metrics = MetricStore::default();
        let metrics_service = MetricsServiceServer::new(metrics.clone()).max_decoding_message_size(64 << 20);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tonic::transport::Server::builder()
                    .add_service(service)
                    .add_service(metrics_service)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        OtlpReceiver {
            addr,
            store,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for `telemetry.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.0.lock().unwrap().clone()
    }

    /// Every metric data point received so far, oldest export first (sums are cumulative: the last
    /// point of a series is its value).
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.metrics.0.lock().unwrap().clone()
    }

    /// The latest value of `metric` sent by process `pid` with every attribute of `labels`, summed over
    /// the series that match (their other attributes differing); `None` before the first such export.
    pub fn latest(&self, pid: i64, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut series: HashMap<Vec<(String, String)>, f64> = HashMap::new();
        for p in self.points() {
            let matches = p.pid == pid
                && p.metric == metric
                && labels
                    .iter()
                    .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v));
            if matches {
                let mut key: Vec<(String, String)> = p.attributes.into_iter().collect();
                key.sort();
                series.insert(key, p.value);
            }
        }
        (!series.is_empty()).then(|| series.values().sum())
    }

    /// Waits until `done` holds for the spans received, polling every 100 ms.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&[ReceivedSpan]) -> bool) {
        wait_until(what, timeout, Duration::from_millis(100), || {
            Ok(done(&self.spans()))
        })
        .unwrap_or_else(|e| panic!("{e:#}\nspans received: {}", summary(&self.spans())));
    }
}

/// One line per span name with its count, for failure messages.
pub fn summary(spans: &[ReceivedSpan]) -> String {
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for s in spans {
        *counts.entry((s.name.as_str(), s.role.as_str())).or_default() += 1;
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|((name, role), n)| format!("{name} ({role}): {n}"))
        .collect();
    lines.sort();
    lines.join(", ")
}

/// The traces (by trace id) whose spans include every name of `names`, sent by more than one process.
pub fn traces_across_processes<'a>(spans: &'a [ReceivedSpan], names: &[&str]) -> Vec<Vec<&'a ReceivedSpan>> {
    let mut by_trace: HashMap<&str, Vec<&ReceivedSpan>> = HashMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.as_str()).or_default().push(s);
    }
    by_trace
        .into_values()
        .filter(|trace| {
            let pids: std::collections::HashSet<i64> = trace.iter().map(|s| s.pid).collect();
            pids.len() > 1 && names.iter().all(|n| trace.iter().any(|s| s.name == *n))
        })
        .collect()
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
