//! The values that go in and out of a [`Queue`](crate::Queue): messages to enqueue, jobs, claims, outcomes,
//! events, counts and pages.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_core::{Envelope, JobId, MessageId, Recipient};

/// The name of the reserved schedule that admin-bounced jobs move to. It is never suspended and has no
/// concurrency limit, and a real domain can never have this name (`#` is not allowed in domains).
pub const BOUNCE_SCHEDULE: &str = "#bounce";

/// A message to enqueue.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// The id to give the message; `None` mints a new one. Ingest may set it to name the message in its
    /// logs before the queue has acknowledged it.
    pub id: Option<MessageId>,
    /// The envelope; its recipients are split into one job per destination domain.
    pub envelope: Envelope,
    /// The message itself (headers and body, as received).
    pub body: Bytes,
    /// Free-form labels (tenant, campaign, ...), copied onto every job and event.
    pub tags: BTreeMap<String, String>,
    /// An opaque trace context (W3C `traceparent` or similar) carried with the jobs.
    pub trace: Option<String>,
    /// A repeated key within 24 h returns the first message's id and enqueues nothing.
    pub idempotency_key: Option<String>,
    /// Do not try to deliver before this time (Unix ms); `None` means now.
    pub not_before_ms: Option<u64>,
}

impl NewMessage {
    /// A message with no tags, trace, idempotency key or delay.
    pub fn new(envelope: Envelope, body: impl Into<Bytes>) -> Self {
        NewMessage {
            id: None,
            envelope,
            body: body.into(),
            tags: BTreeMap::new(),
            trace: None,
            idempotency_key: None,
            not_before_ms: None,
        }
    }

    /// Sets the idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Delays the first attempt until `ms` (Unix ms).
    pub fn not_before(mut self, ms: u64) -> Self {
        self.not_before_ms = Some(ms);
        self
    }
}

/// What `enqueue` acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnqueueReceipt {
    /// The message's id (the first message's id when `duplicate`).
    pub message: MessageId,
    /// The jobs made, one per destination domain: id and domain. Empty when `duplicate`.
    pub jobs: Vec<(JobId, String)>,
    /// The idempotency key was seen before: nothing was enqueued.
    pub duplicate: bool,
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting, never attempted.
    Queued,
    /// Waiting for a retry after at least one attempt.
    Deferred,
    /// Claimed by a worker, under a lease.
    InFlight,
    /// Held by an operator ([`Queue::hold`](crate::Queue::hold)): never claimed until released
    /// ([`Queue::unhold`](crate::Queue::unhold)), and never expired meanwhile.
    Held,
}

impl JobState {
    /// The name stored and shown for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Deferred => "deferred",
            JobState::InFlight => "inflight",
            JobState::Held => "held",
        }
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(JobState::Queued),
            "deferred" => Ok(JobState::Deferred),
            "inflight" | "in-flight" => Ok(JobState::InFlight),
            "held" => Ok(JobState::Held),
            other => Err(format!("unknown job state {other:?}")),
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The delivery state of one recipient of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not delivered yet (never tried, or deferred).
    Pending,
    /// Accepted by the remote server.
    Delivered,
    /// Permanently failed (or expired, or admin-bounced).
    Failed,
}

/// One recipient of a job with where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    /// The recipient with its DSN parameters.
    pub recipient: Recipient,
    /// Its state.
    pub status: RecipientStatus,
    /// The last reply for it (or error text), if any.
    pub reply: Option<String>,
}

