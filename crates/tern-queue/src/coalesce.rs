//! Group commit: [`Coalescing`] wraps any [`Queue`] and turns concurrent enqueues (and concurrent
//! completions) of one process into few backend calls, each caller still getting its own answer.
//!
//! Every SMTP session and gRPC call enqueues its own message, and every delivery connection completes its
//! own jobs, so under load a backend sees many small calls (for Redis, one pipeline, function call and
//! `WAIT` each). The wrapper gathers them: [`Queue::enqueue`] and [`Queue::enqueue_batch`] calls wait in
//! one lane and go to the backend together as one [`Queue::enqueue_batch`]; [`Queue::complete`] and
//! [`Queue::complete_batch`] calls wait in another and go as one [`Queue::complete_batch`] per owner.
//! Every other method goes straight to the backend.
//!
//! # When a lane sends
//!
//! Leader and followers, as a database's group commit: a caller that finds its lane idle sends its request
//! at once, alone (the completion lane after its linger, below); callers that arrive while a call is in
//! flight wait, and when it returns, everything that gathered meanwhile goes in the next call (up to
//! [`CoalescingOptions::max_batch`] messages or jobs and [`CoalescingOptions::max_batch_bytes`] of bodies;
//! a request as big as that on its own, such as a large gRPC batch, goes straight to the backend). The
//! enqueue lane has no timer:
//!
//! - a lone enqueue is never delayed (a fixed wait of 1 ms would add 1 ms to every message's 250 on a
//!   quiet system, several times a loopback Redis round trip, for nothing to batch);
//! - under load the batch grows with the load by itself: it holds what arrived during one backend call,
//!   so the backend does less work per message exactly when it is busy, with no wait to tune;
//! - a caller waits at most for the call in flight to end, then for its own (more when more than
//!   `max_batch` wait: then the backend is the bottleneck anyway).
//!
//! The completion lane may wait a little before each call ([`CoalescingOptions::completion_linger`]): no
//! client waits on a completion (the message is delivered already; the wait only delays its record and
//! the freeing of its claim's slot), and with one busy domain the outcomes of its deliveries arrive one at
//! a time, so the calls that gather by themselves are small. Waiting 1 ms (with the worker's
//! `delivery.claim_linger`) let Redis spend a fifth less per message (`docs/performance.md`). The wait
//! ends early when a full call's worth waits. Code that records outcomes one after another would wait once
//! per outcome, so the worker records the outcomes of a failed batch side by side.
//!
//! The backend call runs in a task of its own, so a caller that gives up (a deadline, a closed session)
//! cannot cancel its neighbours' write; a request whose caller gave up before it was sent is dropped.
//!
//! # What an answer means
//!
//! Exactly what the backend's answer to the caller's own call would have meant: each caller gets the
//! results of its own messages or jobs, in order, taken from the backend's per-message (per-job) results of
//! the shared call. Success means what the backend's success means (durable, and with
//! `queue.wait_replicas` replicated: the backend's `WAIT` follows the shared call, so it covers every
//! message of it); an invalid message fails alone, as it would in any batch. A shared call that fails as a
//! whole (an outage) fails every message of it with the error each would have had alone. Two requests
//! naming the same message id, idempotency key or job never share a call: the later one goes in a later
//! call, so the backend sees them as separate calls, as it would have without the wrapper.
//!
//! The wrapper pays off over a backend whose batch calls cost less than their parts (the Redis backend's
//! do). Over one whose `complete_batch` is the trait's default (one `complete` after the other) it would
//! serialise concurrent completions; such a backend should not be wrapped.
//!
//! # Memory
//!
//! Each lane holds at most [`CoalescingOptions::max_pending`] messages (or jobs), waiting or in flight;
//! further callers wait for room (backpressure) rather than grow the lane.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use tern_core::MessageId;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::model::*;
use crate::{Queue, QueueError};

