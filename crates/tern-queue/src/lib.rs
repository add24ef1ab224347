//! tern's durable delivery queue.
//!
//! Stateless ingest nodes enqueue messages; any number of delivery workers on any number of machines claim
//! work, deliver it and report the outcome. The queue never loses an acknowledged message and never lets two
//! workers own the same job at once.
//!
//! - A **message** is split into one **job** per destination domain ([`tern_core::Envelope::by_domain`]); job
//!   `n` of message `M` is `M.n`.
//! - Jobs wait on per-domain schedules ordered by due time, and a domain index orders the domains by their
//!   earliest due job. [`Queue::claim`] takes a batch of due jobs of ONE domain (one SMTP connection's
//!   worth) under a lease, honouring a cluster-wide per-domain concurrency limit; domains take turns.
//! - An idle worker does not poll: [`Queue::claim_next`] tells it when nothing is claimable until when it may
//!   sleep, and [`Queue::wait_for_work`] returns early when the queue signals work (jobs due now, a freed
//!   slot), one waiter per signal.
//! - The worker reports with [`Queue::complete`], heartbeats with [`Queue::extend`] or gives the job back
//!   with [`Queue::release`]. A call from a stale owner fails with [`QueueError::NotOwner`] and changes
//!   nothing. [`Queue::reap`] (run by [`reaper::spawn_reaper`] on any number of nodes) returns jobs whose
//!   lease ran out.
//! - Every change is appended to an event stream ([`Queue::read_events`]) and counted ([`Queue::stats`]).
//!
//! The Redis backend ([`RedisQueue`]) works against one Redis server or a Redis Cluster with the same code;
//! `src/redis/mod.rs` maps its modules and `src/redis/keys.rs` documents its key layout. The conformance suite that every backend must
//! pass is public behind the `conformance` feature.
//!
//! Beside the queue, the store keeps the cluster's MTA-STS policy cache: [`PolicyStore`] (in [`sts`]), and
//! its TLS-RPT (RFC 8460) counters: [`TlsReportStore`] (in [`tls_report`]); the history of finished messages
//! ([`HistoryStore`]), operators' reroutes of domains ([`RouteStore`]), and the bus that carries live SMTP
//! traces from every worker to the control plane ([`TraceBus`]). Both backends implement all of them.
#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use tern_core::MessageId;

mod coalesce;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod error;
pub mod history;
pub mod model;
pub mod reaper;
pub mod redis;
pub mod routes;
pub mod sts;
pub mod tls_report;
pub mod trace;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use coalesce::{Coalescing, CoalescingOptions};
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedQueue, EmbeddedQueueOptions};
pub use error::QueueError;
pub use history::{FinalOutcome, HistoryQuery, HistoryStore, MessageHistory};
pub use model::*;
pub use redis::{RedisQueue, RedisQueueOptions};
pub use routes::{Route, RouteStore};
pub use sts::{LockOutcome, PolicyStore, StsEntry};
pub use tls_report::{TlsReportStore, TlsSessionKey};
pub use trace::{TraceBus, TraceFilter, TraceRecord, TraceSubscription};

/// A durable delivery queue. Every method is safe to call concurrently from many tasks and many nodes, and
/// safe to repeat after [`QueueError::Unavailable`] (the call may or may not have taken effect).
#[async_trait]
pub trait Queue: Send + Sync {
    /// Stores a message as one job per destination domain, all or none, and returns its receipt once it is
    /// durable. A repeated idempotency key (within 24 h) returns the first message's id and enqueues
    /// nothing.
    async fn enqueue(&self, message: NewMessage) -> Result<EnqueueReceipt, QueueError>;

    /// [`Queue::enqueue`] for many messages, pipelined; one result per message, in order.
    async fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<EnqueueReceipt, QueueError>>;

    /// Atomically takes up to `max_batch` due jobs of ONE domain for `owner`, until now + `lease`.
    /// `None` when nothing is due (or every due domain is at its concurrency limit or suspended).
    async fn claim(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        self.claim_holding(owner, max_batch, lease, &[]).await
    }

