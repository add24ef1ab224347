//! [`TracedQueue`]: any [`Queue`] with its calls traced and its failures counted, for every role of the
//! binary to use in place of the bare queue.
//!
//! * `enqueue`: an `enqueue` span, whose context is stored with the message as its `traceparent` (a DSN,
//!   queued inside the attempt's span, so continues the trace of the message it reports on);
//! * `claim`: a `claim` span in the trace of each claimed job ([`crate::trace::record_claim`]);
//! * `complete`: a `complete` span, a child of the attempt's `delivery` span;
//! * every call that fails for the store's sake (unreachable, a backend error, a corrupt record) counts in
//!   `tern_queue_store_errors_total{operation}`; logic answers (not the owner, not found, an invalid
//!   message) are not store errors.
//!
//! Every other method is passed through unchanged. A method added to the trait with a default body must be
//! passed through here too, or the wrapper would answer with the default instead of the backend's.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tern_core::MessageId;
use tern_queue::{
    Claim, ClaimOutcome, Completion, Cursor, DomainDepth, EnqueueReceipt, Event, EventPos, Job, JobLease,
    ListFilter, MessageInfo, NewMessage, Outcome, Page, Queue, QueueCounts, QueueError, SlotHold, Stats,
    Suspension, Target, Wakeup,
};
use tracing::Instrument;

use crate::metrics::StoreOperation;

/// A queue whose calls are traced and whose store failures are counted (see the module docs).
pub struct TracedQueue<Q: ?Sized> {
    inner: std::sync::Arc<Q>,
}

impl<Q: ?Sized> TracedQueue<Q> {
    /// Wraps `inner`.
    pub fn new(inner: std::sync::Arc<Q>) -> Self {
        TracedQueue { inner }
    }
}

impl<Q: ?Sized> std::fmt::Debug for TracedQueue<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedQueue").finish_non_exhaustive()
    }
}

/// Whether `error` is the store's failure rather than a logic answer.
pub fn is_store_error(error: &QueueError) -> bool {
    matches!(
        error,
        QueueError::Unavailable(_) | QueueError::NotSent(_) | QueueError::Backend(_) | QueueError::Corrupt(_)
    )
}

/// Counts `result` in the store errors of `operation` when it is one; returns it.
fn counted<T>(operation: StoreOperation, result: Result<T, QueueError>) -> Result<T, QueueError> {
    if let Err(e) = &result
        && is_store_error(e)
    {
        crate::metrics().store_error(operation);
    }
    result
}

/// Stores the enqueue span's trace context with the message, so that its delivery continues the trace.
/// Without tracing, a context the message carries (a gRPC caller's `traceparent`) is kept as it is.
fn stamp(message: &mut NewMessage, span: &tracing::Span) {
    if let Some(traceparent) = crate::trace::traceparent(span) {
        message.trace = Some(traceparent);
    }
}

#[async_trait]
impl<Q: Queue + ?Sized> Queue for TracedQueue<Q> {
    async fn enqueue(&self, mut message: NewMessage) -> Result<EnqueueReceipt, QueueError> {
        let id = message.id.map(|i| i.to_string()).unwrap_or_default();
        let span = tracing::info_span!("enqueue", message_id = %id);
        stamp(&mut message, &span);
        counted(
            StoreOperation::Enqueue,
            self.inner.enqueue(message).instrument(span).await,
        )
    }

    async fn enqueue_batch(&self, mut messages: Vec<NewMessage>) -> Vec<Result<EnqueueReceipt, QueueError>> {
        let span = tracing::info_span!("enqueue", messages = messages.len());
        for m in &mut messages {
            stamp(m, &span);
        }
        let results = self.inner.enqueue_batch(messages).instrument(span).await;
        results
            .into_iter()
            .map(|r| counted(StoreOperation::Enqueue, r))
            .collect()
    }

