//! The embedded backend: the whole queue in one process, kept in a crash-safe store in a directory (redb),
//! with the same semantics as the Redis backend.
//!
//! - `writer.rs`: one thread owns the queue's state and applies the operations in turn, like Redis runs one
//!   function at a time; the changes of all operations waiting are written in ONE transaction with ONE
//!   sync (group commit), and each caller hears back only after its batch is on disk.
//! - `state.rs`: the queue in memory (jobs, schedules, the domain index, leases, slots, counts) and what
//!   every operation shares; `record.rs`: a job as stored.
//! - One file per group of operations: `enqueue.rs`, `claim.rs` (claims, slot holds), `complete.rs`,
//!   `lease.rs` (heartbeat, release, the reaper), `admin.rs`, `read.rs`. Each follows its Lua counterpart
//!   in `src/redis/ops/`, edge cases included.
//! - `store.rs`: the tables on disk, loading at start, one transaction per batch, and the reads that need no
//!   writer (bodies, events). `lock.rs`: one process per directory.
//! - `sts.rs`: the MTA-STS policy cache ([`crate::PolicyStore`]), its entries written through the writer.
//! - `tls_report.rs`: the TLS-RPT counters ([`crate::TlsReportStore`]), written through the writer.
//! - `history.rs`: each message's history ([`crate::HistoryStore`]), written with the events it copies.
//!
//! What is on disk: every job's record (everything but a claim; held jobs and bounce reasons too), bodies,
//! events, message histories, idempotency keys, suspensions, limits, counters, the MTA-STS policy cache
//! and the TLS-RPT counters. Claims, leases, slots and holds are kept in memory only: they belong
//! to workers of this same process, so they cannot outlive it. After a crash every job is waiting again,
//! due when it was (a job that was in flight at the crash is due at once), as if the reaper had returned
//! every lease.

mod admin;
mod claim;
mod complete;
mod enqueue;
mod history;
mod lease;
mod lock;
mod read;
mod record;
mod routes;
mod state;
mod store;
mod sts;
mod tls_report;
mod trace;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tern_core::MessageId;
use tern_core::time::now_ms;

use crate::model::*;
use crate::{Queue, QueueError};
use admin::AdminAction;
use lock::DirLock;
use state::Settings;
use tokio::sync::Semaphore;
use writer::Writer;

/// The store's directory when the configuration names none.
pub const DEFAULT_PATH: &str = "./tern-data";

/// The directory a queue URL names for the embedded store: `None` for a URL of another backend
/// (`redis://`, `rediss://`); [`DEFAULT_PATH`] for no URL (empty); `embedded:///var/lib/tern` names
/// `/var/lib/tern` (and `embedded://data`, a relative `data`). An `embedded://` URL without a path is a
/// [`QueueError::Config`] error.
pub fn path_from_url(url: &str) -> Option<Result<PathBuf, QueueError>> {
    let url = url.trim();
    if url.is_empty() {
        return Some(Ok(PathBuf::from(DEFAULT_PATH)));
    }
    let path = url.strip_prefix("embedded://")?;
    // A path of nothing but `/`, `.` and `..` names the root directory (or nothing): never meant.
    let names_a_directory = PathBuf::from(path)
        .components()
        .any(|part| matches!(part, std::path::Component::Normal(_)));
    if !names_a_directory {
        return Some(Err(QueueError::Config(
            "an embedded:// queue URL names a directory: embedded:///path/to/dir".into(),
        )));
    }
    Some(Ok(PathBuf::from(path)))
}

/// Options of the embedded queue.
#[derive(Clone, Debug)]
pub struct EmbeddedQueueOptions {
    /// The store's directory (made if missing): `queue.redb` and `lock` go there. Default `./tern-data`.
    pub path: PathBuf,
    /// The default lease of a claim (default 5 minutes); see [`EmbeddedQueue::default_lease`].
    pub lease: Duration,
    /// Claims (connections) per domain at once unless overridden (default 10).
    pub default_domain_concurrency: u32,
    /// How many event entries are kept (default 1,000,000); an entry holds the events of one call.
    pub events_max_len: u64,
    /// The store's page cache in bytes (default 64 MiB).
    pub cache_bytes: usize,
    /// How long after a message's first enqueue its writer may still send the same message (same id)
    /// again: ingest's `ingest.enqueue_retry_for` (default 60 s; zero: writers never repeat). Such a
    /// message is remembered (in memory) that long, so that a repeat arriving after its jobs were delivered
    /// and removed makes nothing.
    pub repeat_window: Duration,
    /// How long a message's history ([`crate::HistoryStore`]) is kept after its last event: `queue.history`
    /// (default 7 days; zero keeps none).
    pub history: Duration,
}