    /// [`Queue::claim`] by a worker that keeps idle connections under `holds` ([`Queue::hold_slot`]).
    /// Domains with a live hold and due jobs are tried first, except right after a claim that did so and
    /// took a hold over (then the due domains' order alone decides, so that held domains that always have
    /// due work do not starve the others); a claim of a held domain takes the hold over instead of needing
    /// a free slot ([`Claim::took_hold`]): the idle connection carries the claim.
    async fn claim_holding(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<Option<Claim>, QueueError>;

    /// [`Queue::claim_holding`], also telling, when nothing was claimed, until when the caller may wait
    /// before it claims again ([`ClaimOutcome::Nothing`]: the next due time the backend knows of). A worker
    /// that finds nothing calls [`Queue::wait_for_work`] with the time left until then (at most its poll
    /// interval).
    ///
    /// Made for that loop, it may skip for a few tens of milliseconds the parts of the store where this
    /// handle's previous calls found nothing, until a signal from there reaches this handle's
    /// [`Queue::wait_for_work`] or this handle enqueues there (Redis: its shards, see `redis/quiet.rs`), so
    /// that a worker at a moderate rate does not look through every empty shard after each wake. Work due
    /// later that another handle queued meanwhile is then named by a later call (a worker asleep learns it
    /// when its poll interval ends, as before).
    ///
    /// The default calls `claim_holding` and knows no time (`None`); a backend that sees its domain index
    /// while it claims should override it.
    async fn claim_next(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<ClaimOutcome, QueueError> {
        Ok(match self.claim_holding(owner, max_batch, lease, holds).await? {
            Some(claim) => ClaimOutcome::Claimed(claim),
            None => ClaimOutcome::Nothing { next_due_ms: None },
        })
    }

    /// Waits until work may be claimable, for `max_wait` at most: what an idle worker does between a claim
    /// that found nothing and its next claim, instead of polling. What every backend keeps (the
    /// conformance suite checks it):
    ///
    /// - **Signals.** The queue signals when jobs become claimable now: an enqueue whose jobs are due at
    ///   once in a domain that was not due (and has a free concurrency slot), a release, jobs a
    ///   [`Queue::reap`] returned, [`Queue::retry_now`], [`Queue::bounce`], [`Queue::resume`]; and when a
    ///   slot of a domain with due jobs is freed: the last job of a claim completed or released (or
    ///   deleted), [`Queue::drop_slot`]. Work due later (a deferral, a delayed message, a slot that lapses
    ///   at its deadline) is no signal: [`ClaimOutcome::Nothing`]'s `next_due_ms` covers it.
    /// - **One waiter per signal.** A signal wakes at most one waiter, across every handle on the same
    ///   store (one per domain made claimable): no thundering herd.
    /// - **Nothing lost.** A signal given while no one waits is kept (a few per store, or per shard) and
    ///   ends the next wait at once, so work that arrives between a claim that found nothing and the wait
    ///   is not missed. A woken caller may find nothing (another worker took the work, or the signal was an
    ///   old one): it claims, and waits again.
    /// - **Bounded.** Returns by `max_wait` (give or take scheduling); zero returns at once. It never
    ///   fails: when the store cannot be reached it sleeps out `max_wait` and returns
    ///   [`Wakeup::TimedOut`], and the caller's next claim reports the outage.
    ///
    /// The default sleeps `max_wait` and returns [`Wakeup::TimedOut`] (polling): correct, but a backend
    /// must override it to pass the conformance suite.
    async fn wait_for_work(&self, max_wait: Duration) -> Wakeup {
        tokio::time::sleep(max_wait).await;
        Wakeup::TimedOut
    }

    /// Keeps a concurrency slot of `domain` for `hold` from now, for a connection that goes idle at the
    /// end of claim `claim_id`. The claim's own slot becomes the hold (so finishing the claim's jobs does
    /// not free it); if the claim has no slot any more, a free one is taken when the limit allows. `None`:
    /// the domain is at its limit and the connection must be closed. Calling it again for the same claim
    /// pushes the deadline out.
    async fn hold_slot(
        &self,
        domain: &str,
        claim_id: &str,
        hold: Duration,
    ) -> Result<Option<SlotHold>, QueueError>;

    /// Gives a hold up (its connection closed or went to another domain), freeing the slot at once. Safe to
    /// repeat, and harmless after the hold lapsed.
    async fn drop_slot(&self, hold: &SlotHold) -> Result<(), QueueError>;

    /// Records the outcome of an attempt. Only the current owner's call succeeds: a stale owner gets
    /// [`QueueError::NotOwner`] and nothing changes. Repeating a call that succeeded returns
    /// [`Completion::AlreadyDone`] or [`Completion::Gone`] and changes nothing.
    async fn complete(&self, owner: &str, job: &JobLease, outcome: Outcome)
    -> Result<Completion, QueueError>;

    /// [`Queue::complete`] for many jobs at once (typically the jobs of one claim): one result per job, in
    /// order, each exactly what `complete` would have answered for that job alone (a stale owner gets
    /// [`QueueError::NotOwner`] for that job only; a repeat gets [`Completion::AlreadyDone`] or
    /// [`Completion::Gone`]). Backends may record the jobs of one shard in one atomic step; the default
    /// calls `complete` for each job in turn.
    async fn complete_batch(
        &self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
    ) -> Vec<Result<Completion, QueueError>> {
        let mut out = Vec::with_capacity(jobs.len());
        for (lease, outcome) in jobs {
            out.push(self.complete(owner, &lease, outcome).await);
        }
        out
    }

    /// Pushes the lease out to now + `lease` (a heartbeat); returns the new deadline (Unix ms). A lease
    /// that has already run out is not extended ([`QueueError::NotOwner`]), even before the reaper has taken
    /// the job back: its slot may belong to another claim by then.
    async fn extend(&self, owner: &str, job: &JobLease, lease: Duration) -> Result<u64, QueueError>;

    /// Gives the job back unchanged, due now (as on shutdown).
    async fn release(&self, owner: &str, job: &JobLease) -> Result<(), QueueError>;

    /// Returns every job whose lease expired before `now_ms` to its schedule (with a `lease-expired`
    /// event), ends expired suspensions, and finishes interrupted enqueues. Returns the number of jobs
    /// returned. Safe to run on many nodes at once.
    async fn reap(&self, now_ms: u64) -> Result<u64, QueueError>;

    /// A message and its remaining jobs.
    async fn get_message(&self, id: MessageId) -> Result<Option<MessageInfo>, QueueError>;

    /// The stored message (headers and body, as queued) while any of its jobs remains; `None` once every
    /// job has finished or been deleted, or for an unknown id.
    async fn read_body(&self, id: MessageId) -> Result<Option<bytes::Bytes>, QueueError>;

    /// Jobs matching `filter`, a page of at most `limit` at a time, from `cursor` (`None`: the start).
    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError>;

    /// Jobs by state, and the oldest due time.
    async fn counts(&self) -> Result<QueueCounts, QueueError>;

    /// Depth of every domain with jobs (or suspended).
    async fn domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError>;

    /// Depth of one domain.
    async fn domain_depth(&self, domain: &str) -> Result<DomainDepth, QueueError>;

    /// Makes waiting jobs due now; returns how many.
    async fn retry_now(&self, target: &Target) -> Result<u64, QueueError>;

    /// Deletes jobs (no DSN); returns how many.
    async fn delete(&self, target: &Target) -> Result<u64, QueueError>;

    /// Admin bounce: flags jobs `admin_bounce` and makes them claimable at once, even if their domain is
    /// suspended (they move to the reserved [`BOUNCE_SCHEDULE`], which is never suspended and has no
    /// concurrency limit). The claimer sees [`Job::admin_bounce`], sends the DSN for the pending
    /// recipients (the delivery crate composes it) and completes the job with [`Outcome::fail`]. A job in
    /// flight is flagged and moves there when its current attempt ends without finishing it. Returns how
    /// many jobs were flagged.
    ///
    /// `reason`, the operator's words, is kept with the job ([`Job::bounce_reason`]) for the DSN, which
    /// also quotes the job's last remote reply.
    async fn bounce(&self, target: &Target, reason: Option<&str>) -> Result<u64, QueueError>;

    /// Holds waiting jobs (Postfix `postsuper -h`): a held job is never claimed, shown as
    /// [`JobState::Held`], counted in [`QueueCounts::held`], and keeps its attempts and recipients until
    /// [`Queue::unhold`]. Jobs in flight are left alone (not counted); hold them again once their attempt
    /// ended. Each job held gets a `held` event. Returns how many jobs were held (already held ones are not
    /// counted again).
    async fn hold(&self, target: &Target) -> Result<u64, QueueError> {
        let _ = target;
        Err(QueueError::Backend("this queue store cannot hold jobs".into()))
    }

    /// Releases held jobs (Postfix `postsuper -H`): they are due at once (an `unheld` event each, and a
    /// wake), deferred again if they had been tried. Returns how many were released.
    async fn unhold(&self, target: &Target) -> Result<u64, QueueError> {
        let _ = target;
        Err(QueueError::Backend("this queue store cannot hold jobs".into()))
    }

    /// Suspends a domain cluster-wide (optionally until `until_ms`): no claim takes its jobs until resumed.
    async fn suspend(&self, domain: &str, until_ms: Option<u64>, reason: &str) -> Result<(), QueueError>;

    /// Ends a suspension; returns whether the domain was suspended.
    async fn resume(&self, domain: &str) -> Result<bool, QueueError>;

    /// Every suspension in force.
    async fn suspensions(&self) -> Result<Vec<Suspension>, QueueError>;

    /// Sets (or with `None` clears) the concurrency limit (claims at once, cluster-wide) of one domain.
    async fn set_domain_concurrency(&self, domain: &str, limit: Option<u32>) -> Result<(), QueueError>;

    /// Up to `max` events after `after` (`None`: from the oldest kept), oldest first, with the position to
    /// continue from. With `block`, waits up to that long for an event when there is none yet. A backend
    /// that stores the events of one batched call together returns them together, so the answer may exceed
    /// `max` when such a group comes first; reading on from the returned position never repeats or skips
    /// an event.
    async fn read_events(
        &self,
        after: Option<&EventPos>,
        max: usize,
        block: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError>;

    /// The position of the newest event: reading from it follows only new events (a live tail).
    async fn events_end(&self) -> Result<EventPos, QueueError>;

    /// Counters since the queue was created.
    async fn stats(&self) -> Result<Stats, QueueError>;

    /// Counters over the last `window` (whole minutes, at most two hours).
    async fn recent_stats(&self, window: Duration) -> Result<Stats, QueueError>;
}
