//! The store on disk: one redb file, its tables, loading the queue into memory at start, writing one batch's
//! changes in one transaction, and the reads that need no writer (bodies, events).
//!
//! # Tables
//!
//! | table | key → value | holds |
//! |---|---|---|
//! | `jobs` | job id → JSON | every live job's durable record ([`JobRecord`]): everything but a claim |
//! | `bodies` | message id → bytes | the message (headers and body), once per message, while any of its jobs lives |
//! | `events` | sequence number → JSON | the bounded event history: one entry per call (the events of a batched call together), the oldest dropped past `events_max_len` |
//! | `idempotency` | key → (message id, until ms) | idempotency keys for 24 h |
//! | `suspensions` | domain → JSON | suspensions in force ([`Suspension`]) |
//! | `concurrency` | domain → limit | per-domain concurrency overrides |
//! | `counters` | minute (Unix ms / 60000), or `u64::MAX` for the totals → JSON | counters ([`Stats`]) |
//! | `sts` | domain → (JSON, keep until ms) | the MTA-STS policy cache: each entry ([`StsEntry`]) and until when it is kept |
//! | `tls_report` | (day, domain, session key JSON) → count | the TLS-RPT counters (`tls_report.rs`) |
//! | `tls_report_sent` | (day, domain) → ms | the TLS-RPT reports marked sent, and when |
//! | `history`, `history_messages`, `history_ends` | see `history.rs` | each message's history, kept for the retention after its last event |
//! | `routes` | domain → JSON | operators' domain routes (`routes.rs`), made by the first change |
//! | `meta` | name → number | `format`: the layout's version |
//!
//! Everything else (schedules, the domain index, leases, slots, counts) is rebuilt from `jobs` at start.

use std::collections::HashSet;
use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tern_core::{JobId, MessageId};

use super::record::{JobRecord, LiveJob};
use super::state::{Settings, State};
use crate::QueueError;
use crate::model::{Event, EventPos, Stats, Suspension};
use crate::sts::StsEntry;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const IDEMPOTENCY: TableDefinition<&str, (&str, u64)> = TableDefinition::new("idempotency");
const SUSPENSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("suspensions");
const CONCURRENCY: TableDefinition<&str, u32> = TableDefinition::new("concurrency");
const COUNTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("counters");
const STS: TableDefinition<&str, (&[u8], u64)> = TableDefinition::new("sts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The layout's version, in `meta` under `format`.
const FORMAT: u64 = 1;
/// The `counters` key of the totals.
const TOTALS: u64 = u64::MAX;
/// The store's file in the queue's directory.
pub(crate) const FILE_NAME: &str = "queue.redb";

/// A failure of the store: an outage for the caller (the disk, or a commit that did not happen).
pub(crate) fn store_error(e: impl Into<redb::Error>) -> QueueError {
    QueueError::Unavailable(format!("embedded queue store: {}", e.into()))
}

fn corrupt(what: &str, key: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt(format!("embedded queue store: {what} {key}: {e}"))
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, QueueError> {
    serde_json::to_vec(value).map_err(|e| QueueError::Backend(format!("embedded queue store: {e}")))
}

/// Opens (or makes) the store in `dir` and checks its layout version.
pub(crate) fn open(dir: &Path, cache_bytes: usize) -> Result<Database, QueueError> {
    let path = dir.join(FILE_NAME);
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(&path)
        .map_err(|e| QueueError::Config(format!("embedded queue store {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(store_error)?;
    {
        // Every table exists from the first open on, so that readers never find one missing.
        txn.open_table(JOBS).map_err(store_error)?;
        txn.open_table(BODIES).map_err(store_error)?;
        txn.open_table(EVENTS).map_err(store_error)?;
        txn.open_table(IDEMPOTENCY).map_err(store_error)?;
        txn.open_table(SUSPENSIONS).map_err(store_error)?;
        txn.open_table(CONCURRENCY).map_err(store_error)?;
        txn.open_table(COUNTERS).map_err(store_error)?;
        // Added after the layout's first version: made here on a store of before, which had no cache.
        txn.open_table(STS).map_err(store_error)?;
        super::tls_report::create_tables(&txn)?;
        super::history::create_tables(&txn)?;
        let mut meta = txn.open_table(META).map_err(store_error)?;
        let format = meta.get("format").map_err(store_error)?.map(|v| v.value());
        match format {
            None => {
                meta.insert("format", FORMAT).map_err(store_error)?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(QueueError::Config(format!(
                    "embedded queue store {}: layout version {other}, this tern reads version {FORMAT}",
                    path.display()
                )));
            }
        }
    }
    txn.commit().map_err(store_error)?;
    Ok(db)
}

/// The queue in memory as the store holds it: every job waiting (a claim does not outlive its process).
pub(crate) fn load(db: &Database, settings: Settings) -> Result<State, QueueError> {
    let txn = db.begin_read().map_err(store_error)?;
    let mut state = State::with(settings);
    // Suspensions first: a suspended domain's jobs stay out of the domain index.
    for entry in txn
        .open_table(SUSPENSIONS)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (domain, value) = entry.map_err(store_error)?;
        let domain = domain.value().to_string();
        let mut s: Suspension =
            serde_json::from_slice(value.value()).map_err(|e| corrupt("suspension", &domain, e))?;
        s.domain.clone_from(&domain);
        if let Some(until) = s.until_ms {
            state.suspension_ends.insert((until, domain.clone()));
        }
        state.suspensions.insert(domain, s);
    }
    for entry in txn
        .open_table(CONCURRENCY)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (domain, limit) = entry.map_err(store_error)?;
        state
            .concurrency
            .insert(domain.value().to_string(), limit.value());
    }
    for entry in txn
        .open_table(JOBS)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (key, value) = entry.map_err(store_error)?;
        let key = key.value();
        let id: JobId = key.parse().map_err(|e| corrupt("job id", key, e))?;
        let record: JobRecord = serde_json::from_slice(value.value()).map_err(|e| corrupt("job", key, e))?;
        state.admit(id, LiveJob { record, flight: None });
    }
    for entry in txn
        .open_table(IDEMPOTENCY)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (key, value) = entry.map_err(store_error)?;
        let key = key.value().to_string();
        let (message, until) = value.value();
        let message: MessageId = message.parse().map_err(|e| corrupt("idempotency key", &key, e))?;
        state.idempotency_ends.insert((until, key.clone()));
        state.idempotency.insert(key, (message, until));
    }
    for entry in txn
        .open_table(COUNTERS)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (key, value) = entry.map_err(store_error)?;
        let key = key.value();
        let stats: Stats =
            serde_json::from_slice(value.value()).map_err(|e| corrupt("counters", &key.to_string(), e))?;
        if key == TOTALS {
            state.stats = stats;
        } else {
            state.minutes.insert(key, stats);
        }
    }
    for entry in txn
        .open_table(STS)
        .map_err(store_error)?
        .iter()
        .map_err(store_error)?
    {
        let (domain, value) = entry.map_err(store_error)?;
        let domain = domain.value().to_string();
        let (json, keep_until) = value.value();
        let mut sts: StsEntry =
            serde_json::from_slice(json).map_err(|e| corrupt("MTA-STS cache entry", &domain, e))?;
        sts.domain = domain;
        state.sts.set(sts, keep_until);
    }
    super::tls_report::load(&txn, &mut state)?;
    super::history::load(&txn, &mut state)?;
    let events = txn.open_table(EVENTS).map_err(store_error)?;
    let first = events.first().map_err(store_error)?.map(|(k, _)| k.value());
    let last = events.last().map_err(store_error)?.map(|(k, _)| k.value());
    if let (Some(first), Some(last)) = (first, last) {
        state.events.first = first;
        state.events.next = last + 1;
    }
    // Loading made no change to write back.
    state.changes = Default::default();
    Ok(state)
}

