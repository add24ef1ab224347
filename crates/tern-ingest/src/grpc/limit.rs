//! The per-call limits of the Send API, which keep slow, stuck or too many callers from tying up the process.
//! The transport limits every gRPC listener shares (connections, streams per connection, keepalive) are
//! [`tern_server::grpc::ServerLimits`].
//!
//! | limit | where | what a caller sees |
//! |---|---|---|
//! | the API key | [`tern_server::auth::AuthInterceptor`], before the body is read | `UNAUTHENTICATED` |
//! | request size: `Send` up to `max_message_size` + 1 MiB, `SendBatch` up to 4 × `max_message_size` + 1 MiB | tonic's decoder, from the frame header | `OUT_OF_RANGE` |
//! | in-flight budget ([`CallLimits::max_in_flight`] slots; `SendBatch` takes [`BATCH_WEIGHT`]) | the Submission wrapper, after the key check | the call waits; `UNAVAILABLE` if no slot frees before its deadline |
//! | the deadline of a call ([`call_deadline`]), slot wait and upload included | the Submission wrapper | `DEADLINE_EXCEEDED` |
//!
//! Health and reflection are outside the in-flight budget and the deadline, so a saturated server still
//! answers health checks, and reflection streams stay open as long as the client wants.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tern_proto::v1::submission_server::SubmissionServer;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use super::service::SubmissionService;

/// The default base of a call's deadline ([`CallLimits::request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The default in-flight budget ([`CallLimits::max_in_flight`]).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// The slowest upload a call's deadline allows for, in bytes per second (1 MiB/s, about 8 Mbit/s): a
/// request of the largest allowed size still arrives in time on such a link.
pub const MIN_UPLOAD_RATE: u64 = 1024 * 1024;

/// The slots of the in-flight budget a `SendBatch` call takes (a `Send` takes one): a batch may carry four
/// times as many bytes, so the budget bounds the request bodies buffered at once whatever the mix of calls.
pub const BATCH_WEIGHT: u32 = 4;

/// No call's deadline is longer than this, however large the limits: a day.
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// The per-call limits of the Send API. There are no configuration keys for them yet: the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// The time a call may take besides its upload: the deadline of a Submission call is this plus the time
    /// its largest allowed request takes at [`MIN_UPLOAD_RATE`] (see [`call_deadline`]). Waiting for a slot
    /// of the in-flight budget counts towards it.
    pub request_timeout: Duration,
    /// Submission calls in progress over all connections, counted in `Send`-sized slots (a `SendBatch`
    /// takes [`BATCH_WEIGHT`]). A call that finds no free slot waits for one. Zero counts as one.
    pub max_in_flight: u32,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// The deadline of a call whose request may be up to `max_request` bytes: `request_timeout` plus the time
/// `max_request` bytes take at [`MIN_UPLOAD_RATE`], at most a day. With the defaults (`max_message_size`
/// 50 MiB) that is about 111 s for `Send` and 261 s for `SendBatch`.
pub fn call_deadline(request_timeout: Duration, max_request: usize) -> Duration {
    let bytes = u64::try_from(max_request).unwrap_or(u64::MAX);
    let upload = Duration::from_millis(bytes.saturating_mul(1000) / MIN_UPLOAD_RATE);
    request_timeout.saturating_add(upload).min(MAX_DEADLINE)
}

/// When the service must have its answer ready, so that it beats the call's deadline: nine tenths of the way
/// from the call's arrival to its deadline. [`LimitedSubmission`] puts it into the request's extensions; the
/// service stops repeating queue writes by then (see [`crate::enqueue::Bounds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AnswerBy(pub(crate) Instant);

impl AnswerBy {
    /// Nine tenths of the way from `arrival` to `arrival + deadline`.
    pub(crate) fn new(arrival: Instant, deadline: Duration) -> AnswerBy {
        AnswerBy(arrival + deadline.mul_f64(0.9))
    }
}

/// How one method is served: its server (with its own decode limit), its weight and its deadline.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// The Submission server, configured with this method's decode limit.
    pub(crate) server: SubmissionServer<SubmissionService>,
    /// The slots of the in-flight budget a call takes.
    pub(crate) weight: u32,
    /// How long a call may take, from its arrival (before waiting for a slot) to its answer.
    pub(crate) deadline: Duration,
}

/// The Submission service behind the limits: picks the method's [`Route`], waits for a slot of the
/// in-flight budget and cuts the call off at its deadline.
///
/// tonic configures the decode limit per service, not per method, so `Send` and `SendBatch` are each
/// served by their own instance of the one service: `Send` gets a limit of one message instead of four.
#[derive(Clone, Debug)]
pub(crate) struct LimitedSubmission {
    send: Route,
    batch: Route,
    slots: Arc<Semaphore>,
    max_in_flight: u32,
}

