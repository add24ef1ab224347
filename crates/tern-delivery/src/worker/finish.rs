//! The end of an attempt: the job's outcome from its replies, the DSNs due (queued before the job is
//! completed, the failure DSN's id recorded with the outcome), completing the job (again while the queue
//! is unreachable), releasing it, and an operator's bounce (with the operator's reason and the last reply).
//! Every line logged here about a message names it, its sender, its recipients (while few), its domain,
//! and the server and reply where known (`crate::log_fields`).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use tern_core::MessageId;
use tern_core::time::{from_unix_ms, now_ms};
use tern_queue::{
    ClaimedJob, Completion, DeliveryAttempt, Job, JobLease, NewMessage, Outcome, OutcomeKind,
    RecipientResult, RecipientStatus,
};
use tern_smtp::Reply;
use tracing::{debug, info, warn};

use super::{Inner, lock};
use crate::dsn::{Diagnostic, DsnAction, DsnContext, DsnRecipient, build_dsn, idempotency_key};
use crate::log_fields;
use crate::outcome::{DecideContext, decide};
use crate::smtp::RecipientReply;

/// How many jobs of one batch that fail (or are bounced by an operator) together are finished at once:
/// their DSNs and completions go to the queue side by side, in group-commit calls of several, rather than
/// one round trip (and one `queue.completion_linger`) each.
pub(super) const FINISH_CONCURRENCY: usize = 64;

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
                warn!(message_id = %lease.job.message, job = %lease.job, error = %e, "release on shutdown failed");
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
        // Side by side, so that their completions share group-commit calls: one after the other, each
        // would wait `queue.completion_linger` alone.
        futures::stream::iter(std::iter::once(first).chain(rest))
            .for_each_concurrent(FINISH_CONCURRENCY, |cj| {
                let attempt = attempt.clone();
                async move {
                    let results: Vec<(u32, RecipientReply)> = cj
                        .job
                        .pending()
                        .map(|(i, _)| (i, RecipientReply::Local(reply.clone())))
                        .collect();
                    self.finish(&cj, &results, attempt, false).await;
                }
            })
            .await;
    }

    /// Decides the job's outcome, queues the DSNs due, then completes the job. `dsn_passed_on`: the
    /// server offered DSN, so successes are its to report. The failure DSN's id goes on the attempt, so
    /// that the queue records it on the failed (or expired) event.
    pub(super) async fn finish(
        &self,
        cj: &ClaimedJob,
        results: &[(u32, RecipientReply)],
        attempt: Option<DeliveryAttempt>,
        dsn_passed_on: bool,
    ) {
        let now = now_ms();
        // The server tern was talking to, for the log lines even when the outcome names none.
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
        let mut failure_dsn = None;
        if !d.failed.is_empty() {
            match self.send_dsn(cj, &d.failed, "failed").await {
                Ok(id) => failure_dsn = id,
                Err(()) => {
                    // Without the DSN queued the failure must not be recorded: those recipients stay
                    // pending and are tried again soon (delivered ones are still recorded, so nothing is
                    // delivered twice).
                    for r in &mut outcome.recipients {
                        if r.status == RecipientStatus::Failed {
                            r.status = RecipientStatus::Pending;
                        }
                    }
                    outcome.kind = OutcomeKind::Deferred {
                        until_ms: now + 60_000,
                    };
                }
            }
        }
        if !d.delayed.is_empty() {
            let _ = self.send_dsn(cj, &d.delayed, "delayed").await;
        }
        if !d.relayed.is_empty() {
            let _ = self.send_dsn(cj, &d.relayed, "relayed").await;
        }
        if let Some(id) = &failure_dsn {
            outcome.attempt.get_or_insert_with(DeliveryAttempt::default).dsn = Some(id.to_string());
        }
        log_outcome(&cj.job, &outcome, &talking_to, failure_dsn.as_ref(), now);
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
                    debug!(message_id = %cj.job.id.message, job = %cj.job.id, completion = %completion_text(c), "completed");
                    break;
                }
                Err(e) if e.is_unavailable() && started.elapsed() + pause < self.lease => {
                    let retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
                    warn!(message_id = %cj.job.id.message, job = %cj.job.id, error = %e, retry_in_ms, "complete failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(COMPLETE_RETRY_MAX);
                }
                Err(e) => {
                    warn!(message_id = %cj.job.id.message, job = %cj.job.id, error = %e, "complete failed; the lease will expire and the job be retried");
                    break;
                }
            }
        }
        self.forget(&cj.lease);
    }

    /// Queues a DSN for `recipients` of the job; its id, or `None` when none is due (the sender is `<>`,
    /// or NOTIFY declines). `Err` when it could not be queued.
    async fn send_dsn(
        &self,
        cj: &ClaimedJob,
        recipients: &[DsnRecipient],
        event: &str,
    ) -> Result<Option<MessageId>, ()> {
        let ctx = DsnContext {
            reporting_mta: &self.hostname,
            envelope: &cj.job.envelope,
            arrival: from_unix_ms(cj.job.first_queued_ms),
            original: &cj.body,
            return_limit: DSN_RETURN_LIMIT,
            now: SystemTime::now(),
        };
        let Some(dsn) = build_dsn(&ctx, recipients) else {
            return Ok(None);
        };
        let key = idempotency_key(cj.job.id, event, recipients);
        let mut msg = NewMessage::new(dsn.envelope, dsn.body)
            .with_idempotency_key(key)
            .with_tag("dsn", event);
        msg.id = Some(dsn.id);
        for (k, v) in &cj.job.tags {
            msg.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let sender = log_fields::sender(&cj.job.envelope.sender);
        let reported = log_fields::recipients(recipients.iter().map(|r| &r.recipient.address));
        for attempt in 0..3u32 {
            match self.queue.enqueue(msg.clone()).await {
                Ok(r) => {
                    info!(
                        message_id = %cj.job.id.message, job = %cj.job.id, dsn = %r.message, event,
                        sender, recipients = reported, domain = %cj.job.domain,
                        duplicate = r.duplicate, "DSN queued"
                    );
                    return Ok(Some(r.message));
                }
                Err(e) => {
                    warn!(
                        message_id = %cj.job.id.message, job = %cj.job.id, event, sender,
                        recipients = reported, error = %e, attempt, "queuing the DSN failed"
                    );
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        Err(())
    }

    /// An operator bounced the job: a DSN for its pending recipients, then the job fails, undelivered. The
    /// DSN and the failed event give the operator's reason and each recipient's last reply (the job's last
    /// error when the recipient has none of its own).
    pub(super) async fn admin_bounce(&self, cj: ClaimedJob) {
        let now = SystemTime::now();
        let reason = cj
            .job
            .bounce_reason
            .as_deref()
            .map(one_line)
            .filter(|r| !r.is_empty());
        let job_last = cj.job.last_error.as_deref().map(one_line);
        let explain = |last: Option<&str>| admin_bounce_text(reason.as_deref(), last);
        let pending: Vec<(u32, String, Option<String>)> = cj
            .job
            .pending()
            .map(|(i, r)| {
                let last = r.reply.as_deref().map(one_line).or_else(|| job_last.clone());
                (i, r.recipient.address.to_string(), last)
            })
            .collect();
        let recipients: Vec<DsnRecipient> = cj
            .job
            .pending()
            .zip(&pending)
            .map(|((_, r), (_, _, last))| DsnRecipient {
                recipient: r.recipient.clone(),
                action: DsnAction::Failed,
                status: tern_smtp::EnhancedCode::new(5, 0, 0),
                remote_mta: None,
                diagnostic: Some(Diagnostic::Local(explain(last.as_deref()))),
                last_attempt: Some(now),
                will_retry_until: None,
            })
            .collect();
        let dsn = match self.send_dsn(&cj, &recipients, "failed").await {
            Ok(id) => id,
            Err(()) => {
                // Tried again later rather than released: a released job is due at once, and with a
                // lasting error this would loop.
                let retry = Outcome::defer(
                    now_ms() + 60_000,
                    "451 4.3.0 the bounce's DSN could not be queued",
                );
                self.complete(&cj, retry).await;
                return;
            }
        };
        let mut outcome = Outcome::fail(format!("550 5.0.0 {}", explain(job_last.as_deref())));
        for (i, _, last) in &pending {
            outcome = outcome.with_result(
                *i,
                RecipientStatus::Failed,
                Some(format!("550 5.0.0 {}", explain(last.as_deref()))),
            );
        }
        if let Some(id) = &dsn {
            outcome = outcome.with_attempt(DeliveryAttempt {
                dsn: Some(id.to_string()),
                ..DeliveryAttempt::default()
            });
        }
        info!(
            message_id = %cj.job.id.message,
            job = %cj.job.id,
            sender = log_fields::sender(&cj.job.envelope.sender),
            recipients = log_fields::recipients(pending.iter().map(|(_, a, _)| a)),
            domain = %cj.job.domain,
            reason = reason.as_deref().unwrap_or("-"),
            reply = job_last.as_deref().unwrap_or("-"),
            dsn = dsn.as_ref().map(ToString::to_string).as_deref().unwrap_or("-"),
            "admin bounce"
        );
        self.complete(&cj, outcome).await;
    }
}

/// What an admin bounce says, in the DSN and the failed event: the operator's reason, and the last reply
/// the recipient had.
fn admin_bounce_text(reason: Option<&str>, last: Option<&str>) -> String {
    let mut text = "bounced by the administrator".to_string();
    if let Some(reason) = reason {
        text.push_str(": ");
        text.push_str(reason);
    }
    if let Some(last) = last {
        text.push_str("; last reply: ");
        text.push_str(last);
    }
    text
}

/// Collapses whitespace (line breaks from an operator's reason or a stored reply included) to single
/// spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A completion as a log value.
fn completion_text(c: Completion) -> String {
    match c {
        Completion::Finished => "finished".to_string(),
        Completion::Deferred { next_attempt_ms } => {
            format!("deferred until {}", log_fields::rfc3339(next_attempt_ms))
        }
        Completion::AlreadyDone => "already recorded".to_string(),
        Completion::Gone => "job gone".to_string(),
    }
}

/// How a recipient's attempt ended, for its log line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

/// The attempt's log lines: one per way its recipients ended (`delivered`, `deferred`, `bounced`,
/// `expired`), each with the message, its sender, those recipients, the domain, the server and the
/// reply; a deferral with its next attempt time (RFC 3339, and in seconds from now), a failure with its
/// DSN's id.
fn log_outcome(job: &Job, outcome: &Outcome, a: &DeliveryAttempt, dsn: Option<&MessageId>, now: u64) {
    let ending = |r: &RecipientResult| match r.status {
        RecipientStatus::Delivered => Ending::Delivered,
        RecipientStatus::Pending => Ending::Deferred,
        // A recipient failed on a temporary reply ran out of time.
        RecipientStatus::Failed
            if r.reply.as_deref().is_some_and(|l| l.starts_with('4'))
                || (r.reply.is_none() && outcome.kind == OutcomeKind::Expired) =>
        {
            Ending::Expired
        }
        RecipientStatus::Failed => Ending::Bounced,
    };
    let sender = log_fields::sender(&job.envelope.sender);
    let mx = a.remote_mx.as_deref().unwrap_or("-");
    let ip = a.remote_ip.as_deref().unwrap_or("-");
    let tls = a.tls.as_deref().unwrap_or("-");
    let attempt = job.attempts.saturating_add(1);
    let dsn = dsn.map(ToString::to_string);
    let dsn = dsn.as_deref().unwrap_or("-");
    // The attempt as a whole, in one line (the lines below split it by how its recipients ended).
    let counts = |st: RecipientStatus| outcome.recipients.iter().filter(|r| r.status == st).count();
    debug!(
        message_id = %job.id.message, job = %job.id, sender,
        recipients = log_fields::recipients(job.pending().map(|(_, r)| &r.recipient.address)),
        domain = %job.domain, mx, ip, tls, reply = outcome.reply.as_deref().unwrap_or("-"), attempt,
        delivered = counts(RecipientStatus::Delivered), deferred = counts(RecipientStatus::Pending),
        failed = counts(RecipientStatus::Failed), "delivery attempt finished"
    );
    for kind in [
        Ending::Delivered,
        Ending::Deferred,
        Ending::Bounced,
        Ending::Expired,
    ] {
        let group: Vec<&RecipientResult> = outcome.recipients.iter().filter(|r| ending(r) == kind).collect();
        let Some(first) = group.first() else {
            continue;
        };
        let recipients = log_fields::recipients(group.iter().map(|r| {
            job.recipients
                .get(r.index as usize)
                .map_or_else(String::new, |s| s.recipient.address.to_string())
        }));
        let reply = first.reply.as_deref().or(outcome.reply.as_deref()).unwrap_or("-");
        let (message_id, job_id, domain) = (&job.id.message, &job.id, &job.domain);
        match kind {
            Ending::Delivered => info!(
                message_id = %message_id, job = %job_id, sender, recipients, domain = %domain, mx, ip, tls,
                reply, attempt, "delivered"
            ),
            Ending::Deferred => {
                let next = match outcome.kind {
                    OutcomeKind::Deferred { until_ms } => until_ms,
                    _ => now,
                };
                info!(
                    message_id = %message_id, job = %job_id, sender, recipients, domain = %domain, mx, ip,
                    tls, reply, attempt, next_attempt = %log_fields::rfc3339(next),
                    next_attempt_in_s = next.saturating_sub(now) / 1000, "deferred"
                );
            }
            Ending::Bounced => info!(
                message_id = %message_id, job = %job_id, sender, recipients, domain = %domain, mx, ip, tls,
                reply, attempt, dsn, "bounced"
            ),
            Ending::Expired => warn!(
                message_id = %message_id, job = %job_id, sender, recipients, domain = %domain, mx, ip, tls,
                reply, attempt, dsn, "expired"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_bounce_says_the_reason_and_the_last_reply_when_there_are_any() {
        assert_eq!(admin_bounce_text(None, None), "bounced by the administrator");
        assert_eq!(
            admin_bounce_text(Some("spam run"), None),
            "bounced by the administrator: spam run"
        );
        assert_eq!(
            admin_bounce_text(Some("spam run"), Some("451 4.7.1 greylisted")),
            "bounced by the administrator: spam run; last reply: 451 4.7.1 greylisted"
        );
        assert_eq!(one_line(" a\r\n b\tc "), "a b c");
    }
}
