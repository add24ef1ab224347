//! The history of messages, queued and finished: [`HistoryStore`].
//!
//! Support must be able to answer "did my password reset go out?" days later, after the message left the
//! queue. Every backend therefore keeps, beside its bounded event stream, each message's own events (every
//! job event: queued, each attempt with its MX, IP, TLS and reply, deferred, delivered, failed, expired,
//! deleted, held, ...) for the queue's history retention (`queue.history`, 7 days by default) after the
//! message's last event. They are written in the same atomic step as the change they record, so the history
//! never disagrees with the queue.
//!
//! What a backend keeps (the conformance suite checks it):
//!
//! - **Every job event of a message**, oldest first, with the fields the event stream carries, plus the
//!   envelope sender on `queued` events ([`Event::sender`]) and the DSN's id on `failed` and `expired`
//!   events whose attempt queued one ([`Event::dsn`]). Domain events (suspend, resume) are not kept.
//! - **Retention**: a message's history is kept at least the retention after its last event, and forgotten
//!   by twice the retention (the Redis backend keeps each shard's part of a message twice the retention after
//!   that shard's last event, so that the part of a job that finished early outlives the message's last
//!   event); a retention of zero keeps none. A message that stays queued (held, or retried) longer than the
//!   retention may lose the records of its early events.
//! - **Listing**: [`HistoryStore::history_ids`] pages through the messages with history, newest first (by
//!   the time in their ids, when they were accepted), from a time on.
//!
//! The rest (what a message's history means, finding messages by recipient, sender or tag) is shared code
//! here: [`MessageHistory::from_events`] and [`HistoryStore::find`].

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use tern_core::MessageId;

use crate::{Event, EventKind, QueueError};

/// How long a message's history is kept after its last event unless configured (`queue.history`): 7 days.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How many messages [`HistoryStore::find`] looks at, at most, for one call.
pub const FIND_BUDGET: usize = 20_000;

/// How a message (or one recipient of it) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinalOutcome {
    /// Accepted by the remote server.
    Delivered,
    /// Failed permanently (a DSN went to the sender, unless the sender is `<>` or NOTIFY declined).
    Bounced,
    /// Given up on after the maximum queue time (a DSN went to the sender, as for a bounce).
    Expired,
    /// Deleted by an operator (no DSN).
    Deleted,
    /// Recipients ended in different ways (for the message as a whole only).
    Mixed,
}

impl FinalOutcome {
    /// The name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalOutcome::Delivered => "delivered",
            FinalOutcome::Bounced => "bounced",
            FinalOutcome::Expired => "expired",
            FinalOutcome::Deleted => "deleted",
            FinalOutcome::Mixed => "mixed",
        }
    }
}

impl std::fmt::Display for FinalOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recipient of a message as its history tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecipient {
    /// The address.
    pub address: String,
    /// The destination domain (its job's).
    pub domain: String,
    /// How it ended; `None` while it is still in the queue.
    pub outcome: Option<FinalOutcome>,
    /// The last reply (or reason) recorded for it.
    pub reply: Option<String>,
}

/// A message's life, from its history: envelope, tags, every event (attempts included) and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageHistory {
    /// The message.
    pub id: MessageId,
    /// The envelope sender (`""` for `<>`); `None` if the `queued` event was not kept.
    pub sender: Option<String>,
    /// Every recipient, in the order they were queued.
    pub recipients: Vec<HistoryRecipient>,
    /// The message's tags.
    pub tags: BTreeMap<String, String>,
    /// When it was accepted (Unix ms, from its id).
    pub accepted_ms: u64,
    /// When its last recipient ended (Unix ms); `None` while any is still in the queue.
    pub finished_ms: Option<u64>,
    /// How it ended; `None` while any recipient is still in the queue.
    pub outcome: Option<FinalOutcome>,
    /// The ids of the DSNs queued for it.
    pub dsns: Vec<String>,
    /// Every event kept, oldest first.
    pub events: Vec<Event>,
}