    async fn claim_holding(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<Option<Claim>, QueueError> {
        let started = SystemTime::now();
        let result = self.inner.claim_holding(owner, max_batch, lease, holds).await;
        if let Ok(Some(claim)) = &result {
            crate::trace::record_claim(claim, owner, started, SystemTime::now());
        }
        counted(StoreOperation::Claim, result)
    }

    async fn claim_next(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<ClaimOutcome, QueueError> {
        let started = SystemTime::now();
        let result = self.inner.claim_next(owner, max_batch, lease, holds).await;
        if let Ok(ClaimOutcome::Claimed(claim)) = &result {
            crate::trace::record_claim(claim, owner, started, SystemTime::now());
        }
        counted(StoreOperation::Claim, result)
    }

    async fn wait_for_work(&self, max_wait: Duration) -> Wakeup {
        self.inner.wait_for_work(max_wait).await
    }

    async fn hold_slot(
        &self,
        domain: &str,
        claim_id: &str,
        hold: Duration,
    ) -> Result<Option<SlotHold>, QueueError> {
        counted(
            StoreOperation::Other,
            self.inner.hold_slot(domain, claim_id, hold).await,
        )
    }

    async fn drop_slot(&self, hold: &SlotHold) -> Result<(), QueueError> {
        counted(StoreOperation::Other, self.inner.drop_slot(hold).await)
    }

    async fn complete(
        &self,
        owner: &str,
        job: &JobLease,
        outcome: Outcome,
    ) -> Result<Completion, QueueError> {
        let span = tracing::info_span!("complete", job = %job.job);
        counted(
            StoreOperation::Complete,
            self.inner.complete(owner, job, outcome).instrument(span).await,
        )
    }

    async fn complete_batch(
        &self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
    ) -> Vec<Result<Completion, QueueError>> {
        let span = tracing::info_span!("complete", jobs = jobs.len());
        let results = self.inner.complete_batch(owner, jobs).instrument(span).await;
        results
            .into_iter()
            .map(|r| counted(StoreOperation::Complete, r))
            .collect()
    }

    async fn extend(&self, owner: &str, job: &JobLease, lease: Duration) -> Result<u64, QueueError> {
        counted(StoreOperation::Other, self.inner.extend(owner, job, lease).await)
    }

    async fn release(&self, owner: &str, job: &JobLease) -> Result<(), QueueError> {
        counted(StoreOperation::Other, self.inner.release(owner, job).await)
    }

    async fn reap(&self, now_ms: u64) -> Result<u64, QueueError> {
        counted(StoreOperation::Other, self.inner.reap(now_ms).await)
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageInfo>, QueueError> {
        counted(StoreOperation::Other, self.inner.get_message(id).await)
    }

    async fn read_body(&self, id: MessageId) -> Result<Option<Bytes>, QueueError> {
        counted(StoreOperation::Other, self.inner.read_body(id).await)
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError> {
        counted(
            StoreOperation::Other,
            self.inner.list(filter, cursor, limit).await,
        )
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        counted(StoreOperation::Other, self.inner.counts().await)
    }

    async fn domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError> {
        counted(StoreOperation::Other, self.inner.domain_depths().await)
    }

    async fn domain_depth(&self, domain: &str) -> Result<DomainDepth, QueueError> {
        counted(StoreOperation::Other, self.inner.domain_depth(domain).await)
    }

    async fn retry_now(&self, target: &Target) -> Result<u64, QueueError> {
        counted(StoreOperation::Other, self.inner.retry_now(target).await)
    }

    async fn delete(&self, target: &Target) -> Result<u64, QueueError> {
        counted(StoreOperation::Other, self.inner.delete(target).await)
    }

    async fn bounce(&self, target: &Target, reason: Option<&str>) -> Result<u64, QueueError> {
        counted(StoreOperation::Other, self.inner.bounce(target, reason).await)
    }

    async fn hold(&self, target: &Target) -> Result<u64, QueueError> {
        counted(StoreOperation::Other, self.inner.hold(target).await)
    }

    async fn unhold(&self, target: &Target) -> Result<u64, QueueError> {
        counted(StoreOperation::Other, self.inner.unhold(target).await)
    }

    async fn suspend(&self, domain: &str, until_ms: Option<u64>, reason: &str) -> Result<(), QueueError> {
        counted(
            StoreOperation::Other,
            self.inner.suspend(domain, until_ms, reason).await,
        )
    }

    async fn resume(&self, domain: &str) -> Result<bool, QueueError> {
        counted(StoreOperation::Other, self.inner.resume(domain).await)
    }

    async fn suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        counted(StoreOperation::Other, self.inner.suspensions().await)
    }

    async fn set_domain_concurrency(&self, domain: &str, limit: Option<u32>) -> Result<(), QueueError> {
        counted(
            StoreOperation::Other,
            self.inner.set_domain_concurrency(domain, limit).await,
        )
    }

    async fn read_events(
        &self,
        after: Option<&EventPos>,
        max: usize,
        block: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError> {
        counted(
            StoreOperation::Other,
            self.inner.read_events(after, max, block).await,
        )
    }

    async fn events_end(&self) -> Result<EventPos, QueueError> {
        counted(StoreOperation::Other, self.inner.events_end().await)
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        counted(StoreOperation::Other, self.inner.stats().await)
    }

    async fn recent_stats(&self, window: Duration) -> Result<Stats, QueueError> {
        counted(StoreOperation::Other, self.inner.recent_stats(window).await)
    }
}