/// One message's share for one destination domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The destination domain (lower-cased).
    pub domain: String,
    /// The envelope with this job's recipients only, and the DSN parameters.
    pub envelope: Envelope,
    /// Per-recipient state, in the order of `envelope.recipients`.
    pub recipients: Vec<RecipientState>,
    /// Where the job stands.
    pub state: JobState,
    /// Finished attempts.
    pub attempts: u32,
    /// When the message was first queued (Unix ms).
    pub first_queued_ms: u64,
    /// When the job is (or was last) due (Unix ms).
    pub next_attempt_ms: u64,
    /// The last error or deferral reply.
    pub last_error: Option<String>,
    /// Labels copied from the message.
    pub tags: BTreeMap<String, String>,
    /// The opaque trace context.
    pub trace: Option<String>,
    /// An operator asked for the job to be bounced: the claimer sends a DSN for its pending recipients and
    /// completes it as failed (see [`Queue::bounce`](crate::Queue::bounce)).
    pub admin_bounce: bool,
    /// The operator's reason given with the admin bounce, for the DSN (`None`: none given).
    pub bounce_reason: Option<String>,
    /// The owner while in flight.
    pub owner: Option<String>,
    /// The lease deadline while in flight (Unix ms).
    pub lease_until_ms: Option<u64>,
}

impl Job {
    /// The recipients still pending.
    pub fn pending(&self) -> impl Iterator<Item = (u32, &RecipientState)> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RecipientStatus::Pending)
            .map(|(i, r)| (u32::try_from(i).unwrap_or(u32::MAX), r))
    }
}

/// The handle a worker uses to complete, extend or release a job it claimed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobLease {
    /// The job.
    pub job: JobId,
    /// The job's domain (it locates the job's shard).
    pub domain: String,
    /// The claim token: unique to one claim, so a repeated call after a lost reply is recognised.
    pub token: String,
}

/// One job of a claim, with the message body.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    /// The job as claimed.
    pub job: Job,
    /// The message (headers and body).
    pub body: Bytes,
    /// The handle for complete, extend and release.
    pub lease: JobLease,
}

/// A batch of due jobs of one domain, owned by one worker until the lease deadline; meant to be sent over
/// one SMTP connection. It holds one of the domain's concurrency slots until every job of it is completed
/// or released, or until the lease expires.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The schedule the jobs came from: their domain, or [`BOUNCE_SCHEDULE`] for admin bounces (whose jobs
    /// may then be of several domains; each job's `domain` is its own).
    pub domain: String,
    /// The claim id (also every job's token).
    pub claim_id: String,
    /// The lease deadline (Unix ms).
    pub lease_until_ms: u64,
    /// The jobs, earliest due first.
    pub jobs: Vec<ClaimedJob>,
    /// The hold (of those passed to [`crate::Queue::claim_holding`]) this claim took over: the idle
    /// connection that hold kept now carries this claim, and the hold no longer exists.
    pub took_hold: Option<String>,
}

/// What [`Queue::claim_next`](crate::Queue::claim_next) found.
#[derive(Clone, Debug)]
pub enum ClaimOutcome {
    /// A batch of one domain's due jobs, as [`Queue::claim_holding`](crate::Queue::claim_holding) returns
    /// it.
    Claimed(Claim),
    /// Nothing claimable now: nothing is due, or every due domain is at its concurrency limit or suspended.
    Nothing {
        /// The earliest time (Unix ms) at which the backend knows that something may become claimable
        /// without a wake: the next due time in its domain index, or when a domain skipped at its limit is
        /// looked at again (a slot of it may lapse). A time already past means "claim again at once".
        /// `None`: it knows of nothing (an empty queue), or does not tell. A caller sleeps until this time,
        /// or until [`Queue::wait_for_work`](crate::Queue::wait_for_work) returns, whichever is first.
        next_due_ms: Option<u64>,
    },
}

/// Why [`Queue::wait_for_work`](crate::Queue::wait_for_work) returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// The queue signalled that work may be claimable (it may be gone by the time the caller claims: a
    /// wake is a hint, never a promise).
    Woken,
    /// The wait ran its course without a signal (or the backend could not wait for one, and slept).
    TimedOut,
}

