//! Claims and slots: taking due jobs of one domain under a lease (`claim.lua`), and the holds of idle
//! connections (`hold.lua`). Claims live in memory only (see `mod.rs`): a restart finds their jobs waiting.

use std::collections::HashMap;

use tern_core::JobId;

use super::record::Flight;
use super::state::State;
use crate::model::{BOUNCE_SCHEDULE, Job, JobLease, JobState, SlotHold};

/// How long a domain at its concurrency limit stays out of the claim order (ms).
pub(crate) const LIMIT_PUSHBACK_MS: u64 = 250;
/// How many due domains one claim looks at (the Redis backend: 32 in each of 16 shards).
pub(crate) const CLAIM_SCAN: usize = 512;

/// A claim as taken, before its jobs' bodies are read (after the commit, by the caller).
#[derive(Debug)]
pub(crate) struct Taken {
    pub schedule: String,
    pub claim_id: String,
    pub lease_until: u64,
    pub jobs: Vec<(Job, JobLease)>,
    pub took_hold: Option<String>,
}

/// One claim call's request.
struct Request<'a> {
    owner: &'a str,
    max_jobs: usize,
    deadline: u64,
    claim_id: String,
    /// Domain → the hold id the caller passed for it (the first of each domain).
    held: HashMap<&'a str, &'a str>,
    now: u64,
}

impl State {
    /// [`crate::Queue::claim_next`]: held domains with due work first, then the due domains in index order;
    /// a domain at its limit is pushed back, an empty or suspended one leaves the index. After a claim that
    /// looked at held domains first and took a hold over, the next one follows the index alone (a held
    /// domain met there still takes its hold), so that domains without an idle connection are not starved
    /// by held ones that always have due work. When nothing was claimed: the earliest time in the domain
    /// index, if any.
    pub(crate) fn claim(
        &mut self,
        owner: &str,
        max_batch: usize,
        lease_ms: u64,
        holds: &[SlotHold],
        now: u64,
    ) -> Result<Taken, Option<u64>> {
        let held_first = !self.took_hold_last;
        let taken = self.claim_taking(owner, max_batch, lease_ms, holds, held_first, now);
        // Held-first and index-order claims alternate, whoever the index-order claim went to.
        self.took_hold_last = held_first && taken.as_ref().is_some_and(|t| t.took_hold.is_some());
        // Nothing claimable: when the next domain is due or looked at again, up to which an idle worker may
        // sleep unless woken.
        taken.ok_or_else(|| self.domain_index.first().map(|(score, _, _)| *score))
    }

    fn claim_taking(
        &mut self,
        owner: &str,
        max_batch: usize,
        lease_ms: u64,
        holds: &[SlotHold],
        held_first: bool,
        now: u64,
    ) -> Option<Taken> {
        let mut held = HashMap::new();
        let mut held_order = Vec::new();
        for h in holds {
            if !held.contains_key(h.domain.as_str()) {
                held.insert(h.domain.as_str(), h.id.as_str());
                held_order.push(h.domain.as_str());
            }
        }
        let request = Request {
            owner,
            max_jobs: max_batch.max(1),
            deadline: now.saturating_add(lease_ms.max(1)),
            claim_id: ulid::Ulid::generate().to_string(),
            held,
            now,
        };
        if held_first {
            for domain in held_order {
                if let Some(taken) = self.take(domain, false, &request) {
                    return Some(taken);
                }
            }
        }
        // A domain looked at and not claimed leaves the due part of the index (pushed back, re-indexed at
        // its next due time, or dropped), so the first due one is a new one each time.
        for _ in 0..CLAIM_SCAN {
            let (score, _, schedule) = self.domain_index.first()?.clone();
            if score > now {
                return None;
            }
            if let Some(taken) = self.take(&schedule, true, &request) {
                return Some(taken);
            }
        }
        None
    }

