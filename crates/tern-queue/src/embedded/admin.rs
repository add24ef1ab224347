//! Operator actions (`admin.lua`): retry now, delete, bounce, hold and unhold, by job, message or domain;
//! suspensions and per-domain concurrency limits.
//!
//! A held job is off every schedule (so no claim sees it, and it never expires: expiry is decided by the
//! worker that claims it), counted as held, and listed in its domain's held jobs (`State::held`); its
//! record keeps the flag, so a restart finds it held.

use tern_core::{JobId, MessageId};

use super::state::State;
use crate::model::{BOUNCE_SCHEDULE, EventKind, JobState, Suspension, Target};

/// The most waiting jobs of a domain one admin call handles (the caller calls again while it examined this
/// many), so that a deep domain does not hold the writer for long.
pub(crate) const ADMIN_CHUNK: usize = 500;

/// What an operator does to jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AdminAction {
    /// A waiting job becomes due now (attempts unchanged); jobs in flight or held are left alone.
    Retry,
    /// The job is removed, in flight or held too (its owner's later completion finds it gone); no DSN.
    Delete,
    /// The job is flagged `admin_bounce` (with the operator's reason, if given) and moves to the `#bounce`
    /// schedule, due now, which is never suspended and has no limit; a held job is no longer held; a job
    /// in flight goes there when its attempt ends without finishing it.
    Bounce(Option<String>),
    /// A waiting job leaves its schedule and is held; jobs in flight are left alone.
    Hold,
    /// A held job goes back on its schedule, due now.
    Unhold,
}

impl State {
    /// Applies `action` to `target`; returns the jobs changed and whether the call stopped at its chunk (a
    /// domain with more waiting jobs: call again).
    pub(crate) fn admin(&mut self, action: &AdminAction, target: &Target, now: u64) -> (u64, bool) {
        self.clock = now;
        let (changed, more) = self.admin_jobs(action, target, now);
        // Jobs made due now wake one waiting worker (a deleted job in flight frees its claim's slot, which
        // wakes one when its domain has due jobs; a held job is due for no one).
        if changed > 0 && !matches!(action, AdminAction::Delete | AdminAction::Hold) {
            self.wakes += 1;
        }
        (changed, more)
    }

