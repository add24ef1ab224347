//! What delivery records into tern's telemetry: a span and a count per DNS lookup, a span and a duration
//! per SMTP transaction, and per recipient of each attempt its outcome, the remote reply's class and, once
//! delivered, the time since it was queued. The call sites are one line each; the rest is here.

use std::future::Future;
use std::time::Instant;

use futures::FutureExt;
use hickory_resolver::net::NetError;
use tern_queue::{Job, Outcome, OutcomeKind, RecipientStatus};
use tern_telemetry::metrics::{DeliveryOutcome, DnsKind, DnsOutcome, ReplyClass};
use tracing::Instrument;

use crate::smtp::RecipientReply;

/// Runs one DNS lookup of `name` in a `dns_lookup` span and counts it by `kind` and how it ended.
pub(crate) async fn dns<T>(
    kind: DnsKind,
    name: &str,
    lookup: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    let span = tracing::info_span!("dns_lookup", kind = kind.as_str(), name);
    let result = lookup.instrument(span).await;
    let outcome = match &result {
        Ok(_) => DnsOutcome::Ok,
        Err(e) if e.is_nx_domain() => DnsOutcome::NxDomain,
        Err(e) if crate::route::is_no_data(e) => DnsOutcome::NoData,
        Err(_) => DnsOutcome::Error,
    };
    tern_telemetry::metrics().dns_lookup(kind, outcome);
    result
}

/// Runs one message's SMTP transaction(s) in an `smtp_transaction` span and records its duration.
///
/// A wrapper around `send` rather than an `async fn`: an `async fn` would hold `send` twice in its state
/// (the argument and the future it awaits), and this runs once per message with a future of kilobytes.
pub(crate) fn transaction<F: Future>(send: F) -> impl Future<Output = F::Output> {
    let started = Instant::now();
    send.instrument(tracing::info_span!("smtp_transaction"))
        .map(move |output| {
            tern_telemetry::metrics().smtp_transaction(started.elapsed().as_secs_f64());
            output
        })
}

/// Counts an attempt's recipients by outcome and reply class, and the queued-to-delivered time of those
/// delivered, from the outcome about to be recorded and the replies behind it.
pub(crate) fn attempt(job: &Job, replies: &[(u32, RecipientReply)], outcome: &Outcome, now_ms: u64) {
    let metrics = tern_telemetry::metrics();
    for result in &outcome.recipients {
        let reply = replies
            .iter()
            .find(|(index, _)| *index == result.index)
            .map(|(_, r)| r);
        let class = match reply {
            Some(RecipientReply::Remote(r)) => ReplyClass::of_code(r.code),
            Some(RecipientReply::Local(_)) | None => ReplyClass::None,
        };
        // A recipient failed on a temporary reply has run out of time: it expired, it did not bounce.
        let temporary = reply.is_some_and(|r| r.reply().code / 100 == 4)
            || (reply.is_none() && matches!(outcome.kind, OutcomeKind::Expired));
        let counted = match result.status {
            RecipientStatus::Delivered => {
                let seconds = now_ms.saturating_sub(job.first_queued_ms) as f64 / 1000.0;
                metrics.delivery_latency(seconds);
                DeliveryOutcome::Delivered
            }
            RecipientStatus::Pending => DeliveryOutcome::Deferred,
            RecipientStatus::Failed if temporary => DeliveryOutcome::Expired,
            RecipientStatus::Failed => DeliveryOutcome::Bounced,
        };
        metrics.delivery(counted, class, 1);
    }
}