impl MessageHistory {
    /// Reads a message's life from its events (oldest first, as [`HistoryStore::history_events`] returns
    /// them).
    pub fn from_events(id: MessageId, events: Vec<Event>) -> MessageHistory {
        let mut sender = None;
        let mut tags = BTreeMap::new();
        let mut recipients: Vec<HistoryRecipient> = Vec::new();
        let mut dsns = Vec::new();
        let mut finished_ms = None;
        for event in &events {
            if sender.is_none() {
                sender = event.sender.clone();
            }
            if tags.is_empty() && !event.tags.is_empty() {
                tags = event.tags.clone();
            }
            if let Some(dsn) = &event.dsn
                && !dsns.contains(dsn)
            {
                dsns.push(dsn.clone());
            }
            let ending = match event.kind {
                EventKind::Delivered => Some(FinalOutcome::Delivered),
                EventKind::Failed => Some(FinalOutcome::Bounced),
                EventKind::Expired => Some(FinalOutcome::Expired),
                EventKind::Deleted => Some(FinalOutcome::Deleted),
                _ => None,
            };
            for address in &event.recipients {
                let at = match recipients
                    .iter()
                    .position(|r| r.address.eq_ignore_ascii_case(address) && r.domain == event.domain)
                {
                    Some(at) => at,
                    None => {
                        recipients.push(HistoryRecipient {
                            address: address.clone(),
                            domain: event.domain.clone(),
                            outcome: None,
                            reply: None,
                        });
                        recipients.len() - 1
                    }
                };
                let recipient = &mut recipients[at];
                if event.reply.is_some() {
                    recipient.reply = event.reply.clone();
                }
                if let Some(ending) = ending {
                    recipient.outcome = Some(ending);
                    finished_ms = Some(event.time_ms);
                }
            }
        }
        let all_ended = !recipients.is_empty() && recipients.iter().all(|r| r.outcome.is_some());
        let outcome = if all_ended {
            let first = recipients[0].outcome;
            if recipients.iter().all(|r| r.outcome == first) {
                first
            } else {
                Some(FinalOutcome::Mixed)
            }
        } else {
            None
        };
        MessageHistory {
            id,
            sender,
            recipients,
            tags,
            accepted_ms: id.timestamp_ms(),
            finished_ms: if all_ended { finished_ms } else { None },
            outcome,
            dsns,
            events,
        }
    }

    /// Whether the message passes `query` (its time is checked by the listing, not here).
    pub fn matches(&self, query: &HistoryQuery) -> bool {
        if let Some(want) = &query.recipient
            && !self
                .recipients
                .iter()
                .any(|r| r.address.eq_ignore_ascii_case(want))
        {
            return false;
        }
        if let Some(want) = &query.sender
            && !self
                .sender
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(want))
        {
            return false;
        }
        if let Some((key, value)) = &query.tag {
            match (self.tags.get(key), value) {
                (None, _) => return false,
                (Some(have), Some(want)) if have != want => return false,
                _ => {}
            }
        }
        true
    }
}

/// What [`HistoryStore::find`] looks for; empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// A recipient address (case-insensitive).
    pub recipient: Option<String>,
    /// The envelope sender (case-insensitive; `""` finds the null sender).
    pub sender: Option<String>,
    /// A tag: `(key, Some(value))` for that value, `(key, None)` for any value.
    pub tag: Option<(String, Option<String>)>,
    /// Only messages accepted at or after this time (Unix ms); 0: any.
    pub since_ms: u64,
}

/// The history of messages, kept by the queue's store (see the module documentation).
///
/// Every method is safe to call concurrently and to repeat after [`QueueError::Unavailable`].
#[async_trait]
pub trait HistoryStore: Send + Sync + Debug {
    /// Every event kept in the message's history, oldest first, across all its jobs; empty for an unknown
    /// id, a message older than the retention, or a store that keeps no history.
    async fn history_events(&self, id: MessageId) -> Result<Vec<Event>, QueueError>;