    /// Claims due jobs of `schedule` if its limit allows; `scanning` (found through the index) pushes a
    /// domain at its limit back and re-indexes an empty one.
    fn take(&mut self, schedule: &str, scanning: bool, request: &Request<'_>) -> Option<Taken> {
        let now = request.now;
        let mut hold = None;
        if schedule != BOUNCE_SCHEDULE {
            if self.suspended(schedule) {
                self.index_remove(schedule);
                return None;
            }
            let limit = self.limit_of(schedule);
            let slots = self.slots.get_mut(schedule);
            let mut used = slots.as_ref().map_or(0, |s| s.len());
            if let Some(slots) = slots {
                // Lapsed slots (a dead worker's) are dropped only when the domain looks full.
                if used >= limit {
                    slots.retain(|_, deadline| *deadline > now);
                    used = slots.len();
                }
                // The caller's hold, while it lasts, is the slot this claim takes over.
                if let Some(h) = request.held.get(schedule)
                    && slots.get(*h).is_some_and(|until| now < *until)
                {
                    hold = Some((*h).to_string());
                    used -= 1;
                }
            }
            if used >= limit {
                if scanning {
                    // Out of the claim order for a while, or until its first slot lapses when that is sooner
                    // (a slot freed by a call puts the domain back at once, and wakes a worker).
                    let lapse = self.slots.get(schedule).and_then(|s| s.values().min().copied());
                    let back = now.saturating_add(LIMIT_PUSHBACK_MS);
                    self.index_set(schedule, lapse.map_or(back, |l| l.min(back)));
                }
                return None;
            }
        }
        let due: Vec<(u64, JobId)> = self
            .schedules
            .get(schedule)
            .map(|s| {
                s.iter()
                    .take_while(|(at, _)| *at <= now)
                    .take(request.max_jobs)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        if due.is_empty() {
            if scanning {
                self.reindex(schedule, None);
            }
            return None;
        }
        let mut jobs = Vec::with_capacity(due.len());
        for (at, id) in due {
            self.unschedule(schedule, id, at);
            let Some(live) = self.jobs.get_mut(&id) else {
                continue;
            };
            let before = live.record.waiting_state();
            live.flight = Some(Flight {
                owner: request.owner.to_string(),
                token: request.claim_id.clone(),
                lease_until: request.deadline,
                schedule: schedule.to_string(),
            });
            let job = live.view(id);
            self.counts.moved(Some(before), Some(JobState::InFlight));
            self.inflight.insert((request.deadline, id));
            let lease = JobLease {
                job: id,
                domain: job.domain.clone(),
                token: request.claim_id.clone(),
            };
            jobs.push((job, lease));
        }
        // The schedule's next turn: behind every domain already due.
        match self.earliest_due(schedule) {
            Some(first) => self.index_set(schedule, first.max(now)),
            None => self.index_remove(schedule),
        }
        let slots = self.slots.entry(schedule.to_string()).or_default();
        if let Some(h) = &hold {
            slots.remove(h);
        }
        slots.insert(request.claim_id.clone(), request.deadline);
        self.claims.insert(request.claim_id.clone(), jobs.len() as u64);
        Some(Taken {
            schedule: schedule.to_string(),
            claim_id: request.claim_id.clone(),
            lease_until: request.deadline,
            jobs,
            took_hold: hold,
        })
    }

    /// A domain's concurrency limit: its override, or the default.
    fn limit_of(&self, domain: &str) -> usize {
        self.concurrency
            .get(domain)
            .copied()
            .unwrap_or(self.default_limit) as usize
    }

    /// [`crate::Queue::hold_slot`]: the claim's slot becomes the hold `h:<claim>`; without one, a free slot
    /// is taken if the limit allows. `None`: the domain is at its limit.
    pub(crate) fn hold_slot(
        &mut self,
        domain: &str,
        claim_id: &str,
        hold_ms: u64,
        now: u64,
    ) -> Option<SlotHold> {
        let limit = self.limit_of(domain);
        let slots = self.slots.entry(domain.to_string()).or_default();
        slots.retain(|_, deadline| *deadline > now);
        let hold = format!("h:{claim_id}");
        if slots.remove(claim_id).is_none() && !slots.contains_key(&hold) && slots.len() >= limit {
            return None;
        }
        let until = now.saturating_add(hold_ms.max(1));
        slots.insert(hold.clone(), until);
        Some(SlotHold {
            domain: domain.to_string(),
            id: hold,
            until_ms: until,
        })
    }

    /// [`crate::Queue::drop_slot`]: frees a hold's slot at once (only holds, never a claim's slot).
    pub(crate) fn drop_slot(&mut self, hold: &SlotHold, now: u64) {
        self.clock = now;
        if !hold.id.starts_with("h:") {
            return;
        }
        let Some(slots) = self.slots.get_mut(&hold.domain) else {
            return;
        };
        if slots.remove(&hold.id).is_none() {
            return;
        }
        if slots.is_empty() {
            self.slots.remove(&hold.domain);
        }
        // The domain may have been pushed back for being at its limit: a slot is free now.
        self.slot_freed(&hold.domain, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::test_support::message;

    #[test]
    fn a_claim_takes_due_jobs_of_one_domain_and_its_slot() {
        let mut s = State::new(1, 100);
        s.enqueue(
            vec![
                message(&["a@x.test"]),
                message(&["b@x.test"]),
                message(&["c@y.test"]),
            ],
            10,
        );
        let c = s.claim("w", 10, 1_000, &[], 20).expect("work");
        assert_eq!(c.jobs.len(), 2);
        assert_eq!(c.lease_until, 1_020);
        assert_eq!(s.counts.in_flight, 2);
        assert_eq!(s.claims.get(&c.claim_id), Some(&2));
        assert_eq!(s.slots["x.test"].get(&c.claim_id), Some(&1_020));
        assert!(
            !s.domain_score.contains_key("x.test"),
            "nothing left to claim there"
        );
        let other = s.claim("w", 10, 1_000, &[], 20).expect("the other domain");
        assert_eq!(other.schedule, "y.test");
    }

    #[test]
    fn a_domain_at_its_limit_is_pushed_back_and_a_hold_is_taken_over() {
        let mut s = State::new(1, 100);
        s.enqueue(vec![message(&["a@x.test"]), message(&["b@x.test"])], 10);
        let c = s.claim("w", 1, 1_000, &[], 20).expect("work");
        assert!(s.claim("w2", 1, 1_000, &[], 21).is_err());
        assert_eq!(s.index_score("x.test"), Some(21 + LIMIT_PUSHBACK_MS));
        let hold = s
            .hold_slot("x.test", &c.claim_id, 5_000, 30)
            .expect("the claim's own slot");
        assert_eq!(hold.id, format!("h:{}", c.claim_id));
        let next = s
            .claim("w", 1, 1_000, std::slice::from_ref(&hold), 40)
            .expect("the hold carries it");
        assert_eq!(next.took_hold.as_deref(), Some(hold.id.as_str()));
        assert_eq!(
            s.slots["x.test"].keys().collect::<Vec<_>>(),
            [&next.claim_id],
            "the first claim's slot went to the hold, then to this claim"
        );
        s.drop_slot(&hold, 50);
        assert_eq!(
            s.slots["x.test"].len(),
            1,
            "a hold taken over is no longer there to drop"
        );
    }
}