impl Default for EmbeddedQueueOptions {
    fn default() -> Self {
        EmbeddedQueueOptions {
            path: PathBuf::from("./tern-data"),
            lease: Duration::from_secs(300),
            default_domain_concurrency: 10,
            events_max_len: 1_000_000,
            cache_bytes: 64 << 20,
            repeat_window: Duration::from_secs(60),
            history: crate::history::DEFAULT_RETENTION,
        }
    }
}

/// The embedded queue. Cheap to share behind an `Arc`; every method is safe to call concurrently. One
/// process at a time may open a directory.
#[derive(Debug)]
pub struct EmbeddedQueue {
    opts: EmbeddedQueueOptions,
    db: Arc<redb::Database>,
    writer: Writer,
    /// Wakes for idle workers ([`Queue::wait_for_work`]): the writer adds one per signal after its commit.
    wakes: Arc<Semaphore>,
    /// The MTA-STS refresh locks (memory only: every contender is in this process).
    sts_locks: sts::StsLocks,
    /// The TLS-RPT report locks, one per day (memory only, as the MTA-STS ones).
    tls_report_locks: sts::StsLocks,
    /// The live SMTP trace bus (memory only: every tracer and worker is in this process).
    traces: Arc<trace::Bus>,
    // Released after the writer (fields drop in order): the store is closed before another process may open
    // it.
    _lock: DirLock,
}

/// A duration in whole milliseconds.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs blocking store reads off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Backend(format!("embedded queue store: {e}")))?
}

impl EmbeddedQueue {
    /// Opens the store in `opts.path` (made if missing) and reads the queue into memory. Fails when another
    /// process has the directory open ([`QueueError::Config`], naming its pid), or when the store cannot be
    /// read.
    pub fn open(opts: EmbeddedQueueOptions) -> Result<EmbeddedQueue, QueueError> {
        let lock = lock::acquire(&opts.path)?;
        let db = Arc::new(store::open(&opts.path, opts.cache_bytes)?);
        let settings = Settings {
            default_limit: opts.default_domain_concurrency,
            events_max: opts.events_max_len,
            repeat_window_ms: duration_ms(opts.repeat_window),
            history_ms: duration_ms(opts.history),
        };
        let state = store::load(&db, settings)?;
        tracing::info!(
            path = %opts.path.display(),
            jobs = state.jobs.len(),
            "embedded queue store open"
        );
        let wakes = Arc::new(Semaphore::new(0));
        let writer = Writer::start(Arc::clone(&db), state, Arc::clone(&wakes))?;
        Ok(EmbeddedQueue {
            opts,
            db,
            writer,
            wakes,
            sts_locks: sts::StsLocks::default(),
            tls_report_locks: sts::StsLocks::default(),
            traces: Arc::new(trace::Bus::new()),
            _lock: lock,
        })
    }

    /// The options.
    pub fn options(&self) -> &EmbeddedQueueOptions {
        &self.opts
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    /// The lease workers should ask for (the `lease` option).
    pub fn default_lease(&self) -> Duration {
        self.opts.lease
    }

    /// Whether the store still takes calls: `Ok` unless a failed commit stopped its writer (then
    /// [`QueueError::NotSent`]: the queue must be opened again, by restarting the process). For a readiness
    /// probe.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.writer.run(|_| ()).await
    }

    /// Applies an operator action, chunk by chunk for a domain.
    async fn admin(&self, action: AdminAction, target: &Target) -> Result<u64, QueueError> {
        let mut changed = 0;
        loop {
            let (target, action) = (target.clone(), action.clone());
            let (done, more) = self
                .writer
                .run(move |s| s.admin(&action, &target, now_ms()))
                .await?;
            changed += done;
            if !more {
                return Ok(changed);
            }
        }
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn enqueue(&self, message: NewMessage) -> Result<EnqueueReceipt, QueueError> {
        self.enqueue_batch(vec![message])
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(QueueError::Backend("no result".into())))
    }