    fn admin_jobs(&mut self, action: &AdminAction, target: &Target, now: u64) -> (u64, bool) {
        let ids: Vec<JobId> = match target {
            Target::Job(id) => vec![*id],
            Target::Message(message) => self.jobs_of(*message),
            Target::Domain(domain) => {
                let domain = domain.to_ascii_lowercase();
                // Each call takes jobs that the action moves out of what it walks (off the schedule, out
                // of the held jobs, or due now), so calling again goes on.
                let waiting = self.schedules.get(&domain).into_iter().flatten().copied();
                let held = self.held.get(&domain).into_iter().flatten().copied();
                let ids: Vec<JobId> = match action {
                    // Only jobs not yet due: due ones need nothing, and each call makes some due.
                    AdminAction::Retry => waiting
                        .filter(|(due, _)| *due > now)
                        .map(|(_, id)| id)
                        .take(ADMIN_CHUNK)
                        .collect(),
                    AdminAction::Hold => waiting.map(|(_, id)| id).take(ADMIN_CHUNK).collect(),
                    AdminAction::Unhold => held.take(ADMIN_CHUNK).collect(),
                    AdminAction::Delete | AdminAction::Bounce(_) => {
                        waiting.map(|(_, id)| id).chain(held).take(ADMIN_CHUNK).collect()
                    }
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
    fn act(&mut self, action: &AdminAction, id: JobId, now: u64) -> u64 {
        let Some(live) = self.jobs.get_mut(&id) else {
            return 0;
        };
        let in_flight = live.flight.is_some();
        let held = live.record.held;
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
                if in_flight || held {
                    return 0;
                }
                self.unschedule(&schedule, id, due);
                self.requeue(id, now);
                self.job_event(EventKind::Retried, now, id);
            }
            AdminAction::Bounce(reason) => {
                live.record.bounce = true;
                live.record.schedule = Some(BOUNCE_SCHEDULE.to_string());
                if reason.is_some() {
                    live.record.bounce_reason.clone_from(reason);
                }
                if held {
                    self.unhold_job(id);
                }
                self.changes.jobs.insert(id);
                if self.unschedule(&schedule, id, due) && schedule != BOUNCE_SCHEDULE {
                    self.reindex(&schedule, None);
                }
                if !in_flight {
                    self.requeue(id, now);
                }
                self.job_event(EventKind::Bounced, now, id);
            }
            AdminAction::Hold => {
                if in_flight || held {
                    return 0;
                }
                let before = live.record.waiting_state();
                live.record.held = true;
                let domain = live.record.domain.clone();
                self.changes.jobs.insert(id);
                self.counts.moved(Some(before), Some(JobState::Held));
                self.held_add(&domain, id);
                if self.unschedule(&schedule, id, due) {
                    self.reindex(&schedule, None);
                }
                self.job_event(EventKind::Held, now, id);
            }
            AdminAction::Unhold => {
                if !held {
                    return 0;
                }
                self.unhold_job(id);
                self.requeue(id, now);
                self.job_event(EventKind::Unheld, now, id);
            }
        }
        1
    }

    /// A held job is held no more (its flag, its domain's held jobs, the counts); it is on no schedule yet.
    fn unhold_job(&mut self, id: JobId) {
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        if !live.record.held {
            return;
        }
        live.record.held = false;
        let after = live.record.waiting_state();
        let domain = live.record.domain.clone();
        self.changes.jobs.insert(id);
        self.counts.moved(Some(JobState::Held), Some(after));
        self.held_remove(&domain, id);
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
        assert_eq!(s.admin(&AdminAction::Bounce(None), &target, 2), (2, false));
        assert!(!s.schedules.contains_key("x.test"));
        let job = s.schedules[BOUNCE_SCHEDULE]
            .first()
            .map(|(_, id)| *id)
            .expect("bounced");
        assert_eq!(
            s.admin(&AdminAction::Bounce(None), &Target::Job(job), 3),
            (1, false)
        );
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
        assert_eq!(s.admin(&AdminAction::Retry, &target, 10), (1, false));
        assert_eq!(s.earliest_due("x.test"), Some(0));
        assert_eq!(
            s.schedules["x.test"].iter().filter(|(due, _)| *due <= 10).count(),
            2
        );
        assert_eq!(s.admin(&AdminAction::Delete, &target, 11), (2, false));
        assert!(s.jobs.is_empty() && s.domain_live.is_empty() && s.domain_index.is_empty());
        assert!(s.resume("x.test", 12).eq(&false));
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;
    use crate::embedded::test_support::message;

    #[test]
    fn a_held_job_leaves_its_schedule_and_an_unheld_one_comes_back_due_now() {
        let mut s = State::new(10, 100);
        s.enqueue(
            vec![message(&["a@x.test"]).not_before(1_000), message(&["b@x.test"])],
            0,
        );
        let target = Target::Domain("x.test".into());
        assert_eq!(s.admin(&AdminAction::Hold, &target, 5), (2, false));
        assert_eq!(s.admin(&AdminAction::Hold, &target, 6), (0, false));
        assert!(!s.schedules.contains_key("x.test") && s.domain_index.is_empty());
        assert_eq!((s.counts.held, s.counts.queued), (2, 0));
        assert_eq!(s.held["x.test"].len(), 2);
        assert_eq!(s.wakes, 1, "holding wakes no one (the enqueue did)");
        assert!(
            s.claim("w", 10, 100, &[], 7).is_err(),
            "held jobs are not claimed"
        );
        assert_eq!(s.admin(&AdminAction::Retry, &target, 8), (0, false));
        let first = *s.held["x.test"].first().expect("held");
        assert_eq!(s.admin(&AdminAction::Retry, &Target::Job(first), 8), (0, false));
        assert_eq!(s.admin(&AdminAction::Unhold, &Target::Job(first), 9), (1, false));
        assert_eq!((s.counts.held, s.counts.queued, s.wakes), (1, 1, 2));
        assert_eq!(s.jobs[&first].record.next, 9, "due now");
        let c = s.claim("w", 10, 100, &[], 10).expect("unheld");
        assert_eq!(c.jobs.len(), 1);
        // Bounce the other held one: no longer held, on the bounce schedule with its reason.
        let reason = AdminAction::Bounce(Some("spam".into()));
        assert_eq!(s.admin(&reason, &target, 11), (1, false));
        assert!(s.held.is_empty());
        assert_eq!((s.counts.held, s.counts.queued, s.counts.in_flight), (0, 1, 1));
        let c = s.claim("w", 10, 100, &[], 12).expect("bounce");
        assert_eq!(c.schedule, BOUNCE_SCHEDULE);
        assert_eq!(c.jobs[0].0.bounce_reason.as_deref(), Some("spam"));
    }

    #[test]
    fn deleting_a_held_job_takes_it_out_of_the_held_jobs() {
        let mut s = State::new(10, 100);
        s.enqueue(vec![message(&["a@x.test", "b@y.test"])], 0);
        let message = s.jobs.keys().next().expect("job").message;
        assert_eq!(
            s.admin(&AdminAction::Hold, &Target::Message(message), 1),
            (2, false)
        );
        assert_eq!(
            s.admin(&AdminAction::Delete, &Target::Domain("y.test".into()), 2),
            (1, false)
        );
        assert_eq!(s.held.keys().collect::<Vec<_>>(), ["x.test"]);
        assert_eq!(s.counts.held, 1);
        assert_eq!(
            s.admin(&AdminAction::Delete, &Target::Message(message), 3),
            (1, false)
        );
        assert!(s.held.is_empty() && s.jobs.is_empty() && s.domain_live.is_empty());
        assert_eq!(s.counts.held, 0);
    }
}
