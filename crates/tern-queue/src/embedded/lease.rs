//! Leases: the heartbeat (`extend.lua`), giving a job back (`release.lua`), and the reaper's pass
//! (`reap.lua`: expired leases, ended suspensions; here also expired idempotency keys).

use super::state::State;
use crate::QueueError;
use crate::model::{EventKind, JobLease};

/// The most jobs one reaper call returns (the caller calls again while it gets this many).
pub(crate) const REAP_CHUNK: usize = 500;

impl State {
    /// [`crate::Queue::extend`]: pushes the lease out to now + `lease_ms`; the claim's slot follows. A lease
    /// that ran out is not extended, even before the reaper came: its slot may belong to another claim.
    pub(crate) fn extend(
        &mut self,
        owner: &str,
        lease: &JobLease,
        lease_ms: u64,
        now: u64,
    ) -> Result<u64, QueueError> {
        let id = lease.job;
        let live = self
            .jobs
            .get_mut(&id)
            .ok_or_else(|| QueueError::NotFound(format!("job {id}")))?;
        let Some(flight) = live
            .flight
            .as_mut()
            .filter(|f| f.owner == owner && f.token == lease.token && now < f.lease_until)
        else {
            return Err(QueueError::NotOwner { job: id });
        };
        let deadline = now.saturating_add(lease_ms.max(1));
        self.inflight.remove(&(flight.lease_until, id));
        self.inflight.insert((deadline, id));
        flight.lease_until = deadline;
        // Only while the claim still has its slot (a hold that took it over keeps its own), and only later.
        if let Some(slot) = self
            .slots
            .get_mut(&flight.schedule)
            .and_then(|s| s.get_mut(&lease.token))
        {
            *slot = (*slot).max(deadline);
        }
        Ok(deadline)
    }

    /// [`crate::Queue::release`]: gives the job back unchanged, due now. A repeat of the same release is
    /// fine.
    pub(crate) fn release(&mut self, owner: &str, lease: &JobLease, now: u64) -> Result<(), QueueError> {
        let id = lease.job;
        let live = self
            .jobs
            .get_mut(&id)
            .ok_or_else(|| QueueError::NotFound(format!("job {id}")))?;
        let done = format!("r:{}", lease.token);
        let owned = live
            .flight
            .as_ref()
            .is_some_and(|f| f.owner == owner && f.token == lease.token);
        if !owned {
            if live.record.done_token.as_deref() == Some(done.as_str()) {
                return Ok(());
            }
            return Err(QueueError::NotOwner { job: id });
        }
        live.record.done_token = Some(done);
        self.clock = now;
        self.unlease(id);
        self.requeue(id, now);
        self.job_event(EventKind::Released, now, id);
        // The job is due now: one waiting worker is woken for it.
        self.wakes += 1;
        Ok(())
    }

    /// One pass of [`crate::Queue::reap`]: up to [`REAP_CHUNK`] jobs whose lease ended by `now` go back to
    /// their schedule, due now, each with a `lease-expired` event; suspensions and idempotency keys that
    /// ended are dropped. Returns the jobs returned.
    pub(crate) fn reap(&mut self, now: u64) -> usize {
        self.clock = now;
        let expired: Vec<_> = self
            .inflight
            .iter()
            .take_while(|(until, _)| *until <= now)
            .take(REAP_CHUNK)
            .map(|(_, id)| *id)
            .collect();
        for id in &expired {
            self.unlease(*id);
            self.requeue(*id, now);
            self.job_event(EventKind::LeaseExpired, now, *id);
            self.stat(now, "lease_expired", 1);
        }
        while let Some((until, domain)) = self.suspension_ends.first().cloned() {
            if until > now {
                break;
            }
            self.suspension_ends.remove(&(until, domain.clone()));
            self.suspensions.remove(&domain);
            self.changes.suspensions.insert(domain.clone());
            self.reindex(&domain, None);
            self.event(
                EventKind::Resumed,
                now,
                None,
                &domain,
                Vec::new(),
                Some("suspension expired".into()),
                0,
            );
            self.close_entry();
            // Its due jobs are claimable again.
            self.wakes += 1;
        }
        self.expire_keys(now);
        self.history_due(now);
        // Returned jobs are due now: a waiting worker each.
        self.wakes += expired.len() as u32;
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::test_support::message;

    #[test]
    fn an_expired_lease_goes_back_and_its_owner_is_refused() {
        let mut s = State::new(10, 100);
        s.enqueue(vec![message(&["a@x.test"])], 0);
        let c = s.claim("w", 10, 100, &[], 1).expect("work");
        let lease = c.jobs[0].1.clone();
        assert_eq!(s.extend("w", &lease, 100, 50), Ok(150));
        assert_eq!(s.reap(149), 0);
        assert!(
            matches!(s.extend("w", &lease, 100, 150), Err(QueueError::NotOwner { .. })),
            "ran out"
        );
        assert_eq!(s.reap(150), 1);
        assert!(s.inflight.is_empty() && s.claims.is_empty() && s.slots.is_empty());
        assert_eq!((s.counts.queued, s.stats.lease_expired), (1, 1));
        assert!(matches!(
            s.release("w", &lease, 151),
            Err(QueueError::NotOwner { .. })
        ));
        let c = s.claim("w2", 10, 100, &[], 152).expect("again");
        let lease = c.jobs[0].1.clone();
        assert_eq!(s.release("w2", &lease, 153), Ok(()));
        assert_eq!(s.release("w2", &lease, 154), Ok(()), "a repeated release");
        assert_eq!(s.jobs[&lease.job].record.next, 153);
    }
}