/// How [`Coalescing`] gathers calls. The defaults suit a node with a few thousand concurrent sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoalescingOptions {
    /// The most messages (enqueue) or jobs (complete) one shared backend call carries (default 64,
    /// `queue.group_commit_max`). A single request (a batch) with as many or more goes straight to the
    /// backend, as it would without the wrapper; so 1 turns the gathering off.
    pub max_batch: usize,
    /// The most body bytes one shared enqueue carries (default 4 MiB), so that small messages do not wait
    /// behind a long transfer; a single request with as many or more goes straight to the backend.
    pub max_batch_bytes: usize,
    /// The most messages (or jobs) one lane holds, waiting or in flight (default 4096); callers beyond it
    /// wait for room. A single request with more waits for the lane to be empty, then goes.
    pub max_pending: usize,
    /// Shared calls in flight at once per lane (default 1, the classic group commit: the most gathering).
    /// More lets the next gathered call start before the previous one returns, at the cost of smaller
    /// batches.
    pub max_in_flight: usize,
    /// How long the completion lane waits before each shared call, for more outcomes to join it (default
    /// none: at once, as the enqueue lane always does). The wait ends when `max_batch` jobs wait.
    pub completion_linger: Duration,
}

impl Default for CoalescingOptions {
    fn default() -> Self {
        CoalescingOptions {
            max_batch: 64,
            max_batch_bytes: 4 << 20,
            max_pending: 4096,
            max_in_flight: 1,
            completion_linger: Duration::ZERO,
        }
    }
}

/// A [`Queue`] that coalesces concurrent enqueues and completions into shared calls of the queue it wraps
/// (see the [module documentation](self)). Share one per process, behind an `Arc`, among every role.
/// Must be used inside a Tokio runtime (the shared calls run as tasks of their own).
pub struct Coalescing {
    inner: Arc<dyn Queue>,
    enqueues: Arc<Lane<Enqueues>>,
    completions: Arc<Lane<Completions>>,
}

impl std::fmt::Debug for Coalescing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescing")
            .field("options", &self.enqueues.limits)
            .finish_non_exhaustive()
    }
}

impl Coalescing {
    /// Wraps `inner`. Zero limits count as 1.
    pub fn new(inner: Arc<dyn Queue>, options: CoalescingOptions) -> Coalescing {
        let limits = CoalescingOptions {
            max_batch: options.max_batch.max(1),
            max_batch_bytes: options.max_batch_bytes.max(1),
            max_pending: options.max_pending.clamp(1, Semaphore::MAX_PERMITS),
            max_in_flight: options.max_in_flight.max(1),
            completion_linger: options.completion_linger,
        };
        Coalescing {
            inner,
            enqueues: Arc::new(Lane::new(limits.clone(), Duration::ZERO)),
            completions: Arc::new(Lane::new(limits.clone(), limits.completion_linger)),
        }
    }

    /// The wrapped queue.
    pub fn inner(&self) -> &Arc<dyn Queue> {
        &self.inner
    }
}

/// One caller's request as a lane sees it: how much it adds to a shared call, what it must not share one
/// with, and how a shared call of many is made.
trait Request: Send + Sized + 'static {
    /// The answer for one message (or job).
    type Output: Send + 'static;
    /// What the lane is called in logs.
    const LANE: &'static str;
    /// Messages (or jobs) in the request.
    fn items(&self) -> usize;
    /// Body bytes in the request.
    fn bytes(&self) -> usize;
    /// Hashes of what must not appear twice in one shared call (message ids, idempotency keys, jobs).
    fn exclusive(&self, hasher: &RandomState, out: &mut Vec<u64>);
    /// One shared call for `batch`: one result per item of each request, requests in order.
    fn run(
        inner: Arc<dyn Queue>,
        batch: Vec<Self>,
    ) -> BoxFuture<'static, Vec<Result<Self::Output, QueueError>>>;
}

/// Enqueues of one caller: one message ([`Queue::enqueue`]) or many ([`Queue::enqueue_batch`]).
struct Enqueues(Vec<NewMessage>);

