//! [`HistoryStore`] for the Redis backend.
//!
//! The functions write the history beside the event stream, in the same call (`shared.lua`): every event of
//! a job is a record in its message's history `hist:<msg>` in the job's shard, whose TTL each write sets to
//! the retention, and a message joins its shard's history index `hidx` (scored by the time in its id) when
//! it is enqueued. A job's `queued` record is written with its first change (until then its record in the
//! string form stands for it, and the `history` read view makes the line from it): an enqueue writes only
//! the index, and a job delivered at its first attempt writes its two records with one `SET`. A message
//! whose jobs are in several shards has history (and an index entry) in each; [`HistoryStore::history_events`]
//! reads them all and merges them. The reaper trims the index of messages older than the retention
//! (`reap.lua`), and listings stop there too. The layout of the records is in `keys.rs`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redis::Value;
use tern_core::time::now_ms;
use tern_core::{JobId, MessageId};

use super::codec;
use super::read::View;
use crate::model::{Event, EventKind, EventPos};
use crate::redis::RedisQueue;
use crate::{HistoryStore, QueueError};

/// The separator that ends each field of a history record (ASCII unit separator).
const SEPARATOR: u8 = 0x1f;
/// The fields of a history record before its reply: kind, time, job number, domain, attempt, recipients,
/// MX, IP, TLS, DSN id, sender, tags; then come the reply's length and the reply.
const FIELDS: usize = 12;
/// Index entries read per shard and round beyond the page asked for: entries of `before`'s millisecond that
/// are not before it come first, and are skipped.
const INDEX_SLACK: usize = 16;
/// The most index entries asked of one shard in one round.
const INDEX_PAGE_MAX: usize = 5_000;

/// One history record: its fields before the reply, and the reply.
pub(crate) type Record<'a> = ([&'a [u8]; FIELDS], &'a [u8]);

/// The records of a message's history in one shard, one after another in the order written (layout in
/// `keys.rs`). Reading stops at a record that does not frame (the rest cannot be found).
pub(crate) fn records(data: &[u8]) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    let mut rest = data;
    'records: while !rest.is_empty() {
        let mut fields: [&[u8]; FIELDS] = [&[]; FIELDS];
        for field in fields.iter_mut() {
            let Some(end) = rest.iter().position(|c| *c == SEPARATOR) else {
                break 'records;
            };
            *field = &rest[..end];
            rest = &rest[end + 1..];
        }
        let Some(end) = rest.iter().position(|c| *c == SEPARATOR) else {
            break;
        };
        let Some(length) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            break;
        };
        let Some(reply) = rest.get(end + 1..end + 1 + length) else {
            break;
        };
        out.push((fields, reply));
        rest = &rest[end + 1 + length..];
    }
    out
}

/// The events of one shard's `history` view: its stored records, then the `queued` records made for its
/// jobs still in the string form.
pub(crate) fn view_events(message: MessageId, shard: u16, v: &Value) -> Vec<Event> {
    let items = codec::items(v);
    let parts: Vec<Vec<u8>> = items.iter().filter_map(codec::bytes).collect();
    parts
        .iter()
        .flat_map(|part| records(part))
        .enumerate()
        .filter_map(|(at, record)| decode_record(message, shard, at, &record))
        .collect()
}

/// The event of a record of message `message`'s history in shard `shard`, the `at`-th there (it names the
/// event: `hNN/<msg>/<at>`). `None` for a record that does not read (a newer tern's kind, say).
pub(crate) fn decode_record(message: MessageId, shard: u16, at: usize, record: &Record<'_>) -> Option<Event> {
    let (fields, reply) = record;
    let [
        kind,
        time,
        number,
        domain,
        attempt,
        recipients,
        mx,
        ip,
        tls,
        dsn,
        sender,
        tags,
    ] = fields.map(String::from_utf8_lossy);
    let kind: EventKind = kind.parse().ok()?;
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(Event {
        kind,
        time_ms: time.parse().ok()?,
        message: Some(message),
        job: Some(JobId::new(message, number.parse().ok()?)),
        domain: domain.into_owned(),
        recipients: recipients
            .split('\n')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        reply: nonempty(&String::from_utf8_lossy(reply)),
        attempt: attempt.parse().unwrap_or(0),
        tags: if tags.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&tags).unwrap_or_default()
        },
        remote_mx: nonempty(&mx),
        remote_ip: nonempty(&ip),
        tls: nonempty(&tls),
        // Written on queued records only, where "" is the null sender.
        sender: (kind == EventKind::Queued).then(|| sender.into_owned()),
        dsn: nonempty(&dsn),
        id: format!("h{shard:02}/{message}/{at}"),
        position: EventPos::default(),
    })
}