    async fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<EnqueueReceipt, QueueError>> {
        let n = messages.len();
        match self.writer.run(move |s| s.enqueue(messages, now_ms())).await {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn claim_holding(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<Option<Claim>, QueueError> {
        Ok(match self.claim_next(owner, max_batch, lease, holds).await? {
            ClaimOutcome::Claimed(claim) => Some(claim),
            ClaimOutcome::Nothing { .. } => None,
        })
    }

    async fn claim_next(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<ClaimOutcome, QueueError> {
        let (owner, holds, lease_ms) = (owner.to_string(), holds.to_vec(), duration_ms(lease));
        let taken = match self
            .writer
            .run(move |s| s.claim(&owner, max_batch, lease_ms, &holds, now_ms()))
            .await?
        {
            Ok(taken) => taken,
            Err(next_due_ms) => return Ok(ClaimOutcome::Nothing { next_due_ms }),
        };
        // The bodies are read after the commit, off the writer; a job deleted by an operator since (its
        // message's body gone with it) is left out, and its completion will find it gone.
        let messages: Vec<MessageId> = taken.jobs.iter().map(|(j, _)| j.id.message).collect();
        let db = Arc::clone(&self.db);
        let bodies = blocking(move || store::read_bodies(&db, &messages)).await?;
        let jobs = taken
            .jobs
            .into_iter()
            .zip(bodies)
            .filter_map(|((job, lease), body)| body.map(|body| ClaimedJob { job, body, lease }))
            .collect();
        Ok(ClaimOutcome::Claimed(Claim {
            domain: taken.schedule,
            claim_id: taken.claim_id,
            lease_until_ms: taken.lease_until,
            jobs,
            took_hold: taken.took_hold,
        }))
    }

    async fn wait_for_work(&self, max_wait: Duration) -> Wakeup {
        // One permit per signal: a signal wakes one waiter, or is kept (a few) for the next wait.
        let permit = if max_wait.is_zero() {
            self.wakes.try_acquire().ok()
        } else {
            tokio::time::timeout(max_wait, self.wakes.acquire())
                .await
                .ok()
                .and_then(Result::ok)
        };
        match permit {
            Some(permit) => {
                permit.forget();
                Wakeup::Woken
            }
            None => Wakeup::TimedOut,
        }
    }

    async fn hold_slot(
        &self,
        domain: &str,
        claim_id: &str,
        hold: Duration,
    ) -> Result<Option<SlotHold>, QueueError> {
        let (domain, claim_id, hold_ms) = (domain.to_string(), claim_id.to_string(), duration_ms(hold));
        self.writer
            .run(move |s| s.hold_slot(&domain, &claim_id, hold_ms, now_ms()))
            .await
    }

    async fn drop_slot(&self, hold: &SlotHold) -> Result<(), QueueError> {
        let hold = hold.clone();
        self.writer.run(move |s| s.drop_slot(&hold, now_ms())).await
    }

    async fn complete(
        &self,
        owner: &str,
        job: &JobLease,
        outcome: Outcome,
    ) -> Result<Completion, QueueError> {
        self.complete_batch(owner, vec![(job.clone(), outcome)])
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(QueueError::Backend("no result".into())))
    }

    async fn complete_batch(
        &self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
    ) -> Vec<Result<Completion, QueueError>> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let (n, owner) = (jobs.len(), owner.to_string());
        match self.writer.run(move |s| s.complete(&owner, jobs, now_ms())).await {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn extend(&self, owner: &str, job: &JobLease, lease: Duration) -> Result<u64, QueueError> {
        let (owner, job, lease_ms) = (owner.to_string(), job.clone(), duration_ms(lease));
        self.writer
            .run(move |s| s.extend(&owner, &job, lease_ms, now_ms()))
            .await?
    }

    async fn release(&self, owner: &str, job: &JobLease) -> Result<(), QueueError> {
        let (owner, job) = (owner.to_string(), job.clone());
        self.writer
            .run(move |s| s.release(&owner, &job, now_ms()))
            .await?
    }

    async fn reap(&self, now_ms: u64) -> Result<u64, QueueError> {
        let mut returned = 0;
        loop {
            let n = self.writer.run(move |s| s.reap(now_ms)).await?;
            returned += n as u64;
            if n < lease::REAP_CHUNK {
                if returned > 0 {
                    tracing::info!(lease_expired = returned, "reaped");
                }
                return Ok(returned);
            }
        }
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageInfo>, QueueError> {
        self.writer.run(move |s| s.message(id)).await
    }

    async fn read_body(&self, id: MessageId) -> Result<Option<Bytes>, QueueError> {
        let db = Arc::clone(&self.db);
        let mut bodies = blocking(move || store::read_bodies(&db, &[id])).await?;
        Ok(bodies.pop().flatten())
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError> {
        let filter = filter.clone();
        self.writer
            .run(move |s| s.list(&filter, cursor.as_ref(), limit))
            .await?
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        self.writer.run(|s| s.counts()).await
    }

    async fn domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError> {
        self.writer.run(|s| s.depths(now_ms())).await
    }

    async fn domain_depth(&self, domain: &str) -> Result<DomainDepth, QueueError> {
        let domain = domain.to_ascii_lowercase();
        self.writer.run(move |s| s.depth(&domain, now_ms())).await
    }

    async fn retry_now(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(AdminAction::Retry, target).await
    }

    async fn delete(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(AdminAction::Delete, target).await
    }

    async fn bounce(&self, target: &Target, reason: Option<&str>) -> Result<u64, QueueError> {
        let reason = reason
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        self.admin(AdminAction::Bounce(reason), target).await
    }

    async fn hold(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(AdminAction::Hold, target).await
    }

    async fn unhold(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(AdminAction::Unhold, target).await
    }

    async fn suspend(&self, domain: &str, until_ms: Option<u64>, reason: &str) -> Result<(), QueueError> {
        let (domain, reason) = (domain.to_string(), reason.to_string());
        self.writer
            .run(move |s| s.suspend(&domain, until_ms, &reason, now_ms()))
            .await
    }

    async fn resume(&self, domain: &str) -> Result<bool, QueueError> {
        let domain = domain.to_string();
        self.writer.run(move |s| s.resume(&domain, now_ms())).await
    }

    async fn suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        self.writer
            .run(|s| s.suspensions.values().cloned().collect())
            .await
    }

    async fn set_domain_concurrency(&self, domain: &str, limit: Option<u32>) -> Result<(), QueueError> {
        let domain = domain.to_string();
        self.writer.run(move |s| s.set_concurrency(&domain, limit)).await
    }

    async fn read_events(
        &self,
        after: Option<&EventPos>,
        max: usize,
        block: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError> {
        let after = after.map(store::seq_of).transpose()?;
        let max = max.max(1);
        let deadline = block.map(|b| tokio::time::Instant::now() + b);
        let mut committed = self.writer.committed();
        loop {
            // Marked seen before reading, so that a commit while reading wakes the wait below.
            committed.borrow_and_update();
            let db = Arc::clone(&self.db);
            let (events, last) = blocking(move || store::read_events(&db, after, max)).await?;
            if let Some(last) = last {
                return Ok((events, store::position_of(last)));
            }
            let position = store::position_of(after.unwrap_or(0));
            let Some(deadline) = deadline else {
                return Ok((Vec::new(), position));
            };
            match tokio::time::timeout_at(deadline, committed.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(QueueError::Unavailable(
                        "embedded queue store: the writer stopped".into(),
                    ));
                }
                Err(_) => return Ok((Vec::new(), position)),
            }
        }
    }

    async fn events_end(&self) -> Result<EventPos, QueueError> {
        let last = self.writer.run(|s| s.events.next.saturating_sub(1)).await?;
        Ok(store::position_of(last))
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        self.writer.run(|s| s.stats).await
    }

    async fn recent_stats(&self, window: Duration) -> Result<Stats, QueueError> {
        let count = window.as_secs().div_ceil(60).clamp(1, state::MINUTES_KEPT);
        self.writer
            .run(move |s| {
                let current = now_ms() / 60_000;
                let mut total = Stats::default();
                for (_, minute) in s.minutes.range(current.saturating_sub(count - 1)..=current) {
                    for (name, n) in [
                        ("messages", minute.messages),
                        ("enqueued", minute.enqueued),
                        ("delivered", minute.delivered),
                        ("deferred", minute.deferred),
                        ("failed", minute.failed),
                        ("expired", minute.expired),
                        ("deleted", minute.deleted),
                        ("lease_expired", minute.lease_expired),
                    ] {
                        total.add(name, n);
                    }
                }
                total
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_url_names_the_store_directory() {
        assert_eq!(path_from_url(""), Some(Ok(PathBuf::from(DEFAULT_PATH))));
        assert_eq!(
            path_from_url("embedded:///var/lib/tern"),
            Some(Ok(PathBuf::from("/var/lib/tern")))
        );
        assert_eq!(path_from_url("embedded://data"), Some(Ok(PathBuf::from("data"))));
        assert!(matches!(
            path_from_url("embedded://"),
            Some(Err(QueueError::Config(_)))
        ));
        for root in [
            "embedded:///",
            "embedded:////",
            "embedded:///.",
            "embedded:///./..",
        ] {
            assert!(matches!(path_from_url(root), Some(Err(_))), "{root}");
        }
        assert_eq!(path_from_url("redis://127.0.0.1:6379"), None);
        assert_eq!(path_from_url("rediss://h:1"), None);
    }

    #[tokio::test]
    async fn a_store_reopens_with_what_it_had_and_its_lock_goes_with_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = EmbeddedQueueOptions {
            path: dir.path().join("store"),
            ..Default::default()
        };
        let q = EmbeddedQueue::open(opts.clone()).expect("open");
        q.ping().await.expect("ping");
        let r = q
            .enqueue(test_support::message(&["a@x.test"]))
            .await
            .expect("enqueue");
        q.suspend("y.test", None, "paused").await.expect("suspend");
        q.set_domain_concurrency("x.test", Some(3)).await.expect("limit");
        let claim = q
            .claim("w", 10, Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("work");
        assert!(matches!(
            EmbeddedQueue::open(opts.clone()),
            Err(QueueError::Config(_))
        ));
        drop(q);
        let q = EmbeddedQueue::open(opts).expect("reopen");
        let info = q.get_message(r.message).await.expect("get").expect("kept");
        assert_eq!(
            info.jobs[0].state,
            JobState::Queued,
            "a claim does not outlive its process"
        );
        assert_eq!(
            q.read_body(r.message).await.expect("body").as_deref(),
            Some(&b"Subject: t\r\n\r\nhi\r\n"[..])
        );
        assert_eq!(q.suspensions().await.expect("suspensions").len(), 1);
        assert_eq!(
            q.domain_depth("x.test").await.expect("depth").concurrency_limit,
            Some(3)
        );
        assert_eq!(q.stats().await.expect("stats").messages, 1);
        let err = q.complete("w", &claim.jobs[0].lease, Outcome::delivered()).await;
        assert!(matches!(err, Err(QueueError::NotOwner { .. })), "{err:?}");
        let (events, _) = q.read_events(None, 100, None).await.expect("events");
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Queued, EventKind::Suspended]
        );
        assert!(
            q.claim("w", 10, Duration::from_secs(60))
                .await
                .expect("claim")
                .is_some(),
            "due again"
        );
    }
}

#[cfg(test)]
mod group_commit_tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_share_commits_and_each_hears_after_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q = Arc::new(
            EmbeddedQueue::open(EmbeddedQueueOptions {
                path: dir.path().to_path_buf(),
                ..Default::default()
            })
            .expect("open"),
        );
        let committed = q.writer.committed();
        let before = committed.borrow().commits;
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let r = q.enqueue(test_support::message(&[&format!("r{i}@x.test")])).await;
                    // Acknowledged: its commit is counted already.
                    (r, q.writer.committed().borrow().commits)
                })
            })
            .collect();
        for call in calls {
            let (r, commits_seen) = call.await.expect("task");
            r.expect("enqueue");
            assert!(commits_seen > before, "acknowledged before any commit");
        }
        let commits = committed.borrow().commits - before;
        assert!(commits < 200, "200 concurrent enqueues took {commits} commits");
        assert_eq!(q.counts().await.expect("counts").total, 200);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Messages for the unit tests.
    use tern_core::{Envelope, Recipient, ReversePath};

    use crate::model::NewMessage;

    /// A message from `sender@origin.test` to `rcpts`.
    pub(crate) fn message(rcpts: &[&str]) -> NewMessage {
        let env = Envelope::new(
            ReversePath::Mailbox("sender@origin.test".parse().expect("test address")),
            rcpts
                .iter()
                .map(|r| Recipient::new(r.parse().expect("test address")))
                .collect(),
        );
        NewMessage::new(env, b"Subject: t\r\n\r\nhi\r\n".to_vec())
    }
}
