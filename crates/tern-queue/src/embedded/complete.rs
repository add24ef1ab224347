//! Completion: records the outcomes of attempts (`complete.lua`), one job or many per call; each job is
//! checked and changed on its own, in order, and the call's events are one entry.

use std::collections::HashMap;

use super::state::State;
use crate::QueueError;
use crate::model::{Completion, EventKind, JobLease, Outcome, OutcomeKind, RecipientStatus};

/// A deferral with no retry time given waits this long (ms), as in the Redis backend.
const DEFAULT_RETRY_MS: u64 = 60_000;

/// Recipients counted by what became of them, for the call's counters.
#[derive(Default)]
struct Tally {
    delivered: u64,
    deferred: u64,
    failed: u64,
    expired: u64,
}

impl State {
    /// [`crate::Queue::complete_batch`]: one result per job, in order.
    pub(crate) fn complete(
        &mut self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
        now: u64,
    ) -> Vec<Result<Completion, QueueError>> {
        self.clock = now;
        let mut tally = Tally::default();
        let out = jobs
            .into_iter()
            .map(|(lease, outcome)| self.complete_one(owner, &lease, outcome, now, &mut tally))
            .collect();
        self.stat(now, "delivered", tally.delivered);
        self.stat(now, "failed", tally.failed);
        self.stat(now, "expired", tally.expired);
        self.stat(now, "deferred", tally.deferred);
        self.close_entry();
        out
    }