/// Merges the shards' events by time, oldest first. Each job's events keep the order they were written in
/// (a job lives in one shard, whose writes are in order, while the writers' clocks may disagree a little,
/// and a job's `queued` record is written with its first change): the jobs' sequences are merged by the
/// time of their next event, the lower job first on a tie. The tags, which history keeps on `queued` lines
/// only, go on every event (a message has one set of tags).
pub(crate) fn merge(shards: Vec<Vec<Event>>) -> Vec<Event> {
    let mut jobs: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
    for event in shards.into_iter().flatten() {
        let index = event.job.map_or(u32::MAX, |j| j.index);
        jobs.entry(index).or_default().push(event);
    }
    let total = jobs.values().map(Vec::len).sum();
    let mut heads: Vec<std::iter::Peekable<std::vec::IntoIter<Event>>> = jobs
        .into_values()
        .map(|events| events.into_iter().peekable())
        .collect();
    let mut out: Vec<Event> = Vec::with_capacity(total);
    loop {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, h)| h.peek().map(|e| (e.time_ms, i)))
            .min();
        let Some((_, i)) = next else { break };
        if let Some(e) = heads[i].next() {
            out.push(e);
        }
    }
    if let Some(tags) = out.iter().find(|e| !e.tags.is_empty()).map(|e| e.tags.clone()) {
        for e in out.iter_mut().filter(|e| e.tags.is_empty()) {
            e.tags = tags.clone();
        }
    }
    out
}

/// The message ids of a `ZREVRANGEBYSCORE` page of a history index, and how many entries it had.
fn index_page(v: &Value) -> (Vec<MessageId>, usize) {
    let items = codec::items(v);
    let ids = items
        .iter()
        .filter_map(codec::text)
        .filter_map(|t| t.parse().ok())
        .collect();
    (ids, items.len())
}

impl RedisQueue {
    /// Up to `limit` ids of shard `shard`'s history index, newest first, with their time in `min ..= max`
    /// (ms) and before `before`.
    async fn shard_history_ids(
        &self,
        shard: u16,
        min: u64,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageId>, QueueError> {
        let key = self.keys.key(shard, "hidx");
        let max = before.map_or_else(|| "+inf".to_string(), |b| b.timestamp_ms().to_string());
        let page = limit.min(INDEX_PAGE_MAX) + INDEX_SLACK;
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut range = redis::cmd("ZREVRANGEBYSCORE");
            range
                .arg(&key)
                .arg(&max)
                .arg(min)
                .arg("LIMIT")
                .arg(offset)
                .arg(page);
            let (ids, read) = index_page(&self.command(range).await?);
            // Entries of `before`'s millisecond sort by id, newest first, like the ids: those not before it
            // come first.
            out.extend(ids.into_iter().filter(|id| before.is_none_or(|b| *id < b)));
            if out.len() >= limit || read < page {
                out.truncate(limit);
                return Ok(out);
            }
            offset += page;
        }
    }
}

#[async_trait]
impl HistoryStore for RedisQueue {
    async fn history_events(&self, id: MessageId) -> Result<Vec<Event>, QueueError> {
        // A store that keeps no history makes no `queued` lines of live jobs either.
        let make_queued = self.history_ms() > 0;
        let now = now_ms();
        let shards = self
            .on_all_shards(|shard| async move {
                let v = self.view(shard, now, View::History(id, make_queued)).await?;
                Ok(view_events(id, shard, &v))
            })
            .await?;
        Ok(merge(shards))
    }