impl Request for Enqueues {
    type Output = EnqueueReceipt;
    const LANE: &'static str = "enqueue";

    fn items(&self) -> usize {
        self.0.len()
    }

    fn bytes(&self) -> usize {
        self.0.iter().map(|m| m.body.len()).sum()
    }

    fn exclusive(&self, hasher: &RandomState, out: &mut Vec<u64>) {
        for m in &self.0 {
            if let Some(id) = m.id {
                out.push(hasher.hash_one::<(u8, MessageId)>((0, id)));
            }
            if let Some(key) = &m.idempotency_key {
                out.push(hasher.hash_one::<(u8, &str)>((1, key)));
            }
        }
    }

    fn run(
        inner: Arc<dyn Queue>,
        batch: Vec<Self>,
    ) -> BoxFuture<'static, Vec<Result<EnqueueReceipt, QueueError>>> {
        let messages: Vec<NewMessage> = batch.into_iter().flat_map(|r| r.0).collect();
        async move { inner.enqueue_batch(messages).await }.boxed()
    }
}

/// Completions of one caller: one job ([`Queue::complete`]) or many ([`Queue::complete_batch`]).
struct Completions {
    owner: String,
    jobs: Vec<(JobLease, Outcome)>,
}

impl Request for Completions {
    type Output = Completion;
    const LANE: &'static str = "complete";

    fn items(&self) -> usize {
        self.jobs.len()
    }

    fn bytes(&self) -> usize {
        0
    }

    fn exclusive(&self, hasher: &RandomState, out: &mut Vec<u64>) {
        out.extend(self.jobs.iter().map(|(lease, _)| hasher.hash_one(lease.job)));
    }

    /// One `complete_batch` per owner (a process normally has one), run concurrently.
    fn run(
        inner: Arc<dyn Queue>,
        batch: Vec<Self>,
    ) -> BoxFuture<'static, Vec<Result<Completion, QueueError>>> {
        async move {
            let sizes: Vec<usize> = batch.iter().map(|r| r.jobs.len()).collect();
            let mut owners: Vec<OwnerJobs> = Vec::new();
            for (position, request) in batch.into_iter().enumerate() {
                match owners.iter_mut().find(|o| o.owner == request.owner) {
                    Some(o) => {
                        o.positions.push(position);
                        o.jobs.extend(request.jobs);
                    }
                    None => owners.push(OwnerJobs {
                        owner: request.owner,
                        positions: vec![position],
                        jobs: request.jobs,
                    }),
                }
            }
            let calls = owners.into_iter().map(|o| {
                let inner = &inner;
                async move { (o.positions, inner.complete_batch(&o.owner, o.jobs).await) }
            });
            let mut answers: Vec<Vec<Result<Completion, QueueError>>> =
                sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
            for (positions, results) in join_all(calls).await {
                let mut results = results.into_iter();
                for position in positions {
                    answers[position].extend(results.by_ref().take(sizes[position]));
                }
            }
            // A backend that answered short leaves a request short; the lane fills the gap.
            let mut flat = Vec::with_capacity(sizes.iter().sum());
            for (answer, size) in answers.into_iter().zip(&sizes) {
                let short = size.saturating_sub(answer.len());
                flat.extend(answer);
                flat.extend(std::iter::repeat_n(Err(no_result()), short));
            }
            flat
        }
        .boxed()
    }
}

/// The requests of one owner in a shared completion call (in first-seen order): their positions in the
/// call, and their jobs.
struct OwnerJobs {
    owner: String,
    positions: Vec<usize>,
    jobs: Vec<(JobLease, Outcome)>,
}

/// The error of an item the backend gave no result for (a backend bug).
fn no_result() -> QueueError {
    QueueError::Backend("the queue gave no result for this item of a shared call".into())
}

/// A request waiting for its shared call, with the way back to its caller and its room in the lane.
struct Waiting<R: Request> {
    request: R,
    reply: oneshot::Sender<Vec<Result<R::Output, QueueError>>>,
    room: OwnedSemaphorePermit,
}

