//! Spans that follow one message across processes.
//!
//! A message's trace starts where it is received: [`message_span`] (SMTP: a new trace per message, linked
//! to its session's span; gRPC: a new trace, or the caller's when the call carries a W3C `traceparent`).
//! The enqueue span's context is stored with the message as a W3C `traceparent` ([`TracedQueue`] does it),
//! and every worker that picks one of its jobs continues that trace: [`record_claim`] adds a `claim` span
//! per job, [`delivery_span`] is the parent of the attempt (DNS lookups, connect, TLS, the SMTP
//! transaction) and of the `complete` span. One trace therefore follows a message from the API call to the
//! remote server's reply, on whatever nodes did the work.
//!
//! Every function here is harmless when no OTLP endpoint is configured: there is no trace to store or to
//! continue, and spans are only log context.
//!
//! [`TracedQueue`]: crate::TracedQueue

use std::collections::HashMap;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tern_queue::{Claim, Job};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::Listener;

/// The W3C header (and the stored form) of a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The W3C `traceparent` of `span`, when it is part of a trace (OTLP export on).
pub fn traceparent(span: &Span) -> Option<String> {
    traceparent_of(&span.context())
}

/// The W3C `traceparent` of an OpenTelemetry context with a valid span.
fn traceparent_of(context: &Context) -> Option<String> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The context named by a W3C `traceparent`; `None` when it is malformed.
pub fn context_of(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` (not entered yet) continue the trace of `traceparent`, when there is one.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(context) = traceparent.and_then(context_of) {
        let _ = span.set_parent(context);
    }
}

/// The span of one received message (`message_receive`): the root of the message's trace. Over SMTP it is
/// linked to the session's span (the current span), which carries many messages; over gRPC it continues
/// the caller's `traceparent` when the call carries one.
pub fn message_span(listener: Listener, caller: Option<&str>) -> Span {
    let session = Span::current().context();
    let span = tracing::info_span!("message_receive", listener = listener.as_str());
    match caller.and_then(context_of) {
        Some(context) => {
            let _ = span.set_parent(context);
        }
        None => {
            let _ = span.set_parent(Context::new());
        }
    }
    let session = session.span().span_context().clone();
    if session.is_valid() {
        span.add_link(session);
    }
    span
}

/// The span of one delivery attempt of `job` (`delivery`), continuing the trace stored with its message.
pub fn delivery_span(job: &Job) -> Span {
    let span = tracing::info_span!(
        "delivery",
        message_id = %job.id.message,
        job = %job.id,
        domain = %job.domain,
        attempt = job.attempts + 1,
    );
    continue_trace(&span, job.trace.as_deref());
    span
}

/// A `claim` span in the trace of each claimed job, from `started` to `ended`: the claim is made before the
/// jobs (and their traces) are known, so the spans are recorded afterwards with the claim's times.
pub fn record_claim(claim: &Claim, owner: &str, started: SystemTime, ended: SystemTime) {
    let tracer = opentelemetry::global::tracer(crate::metrics::METER_NAME);
    for claimed in &claim.jobs {
        let Some(parent) = claimed.job.trace.as_deref().and_then(context_of) else {
            continue;
        };
        let mut span = tracer
            .span_builder("claim")
            .with_start_time(started)
            .with_attributes([
                KeyValue::new("job", claimed.job.id.to_string()),
                KeyValue::new("domain", claim.domain.clone()),
                KeyValue::new("owner", owner.to_string()),
                KeyValue::new(
                    "jobs_in_claim",
                    i64::try_from(claim.jobs.len()).unwrap_or(i64::MAX),
                ),
            ])
            .start_with_context(&tracer, &parent);
        span.end_with_timestamp(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_garbage_is_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = context_of(text).unwrap();
        assert_eq!(traceparent_of(&context).as_deref(), Some(text));
        assert!(context_of("not a traceparent").is_none());
        assert!(context_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn without_a_tracing_layer_nothing_is_stored() {
        let span = tracing::info_span!("enqueue");
        assert_eq!(traceparent(&span), None);
    }
}