    /// Up to `limit` ids of messages with history, newest first (by the time in their ids), accepted at or
    /// after `since_ms` and strictly before `before` (`None`: from the newest).
    async fn history_ids(
        &self,
        since_ms: u64,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageId>, QueueError>;

    /// The message's history; `None` when none is kept.
    async fn message_history(&self, id: MessageId) -> Result<Option<MessageHistory>, QueueError> {
        let events = self.history_events(id).await?;
        Ok((!events.is_empty()).then(|| MessageHistory::from_events(id, events)))
    }

    /// Up to `limit` messages (queued or finished) passing `query`, newest first, looking at no more than
    /// [`FIND_BUDGET`] messages. Returns them and whether the search covered every message since
    /// `query.since_ms` (false: it stopped at the budget).
    async fn find(
        &self,
        query: &HistoryQuery,
        limit: usize,
    ) -> Result<(Vec<MessageHistory>, bool), QueueError> {
        const PAGE: usize = 500;
        let mut found = Vec::new();
        let mut before = None;
        let mut looked = 0usize;
        loop {
            let ids = self.history_ids(query.since_ms, before, PAGE).await?;
            let last_page = ids.len() < PAGE;
            for id in &ids {
                looked += 1;
                if let Some(history) = self.message_history(*id).await?
                    && history.matches(query)
                {
                    found.push(history);
                    if found.len() >= limit {
                        return Ok((found, true));
                    }
                }
            }
            if last_page {
                return Ok((found, true));
            }
            if looked >= FIND_BUDGET {
                return Ok((found, false));
            }
            before = ids.last().copied();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventPos;

    fn event(kind: EventKind, time_ms: u64, domain: &str, recipients: &[&str]) -> Event {
        Event {
            kind,
            time_ms,
            message: None,
            job: None,
            domain: domain.into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            reply: None,
            attempt: 0,
            tags: BTreeMap::new(),
            remote_mx: None,
            remote_ip: None,
            tls: None,
            sender: None,
            dsn: None,
            id: String::new(),
            position: EventPos::default(),
        }
    }

    #[test]
    fn a_message_delivered_to_every_recipient_ended_delivered_at_its_last_delivery() {
        let id = MessageId::new();
        let mut queued = event(EventKind::Queued, 1, "a.example", &["x@a.example", "y@a.example"]);
        queued.sender = Some("s@b.example".into());
        queued.tags.insert("tenant".into(), "t1".into());
        let events = vec![
            queued,
            event(EventKind::Deferred, 2, "a.example", &["x@a.example"]),
            event(EventKind::Delivered, 3, "a.example", &["y@a.example"]),
            event(EventKind::Delivered, 9, "a.example", &["x@a.example"]),
        ];
        let h = MessageHistory::from_events(id, events);
        assert_eq!(h.outcome, Some(FinalOutcome::Delivered));
        assert_eq!(h.finished_ms, Some(9));
        assert_eq!(h.sender.as_deref(), Some("s@b.example"));
        assert!(h.matches(&HistoryQuery {
            recipient: Some("X@A.example".into()),
            tag: Some(("tenant".into(), Some("t1".into()))),
            ..Default::default()
        }));
        assert!(!h.matches(&HistoryQuery {
            sender: Some("other@b.example".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn a_message_with_a_recipient_still_queued_has_no_outcome_and_one_bounced_one_delivered_is_mixed() {
        let id = MessageId::new();
        let base = vec![
            event(EventKind::Queued, 1, "a.example", &["x@a.example"]),
            event(EventKind::Queued, 1, "b.example", &["z@b.example"]),
            event(EventKind::Delivered, 2, "a.example", &["x@a.example"]),
        ];
        let h = MessageHistory::from_events(id, base.clone());
        assert_eq!(h.outcome, None);
        assert_eq!(h.finished_ms, None);
        let mut failed = event(EventKind::Failed, 5, "b.example", &["z@b.example"]);
        failed.dsn = Some("01DSN".into());
        let mut all = base;
        all.push(failed);
        let h = MessageHistory::from_events(id, all);
        assert_eq!(h.outcome, Some(FinalOutcome::Mixed));
        assert_eq!(h.dsns, vec!["01DSN".to_string()]);
        assert_eq!(h.recipients[1].outcome, Some(FinalOutcome::Bounced));
    }
}