    fn complete_one(
        &mut self,
        owner: &str,
        lease: &JobLease,
        outcome: Outcome,
        now: u64,
        tally: &mut Tally,
    ) -> Result<Completion, QueueError> {
        let retry = match outcome.kind {
            OutcomeKind::Deferred { until_ms } => Some(until_ms),
            _ => None,
        };
        if retry.is_none()
            && outcome
                .recipients
                .iter()
                .any(|r| r.status == RecipientStatus::Pending)
        {
            return Err(QueueError::InvalidOutcome(
                "recipients left pending need a deferred outcome with a retry time".into(),
            ));
        }
        let id = lease.job;
        let Some(live) = self.jobs.get(&id) else {
            return Ok(Completion::Gone);
        };
        let owned = live
            .flight
            .as_ref()
            .is_some_and(|f| f.owner == owner && f.token == lease.token);
        if !owned {
            // The last claim that completed the job without finishing it: a repeated call.
            if live.record.done_token.as_deref() == Some(&format!("c:{}", lease.token)) {
                return Ok(Completion::AlreadyDone);
            }
            return Err(QueueError::NotOwner { job: id });
        }
        let (rest, failed_kind) = match outcome.kind {
            OutcomeKind::Delivered => (RecipientStatus::Delivered, EventKind::Failed),
            OutcomeKind::Deferred { .. } => (RecipientStatus::Pending, EventKind::Failed),
            OutcomeKind::Failed => (RecipientStatus::Failed, EventKind::Failed),
            OutcomeKind::Expired => (RecipientStatus::Failed, EventKind::Expired),
        };
        let job_reply = outcome.reply.unwrap_or_default();
        // Later results for the same recipient win, as in the Redis backend.
        let given: HashMap<u32, (RecipientStatus, String)> = outcome
            .recipients
            .into_iter()
            .map(|r| (r.index, (r.status, r.reply.unwrap_or_default())))
            .collect();
        let record = &live.record;
        let domain = record.domain.clone();
        let attempt = record.attempts.saturating_add(1);
        // The pending recipients' new state and reply, and the same grouped by (state, reply) in first-seen
        // order, so that each event carries the reply its recipients got.
        let mut changes = Vec::new();
        let mut groups: Vec<(RecipientStatus, String, Vec<String>)> = Vec::new();
        for (index, ((status, _), recipient)) in record
            .recipients
            .iter()
            .zip(&record.envelope.recipients)
            .enumerate()
        {
            if *status != RecipientStatus::Pending {
                continue;
            }
            let (mut state, mut reply) = (rest, job_reply.clone());
            if let Some((s, r)) = u32::try_from(index).ok().and_then(|i| given.get(&i)) {
                state = *s;
                if !r.is_empty() {
                    reply.clone_from(r);
                }
            }
            match state {
                RecipientStatus::Delivered => tally.delivered += 1,
                RecipientStatus::Pending => tally.deferred += 1,
                RecipientStatus::Failed if failed_kind == EventKind::Expired => tally.expired += 1,
                RecipientStatus::Failed => tally.failed += 1,
            }
            let address = recipient.address.to_string();
            match groups.iter_mut().find(|(s, r, _)| *s == state && *r == reply) {
                Some(group) => group.2.push(address),
                None => groups.push((state, reply.clone(), vec![address])),
            }
            changes.push((index, state, reply));
        }
        let attempt_details = outcome.attempt.unwrap_or_default();
        for state in [
            RecipientStatus::Delivered,
            RecipientStatus::Failed,
            RecipientStatus::Pending,
        ] {
            let kind = match state {
                RecipientStatus::Delivered => EventKind::Delivered,
                RecipientStatus::Failed => failed_kind,
                RecipientStatus::Pending => EventKind::Deferred,
            };
            for (_, reply, addresses) in groups.iter().filter(|(s, _, _)| *s == state) {
                let event = self.event(
                    kind,
                    now,
                    Some(id),
                    &domain,
                    addresses.clone(),
                    Some(reply.clone()),
                    attempt,
                );
                event.remote_mx.clone_from(&attempt_details.remote_mx);
                event.remote_ip.clone_from(&attempt_details.remote_ip);
                event.tls.clone_from(&attempt_details.tls);
                if state == RecipientStatus::Failed {
                    event.dsn.clone_from(&attempt_details.dsn);
                }
            }
        }
        if !changes.iter().any(|(_, s, _)| *s == RecipientStatus::Pending) {
            self.remove_job(id);
            return Ok(Completion::Finished);
        }
        let due = retry.unwrap_or(now.saturating_add(DEFAULT_RETRY_MS));
        if let Some(live) = self.jobs.get_mut(&id) {
            let record = &mut live.record;
            for (index, state, reply) in changes {
                if let Some(slot) = record.recipients.get_mut(index) {
                    slot.0 = state;
                    if !reply.is_empty() {
                        slot.1 = Some(reply);
                    }
                }
            }
            record.attempts = attempt;
            record.done_token = Some(format!("c:{}", lease.token));
            if !job_reply.is_empty() {
                record.error = Some(job_reply);
            }
        }
        self.unlease(id);
        self.requeue(id, due);
        Ok(Completion::Deferred { next_attempt_ms: due })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::test_support::message;
    use crate::model::JobState;

    #[test]
    fn a_deferral_keeps_the_job_with_its_attempt_and_a_finish_removes_it() {
        let mut s = State::new(10, 100);
        s.enqueue(vec![message(&["a@x.test", "b@x.test"])], 0);
        let c = s.claim("w", 10, 1_000, &[], 1).expect("work");
        let lease = c.jobs[0].1.clone();
        let out = Outcome::defer(500, "451 later").with_result(0, RecipientStatus::Delivered, None);
        let r = s.complete("w", vec![(lease.clone(), out.clone())], 2);
        assert_eq!(r, vec![Ok(Completion::Deferred { next_attempt_ms: 500 })]);
        let job = s.jobs[&lease.job].view(lease.job);
        assert_eq!((job.state, job.attempts), (JobState::Deferred, 1));
        assert_eq!(job.recipients[1].reply.as_deref(), Some("451 later"));
        assert_eq!((s.counts.deferred, s.counts.in_flight), (1, 0));
        assert!(
            s.claims.is_empty() && s.slots.is_empty(),
            "the claim's slot is free"
        );
        assert_eq!(
            s.complete("w", vec![(lease.clone(), out)], 3),
            vec![Ok(Completion::AlreadyDone)]
        );
        let c = s.claim("w", 10, 1_000, &[], 600).expect("due again");
        let lease = c.jobs[0].1.clone();
        assert_eq!(
            s.complete("w", vec![(lease.clone(), Outcome::delivered())], 601),
            vec![Ok(Completion::Finished)]
        );
        assert!(s.jobs.is_empty() && s.messages.is_empty());
        assert_eq!(
            s.changes.bodies.get(&lease.job.message),
            Some(&None),
            "the body goes too"
        );
        assert_eq!(
            s.complete("w", vec![(lease, Outcome::delivered())], 602),
            vec![Ok(Completion::Gone)]
        );
        assert_eq!((s.stats.delivered, s.stats.deferred), (2, 1));
    }
}
