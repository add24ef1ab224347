//! Operator actions (`admin.lua`): retry now, delete and bounce, by job, message or domain; suspensions and
//! per-domain concurrency limits.

use tern_core::{JobId, MessageId};

use super::state::State;
use crate::model::{BOUNCE_SCHEDULE, EventKind, Suspension, Target};

/// The most waiting jobs of a domain one admin call handles (the caller calls again while it examined this
/// many), so that a deep domain does not hold the writer for long.
pub(crate) const ADMIN_CHUNK: usize = 500;

/// What an operator does to jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdminAction {
    /// A waiting job becomes due now (attempts unchanged); jobs in flight are left alone.
    Retry,
    /// The job is removed, in flight too (its owner's later completion finds it gone); no DSN.
    Delete,
    /// The job is flagged `admin_bounce` and moves to the `#bounce` schedule, due now, which is never
    /// suspended and has no limit; a job in flight goes there when its attempt ends without finishing it.
    Bounce,
}

impl State {
    /// Applies `action` to `target`; returns the jobs changed and whether the call stopped at its chunk (a
    /// domain with more waiting jobs: call again).
    pub(crate) fn admin(&mut self, action: AdminAction, target: &Target, now: u64) -> (u64, bool) {
        self.clock = now;
        let (changed, more) = self.admin_jobs(action, target, now);
        // Jobs made due now wake one waiting worker (a deleted job in flight frees its claim's slot, which
        // wakes one when its domain has due jobs).
        if changed > 0 && action != AdminAction::Delete {
            self.wakes += 1;
        }
        (changed, more)
    }

    fn admin_jobs(&mut self, action: AdminAction, target: &Target, now: u64) -> (u64, bool) {
        let ids: Vec<JobId> = match target {
            Target::Job(id) => vec![*id],
            Target::Message(message) => self.jobs_of(*message),
            Target::Domain(domain) => {
                let domain = domain.to_ascii_lowercase();
                let Some(schedule) = self.schedules.get(&domain) else {
                    return (0, false);
                };
                let waiting = schedule.iter().map(|(due, id)| (*due, *id));
                let ids: Vec<JobId> = match action {
                    // Only jobs not yet due: due ones need nothing, and each call makes some due.
                    AdminAction::Retry => waiting
                        .filter(|(due, _)| *due > now)
                        .map(|(_, id)| id)
                        .take(ADMIN_CHUNK)
                        .collect(),
                    _ => waiting.map(|(_, id)| id).take(ADMIN_CHUNK).collect(),
                };
                let more = ids.len() == ADMIN_CHUNK;
                let changed = ids.into_iter().map(|id| self.act(action, id, now)).sum();
                return (changed, more);
            }
        };
        (ids.into_iter().map(|id| self.act(action, id, now)).sum(), false)
    }

