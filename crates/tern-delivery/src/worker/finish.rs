//! The end of an attempt: the job's outcome from its replies, the DSNs due (queued before the job is
//! completed), completing the job (again while the queue is unreachable), releasing it, and an operator's
//! bounce.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tern_core::time::{from_unix_ms, now_ms};
use tern_queue::{ClaimedJob, DeliveryAttempt, JobLease, NewMessage, Outcome, OutcomeKind, RecipientStatus};
use tern_smtp::Reply;
use tracing::{debug, info, warn};

use super::{Inner, lock};
use crate::dsn::{Diagnostic, DsnAction, DsnContext, DsnRecipient, build_dsn, idempotency_key};
use crate::outcome::{DecideContext, decide};
use crate::smtp::RecipientReply;

/// Originals larger than this are returned in DSNs as headers only.
const DSN_RETURN_LIMIT: usize = 1 << 20;
/// The first and the longest pause between attempts to record an outcome while the queue is unreachable.
const COMPLETE_RETRY_FIRST: Duration = Duration::from_millis(250);
const COMPLETE_RETRY_MAX: Duration = Duration::from_secs(5);

impl Inner {
    /// Drops the job's lease from the heartbeat's set, unless it belongs to a newer claim of the job (this
    /// worker may have claimed it again after the old lease lapsed).
    fn forget(&self, lease: &JobLease) {
        let mut leases = lock(&self.leases);
        if leases.get(&lease.job).is_some_and(|l| l.token == lease.token) {
            leases.remove(&lease.job);
        }
    }

    /// Gives the job back to the queue, undelivered and due at once (shutdown).
    pub(super) async fn release(&self, cj: &ClaimedJob) {
        self.release_lease(&cj.lease).await;
        self.forget(&cj.lease);
    }

    /// Releases one lease, counting it among the released or, when the queue refused or could not be
    /// reached, the not released (the job then comes back when its lease expires).
    pub(super) async fn release_lease(&self, lease: &JobLease) {
        match self.queue.release(&self.owner, lease).await {
            Ok(()) => {
                self.released.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.not_released.fetch_add(1, Ordering::Relaxed);
                warn!(job = %lease.job, error = %e, "release on shutdown failed");
            }
        }
    }

    /// The whole batch (from `first` on) takes `reply`, tern's own (no route, or no host took a
    /// connection), without a connection attempt per message. `attempt` names no server: it carries the
    /// MTA-STS mode for the events, when the policy step applied.
    pub(super) async fn fail_all(
        &self,
        first: ClaimedJob,
        rest: impl Iterator<Item = ClaimedJob>,
        reply: &Reply,
        attempt: Option<DeliveryAttempt>,
    ) {
        for cj in std::iter::once(first).chain(rest) {
            let results: Vec<(u32, RecipientReply)> = cj
                .job
                .pending()
                .map(|(i, _)| (i, RecipientReply::Local(reply.clone())))
                .collect();
            self.finish(&cj, &results, attempt.clone(), false).await;
        }
    }

    /// Decides the job's outcome, queues the DSNs due, then completes the job. `dsn_passed_on`: the
    /// server offered DSN, so successes are its to report.
    pub(super) async fn finish(
        &self,
        cj: &ClaimedJob,
        results: &[(u32, RecipientReply)],
        attempt: Option<DeliveryAttempt>,
        dsn_passed_on: bool,
    ) {
        let now = now_ms();
        // The server tern was talking to, for the log line even when the outcome names none.
        let talking_to = attempt.clone().unwrap_or_default();
        let ctx = DecideContext {
            retry: &self.retry,
            now_ms: now,
            spread: rand::random::<f64>() * 2.0 - 1.0,
            delay_notice_after: self.cfg.delay_notice_after.map(|d| d.get()),
            attempt,
            dsn_passed_on,
        };
        let d = decide(&cj.job, results, &ctx);
        crate::telemetry::attempt(&cj.job, results, &d.outcome, now);
        let mut outcome = d.outcome;
        if !d.failed.is_empty() && self.send_dsn(cj, &d.failed, "failed").await.is_err() {
            // Without the DSN queued the failure must not be recorded: those recipients stay pending and
            // are tried again soon (delivered ones are still recorded, so nothing is delivered twice).
            for r in &mut outcome.recipients {
                if r.status == RecipientStatus::Failed {
                    r.status = RecipientStatus::Pending;
                }
            }
            outcome.kind = OutcomeKind::Deferred {
                until_ms: now + 60_000,
            };
        }
        if !d.delayed.is_empty() {
            let _ = self.send_dsn(cj, &d.delayed, "delayed").await;
        }
        if !d.relayed.is_empty() {
            let _ = self.send_dsn(cj, &d.relayed, "relayed").await;
        }
        let counts = |st: RecipientStatus| outcome.recipients.iter().filter(|r| r.status == st).count();
        let (delivered, deferred, failed) = (
            counts(RecipientStatus::Delivered),
            counts(RecipientStatus::Pending),
            counts(RecipientStatus::Failed),
        );
        let a = talking_to;
        info!(
            message_id = %cj.job.id.message,
            job = %cj.job.id,
            domain = %cj.job.domain,
            mx = a.remote_mx.as_deref().unwrap_or("-"),
            ip = a.remote_ip.as_deref().unwrap_or("-"),
            tls = a.tls.as_deref().unwrap_or("-"),
            reply = outcome.reply.as_deref().unwrap_or("-"),
            delivered, deferred, failed,
            "delivery attempt finished"
        );
        self.complete(cj, outcome).await;
    }