/// Writes the changes of a batch in one transaction and commits it: synced to disk when this returns Ok.
/// The changes are taken from `state` (on an error the caller reloads the state from disk). Whether there
/// was anything to write.
pub(crate) fn commit(db: &Database, state: &mut State) -> Result<bool, QueueError> {
    let changes = std::mem::take(&mut state.changes);
    if changes.is_empty() {
        return Ok(false);
    }
    let txn = db.begin_write().map_err(store_error)?;
    {
        if !changes.jobs.is_empty() {
            let mut jobs = txn.open_table(JOBS).map_err(store_error)?;
            for id in &changes.jobs {
                let key = id.to_string();
                match state.jobs.get(id) {
                    Some(live) => {
                        jobs.insert(key.as_str(), json(&live.record)?.as_slice())
                            .map_err(store_error)?;
                    }
                    None => {
                        jobs.remove(key.as_str()).map_err(store_error)?;
                    }
                }
            }
        }
        if !changes.bodies.is_empty() {
            let mut bodies = txn.open_table(BODIES).map_err(store_error)?;
            for (message, body) in &changes.bodies {
                let key = message.to_string();
                match body {
                    Some(body) => bodies.insert(key.as_str(), &body[..]).map_err(store_error)?,
                    None => bodies.remove(key.as_str()).map_err(store_error)?,
                };
            }
        }
        if !changes.events.is_empty() || changes.events_kept_from.is_some() {
            let mut events = txn.open_table(EVENTS).map_err(store_error)?;
            for (seq, entry) in &changes.events {
                events
                    .insert(*seq, json(entry)?.as_slice())
                    .map_err(store_error)?;
            }
            if let Some(first) = changes.events_kept_from {
                events.retain_in(..first, |_, _| false).map_err(store_error)?;
            }
        }
        // Each message's events go to its history in the same transaction.
        super::history::write(&txn, &mut state.history, &changes.events, &changes.history)?;
        if !changes.idempotency.is_empty() {
            let mut keys = txn.open_table(IDEMPOTENCY).map_err(store_error)?;
            for (key, value) in &changes.idempotency {
                match value {
                    Some((message, until)) => {
                        let message = message.to_string();
                        keys.insert(key.as_str(), (message.as_str(), *until))
                            .map_err(store_error)?
                    }
                    None => keys.remove(key.as_str()).map_err(store_error)?,
                };
            }
        }
        write_settings(&txn, state, &changes.suspensions, &changes.concurrency)?;
        if !changes.sts.is_empty() {
            let mut table = txn.open_table(STS).map_err(store_error)?;
            for domain in &changes.sts {
                match state.sts.entries.get(domain) {
                    Some((entry, keep_until)) => table
                        .insert(domain.as_str(), (json(entry)?.as_slice(), *keep_until))
                        .map_err(store_error)?,
                    None => table.remove(domain.as_str()).map_err(store_error)?,
                };
            }
        }
        super::tls_report::write(&txn, state, &changes.tls_report)?;
        if changes.stats || !changes.minutes.is_empty() || !changes.minutes_dropped.is_empty() {
            let mut counters = txn.open_table(COUNTERS).map_err(store_error)?;
            if changes.stats {
                counters
                    .insert(TOTALS, json(&state.stats)?.as_slice())
                    .map_err(store_error)?;
            }
            for minute in &changes.minutes {
                if let Some(stats) = state.minutes.get(minute) {
                    counters
                        .insert(*minute, json(stats)?.as_slice())
                        .map_err(store_error)?;
                }
            }
            for minute in &changes.minutes_dropped {
                counters.remove(*minute).map_err(store_error)?;
            }
        }
    }
    txn.commit().map_err(store_error)?;
    Ok(true)
}