/// What a lane's lock guards.
struct LaneState<R: Request> {
    waiting: VecDeque<Waiting<R>>,
    /// Tasks sending shared calls (each sends one after another while requests wait).
    senders: usize,
}

/// One kind of request (enqueues or completions) on its way to shared calls.
struct Lane<R: Request> {
    limits: CoalescingOptions,
    /// The wait before each shared call (zero: none).
    linger: Duration,
    /// Signalled when a whole call's worth waits: a lingering sender goes at once.
    filled: Notify,
    /// Room for `max_pending` items, waiting or in flight.
    room: Arc<Semaphore>,
    state: Mutex<LaneState<R>>,
    hasher: RandomState,
}

impl<R: Request> Lane<R> {
    fn new(limits: CoalescingOptions, linger: Duration) -> Lane<R> {
        Lane {
            room: Arc::new(Semaphore::new(limits.max_pending)),
            limits,
            linger,
            filled: Notify::new(),
            state: Mutex::new(LaneState {
                waiting: VecDeque::new(),
                senders: 0,
            }),
            hasher: RandomState::new(),
        }
    }

    /// The lane's state. Nothing panics while holding the lock, but a poisoned lock is still consistent
    /// (every change under it is one step), so it is used as is.
    fn state(&self) -> MutexGuard<'_, LaneState<R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `request` in the next shared call (when the lane is idle: at once, or after the lane's linger)
    /// and returns its own results.
    async fn submit(
        self: &Arc<Self>,
        inner: &Arc<dyn Queue>,
        request: R,
    ) -> Vec<Result<R::Output, QueueError>> {
        let items = request.items();
        if items == 0 {
            return Vec::new();
        }
        if items >= self.limits.max_batch || request.bytes() >= self.limits.max_batch_bytes {
            // A call of its own anyway: waiting in the lane would gain nothing and hold up the others.
            return R::run(Arc::clone(inner), vec![request]).await;
        }
        let wanted = u32::try_from(items.min(self.limits.max_pending)).unwrap_or(u32::MAX);
        let Ok(room) = self.room.clone().acquire_many_owned(wanted).await else {
            // The semaphore is never closed.
            return failed(items, "the queue's group commit lane is closed");
        };
        let (reply, answer) = oneshot::channel();
        let (start_sender, full) = {
            let mut state = self.state();
            state.waiting.push_back(Waiting { request, reply, room });
            let start = state.senders < self.limits.max_in_flight;
            if start {
                state.senders += 1;
            }
            (start, !self.linger.is_zero() && self.full_call_waits(&state))
        };
        if full {
            self.filled.notify_waiters();
        }
        if start_sender {
            tokio::spawn(Arc::clone(self).send_while_waiting(Arc::clone(inner)));
        }
        // The sender task was dropped (the runtime is shutting down) with the call maybe sent: an outage's
        // "may or may not have taken effect".
        answer.await.unwrap_or_else(|_| {
            std::iter::repeat_with(|| {
                Err(QueueError::Unavailable(
                    "the queue's shared call ended without an answer".into(),
                ))
            })
            .take(items)
            .collect()
        })
    }

    /// A sender: sends what waits, one shared call after another, until nothing does.
    async fn send_while_waiting(self: Arc<Self>, inner: Arc<dyn Queue>) {
        loop {
            if !self.linger.is_zero() {
                {
                    // Nothing left after a call: no linger on an empty lane.
                    let mut state = self.state();
                    if state.waiting.is_empty() {
                        state.senders -= 1;
                        return;
                    }
                }
                self.wait_for_more().await;
            }
            let batch = {
                let mut state = self.state();
                let batch = self.take(&mut state);
                if batch.is_empty() {
                    state.senders -= 1;
                    return;
                }
                batch
            };
            self.send(&inner, batch).await;
        }
    }

    /// Waits the linger, or until a whole call's worth waits.
    async fn wait_for_more(&self) {
        // Listening before looking, so that a call filled in between is not missed.
        let filled = self.filled.notified();
        tokio::pin!(filled);
        filled.as_mut().enable();
        if self.full_call_waits(&self.state()) {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(self.linger) => {}
            _ = filled => {}
        }
    }

    /// Whether a whole shared call's worth of items waits already (no reason to linger). Looks at no more
    /// than `max_batch` requests.
    fn full_call_waits(&self, state: &LaneState<R>) -> bool {
        let mut items = 0usize;
        for waiting in &state.waiting {
            items = items.saturating_add(waiting.request.items());
            if items >= self.limits.max_batch {
                return true;
            }
        }
        false
    }

    /// The next shared call's requests, oldest first: while they fit its limits (the first always does),
    /// passing over those that share a message id, key or job with one taken, and dropping those whose
    /// caller gave up.
    fn take(&self, state: &mut LaneState<R>) -> Vec<Waiting<R>> {
        let mut batch = Vec::new();
        let (mut items, mut bytes) = (0usize, 0usize);
        let mut taken_keys: HashSet<u64> = HashSet::new();
        let mut keys = Vec::new();
        let mut at = 0;
        while at < state.waiting.len() {
            let Some(next) = state.waiting.get(at) else { break };
            if next.reply.is_closed() {
                state.waiting.remove(at);
                continue;
            }
            let (more_items, more_bytes) = (next.request.items(), next.request.bytes());
            if !batch.is_empty()
                && (items + more_items > self.limits.max_batch
                    || bytes + more_bytes > self.limits.max_batch_bytes)
            {
                break;
            }
            keys.clear();
            next.request.exclusive(&self.hasher, &mut keys);
            if keys.iter().any(|k| taken_keys.contains(k)) {
                at += 1;
                continue;
            }
            taken_keys.extend(keys.iter().copied());
            items += more_items;
            bytes += more_bytes;
            if let Some(waiting) = state.waiting.remove(at) {
                batch.push(waiting);
            }
        }
        batch
    }

    /// Sends one shared call and hands each caller its own results. A backend that panics fails the
    /// call's requests, not the lane.
    async fn send(&self, inner: &Arc<dyn Queue>, batch: Vec<Waiting<R>>) {
        let mut callers = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for waiting in batch {
            callers.push((waiting.request.items(), waiting.reply, waiting.room));
            requests.push(waiting.request);
        }
        let items: usize = callers.iter().map(|(n, _, _)| n).sum();
        tracing::debug!(
            lane = R::LANE,
            requests = callers.len(),
            items,
            "shared queue call"
        );
        let results = AssertUnwindSafe(R::run(Arc::clone(inner), requests))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(
                    lane = R::LANE,
                    items,
                    "the queue backend panicked in a shared call"
                );
                failed(items, "the queue backend failed (panicked)")
            });
        let mut results = results.into_iter();
        for (count, reply, room) in callers {
            let mut own: Vec<_> = results.by_ref().take(count).collect();
            own.resize_with(count, || Err(no_result()));
            // A caller that gave up meanwhile gets nothing; its request went all the same.
            let _ = reply.send(own);
            drop(room);
        }
    }
}