impl LimitedSubmission {
    /// `send` serves `Send` (and methods this build does not know, which it answers `UNIMPLEMENTED`);
    /// `batch` serves `SendBatch`; together they may use `max_in_flight` slots.
    pub(crate) fn new(send: Route, batch: Route, max_in_flight: u32) -> Self {
        let max_in_flight = max_in_flight.max(1);
        // A weight over the whole budget would wait for ever.
        let clamp = |r: Route| Route {
            weight: r.weight.clamp(1, max_in_flight),
            ..r
        };
        LimitedSubmission {
            send: clamp(send),
            batch: clamp(batch),
            slots: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
        }
    }
}

impl LimitedSubmission {
    /// A handle on the calls in progress, to wait for at shutdown.
    pub(crate) fn calls(&self) -> CallsInProgress {
        CallsInProgress {
            slots: Arc::clone(&self.slots),
            max_in_flight: self.max_in_flight,
        }
    }
}

/// The Submission calls in progress on a server (those holding a slot of the in-flight budget, and those
/// waiting for one), for a shutdown to wait until they have answered.
#[derive(Clone, Debug)]
pub struct CallsInProgress {
    slots: Arc<Semaphore>,
    max_in_flight: u32,
}

impl CallsInProgress {
    /// Returns once no call is in progress: every slot of the budget is free at once. The budget is fair,
    /// so calls already waiting for a slot are served (and answer) first. Calls that start later may run
    /// after it returned.
    pub async fn finished(&self) {
        // The semaphore is never closed; if it were, no call could hold a slot either.
        if let Ok(all) = self.slots.acquire_many(self.max_in_flight).await {
            drop(all);
        }
    }
}

impl NamedService for LimitedSubmission {
    const NAME: &'static str = <SubmissionServer<SubmissionService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for LimitedSubmission {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The budget is taken per call inside its future, where the method (hence the weight) is known;
        // refusing readiness here would stall every stream of the connection alike.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The router hands over only paths under `/tern.v1.Submission/`: the last segment is the method.
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let route = if method == "SendBatch" {
            self.batch.clone()
        } else {
            self.send.clone()
        };
        let method = method.to_owned();
        let slots = Arc::clone(&self.slots);
        let max_in_flight = self.max_in_flight;
        Box::pin(async move {
            let arrival = Instant::now();
            let deadline = arrival + route.deadline;
            req.extensions_mut()
                .insert(AnswerBy::new(arrival, route.deadline));
            let permit = match tokio::time::timeout_at(deadline, slots.acquire_many_owned(route.weight)).await
            {
                Ok(Ok(permit)) => permit,
                // Closed never happens (the semaphore is never closed); either way nothing was done.
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(%method, max_in_flight, "gRPC call refused: no free slot before its deadline");
                    // UNAVAILABLE, not RESOURCE_EXHAUSTED: nothing was done, and retry policies repeat it.
                    return Ok(Status::unavailable(
                        "the server is busy (all its calls in progress); nothing was queued, retry later",
                    )
                    .into_http());
                }
            };
            let mut server = route.server;
            let Ok(()) =
                std::future::poll_fn(|cx| Service::<http::Request<Body>>::poll_ready(&mut server, cx)).await;
            let answer = tokio::time::timeout_at(deadline, server.call(req)).await;
            drop(permit);
            match answer {
                Ok(response) => response,
                Err(_) => {
                    let secs = route.deadline.as_secs();
                    tracing::warn!(%method, deadline_s = secs, "gRPC call cut off at its deadline");
                    // The call may have been cut off after the queue took the message but before it answered.
                    Ok(Status::deadline_exceeded(format!(
                        "the call took longer than {secs} s (upload included) and was cut off; it may or may \
                         not have been queued: repeat it with the same idempotency_key"
                    ))
                    .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_allows_the_largest_request_at_the_minimum_rate() {
        let base = Duration::from_secs(60);
        assert_eq!(call_deadline(base, 0), base);
        assert_eq!(call_deadline(base, 51 * 1024 * 1024), Duration::from_secs(111));
        assert_eq!(call_deadline(base, 512 * 1024), Duration::from_millis(60_500));
        assert_eq!(call_deadline(base, usize::MAX), MAX_DEADLINE);
        assert_eq!(call_deadline(Duration::MAX, 1), MAX_DEADLINE);
    }
}