/// Writes the suspensions and concurrency limits that changed (deleting those gone).
fn write_settings(
    txn: &redb::WriteTransaction,
    state: &State,
    suspensions: &HashSet<String>,
    concurrency: &HashSet<String>,
) -> Result<(), QueueError> {
    if !suspensions.is_empty() {
        let mut table = txn.open_table(SUSPENSIONS).map_err(store_error)?;
        for domain in suspensions {
            match state.suspensions.get(domain) {
                Some(s) => table
                    .insert(domain.as_str(), json(s)?.as_slice())
                    .map_err(store_error)?,
                None => table.remove(domain.as_str()).map_err(store_error)?,
            };
        }
    }
    if !concurrency.is_empty() {
        let mut table = txn.open_table(CONCURRENCY).map_err(store_error)?;
        for domain in concurrency {
            match state.concurrency.get(domain) {
                Some(limit) => table.insert(domain.as_str(), *limit).map_err(store_error)?,
                None => table.remove(domain.as_str()).map_err(store_error)?,
            };
        }
    }
    Ok(())
}

/// The stored bodies of `messages` (`None` for a message that has none any more), from what is committed.
pub(crate) fn read_bodies(db: &Database, messages: &[MessageId]) -> Result<Vec<Option<Bytes>>, QueueError> {
    let txn = db.begin_read().map_err(store_error)?;
    let bodies = txn.open_table(BODIES).map_err(store_error)?;
    messages
        .iter()
        .map(|m| {
            let key = m.to_string();
            Ok(bodies
                .get(key.as_str())
                .map_err(store_error)?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
        .collect()
}

/// Up to `max` events after entry `after` (`None`: from the oldest kept), whole entries, and the sequence
/// number of the last entry read. Each event's id is `s00/<entry>` for an entry's first and
/// `s00/<entry>/<i>` after it (the form the Redis backend's single shard would give).
/// The position after event entry `seq`: `e<seq>`.
pub(crate) fn position_of(seq: u64) -> EventPos {
    EventPos::new(format!("e{seq}"))
}

/// The entry number of a position made by [`position_of`] (`e0`: before every entry).
pub(crate) fn seq_of(position: &EventPos) -> Result<u64, QueueError> {
    position
        .as_str()
        .strip_prefix('e')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            QueueError::InvalidMessage(format!(
                "bad event position {:?} for the embedded store",
                position.as_str()
            ))
        })
}

pub(crate) fn read_events(
    db: &Database,
    after: Option<u64>,
    max: usize,
) -> Result<(Vec<Event>, Option<u64>), QueueError> {
    let txn = db.begin_read().map_err(store_error)?;
    let table = txn.open_table(EVENTS).map_err(store_error)?;
    let range = match after {
        Some(seq) => table.range(seq.saturating_add(1)..),
        None => table.range::<u64>(..),
    }
    .map_err(store_error)?;
    let mut out = Vec::new();
    let mut last = None;
    for entry in range {
        let (seq, value) = entry.map_err(store_error)?;
        let seq = seq.value();
        let mut events: Vec<Event> =
            serde_json::from_slice(value.value()).map_err(|e| corrupt("event entry", &seq.to_string(), e))?;
        // An entry is taken whole: the answer may exceed `max` when its first entry alone holds more.
        if !out.is_empty() && out.len() + events.len() > max {
            break;
        }
        for (i, e) in events.iter_mut().enumerate() {
            e.id = if i == 0 {
                format!("e{seq}")
            } else {
                format!("e{seq}/{i}")
            };
            e.position = position_of(seq);
        }
        out.extend(events);
        last = Some(seq);
        if out.len() >= max {
            break;
        }
    }
    Ok((out, last))
}