/// One of a domain's concurrency slots, kept by a worker for an idle connection after the claim that
/// opened it ended ([`crate::Queue::hold_slot`]). A hold counts against the domain's
/// `connections_per_domain` exactly like a claim, so that connections (busy or idle) never exceed the limit
/// cluster-wide; it lapses by itself at its deadline, so a dead worker's holds come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotHold {
    /// The destination domain.
    pub domain: String,
    /// The hold's id.
    pub id: String,
    /// When the hold lapses (Unix ms).
    pub until_ms: u64,
}

/// Details of the delivery attempt, reported in events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The MX host name tried.
    pub remote_mx: Option<String>,
    /// Its IP address.
    pub remote_ip: Option<String>,
    /// The TLS version and cipher, if TLS was used.
    pub tls: Option<String>,
    /// The id of the DSN queued for the recipients this attempt failed or expired, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
}

/// How the attempt ended for the job as a whole; recipients without an explicit result take this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Delivered.
    Delivered,
    /// Try again at this time (Unix ms); pending recipients stay in the job.
    Deferred {
        /// The retry time (Unix ms).
        until_ms: u64,
    },
    /// Permanently failed.
    Failed,
    /// Gave up because the job is older than its maximum age (reported as `expired` rather than `failed`).
    Expired,
}

/// The result of an attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientResult {
    /// The recipient's index in the job (see [`Job::recipients`]).
    pub index: u32,
    /// Delivered, Pending (deferred: stays in the job) or Failed.
    pub status: RecipientStatus,
    /// The reply for this recipient, if it differs from the job-level reply.
    pub reply: Option<String>,
}

/// What [`Queue::complete`](crate::Queue::complete) records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The outcome for recipients without an explicit result.
    pub kind: OutcomeKind,
    /// The reply (or error text) for the attempt.
    pub reply: Option<String>,
    /// Per-recipient results, overriding `kind` for those recipients.
    pub recipients: Vec<RecipientResult>,
    /// Details of the attempt for events.
    pub attempt: Option<DeliveryAttempt>,
}

impl Outcome {
    /// Every pending recipient was delivered.
    pub fn delivered() -> Self {
        Outcome {
            kind: OutcomeKind::Delivered,
            reply: None,
            recipients: Vec::new(),
            attempt: None,
        }
    }

    /// Try again at `until_ms`.
    pub fn defer(until_ms: u64, reply: impl Into<String>) -> Self {
        Outcome {
            kind: OutcomeKind::Deferred { until_ms },
            reply: Some(reply.into()),
            recipients: Vec::new(),
            attempt: None,
        }
    }

    /// Permanently failed.
    pub fn fail(reply: impl Into<String>) -> Self {
        Outcome {
            kind: OutcomeKind::Failed,
            reply: Some(reply.into()),
            recipients: Vec::new(),
            attempt: None,
        }
    }

    /// Expired (too old to retry).
    pub fn expire(reply: impl Into<String>) -> Self {
        Outcome {
            kind: OutcomeKind::Expired,
            reply: Some(reply.into()),
            recipients: Vec::new(),
            attempt: None,
        }
    }

    /// Sets the reply.
    pub fn with_reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// Adds a per-recipient result.
    pub fn with_result(mut self, index: u32, status: RecipientStatus, reply: Option<String>) -> Self {
        self.recipients.push(RecipientResult { index, status, reply });
        self
    }

    /// Sets the attempt details.
    pub fn with_attempt(mut self, attempt: DeliveryAttempt) -> Self {
        self.attempt = Some(attempt);
        self
    }
}

/// What [`Queue::complete`](crate::Queue::complete) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// No recipient is pending: the job is gone (and the body, with the message's last job).
    Finished,
    /// Some recipients are pending; the job waits until this time (Unix ms).
    Deferred {
        /// The retry time.
        next_attempt_ms: u64,
    },
    /// This very completion (same token) was already recorded: a repeated call, nothing changed.
    AlreadyDone,
    /// The job no longer exists: completed before (a repeated call) or deleted by an operator.
    Gone,
}