    async fn history_ids(
        &self,
        since_ms: u64,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageId>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A message accepted long ago may have ended recently, and its history is kept the retention after
        // its last event: the index keeps ids twice the retention after they were accepted (the reaper's
        // horizon), and an id whose history is gone reads back empty and is skipped by the caller.
        let retention = self.history_ms();
        let min = if retention > 0 {
            since_ms.max(now_ms().saturating_sub(retention.saturating_mul(2)))
        } else {
            since_ms
        };
        if before.is_some_and(|b| b.timestamp_ms() < min) {
            return Ok(Vec::new());
        }
        let per_shard = self
            .on_all_shards(|shard| self.shard_history_ids(shard, min, before, limit))
            .await?;
        // A message with jobs in several shards is in several indexes.
        let mut ids: Vec<MessageId> = per_shard.into_iter().flatten().collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(limit);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk};

    /// A record as the functions write it: the fields, each ended by the separator, then the reply's length,
    /// the separator and the reply.
    fn record(fields: [&str; FIELDS], reply: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            out.extend_from_slice(f.as_bytes());
            out.push(SEPARATOR);
        }
        out.extend_from_slice(format!("{}", reply.len()).as_bytes());
        out.push(SEPARATOR);
        out.extend_from_slice(reply.as_bytes());
        out
    }

    /// The events of `data`, a shard's stored records.
    fn events_of(id: MessageId, shard: u16, data: &[u8]) -> Vec<Event> {
        view_events(id, shard, &array(vec![Value::BulkString(data.to_vec())]))
    }

    #[test]
    fn a_queued_record_reads_with_its_sender_and_tags_and_a_failure_with_its_dsn() {
        let id = MessageId::new();
        let queued = record(
            [
                "queued",
                "1000",
                "2",
                "d.test",
                "",
                "a@d.test\nb@d.test",
                "",
                "",
                "",
                "",
                "",
                r#"{"tenant":"t1"}"#,
            ],
            "",
        );
        // A reply may hold the separator, tabs and newlines: it is framed by its length.
        let reply = "550 5.1.1 no\tsuch\r\nuser\u{1f}here\u{1f}";
        let failed = record(
            [
                "failed",
                "2000",
                "0",
                "d.test",
                "3",
                "a@d.test",
                "mx.d.test",
                "192.0.2.1",
                "TLSv1.3",
                "01DSN",
                "",
                "",
            ],
            reply,
        );
        let events = events_of(id, 3, &[queued, failed].concat());
        assert_eq!(events.len(), 2);
        let e = &events[0];
        assert_eq!(e.kind, EventKind::Queued);
        assert_eq!(e.job, Some(JobId::new(id, 2)));
        assert_eq!(e.message, Some(id));
        assert_eq!(e.recipients, ["a@d.test", "b@d.test"]);
        assert_eq!(e.sender.as_deref(), Some(""), "the null sender");
        assert_eq!(e.tags.get("tenant").map(String::as_str), Some("t1"));
        assert_eq!((e.time_ms, e.attempt, e.reply.as_deref()), (1000, 0, None));
        assert_eq!(e.id, format!("h03/{id}/0"));
        let e = &events[1];
        assert_eq!(e.kind, EventKind::Failed);
        assert_eq!(e.reply.as_deref(), Some(reply));
        assert_eq!(e.dsn.as_deref(), Some("01DSN"));
        assert_eq!(e.sender, None);
        assert_eq!(e.attempt, 3);
        assert_eq!(
            (e.remote_mx.as_deref(), e.remote_ip.as_deref(), e.tls.as_deref()),
            (Some("mx.d.test"), Some("192.0.2.1"), Some("TLSv1.3"))
        );
        assert_eq!(e.id, format!("h03/{id}/1"));
    }

    #[test]
    fn an_unknown_kind_is_skipped_and_a_record_cut_short_ends_the_reading() {
        let id = MessageId::new();
        let fields = |kind| [kind, "5", "0", "d", "", "a@d", "", "", "", "", "", ""];
        let data = [
            record(fields("frozen"), "x"),
            record(fields("delivered"), "250 ok"),
            record(fields("deferred"), "451 later")[..20].to_vec(),
        ]
        .concat();
        assert_eq!(records(&data).len(), 2);
        let events = events_of(id, 0, &data);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::Delivered);
        assert_eq!(events[0].reply.as_deref(), Some("250 ok"));
        assert!(records(b"").is_empty());
        assert!(records(b"queued\x1f5\x1f").is_empty());
        let mut bad_length = record(fields("delivered"), "ok");
        let at = bad_length.len() - 4;
        bad_length[at] = b'x';
        assert!(records(&bad_length).is_empty());
    }

    #[test]
    fn a_shards_view_reads_its_records_then_the_queued_records_of_jobs_not_yet_recorded() {
        let id = MessageId::new();
        let stored = [
            record(
                ["queued", "5", "1", "d", "", "b@d", "", "", "", "", "s@o", ""],
                "",
            ),
            record(
                ["deferred", "9", "1", "d", "1", "b@d", "", "", "", "", "", ""],
                "451 later",
            ),
            // A job queued as early, whose first change came later: its records come after.
            record(
                ["queued", "5", "0", "d", "", "a@d", "", "", "", "", "s@o", ""],
                "",
            ),
            record(
                ["delivered", "12", "0", "d", "1", "a@d", "", "", "", "", "", ""],
                "250 ok",
            ),
        ]
        .concat();
        let made = record(
            ["queued", "5", "2", "d", "", "c@d", "", "", "", "", "s@o", ""],
            "",
        );
        let v = array(vec![Value::BulkString(stored), Value::BulkString(made)]);
        let events = view_events(id, 1, &v);
        assert_eq!(events.len(), 5);
        assert_eq!(events[4].id, format!("h01/{id}/4"));
        let merged = merge(vec![events, Vec::new()]);
        let order: Vec<(EventKind, u32, u64)> = merged
            .iter()
            .map(|e| (e.kind, e.job.map_or(99, |j| j.index), e.time_ms))
            .collect();
        assert_eq!(
            order,
            [
                (EventKind::Queued, 0, 5),
                (EventKind::Queued, 1, 5),
                (EventKind::Queued, 2, 5),
                (EventKind::Deferred, 1, 9),
                (EventKind::Delivered, 0, 12),
            ]
        );
        // A shard without the message.
        assert!(view_events(id, 0, &array(vec![Value::Nil])).is_empty());
    }

    #[test]
    fn shards_merge_by_time_keeping_each_jobs_order_and_share_the_tags() {
        let id = MessageId::new();
        let event = |kind: &str, time: &str, n: &str, tags: &str| {
            let data = record([kind, time, n, "d", "", "r@d", "", "", "", "", "", tags], "");
            events_of(id, 0, &data).remove(0)
        };
        let first = vec![
            event("queued", "10", "0", r#"{"t":"1"}"#),
            // A writer whose clock is behind: still after the queued event of its job.
            event("deferred", "9", "0", ""),
            event("delivered", "30", "0", ""),
        ];
        let second = vec![
            event("queued", "10", "1", r#"{"t":"1"}"#),
            event("failed", "20", "1", ""),
        ];
        let merged = merge(vec![first, second]);
        let order: Vec<(EventKind, u32)> = merged
            .iter()
            .map(|e| (e.kind, e.job.map_or(99, |j| j.index)))
            .collect();
        assert_eq!(
            order,
            [
                (EventKind::Queued, 0),
                (EventKind::Deferred, 0),
                (EventKind::Queued, 1),
                (EventKind::Failed, 1),
                (EventKind::Delivered, 0)
            ]
        );
        assert!(merged.iter().all(|e| e.tags.get("t").is_some_and(|v| v == "1")));
        assert!(merge(Vec::new()).is_empty());
    }

    #[test]
    fn an_index_page_reads_its_ids_and_counts_its_entries() {
        let id = MessageId::new();
        let (ids, read) = index_page(&array(vec![bulk(&id.to_string()), bulk("junk")]));
        assert_eq!((ids, read), (vec![id], 2));
        assert_eq!(index_page(&Value::Nil), (Vec::new(), 0));
    }
}
