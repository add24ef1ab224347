//! Read views (`read.lua`): a message and its jobs, pages of jobs, counts, domain depths. Bodies and events
//! are read from disk, outside the writer (`store.rs`).

use std::ops::Bound;

use tern_core::{JobId, MessageId};

use super::state::State;
use crate::QueueError;
use crate::model::{BOUNCE_SCHEDULE, Cursor, DomainDepth, Job, ListFilter, MessageInfo, Page, QueueCounts};

/// The most jobs one page looks at before it answers with what it has and a cursor (the Redis backend: 20
/// calls of 500), so that a filter that matches little does not hold the writer for long.
pub(crate) const LIST_SCAN: usize = 10_000;

impl State {
    /// [`crate::Queue::get_message`].
    pub(crate) fn message(&self, id: MessageId) -> Option<MessageInfo> {
        let jobs: Vec<Job> = self
            .jobs
            .range(JobId::new(id, 0)..=JobId::new(id, u32::MAX))
            .map(|(job, live)| live.view(*job))
            .collect();
        let body_size = self
            .jobs
            .range(JobId::new(id, 0)..=JobId::new(id, u32::MAX))
            .map(|(_, live)| live.record.body_size)
            .next()?;
        Some(MessageInfo { id, body_size, jobs })
    }

    /// [`crate::Queue::list`]: in job id order; the cursor is the last job id looked at.
    pub(crate) fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError> {
        let limit = limit.max(1);
        let start = match cursor {
            Some(Cursor(c)) => Bound::Excluded(
                c.parse::<JobId>()
                    .map_err(|_| QueueError::InvalidMessage(format!("bad cursor {c:?}")))?,
            ),
            None => Bound::Unbounded,
        };
        let domain = filter.domain.as_ref().map(|d| d.to_ascii_lowercase());
        let sender = filter.sender.as_ref().map(|s| s.to_ascii_lowercase());
        let recipient = filter.recipient.as_ref().map(|r| r.to_ascii_lowercase());
        let mut items = Vec::new();
        let mut last_seen = None;
        for (scanned, (id, live)) in self.jobs.range((start, Bound::Unbounded)).enumerate() {
            if scanned == LIST_SCAN
                && let Some(last) = last_seen
            {
                // Looked at enough for one call: the next goes on after the last job looked at.
                return Ok(Page {
                    items,
                    next: Some(Cursor(format!("{last}"))),
                });
            }
            last_seen = Some(*id);
            let r = &live.record;
            let matches = domain.as_ref().is_none_or(|d| *d == r.domain)
                && filter.state.is_none_or(|s| s == live.state())
                && sender.as_ref().is_none_or(|s| *s == r.sender)
                && recipient.as_ref().is_none_or(|want| {
                    r.envelope
                        .recipients
                        .iter()
                        .any(|x| x.address.to_string().to_ascii_lowercase() == *want)
                });
            if matches {
                items.push(live.view(*id));
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next: Some(Cursor(id.to_string())),
                    });
                }
            }
        }
        Ok(Page { items, next: None })
    }

    /// [`crate::Queue::counts`].
    pub(crate) fn counts(&self) -> QueueCounts {
        QueueCounts {
            queued: self.counts.queued,
            deferred: self.counts.deferred,
            in_flight: self.counts.in_flight,
            held: self.counts.held,
            total: self.jobs.len() as u64,
            bounce_pending: self.schedules.get(BOUNCE_SCHEDULE).map_or(0, |s| s.len() as u64),
            suspended_domains: self.suspensions.len() as u64,
            oldest_due_ms: self
                .schedules
                .values()
                .filter_map(|s| s.first())
                .map(|(due, _)| *due)
                .min(),
            oldest_message_ms: self.jobs.keys().next().map(|id| id.message.timestamp_ms()),
        }
    }

    /// [`crate::Queue::domain_depths`]: every domain with live jobs or a suspension, by name.
    pub(crate) fn depths(&self, now: u64) -> Vec<DomainDepth> {
        let mut domains: Vec<&String> = self.domain_live.keys().chain(self.suspensions.keys()).collect();
        domains.sort();
        domains.dedup();
        domains.into_iter().map(|d| self.depth(d, now)).collect()
    }

    /// [`crate::Queue::domain_depth`].
    pub(crate) fn depth(&self, domain: &str, now: u64) -> DomainDepth {
        let waiting = self.schedules.get(domain);
        DomainDepth {
            domain: domain.to_string(),
            waiting: waiting.map_or(0, |s| s.len() as u64),
            due: waiting.map_or(0, |s| s.iter().take_while(|(due, _)| *due <= now).count() as u64),
            held: self.held.get(domain).map_or(0, |h| h.len() as u64),
            total: self.domain_live.get(domain).copied().unwrap_or(0),
            earliest_due_ms: self.earliest_due(domain),
            active_claims: self
                .slots
                .get(domain)
                .map_or(0, |s| s.values().filter(|until| **until > now).count() as u64),
            concurrency_limit: self.concurrency.get(domain).copied(),
            suspension: self.suspensions.get(domain).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::test_support::message;
    use crate::model::JobState;

    #[test]
    fn pages_visit_every_job_once_and_filters_apply() {
        let mut s = State::new(10, 100);
        for i in 0..7 {
            s.enqueue(vec![message(&[&format!("u{i}@a.test"), "shared@B.test"])], i);
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = s.list(&ListFilter::default(), cursor.as_ref(), 3).expect("page");
            seen.extend(page.items.iter().map(|j| j.id));
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 14);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let shared = ListFilter {
            recipient: Some("SHARED@b.test".into()),
            state: Some(JobState::Queued),
            ..Default::default()
        };
        assert_eq!(s.list(&shared, None, 100).expect("list").items.len(), 7);
        assert!(
            s.list(&ListFilter::default(), Some(&Cursor("junk".into())), 1)
                .is_err()
        );
        let counts = s.counts();
        assert_eq!(
            (counts.total, counts.queued, counts.oldest_due_ms),
            (14, 14, Some(0))
        );
        let depths = s.depths(3);
        assert_eq!(
            depths
                .iter()
                .map(|d| (d.domain.as_str(), d.due))
                .collect::<Vec<_>>(),
            [("a.test", 4), ("b.test", 4)]
        );
    }
}