/// `items` results that are all the backend error `why`.
fn failed<T>(items: usize, why: &str) -> Vec<Result<T, QueueError>> {
    std::iter::repeat_with(|| Err(QueueError::Backend(why.to_string())))
        .take(items)
        .collect()
}

/// The one result of a single-item request.
fn single<T>(results: Vec<Result<T, QueueError>>) -> Result<T, QueueError> {
    results.into_iter().next().unwrap_or_else(|| Err(no_result()))
}

#[async_trait]
impl Queue for Coalescing {
    async fn enqueue(&self, message: NewMessage) -> Result<EnqueueReceipt, QueueError> {
        single(self.enqueues.submit(&self.inner, Enqueues(vec![message])).await)
    }

    async fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<EnqueueReceipt, QueueError>> {
        self.enqueues.submit(&self.inner, Enqueues(messages)).await
    }

    async fn claim(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        self.inner.claim(owner, max_batch, lease).await
    }

    async fn claim_holding(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<Option<Claim>, QueueError> {
        self.inner.claim_holding(owner, max_batch, lease, holds).await
    }

    async fn claim_next(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<ClaimOutcome, QueueError> {
        self.inner.claim_next(owner, max_batch, lease, holds).await
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
        self.inner.hold_slot(domain, claim_id, hold).await
    }

    async fn drop_slot(&self, hold: &SlotHold) -> Result<(), QueueError> {
        self.inner.drop_slot(hold).await
    }

    async fn complete(
        &self,
        owner: &str,
        job: &JobLease,
        outcome: Outcome,
    ) -> Result<Completion, QueueError> {
        let request = Completions {
            owner: owner.to_string(),
            jobs: vec![(job.clone(), outcome)],
        };
        single(self.completions.submit(&self.inner, request).await)
    }

    async fn complete_batch(
        &self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
    ) -> Vec<Result<Completion, QueueError>> {
        let request = Completions {
            owner: owner.to_string(),
            jobs,
        };
        self.completions.submit(&self.inner, request).await
    }

    async fn extend(&self, owner: &str, job: &JobLease, lease: Duration) -> Result<u64, QueueError> {
        self.inner.extend(owner, job, lease).await
    }

    async fn release(&self, owner: &str, job: &JobLease) -> Result<(), QueueError> {
        self.inner.release(owner, job).await
    }

    async fn reap(&self, now_ms: u64) -> Result<u64, QueueError> {
        self.inner.reap(now_ms).await
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageInfo>, QueueError> {
        self.inner.get_message(id).await
    }

    async fn read_body(&self, id: MessageId) -> Result<Option<bytes::Bytes>, QueueError> {
        self.inner.read_body(id).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError> {
        self.inner.list(filter, cursor, limit).await
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        self.inner.counts().await
    }

    async fn domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError> {
        self.inner.domain_depths().await
    }

    async fn domain_depth(&self, domain: &str) -> Result<DomainDepth, QueueError> {
        self.inner.domain_depth(domain).await
    }

    async fn retry_now(&self, target: &Target) -> Result<u64, QueueError> {
        self.inner.retry_now(target).await
    }

    async fn delete(&self, target: &Target) -> Result<u64, QueueError> {
        self.inner.delete(target).await
    }

    async fn bounce(&self, target: &Target, reason: Option<&str>) -> Result<u64, QueueError> {
        self.inner.bounce(target, reason).await
    }

    async fn hold(&self, target: &Target) -> Result<u64, QueueError> {
        self.inner.hold(target).await
    }

    async fn unhold(&self, target: &Target) -> Result<u64, QueueError> {
        self.inner.unhold(target).await
    }

    async fn suspend(&self, domain: &str, until_ms: Option<u64>, reason: &str) -> Result<(), QueueError> {
        self.inner.suspend(domain, until_ms, reason).await
    }

    async fn resume(&self, domain: &str) -> Result<bool, QueueError> {
        self.inner.resume(domain).await
    }

    async fn suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        self.inner.suspensions().await
    }

    async fn set_domain_concurrency(&self, domain: &str, limit: Option<u32>) -> Result<(), QueueError> {
        self.inner.set_domain_concurrency(domain, limit).await
    }

    async fn read_events(
        &self,
        after: Option<&EventPos>,
        max: usize,
        block: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError> {
        self.inner.read_events(after, max, block).await
    }

    async fn events_end(&self) -> Result<EventPos, QueueError> {
        self.inner.events_end().await
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        self.inner.stats().await
    }

    async fn recent_stats(&self, window: Duration) -> Result<Stats, QueueError> {
        self.inner.recent_stats(window).await
    }
}

#[cfg(test)]
mod tests;
