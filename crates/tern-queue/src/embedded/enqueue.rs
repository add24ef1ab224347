//! Enqueue: every message of a call is stored whole, with its idempotency key, in the batch's one
//! transaction (the store has no shards, so there is no intake record to re-drive: see `enqueue.lua` for what
//! the Redis backend needs instead).

use bytes::Bytes;
use tern_core::JobId;

use super::record::{JobRecord, LiveJob};
use super::state::State;
use crate::QueueError;
use crate::model::{EnqueueReceipt, EventKind, NewMessage, RecipientStatus};

/// How long an idempotency key is remembered (ms).
pub(crate) const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

impl State {
    /// [`crate::Queue::enqueue_batch`]: one result per message, in order. The `queued` events of the call
    /// are one entry.
    pub(crate) fn enqueue(
        &mut self,
        messages: Vec<NewMessage>,
        now: u64,
    ) -> Vec<Result<EnqueueReceipt, QueueError>> {
        self.clock = now;
        self.forget_repeats(now);
        let mut newly_due = Vec::new();
        let out = messages
            .into_iter()
            .map(|m| self.enqueue_one(m, now, &mut newly_due))
            .collect();
        self.close_entry();
        // One waiting worker per domain that became due now: when it has a free slot, or when an idle
        // connection holds one (its worker takes it over); none when every slot is busy (the call that frees
        // one wakes a worker).
        for schedule in newly_due {
            if self.has_free_slot(&schedule) || self.has_live_hold(&schedule) {
                self.wakes += 1;
            }
        }
        out
    }

