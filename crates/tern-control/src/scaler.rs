//! KEDA's external scaler (`externalscaler.ExternalScaler`, `proto/keda/externalscaler.proto`): the jobs
//! due or in delivery per worker, so that KEDA runs as many workers as the mail needs, and none when there
//! is nothing to do.
//!
//! Jobs in delivery count as much as due ones: a worker claims up to `delivery.max_batch` jobs at once, so
//! a busy cluster can have almost nothing due while thousands of jobs are in flight. Counting only the due
//! ones would scale the workers down (or to zero) in the middle of their batches; the stopped workers
//! would release their claims, the jobs would be due again, and KEDA would scale up again.
//!
//! | call | answer |
//! |---|---|
//! | `IsActive` | `true` while any job is due or in delivery ([`work`]) |
//! | `StreamIsActive` | the same, sent at once and then whenever it changes (checked every 5 s) |
//! | `GetMetricSpec` | one metric, `tern_jobs_due_or_in_flight`, with the target `jobsPerWorker` (metadata, default 100) |
//! | `GetMetrics` | the jobs due or in flight now, under the metric name asked for |
//! | `StreamMetricSpec` | `UNIMPLEMENTED` (optional: KEDA falls back to `GetMetricSpec`) |
//!
//! The service is served without the admin key: KEDA's gRPC client sends no bearer token, and the answers
//! reveal only how many jobs are due or in flight. Who may reach the port is the network's business (the NetworkPolicy
//! `tern-control` lets in the `keda` namespace and ternctl pods). A queue that cannot be read answers
//! `UNAVAILABLE`, and KEDA then holds the ScaledObject's fallback replica count.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tern_proto::keda::external_scaler_server::ExternalScaler;
use tern_proto::keda::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};
use tern_queue::Queue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::queue_status;

/// The metric KEDA's HPA scales on: jobs due now or in delivery.
pub const METRIC_NAME: &str = "tern_jobs_due_or_in_flight";
/// The ScaledObject metadata key of the due jobs one worker should take.
pub const JOBS_PER_WORKER_KEY: &str = "jobsPerWorker";
/// `jobsPerWorker` when the metadata has none.
pub const DEFAULT_JOBS_PER_WORKER: u64 = 100;
/// How often `StreamIsActive` looks at the queue.
const STREAM_EVERY: Duration = Duration::from_secs(5);

/// The external scaler over a queue.
#[derive(Clone)]
pub struct ScalerService {
    queue: Arc<dyn Queue>,
}

impl std::fmt::Debug for ScalerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalerService").finish_non_exhaustive()
    }
}

impl ScalerService {
    /// The scaler over `queue`.
    pub fn new(queue: Arc<dyn Queue>) -> Self {
        ScalerService { queue }
    }

    /// The work for workers now: see [`work`].
    async fn due(&self) -> Result<u64, Status> {
        let depths = self.queue.domain_depths().await.map_err(queue_status)?;
        Ok(work(&depths))
    }
}

/// The jobs a worker has to do now: those due (and claimable: a suspended domain's are not) plus those in
/// delivery, of every domain. Held jobs and jobs waiting for a later retry are not work yet.
pub fn work(depths: &[tern_queue::DomainDepth]) -> u64 {
    let in_flight: u64 = depths
        .iter()
        .map(|d| d.total.saturating_sub(d.waiting).saturating_sub(d.held))
        .sum();
    tern_telemetry::gauges::due_jobs(depths).saturating_add(in_flight)
}

/// `jobsPerWorker` from a ScaledObject's metadata: a whole number from 1 on.
pub fn jobs_per_worker(metadata: &HashMap<String, String>) -> Result<u64, Status> {
    let Some(text) = metadata.get(JOBS_PER_WORKER_KEY) else {
        return Ok(DEFAULT_JOBS_PER_WORKER);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Status::invalid_argument(format!(
            "scalerMetadata.{JOBS_PER_WORKER_KEY} {text:?} is not a whole number from 1 on"
        ))),
    }
}

fn metadata_of(object: Option<&ScaledObjectRef>) -> HashMap<String, String> {
    object.map(|o| o.scaler_metadata.clone()).unwrap_or_default()
}

/// A count as KEDA's int64 and double fields.
fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ExternalScaler for ScalerService {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        jobs_per_worker(&request.get_ref().scaler_metadata)?;
        let due = self.due().await?;
        Ok(Response::new(IsActiveResponse { result: due > 0 }))
    }

    type StreamIsActiveStream = Boxed<IsActiveResponse>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        jobs_per_worker(&request.get_ref().scaler_metadata)?;
        let first = self.due().await? > 0;
        let (tx, rx) = mpsc::channel(1);
        let scaler = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(IsActiveResponse { result: first })).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(STREAM_EVERY) => {}
                    () = tx.closed() => return,
                }
                // A failed reading is skipped: KEDA keeps the last answer, and the next reading may work.
                let Ok(due) = scaler.due().await else { continue };
                let active = due > 0;
                if active != last {
                    last = active;
                    if tx.send(Ok(IsActiveResponse { result: active })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let target = jobs_per_worker(&request.get_ref().scaler_metadata)?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: METRIC_NAME.to_string(),
                target_size: as_i64(target),
                target_size_float: target as f64,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        jobs_per_worker(&metadata_of(request.scaled_object_ref.as_ref()))?;
        let due = self.due().await?;
        // KEDA may ask under the name it gave the metric; the answer carries the name asked for.
        let metric_name = if request.metric_name.is_empty() {
            METRIC_NAME.to_string()
        } else {
            request.metric_name
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name,
                metric_value: as_i64(due),
                metric_value_float: due as f64,
            }],
        }))
    }

    type StreamMetricSpecStream = Boxed<GetMetricSpecResponse>;

    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        Err(Status::unimplemented(
            "StreamMetricSpec is not implemented: the metric spec only changes with the ScaledObject; use GetMetricSpec",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(domain: &str, waiting: u64, due: u64, held: u64, in_flight: u64) -> tern_queue::DomainDepth {
        tern_queue::DomainDepth {
            domain: domain.into(),
            waiting,
            due,
            held,
            total: waiting + held + in_flight,
            earliest_due_ms: None,
            active_claims: u64::from(in_flight > 0),
            concurrency_limit: None,
            suspension: None,
        }
    }

    #[test]
    fn work_counts_due_and_in_flight_jobs_but_not_held_or_later_ones() {
        let depths = [
            depth("busy.test", 30, 10, 0, 500),
            depth("later.test", 40, 0, 0, 0),
            depth("held.test", 0, 0, 7, 0),
        ];
        assert_eq!(work(&depths), 510);
        assert_eq!(work(&[depth("idle.test", 0, 0, 0, 0)]), 0);
    }

    #[test]
    fn jobs_per_worker_defaults_to_100_and_refuses_nonsense() {
        let mut metadata = HashMap::new();
        assert_eq!(jobs_per_worker(&metadata).unwrap(), 100);
        metadata.insert(JOBS_PER_WORKER_KEY.to_string(), " 250 ".to_string());
        assert_eq!(jobs_per_worker(&metadata).unwrap(), 250);
        for bad in ["0", "-3", "1.5", "many", ""] {
            metadata.insert(JOBS_PER_WORKER_KEY.to_string(), bad.to_string());
            let status = jobs_per_worker(&metadata).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
