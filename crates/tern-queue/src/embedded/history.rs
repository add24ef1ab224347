//! The message history ([`HistoryStore`]) in the embedded store.
//!
//! The history lives on disk only, in three tables written in the same transaction as the change they
//! record (so an acknowledged change never lacks its history, and a crash loses none of it):
//!
//! | table | key → value | holds |
//! |---|---|---|
//! | `history` | (message id, event entry, index in the entry) → JSON | every job event of the message ([`Event`]), the `queued` ones with the envelope sender |
//! | `history_messages` | message id → ms | each message with history, and the time of its last event |
//! | `history_ends` | (ms of the last event, message id) → () | the same by that time: what the pruning walks |
//!
//! A message's events are copied from the batch's event entries at commit (`store::commit`), so every job
//! event (queued, delivered, deferred, failed, expired, deleted, lease-expired, released, retried,
//! bounced, held, unheld) is there under the same entry number as in the event stream, and reads back with
//! the stream's id. Message ids are ULIDs, so `history_messages` in key order is the order of acceptance:
//! [`HistoryStore::history_ids`] reads it backwards.
//!
//! Nothing of it is kept in memory but the retention and when the oldest history falls due
//! ([`HistoryLog`]): memory does not grow with the history. A message's history is dropped once its last
//! event is older than the retention, a chunk at a time, by the first commit that sees one due: a batch
//! with events, or a reaper pass ([`State::history_due`]). Reads leave out what is due but not yet dropped.
//! A retention of zero records nothing (and drops what an earlier retention kept).

use std::collections::HashMap;

use async_trait::async_trait;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tern_core::MessageId;
use tern_core::time::now_ms;

use super::state::State;
use super::store::{position_of, store_error};
use super::{EmbeddedQueue, blocking, duration_ms};
use crate::{Event, EventKind, HistoryStore, QueueError};

/// (message id, event entry, index in the entry) → the event as JSON.
const HISTORY: TableDefinition<(&str, u64, u32), &[u8]> = TableDefinition::new("history");
/// Message id → the time of its last event (Unix ms).
const MESSAGES: TableDefinition<&str, u64> = TableDefinition::new("history_messages");
/// (time of the last event, message id) → nothing: the messages by when their history ends.
const ENDS: TableDefinition<(u64, &str), ()> = TableDefinition::new("history_ends");

/// The most messages whose history one commit drops (the next commit or reaper pass goes on), so that a
/// backlog of pruning does not hold the writer for long.
pub(crate) const PRUNE_CHUNK: usize = 1_000;

/// The latest time a ULID can hold (48 bits of milliseconds).
const ULID_MAX_MS: u64 = (1 << 48) - 1;

/// What the writer knows of the history: the retention, and when the oldest history is due to go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HistoryLog {
    /// How long (ms) a message's history is kept after its last event; 0: none is kept.
    pub retention: u64,
    /// When the oldest history kept is due to be dropped (its last event + the retention); `None`: none
    /// is kept.
    pub next_prune: Option<u64>,
}

/// What a batch adds to the history beside its events.
#[derive(Debug, Default)]
pub(crate) struct HistoryChanges {
    /// The envelope sender (`""` for `<>`) of each message queued in the batch, for its `queued` events.
    pub senders: HashMap<MessageId, String>,
    /// A reaper pass at this time found history due to be dropped.
    pub prune_at: Option<u64>,
}

impl HistoryChanges {
    /// Whether anything is to be written on its own (senders come with events).
    pub(crate) fn is_empty(&self) -> bool {
        self.prune_at.is_none()
    }
}

impl State {
    /// Notes the envelope sender of a message just queued, for the history of its `queued` events.
    pub(crate) fn history_sender(&mut self, message: MessageId, sender: String) {
        if self.history.retention > 0 {
            self.changes.history.senders.insert(message, sender);
        }
    }

    /// The reaper's part: when history is due to be dropped by `now`, the commit drops it.
    pub(crate) fn history_due(&mut self, now: u64) {
        if self.history.next_prune.is_some_and(|at| at <= now) {
            self.changes.history.prune_at = self.changes.history.prune_at.max(Some(now));
        }
    }
}

/// Makes the tables (at open, so that readers never find one missing).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), QueueError> {
    txn.open_table(HISTORY).map_err(store_error)?;
    txn.open_table(MESSAGES).map_err(store_error)?;
    txn.open_table(ENDS).map_err(store_error)?;
    Ok(())
}