    fn enqueue_one(
        &mut self,
        msg: NewMessage,
        now: u64,
        newly_due: &mut Vec<String>,
    ) -> Result<EnqueueReceipt, QueueError> {
        msg.envelope
            .validate()
            .map_err(|e| QueueError::InvalidMessage(e.to_string()))?;
        if msg.envelope.recipients.iter().any(|r| r.domain().contains('#')) {
            return Err(QueueError::InvalidMessage("recipient domain contains '#'".into()));
        }
        let id = msg.id.unwrap_or_default();
        let mut repeat = msg.id.is_some() && self.recent.contains_key(&id);
        if let Some(key) = &msg.idempotency_key {
            match self.idempotency.get(key) {
                Some((first, until)) if *until > now && *first != id => {
                    return Ok(EnqueueReceipt {
                        message: *first,
                        jobs: Vec::new(),
                        duplicate: true,
                    });
                }
                // The same message again (a call repeated after its reply was lost): the key was stored with
                // its jobs, in one transaction, so they were made; it is answered as before and makes nothing
                // (they may have been delivered since), as the Redis backend's intake markers do for 24 h.
                Some((first, until)) if *until > now && *first == id => repeat = true,
                _ => self.remember_key(key, id, now),
            }
        }
        let due = msg.not_before_ms.unwrap_or(now);
        // A trace context is a short printable token; one with a control character is dropped.
        let trace = msg.trace.filter(|t| !t.chars().any(char::is_control));
        let sender = msg
            .envelope
            .sender
            .mailbox()
            .map(|m| m.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        let mut jobs = Vec::new();
        let (mut made, mut recipients) = (0u64, 0u64);
        for (index, (domain, rcpts)) in msg.envelope.by_domain().into_iter().enumerate() {
            let index =
                u32::try_from(index).map_err(|_| QueueError::InvalidMessage("too many domains".into()))?;
            let job = JobId::new(id, index);
            jobs.push((job, domain.clone()));
            // An existing job, or one of a message made a moment ago (the same message enqueued again, by a
            // writer that did not learn the outcome), is left alone.
            if repeat || self.jobs.contains_key(&job) {
                continue;
            }
            let mut envelope = msg.envelope.clone();
            envelope.recipients = rcpts;
            let addresses: Vec<String> = envelope
                .recipients
                .iter()
                .map(|r| r.address.to_string())
                .collect();
            let record = JobRecord {
                domain: domain.clone(),
                schedule: None,
                recipients: vec![(RecipientStatus::Pending, None); envelope.recipients.len()],
                envelope,
                tags: msg.tags.clone(),
                trace: trace.clone(),
                sender: sender.clone(),
                first: now,
                next: due,
                attempts: 0,
                error: None,
                bounce: false,
                bounce_reason: None,
                held: false,
                done_token: None,
                body_size: msg.body.len() as u64,
            };
            recipients += addresses.len() as u64;
            // It became due with this call when it moved the domain's place in the index to now or before.
            if self.admit(job, LiveJob { record, flight: None }) && due <= now && !newly_due.contains(&domain)
            {
                newly_due.push(domain.clone());
            }
            self.changes.jobs.insert(job);
            self.event(EventKind::Queued, now, Some(job), &domain, addresses, None, 0);
            made += 1;
        }
        if made > 0 {
            if msg.id.is_some() && self.repeat_window > 0 {
                let until = now.saturating_add(self.repeat_window);
                self.recent.insert(id, until);
                self.recent_ends.insert((until, id));
            }
            self.changes.bodies.insert(id, Some(Bytes::clone(&msg.body)));
            let sender = msg
                .envelope
                .sender
                .mailbox()
                .map(|m| m.to_string())
                .unwrap_or_default();
            self.history_sender(id, sender);
            self.stat(now, "messages", 1);
            self.stat(now, "enqueued", recipients);
        }
        Ok(EnqueueReceipt {
            message: id,
            jobs,
            duplicate: false,
        })
    }

    /// Records `key` as `message`'s for the next 24 h.
    fn remember_key(&mut self, key: &str, message: tern_core::MessageId, now: u64) {
        let until = now.saturating_add(IDEMPOTENCY_TTL_MS);
        if let Some((_, old)) = self.idempotency.insert(key.to_string(), (message, until)) {
            self.idempotency_ends.remove(&(old, key.to_string()));
        }
        self.idempotency_ends.insert((until, key.to_string()));
        self.changes
            .idempotency
            .insert(key.to_string(), Some((message, until)));
    }

    /// Forgets the messages whose repeat window ended by `now`.
    fn forget_repeats(&mut self, now: u64) {
        while let Some((until, id)) = self.recent_ends.first().copied() {
            if until > now {
                break;
            }
            self.recent_ends.remove(&(until, id));
            self.recent.remove(&id);
        }
    }

    /// Forgets idempotency keys whose 24 h ended by `now`.
    pub(crate) fn expire_keys(&mut self, now: u64) {
        while let Some((until, key)) = self.idempotency_ends.first().cloned() {
            if until > now {
                break;
            }
            self.idempotency_ends.remove(&(until, key.clone()));
            self.idempotency.remove(&key);
            self.changes.idempotency.insert(key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::test_support::message;

    #[test]
    fn a_message_becomes_one_job_per_domain_with_one_body_and_one_entry_of_events() {
        let mut s = State::new(10, 100);
        let r = s.enqueue(vec![message(&["a@x.test", "b@y.test", "c@X.test"])], 1_000);
        let r = r[0].as_ref().expect("enqueued");
        assert_eq!(r.jobs.len(), 2);
        assert_eq!(s.counts.queued, 2);
        assert_eq!(s.messages.get(&r.message), Some(&2));
        assert_eq!(s.changes.bodies.len(), 1);
        assert_eq!(s.changes.events.len(), 1);
        assert_eq!(s.changes.events[0].1.len(), 2);
        assert_eq!(s.stats.enqueued, 3);
        assert_eq!(s.index_score("x.test"), Some(1_000));
    }

    #[test]
    fn an_idempotency_key_lasts_a_day() {
        let mut s = State::new(10, 100);
        let first = s.enqueue(vec![message(&["a@x.test"]).with_idempotency_key("k")], 0);
        let first = first[0].as_ref().expect("first").message;
        let again = s.enqueue(vec![message(&["a@x.test"]).with_idempotency_key("k")], 10);
        assert!(again[0].as_ref().is_ok_and(|r| r.duplicate && r.message == first));
        let mut same = message(&["a@x.test"]).with_idempotency_key("k");
        same.id = Some(first);
        let repeated = s.enqueue(vec![same], 20);
        assert!(
            repeated[0]
                .as_ref()
                .is_ok_and(|r| !r.duplicate && r.message == first && r.jobs.len() == 1)
        );
        assert_eq!(
            s.jobs.len(),
            1,
            "the same message with its key again makes nothing"
        );
        s.expire_keys(IDEMPOTENCY_TTL_MS);
        assert!(s.idempotency.is_empty());
        assert_eq!(s.changes.idempotency.get("k"), Some(&None));
        let later = s.enqueue(
            vec![message(&["a@x.test"]).with_idempotency_key("k")],
            IDEMPOTENCY_TTL_MS,
        );
        assert!(
            later[0]
                .as_ref()
                .is_ok_and(|r| !r.duplicate && r.message != first)
        );
    }

    #[test]
    fn the_same_message_again_makes_nothing_twice_within_the_repeat_window() {
        let mut s = State::new(10, 100);
        s.repeat_window = 1_000;
        let mut m = message(&["a@x.test"]);
        m.id = Some(tern_core::MessageId::new());
        s.enqueue(vec![m.clone()], 0);
        assert_eq!(s.wakes, 1, "a domain due now wakes a worker");
        let again = s.enqueue(vec![m.clone()], 0);
        assert_eq!(again[0].as_ref().map(|r| r.jobs.len()).ok(), Some(1));
        assert_eq!((s.jobs.len(), s.stats.messages, s.wakes), (1, 1, 1));
        // Delivered and gone, then repeated: still nothing, until the window ends.
        let c = s.claim("w", 1, 100, &[], 1).expect("work");
        s.complete(
            "w",
            vec![(c.jobs[0].1.clone(), crate::model::Outcome::delivered())],
            2,
        );
        s.enqueue(vec![m.clone()], 999);
        assert!(s.jobs.is_empty());
        s.enqueue(vec![m], 1_000);
        assert_eq!(s.jobs.len(), 1);
    }
}