    /// The live jobs of a message, in index order.
    pub(crate) fn jobs_of(&self, message: MessageId) -> Vec<JobId> {
        self.jobs
            .range(JobId::new(message, 0)..=JobId::new(message, u32::MAX))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Applies `action` to one job; 1 when it changed the job.
    fn act(&mut self, action: AdminAction, id: JobId, now: u64) -> u64 {
        let Some(live) = self.jobs.get_mut(&id) else {
            return 0;
        };
        let in_flight = live.flight.is_some();
        let schedule = live.record.schedule().to_string();
        let due = live.record.next;
        match action {
            AdminAction::Delete => {
                let pending = live.record.pending_addresses().len() as u64;
                self.job_event(EventKind::Deleted, now, id);
                self.stat(now, "deleted", pending);
                self.remove_job(id);
            }
            AdminAction::Retry => {
                if in_flight {
                    return 0;
                }
                self.unschedule(&schedule, id, due);
                self.requeue(id, now);
                self.job_event(EventKind::Retried, now, id);
            }
            AdminAction::Bounce => {
                live.record.bounce = true;
                live.record.schedule = Some(BOUNCE_SCHEDULE.to_string());
                self.changes.jobs.insert(id);
                if self.unschedule(&schedule, id, due) && schedule != BOUNCE_SCHEDULE {
                    self.reindex(&schedule, None);
                }
                if !in_flight {
                    self.requeue(id, now);
                }
                self.job_event(EventKind::Bounced, now, id);
            }
        }
        1
    }

    /// [`crate::Queue::suspend`]: the domain leaves the domain index, so no claim sees its jobs.
    pub(crate) fn suspend(&mut self, domain: &str, until_ms: Option<u64>, reason: &str, now: u64) {
        let domain = domain.to_ascii_lowercase();
        let record = Suspension {
            domain: domain.clone(),
            reason: reason.to_string(),
            since_ms: now,
            until_ms,
        };
        if let Some(old) = self.suspensions.insert(domain.clone(), record)
            && let Some(until) = old.until_ms
        {
            self.suspension_ends.remove(&(until, domain.clone()));
        }
        if let Some(until) = until_ms {
            self.suspension_ends.insert((until, domain.clone()));
        }
        self.changes.suspensions.insert(domain.clone());
        self.index_remove(&domain);
        self.event(
            EventKind::Suspended,
            now,
            None,
            &domain,
            Vec::new(),
            Some(reason.to_string()),
            0,
        );
        self.close_entry();
    }

    /// [`crate::Queue::resume`]: the earliest due job puts the domain back in the index. Whether it was
    /// suspended.
    pub(crate) fn resume(&mut self, domain: &str, now: u64) -> bool {
        let domain = domain.to_ascii_lowercase();
        let was = self.suspensions.remove(&domain);
        if let Some(until) = was.as_ref().and_then(|s| s.until_ms) {
            self.suspension_ends.remove(&(until, domain.clone()));
        }
        self.reindex(&domain, None);
        if was.is_some() {
            self.changes.suspensions.insert(domain.clone());
            self.event(EventKind::Resumed, now, None, &domain, Vec::new(), None, 0);
            self.close_entry();
            // Its due jobs are claimable again.
            if self.earliest_due(&domain).is_some_and(|first| first <= now) {
                self.wakes += 1;
            }
        }
        was.is_some()
    }

    /// [`crate::Queue::set_domain_concurrency`].
    pub(crate) fn set_concurrency(&mut self, domain: &str, limit: Option<u32>) {
        let domain = domain.to_ascii_lowercase();
        match limit {
            Some(l) => self.concurrency.insert(domain.clone(), l),
            None => self.concurrency.remove(&domain),
        };
        self.changes.concurrency.insert(domain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::test_support::message;

    #[test]
    fn a_bounce_moves_waiting_jobs_to_the_bounce_schedule_once() {
        let mut s = State::new(10, 100);
        s.suspend("x.test", None, "blocked", 0);
        s.enqueue(vec![message(&["a@x.test"]), message(&["b@x.test"])], 0);
        assert!(s.claim("w", 10, 100, &[], 1).is_err(), "suspended");
        let target = Target::Domain("X.test".into());
        assert_eq!(s.admin(AdminAction::Bounce, &target, 2), (2, false));
        assert!(!s.schedules.contains_key("x.test"));
        let job = s.schedules[BOUNCE_SCHEDULE]
            .first()
            .map(|(_, id)| *id)
            .expect("bounced");
        assert_eq!(s.admin(AdminAction::Bounce, &Target::Job(job), 3), (1, false));
        assert_eq!(
            s.schedules[BOUNCE_SCHEDULE].len(),
            2,
            "bouncing again moves nothing twice"
        );
        let c = s.claim("w", 10, 100, &[], 4).expect("bounces are claimable");
        assert_eq!((c.schedule.as_str(), c.jobs.len()), (BOUNCE_SCHEDULE, 2));
        assert!(c.jobs.iter().all(|(j, _)| j.admin_bounce && j.domain == "x.test"));
    }

    #[test]
    fn retry_by_domain_takes_jobs_not_yet_due_and_delete_takes_all() {
        let mut s = State::new(10, 100);
        s.enqueue(
            vec![message(&["a@x.test"]).not_before(1_000), message(&["b@x.test"])],
            0,
        );
        let target = Target::Domain("x.test".into());
        assert_eq!(s.admin(AdminAction::Retry, &target, 10), (1, false));
        assert_eq!(s.earliest_due("x.test"), Some(0));
        assert_eq!(
            s.schedules["x.test"].iter().filter(|(due, _)| *due <= 10).count(),
            2
        );
        assert_eq!(s.admin(AdminAction::Delete, &target, 11), (2, false));
        assert!(s.jobs.is_empty() && s.domain_live.is_empty() && s.domain_index.is_empty());
        assert!(s.resume("x.test", 12).eq(&false));
    }
}