/// At start: when the oldest history kept is due to go.
pub(crate) fn load(txn: &ReadTransaction, state: &mut State) -> Result<(), QueueError> {
    let ends = txn.open_table(ENDS).map_err(store_error)?;
    state.history.next_prune = first_end(&ends, state.history.retention)?;
    Ok(())
}

/// When the oldest history in `ends` is due to go.
fn first_end(
    ends: &impl ReadableTable<(u64, &'static str), ()>,
    retention: u64,
) -> Result<Option<u64>, QueueError> {
    Ok(ends
        .first()
        .map_err(store_error)?
        .map(|(key, _)| key.value().0.saturating_add(retention)))
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, QueueError> {
    serde_json::to_vec(value).map_err(|e| QueueError::Backend(format!("embedded queue store: {e}")))
}

fn corrupt(what: &str, key: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt(format!("embedded queue store: {what} {key}: {e}"))
}

/// Writes the history of a batch's event entries (`events`: entry number and its events) in the batch's
/// transaction, and drops a chunk of the history due by then.
pub(crate) fn write(
    txn: &WriteTransaction,
    log: &mut HistoryLog,
    events: &[(u64, Vec<Event>)],
    changes: &HistoryChanges,
) -> Result<(), QueueError> {
    let mut prune_at = changes.prune_at;
    let mut touched = false;
    if log.retention > 0 {
        // Each message's last event in the batch.
        let mut last: HashMap<MessageId, u64> = HashMap::new();
        {
            let mut rows = txn.open_table(HISTORY).map_err(store_error)?;
            for (seq, entry) in events {
                for (index, event) in entry.iter().enumerate() {
                    // Domain events (suspend, resume) have no message, and no history.
                    let Some(message) = event.message else {
                        continue;
                    };
                    let value = match changes.senders.get(&message) {
                        Some(sender) if event.kind == EventKind::Queued => {
                            let mut event = event.clone();
                            event.sender = Some(sender.clone());
                            json(&event)?
                        }
                        _ => json(event)?,
                    };
                    let key = message.to_string();
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    rows.insert((key.as_str(), *seq, index), value.as_slice())
                        .map_err(store_error)?;
                    let time = last.entry(message).or_default();
                    *time = (*time).max(event.time_ms);
                }
            }
        }
        if !last.is_empty() {
            let mut messages = txn.open_table(MESSAGES).map_err(store_error)?;
            let mut ends = txn.open_table(ENDS).map_err(store_error)?;
            for (message, time) in last {
                let key = message.to_string();
                let old = messages
                    .get(key.as_str())
                    .map_err(store_error)?
                    .map(|v| v.value());
                // A clock stepped back never shortens a history.
                let time = old.map_or(time, |old| old.max(time));
                if old == Some(time) {
                    continue;
                }
                if let Some(old) = old {
                    ends.remove((old, key.as_str())).map_err(store_error)?;
                }
                messages.insert(key.as_str(), time).map_err(store_error)?;
                ends.insert((time, key.as_str()), ()).map_err(store_error)?;
                prune_at = prune_at.max(Some(time));
            }
            touched = true;
        }
    }
    if let (Some(at), Some(due)) = (prune_at, log.next_prune)
        && due <= at
    {
        prune(txn, at.saturating_sub(log.retention))?;
        touched = true;
    }
    if touched {
        let ends = txn.open_table(ENDS).map_err(store_error)?;
        log.next_prune = first_end(&ends, log.retention)?;
    }
    Ok(())
}

/// Drops the history of up to [`PRUNE_CHUNK`] messages whose last event was before `cutoff`.
fn prune(txn: &WriteTransaction, cutoff: u64) -> Result<(), QueueError> {
    let mut ends = txn.open_table(ENDS).map_err(store_error)?;
    let mut messages = txn.open_table(MESSAGES).map_err(store_error)?;
    let mut rows = txn.open_table(HISTORY).map_err(store_error)?;
    let mut gone = Vec::new();
    for entry in ends.range(..(cutoff, "")).map_err(store_error)?.take(PRUNE_CHUNK) {
        let (key, _) = entry.map_err(store_error)?;
        let (time, message) = key.value();
        gone.push((time, message.to_string()));
    }
    for (time, message) in &gone {
        let m = message.as_str();
        ends.remove((*time, m)).map_err(store_error)?;
        messages.remove(m).map_err(store_error)?;
        rows.retain_in((m, 0, 0)..=(m, u64::MAX, u32::MAX), |_, _| false)
            .map_err(store_error)?;
    }
    if !gone.is_empty() {
        tracing::debug!(messages = gone.len(), "message history pruned");
    }
    Ok(())
}

/// Whether a history whose last event was at `last` is past its retention at `now` (due to be dropped).
fn past(last: u64, retention: u64, now: u64) -> bool {
    last.saturating_add(retention) < now
}

/// A message's history, oldest first; empty when none is kept.
fn read_events(db: &Database, id: MessageId, retention: u64, now: u64) -> Result<Vec<Event>, QueueError> {
    let txn = db.begin_read().map_err(store_error)?;
    let key = id.to_string();
    let k = key.as_str();
    let messages = txn.open_table(MESSAGES).map_err(store_error)?;
    match messages.get(k).map_err(store_error)? {
        Some(last) if !past(last.value(), retention, now) => {}
        _ => return Ok(Vec::new()),
    }
    let rows = txn.open_table(HISTORY).map_err(store_error)?;
    let mut out = Vec::new();
    for row in rows
        .range((k, 0, 0)..=(k, u64::MAX, u32::MAX))
        .map_err(store_error)?
    {
        let (key, value) = row.map_err(store_error)?;
        let (_, seq, index) = key.value();
        let mut event: Event = serde_json::from_slice(value.value())
            .map_err(|e| corrupt("history event of", &key_text(k, seq, index), e))?;
        // The id the event stream gives the same event.
        event.id = if index == 0 {
            format!("e{seq}")
        } else {
            format!("e{seq}/{index}")
        };
        event.position = position_of(seq);
        out.push(event);
    }
    Ok(out)
}

fn key_text(message: &str, seq: u64, index: u32) -> String {
    format!("{message}/{seq}/{index}")
}

/// Up to `limit` ids with history, newest first, accepted at or after `since_ms` and before `before`.
fn read_ids(
    db: &Database,
    since_ms: u64,
    before: Option<MessageId>,
    limit: usize,
    retention: u64,
    now: u64,
) -> Result<Vec<MessageId>, QueueError> {
    let low = ulid::Ulid::from_parts(since_ms.min(ULID_MAX_MS), 0).to_string();
    let high = before.map(|b| b.to_string());
    if limit == 0 || high.as_ref().is_some_and(|h| *h <= low) {
        return Ok(Vec::new());
    }
    let txn = db.begin_read().map_err(store_error)?;
    let messages = txn.open_table(MESSAGES).map_err(store_error)?;
    let range = match &high {
        Some(high) => messages.range(low.as_str()..high.as_str()),
        None => messages.range(low.as_str()..),
    }
    .map_err(store_error)?;
    let mut out = Vec::new();
    for entry in range.rev() {
        let (key, last) = entry.map_err(store_error)?;
        if past(last.value(), retention, now) {
            continue;
        }
        let key = key.value();
        out.push(key.parse().map_err(|e| corrupt("history of", key, e))?);
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

#[async_trait]
impl HistoryStore for EmbeddedQueue {
    async fn history_events(&self, id: MessageId) -> Result<Vec<Event>, QueueError> {
        let retention = duration_ms(self.opts.history);
        if retention == 0 {
            return Ok(Vec::new());
        }
        let db = std::sync::Arc::clone(&self.db);
        blocking(move || read_events(&db, id, retention, now_ms())).await
    }

    async fn history_ids(
        &self,
        since_ms: u64,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageId>, QueueError> {
        let retention = duration_ms(self.opts.history);
        if retention == 0 {
            return Ok(Vec::new());
        }
        let db = std::sync::Arc::clone(&self.db);
        blocking(move || read_ids(&db, since_ms, before, limit, retention, now_ms())).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::embedded::EmbeddedQueueOptions;
    use crate::embedded::test_support::message;
    use crate::model::{JobState, Outcome, Target};
    use crate::{Queue, history::DEFAULT_RETENTION};

    fn open(path: &std::path::Path, history: Duration) -> EmbeddedQueue {
        EmbeddedQueue::open(EmbeddedQueueOptions {
            path: path.to_path_buf(),
            history,
            ..Default::default()
        })
        .expect("open")
    }

    /// Rows in each history table.
    fn rows(q: &EmbeddedQueue) -> (u64, u64, u64) {
        use redb::ReadableTableMetadata;
        let txn = q.db.begin_read().expect("read");
        let count = |n: Result<u64, redb::StorageError>| n.expect("len");
        (
            count(txn.open_table(HISTORY).expect("history").len()),
            count(txn.open_table(MESSAGES).expect("messages").len()),
            count(txn.open_table(ENDS).expect("ends").len()),
        )
    }

    #[tokio::test]
    async fn history_held_jobs_and_bounce_reasons_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q = open(dir.path(), DEFAULT_RETENTION);
        let delivered = q.enqueue(message(&["a@x.test"])).await.expect("enqueue");
        let c = q
            .claim("w", 10, Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("work");
        q.complete("w", &c.jobs[0].lease, Outcome::delivered())
            .await
            .expect("complete");
        let held = q.enqueue(message(&["b@y.test"])).await.expect("enqueue");
        let bounced = q.enqueue(message(&["c@z.test"])).await.expect("enqueue");
        assert_eq!(q.hold(&Target::Message(held.message)).await, Ok(1));
        q.suspend("z.test", None, "blocked").await.expect("suspend");
        assert_eq!(
            q.bounce(&Target::Message(bounced.message), Some("  stop  "))
                .await,
            Ok(1)
        );
        let before = q.history_events(delivered.message).await.expect("history");
        assert_eq!(before.len(), 2);
        assert_eq!((rows(&q).1, rows(&q).2), (3, 3));
        drop(q);
        let q = open(dir.path(), DEFAULT_RETENTION);
        assert_eq!(q.history_events(delivered.message).await, Ok(before));
        let info = q.get_message(held.message).await.expect("get").expect("kept");
        assert_eq!(info.jobs[0].state, JobState::Held);
        let counts = q.counts().await.expect("counts");
        assert_eq!((counts.held, counts.queued), (1, 1));
        let c = q
            .claim("w", 10, Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("the bounce");
        assert_eq!(c.jobs.len(), 1, "the held job is not claimed");
        assert_eq!(c.jobs[0].job.bounce_reason.as_deref(), Some("stop"));
        let kinds: Vec<_> = q
            .history_events(held.message)
            .await
            .expect("history")
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [crate::EventKind::Queued, crate::EventKind::Held]);
        assert_eq!(
            q.history_ids(0, None, 10).await.expect("ids"),
            [bounced.message, held.message, delivered.message]
        );
    }

    #[tokio::test]
    async fn the_reaper_drops_history_past_its_retention_and_memory_keeps_only_when() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hour = Duration::from_secs(3600);
        let q = open(dir.path(), hour);
        let r = q.enqueue(message(&["a@x.test"])).await.expect("enqueue");
        q.delete(&Target::Message(r.message)).await.expect("delete");
        assert_eq!(rows(&q), (2, 1, 1));
        let now = now_ms();
        let next = q.writer.run(|s| s.history.next_prune).await.expect("state");
        assert!(
            next.is_some_and(|t| t >= now + 3_500_000 && t <= now + 3_600_000),
            "{next:?}"
        );
        q.reap(now + 1_000).await.expect("reap");
        assert_eq!(rows(&q), (2, 1, 1), "kept for the retention");
        q.reap(now + 2 * 3_600_000).await.expect("reap");
        assert_eq!(rows(&q), (0, 0, 0));
        assert_eq!(q.writer.run(|s| s.history.next_prune).await, Ok(None));
        assert!(q.history_events(r.message).await.expect("history").is_empty());
    }

    #[tokio::test]
    async fn a_zero_retention_records_nothing_and_drops_what_an_earlier_one_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q = open(dir.path(), DEFAULT_RETENTION);
        let kept = q.enqueue(message(&["a@x.test"])).await.expect("enqueue");
        drop(q);
        let q = open(dir.path(), Duration::ZERO);
        assert!(q.history_events(kept.message).await.expect("history").is_empty());
        q.enqueue(message(&["b@x.test"])).await.expect("enqueue");
        q.reap(now_ms() + 1_000).await.expect("reap");
        assert_eq!(rows(&q), (0, 0, 0));
    }
}