/// A message and its jobs, for operators.
#[derive(Clone, Debug)]
pub struct MessageInfo {
    /// The message's id.
    pub id: MessageId,
    /// The size of the stored body in bytes.
    pub body_size: u64,
    /// Its remaining jobs (finished jobs are gone).
    pub jobs: Vec<Job>,
}

/// Which jobs an operator action applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One job.
    Job(JobId),
    /// Every remaining job of a message.
    Message(MessageId),
    /// Every waiting (not in flight) job of a domain.
    Domain(String),
}

/// A filter for [`Queue::list`](crate::Queue::list); empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Destination domain.
    pub domain: Option<String>,
    /// Job state.
    pub state: Option<JobState>,
    /// Sender address (case-insensitive; `""` for the null sender is not filterable).
    pub sender: Option<String>,
    /// Recipient address (case-insensitive).
    pub recipient: Option<String>,
}

/// A position in a listing; opaque to callers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor(pub String);

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Cursor>,
}

/// Jobs by state, across the whole queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting, never attempted.
    pub queued: u64,
    /// Waiting for a retry.
    pub deferred: u64,
    /// Claimed by workers.
    pub in_flight: u64,
    /// Held by an operator.
    pub held: u64,
    /// All jobs.
    pub total: u64,
    /// Jobs waiting on the admin-bounce schedule.
    pub bounce_pending: u64,
    /// Suspended domains.
    pub suspended_domains: u64,
    /// The earliest due time of any waiting job (Unix ms).
    pub oldest_due_ms: Option<u64>,
    /// When the oldest message still in the queue was made (Unix ms, from its id), so that its age costs no
    /// scan of the jobs.
    pub oldest_message_ms: Option<u64>,
}

/// A suspension of deliveries to a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// The domain (lower-cased).
    #[serde(default)]
    pub domain: String,
    /// Why.
    pub reason: String,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// Until when (Unix ms); `None` until resumed.
    pub until_ms: Option<u64>,
}

/// How deep one domain's queue is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainDepth {
    /// The domain.
    pub domain: String,
    /// Waiting jobs (due or not).
    pub waiting: u64,
    /// Waiting jobs already due.
    pub due: u64,
    /// Jobs held by an operator (not counted in `waiting`).
    pub held: u64,
    /// All jobs (waiting, held and in flight).
    pub total: u64,
    /// The earliest due time of a waiting job (Unix ms).
    pub earliest_due_ms: Option<u64>,
    /// Slots in use: live claims plus holds of idle connections ([`crate::Queue::hold_slot`]).
    pub active_claims: u64,
    /// The domain's concurrency override, if set.
    pub concurrency_limit: Option<u32>,
    /// The suspension, if suspended.
    pub suspension: Option<Suspension>,
}

/// What happened to a job (or a domain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A job was queued.
    Queued,
    /// Recipients were delivered.
    Delivered,
    /// Recipients were deferred.
    Deferred,
    /// Recipients failed permanently.
    Failed,
    /// Recipients expired (too old).
    Expired,
    /// An operator deleted the job.
    Deleted,
    /// A worker's lease ran out and the job went back to the schedule.
    LeaseExpired,
    /// A worker gave the job back.
    Released,
    /// An operator asked for the job to be retried now.
    Retried,
    /// An operator asked for the job to be bounced.
    Bounced,
    /// An operator held the job.
    Held,
    /// An operator released a held job.
    Unheld,
    /// A domain was suspended.
    Suspended,
    /// A domain was resumed.
    Resumed,
}