    /// Records the outcome. While the queue is unreachable the call is repeated (a repeat is safe: it
    /// answers `AlreadyDone` or `Gone` once the first one landed), with the lease kept alive by the
    /// heartbeat, for up to one lease: an outcome that is not recorded means the job is tried again, and a
    /// delivered message delivered twice. The batch waits meanwhile rather than send more it cannot record.
    pub(super) async fn complete(&self, cj: &ClaimedJob, outcome: Outcome) {
        let started = tokio::time::Instant::now();
        let mut pause = COMPLETE_RETRY_FIRST;
        loop {
            match self.queue.complete(&self.owner, &cj.lease, outcome.clone()).await {
                Ok(c) => {
                    debug!(job = %cj.job.id, completion = ?c, "completed");
                    break;
                }
                Err(e) if e.is_unavailable() && started.elapsed() + pause < self.lease => {
                    warn!(job = %cj.job.id, error = %e, retry_in = ?pause, "complete failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(COMPLETE_RETRY_MAX);
                }
                Err(e) => {
                    warn!(job = %cj.job.id, error = %e, "complete failed; the lease will expire and the job be retried");
                    break;
                }
            }
        }
        self.forget(&cj.lease);
    }

    /// Queues a DSN for `recipients` of the job (nothing when the sender is `<>` or NOTIFY declines).
    async fn send_dsn(&self, cj: &ClaimedJob, recipients: &[DsnRecipient], event: &str) -> Result<(), ()> {
        let ctx = DsnContext {
            reporting_mta: &self.hostname,
            envelope: &cj.job.envelope,
            arrival: from_unix_ms(cj.job.first_queued_ms),
            original: &cj.body,
            return_limit: DSN_RETURN_LIMIT,
            now: SystemTime::now(),
        };
        let Some(dsn) = build_dsn(&ctx, recipients) else {
            return Ok(());
        };
        let key = idempotency_key(cj.job.id, event, recipients);
        let mut msg = NewMessage::new(dsn.envelope, dsn.body)
            .with_idempotency_key(key)
            .with_tag("dsn", event);
        msg.id = Some(dsn.id);
        for (k, v) in &cj.job.tags {
            msg.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for attempt in 0..3u32 {
            match self.queue.enqueue(msg.clone()).await {
                Ok(r) => {
                    info!(message_id = %cj.job.id.message, dsn = %r.message, event, recipients = recipients.len(), "DSN queued");
                    return Ok(());
                }
                Err(e) => {
                    warn!(message_id = %cj.job.id.message, error = %e, attempt, "queuing the DSN failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        Err(())
    }

    /// An operator bounced the job: a DSN for its pending recipients, then the job fails, undelivered.
    pub(super) async fn admin_bounce(&self, cj: ClaimedJob) {
        let text = "bounced by the administrator";
        let now = SystemTime::now();
        let recipients: Vec<DsnRecipient> = cj
            .job
            .pending()
            .map(|(_, r)| DsnRecipient {
                recipient: r.recipient.clone(),
                action: DsnAction::Failed,
                status: tern_smtp::EnhancedCode::new(5, 0, 0),
                remote_mta: None,
                diagnostic: Some(Diagnostic::Local(text.to_string())),
                last_attempt: Some(now),
                will_retry_until: None,
            })
            .collect();
        if self.send_dsn(&cj, &recipients, "failed").await.is_err() {
            // Tried again later rather than released: a released job is due at once, and with a lasting
            // error this would loop.
            let retry = Outcome::defer(
                now_ms() + 60_000,
                "451 4.3.0 the bounce's DSN could not be queued",
            );
            self.complete(&cj, retry).await;
            return;
        }
        let mut outcome = Outcome::fail(format!("550 5.0.0 {text}"));
        for (i, _) in cj.job.pending() {
            outcome = outcome.with_result(i, RecipientStatus::Failed, Some(format!("550 5.0.0 {text}")));
        }
        info!(message_id = %cj.job.id.message, job = %cj.job.id, domain = %cj.job.domain, "admin bounce");
        self.complete(&cj, outcome).await;
    }
}