impl EventKind {
    /// The name used in the stream.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Failed => "failed",
            EventKind::Expired => "expired",
            EventKind::Deleted => "deleted",
            EventKind::LeaseExpired => "lease-expired",
            EventKind::Released => "released",
            EventKind::Retried => "retried",
            EventKind::Bounced => "bounced",
            EventKind::Held => "held",
            EventKind::Unheld => "unheld",
            EventKind::Suspended => "suspended",
            EventKind::Resumed => "resumed",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => EventKind::Queued,
            "delivered" => EventKind::Delivered,
            "deferred" => EventKind::Deferred,
            "failed" => EventKind::Failed,
            "expired" => EventKind::Expired,
            "deleted" => EventKind::Deleted,
            "lease-expired" => EventKind::LeaseExpired,
            "released" => EventKind::Released,
            "retried" => EventKind::Retried,
            "bounced" => EventKind::Bounced,
            "held" => EventKind::Held,
            "unheld" => EventKind::Unheld,
            "suspended" => EventKind::Suspended,
            "resumed" => EventKind::Resumed,
            other => return Err(format!("unknown event kind {other:?}")),
        })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When (Unix ms).
    pub time_ms: u64,
    /// The message (absent for domain events).
    pub message: Option<MessageId>,
    /// The job (absent for domain events).
    pub job: Option<JobId>,
    /// The domain.
    pub domain: String,
    /// The recipients concerned.
    pub recipients: Vec<String>,
    /// The reply or reason.
    pub reply: Option<String>,
    /// The job's attempt count after this change.
    pub attempt: u32,
    /// The job's tags.
    pub tags: BTreeMap<String, String>,
    /// The MX tried.
    pub remote_mx: Option<String>,
    /// Its IP address.
    pub remote_ip: Option<String>,
    /// TLS details.
    pub tls: Option<String>,
    /// The envelope sender (`""` for the null sender): set on `queued` events read from a message's
    /// history ([`HistoryStore`](crate::HistoryStore)); `None` elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The id of the DSN queued for this event's recipients (failed or expired), if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
    /// The event's id, unique in the queue.
    pub id: String,
    /// Where to read on from to get the events after this one (events stored together, by one batched
    /// call, share the position after the last of them). Set by `read_events`; not stored.
    #[serde(skip)]
    pub position: EventPos,
}

/// A position in the queue's events, from which [`Queue::read_events`](crate::Queue::read_events) goes on: an
/// opaque cursor whose text form may be stored and given back (`ternctl events --from`). Only the backend
/// that made it reads it; another backend (or a malformed one) is refused by `read_events` as
/// [`QueueError::InvalidMessage`](crate::QueueError::InvalidMessage).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventPos(String);

impl EventPos {
    /// The longest position text accepted back.
    pub const MAX_LEN: usize = 4096;

    /// A position in a backend's own form.
    pub(crate) fn new(text: String) -> EventPos {
        EventPos(text)
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EventPos {
    type Err = String;
    /// Accepts any printable text up to [`EventPos::MAX_LEN`]; what it means is the backend's to check.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > EventPos::MAX_LEN {
            return Err(format!("a position is at most {} characters", EventPos::MAX_LEN));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("bad position {s:?}"));
        }
        Ok(EventPos(s.to_string()))
    }
}

/// Counters: recipients for delivered, deferred, failed, expired and deleted; jobs for lease-expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages accepted.
    pub messages: u64,
    /// Recipients enqueued.
    pub enqueued: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipient deferrals.
    pub deferred: u64,
    /// Recipients failed.
    pub failed: u64,
    /// Recipients expired.
    pub expired: u64,
    /// Recipients deleted by operators.
    pub deleted: u64,
    /// Leases that expired.
    pub lease_expired: u64,
}

impl Stats {
    /// Adds a counter by its stored name.
    pub(crate) fn add(&mut self, name: &str, n: u64) {
        let slot = match name {
            "messages" => &mut self.messages,
            "enqueued" => &mut self.enqueued,
            "delivered" => &mut self.delivered,
            "deferred" => &mut self.deferred,
            "failed" => &mut self.failed,
            "expired" => &mut self.expired,
            "deleted" => &mut self.deleted,
            "lease_expired" => &mut self.lease_expired,
            _ => return,
        };
        *slot = slot.saturating_add(n);
    }
}
