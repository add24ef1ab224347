//! Events: each shard's stream read and merged by time (plain `XREAD`; the functions write the events).
//!
//! A Redis stream is one key, and a function call must stay in one slot, so each shard has its own stream.
//! [`crate::Queue::read_events`] reads all of them and merges them by time; an [`EventPos`] holds one
//! stream id per shard. A function that changes many jobs (`materialise`, `complete`) appends all its
//! events as ONE stream entry; the fields of an entry are described in `keys.rs`. A position is a stream
//! id, so an entry is consumed whole (an answer can exceed `max` when its first entry alone holds more
//! events). The i-th event (i ≥ 1) of an entry has the id `sNN/<stream id>/<i>`, the first `sNN/<stream id>`.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use tern_core::JobId;

use super::codec::{items, text};
use crate::QueueError;
use crate::model::{Event, EventKind, EventPos};
use crate::redis::RedisQueue;

/// Event fields that an event after the first of a stream entry leaves out when its value is the previous
/// event's (see `event_fields` in `shared.lua`).
const EVENT_SHARED_FIELDS: [&str; 8] = ["dom", "att", "tags", "reply", "mx", "ip", "tls", "bounce"];

/// The events of one stream entry. An entry holds one event, or several (a batched call appends its
/// events as one entry): its fields are the events' fields one after another, each event starting with
/// `kind`. Left-out fields take their defaults (the message is the job's, `att` 0, no tags) in an entry's
/// first event; after it, `ts` and the shared fields (`EVENT_SHARED_FIELDS`) take the previous event's
/// value, and an empty value stands for none. The first event's id is `sNN/<stream id>`, the i-th after it `sNN/<stream id>/<i>`.
pub(crate) fn events_of_entry(shard: u16, stream_id: &str, entry: &Value) -> Vec<Event> {
    let mut groups: Vec<HashMap<String, String>> = Vec::new();
    let mut add = |k: String, v: String| {
        if k == "kind" || groups.is_empty() {
            groups.push(HashMap::new());
        }
        if let Some(g) = groups.last_mut() {
            g.insert(k, v);
        }
    };
    match entry {
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    add(k, v);
                }
            }
        }
        other => {
            for pair in items(other).chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (text(k), text(v))
                {
                    add(k, v);
                }
            }
        }
    }
    // Events after the first of an entry leave out the time they share with it, and the shared fields whose
    // value is the previous event's (an empty value stands for none).
    let mut prev: HashMap<&'static str, String> = HashMap::new();
    for g in &mut groups {
        for name in ["ts"].into_iter().chain(EVENT_SHARED_FIELDS) {
            match g.get(name) {
                Some(v) => {
                    prev.insert(name, v.clone());
                }
                None => {
                    if let Some(v) = prev.get(name) {
                        g.insert(name.to_string(), v.clone());
                    }
                }
            }
        }
    }
    groups
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let id = if i == 0 {
                stream_id.to_string()
            } else {
                format!("{stream_id}/{i}")
            };
            event_from_fields(shard, &id, f)
        })
        .collect()
}

/// An event from its fields.
pub(crate) fn event_from_fields(shard: u16, stream_id: &str, f: &HashMap<String, String>) -> Option<Event> {
    let kind: EventKind = f.get("kind")?.parse().ok()?;
    let job: Option<JobId> = f.get("job").and_then(|s| s.parse().ok());
    let nonempty = |name: &str| f.get(name).filter(|s| !s.is_empty()).cloned();
    Some(Event {
        kind,
        time_ms: f.get("ts").and_then(|s| s.parse().ok()).unwrap_or(0),
        message: f
            .get("msg")
            .and_then(|s| s.parse().ok())
            .or_else(|| job.map(|j: JobId| j.message)),
        job,
        domain: f.get("dom").cloned().unwrap_or_default(),
        recipients: f
            .get("rcpts")
            .map(|r| {
                r.split('\n')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        reply: nonempty("reply"),
        attempt: f.get("att").and_then(|s| s.parse().ok()).unwrap_or(0),
        tags: f
            .get("tags")
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default(),
        remote_mx: nonempty("mx"),
        remote_ip: nonempty("ip"),
        tls: nonempty("tls"),
        sender: None,
        dsn: nonempty("dsn"),
        id: format!("s{shard:02}/{stream_id}"),
        position: EventPos::default(),
    })
}

/// Orders stream ids (`<ms>-<seq>`) numerically.
pub(crate) fn stream_id_key(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// The stream id before every entry.
const START: &str = "0-0";

/// A position's text: `s<shard>=<stream id>` for each shard past its start, comma-separated (`-` when every
/// shard is at its start), so that a queue with 16 shards and a few busy ones has a short position.
fn encode_position(per_shard: &[String]) -> EventPos {
    let parts: Vec<String> = per_shard
        .iter()
        .enumerate()
        .filter(|(_, id)| id.as_str() != START)
        .map(|(shard, id)| format!("s{shard:02}={id}"))
        .collect();
    if parts.is_empty() {
        EventPos::new("-".into())
    } else {
        EventPos::new(parts.join(","))
    }
}

/// The stream id per shard of a position made by [`encode_position`], for a queue of `shards` shards.
fn decode_position(position: &EventPos, shards: usize) -> Result<Vec<String>, QueueError> {
    let bad = || QueueError::InvalidMessage(format!("bad event position {:?}", position.as_str()));
    let mut per_shard = vec![START.to_string(); shards];
    let text = position.as_str();
    if text == "-" || text.is_empty() {
        return Ok(per_shard);
    }
    for part in text.split(',') {
        let (shard, id) = part.split_once('=').ok_or_else(bad)?;
        let shard: usize = shard
            .strip_prefix('s')
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        let (ms, seq) = id.split_once('-').ok_or_else(bad)?;
        if ms.parse::<u64>().is_err() || seq.parse::<u64>().is_err() {
            return Err(bad());
        }
        *per_shard.get_mut(shard).ok_or_else(bad)? = id.to_string();
    }
    Ok(per_shard)
}

impl RedisQueue {
    /// [`crate::Queue::read_events`].
    pub(crate) async fn read_event_streams(
        &self,
        after: Option<&EventPos>,
        max: usize,
        block: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError> {
        let shards = usize::from(self.keys.shards());
        let mut pos = match after {
            Some(after) => decode_position(after, shards)?,
            None => vec![START.to_string(); shards],
        };
        let max = max.max(1);
        let deadline = block.map(|b| tokio::time::Instant::now() + b);
        loop {
            let pos_ref = &pos;
            let parts = self
                .on_all_shards(|shard| async move {
                    let mut read = redis::cmd("XREAD");
                    read.arg("COUNT")
                        .arg(max)
                        .arg("STREAMS")
                        .arg(self.keys.key(shard, "events"))
                        .arg(&pos_ref[usize::from(shard)]);
                    self.command(read).await.map(|v| (shard, v))
                })
                .await?;
            // Every entry read, with its events (one, or several for a batched call).
            let mut entries: Vec<(u16, String, Vec<Event>)> = Vec::new();
            for (shard, v) in parts {
                // [[key, [[id, [field, value, ...]], ...]]]
                for stream in items(&v) {
                    let Some(list) = items(stream).get(1) else {
                        continue;
                    };
                    for entry in items(list) {
                        let e = items(entry);
                        let (Some(id), Some(fields)) = (e.first().and_then(text), e.get(1)) else {
                            continue;
                        };
                        let events = events_of_entry(shard, &id, fields);
                        entries.push((shard, id, events));
                    }
                }
            }
            if !entries.is_empty() {
                // Merged by time; an entry is taken whole (the position is its stream id), so a batched
                // entry may make the answer longer than `max` when it comes first.
                entries.sort_by_key(|(shard, id, _)| (stream_id_key(id), *shard));
                let mut events = Vec::new();
                for (shard, id, entry_events) in entries {
                    if !events.is_empty() && events.len() + entry_events.len() > max {
                        break;
                    }
                    pos[usize::from(shard)] = id;
                    let position = encode_position(&pos);
                    events.extend(entry_events.into_iter().map(|mut e| {
                        e.position = position.clone();
                        e
                    }));
                }
                if !events.is_empty() {
                    return Ok((events, encode_position(&pos)));
                }
            }
            match deadline {
                Some(d) if tokio::time::Instant::now() < d => {
                    tokio::time::sleep(Duration::from_millis(50).min(d - tokio::time::Instant::now())).await;
                }
                _ => return Ok((Vec::new(), encode_position(&pos))),
            }
        }
    }

    /// [`crate::Queue::events_end`].
    pub(crate) async fn event_streams_end(&self) -> Result<EventPos, QueueError> {
        let parts = self
            .on_all_shards(|shard| async move {
                let mut newest = redis::cmd("XREVRANGE");
                newest
                    .arg(self.keys.key(shard, "events"))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                let v = self.command(newest).await?;
                Ok(items(&v)
                    .first()
                    .and_then(|e| items(e).first().and_then(text))
                    .unwrap_or_else(|| START.to_string()))
            })
            .await?;
        Ok(encode_position(&parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::MessageId;

    #[test]
    fn a_position_names_only_the_shards_past_their_start_and_reads_back() {
        let mut per_shard = vec![START.to_string(); 16];
        assert_eq!(encode_position(&per_shard).as_str(), "-");
        per_shard[3] = "1700000000000-2".into();
        per_shard[15] = "1700000000001-0".into();
        let position = encode_position(&per_shard);
        assert_eq!(position.as_str(), "s03=1700000000000-2,s15=1700000000001-0");
        assert_eq!(decode_position(&position, 16).unwrap(), per_shard);
        assert_eq!(decode_position(&"-".parse().unwrap(), 2).unwrap(), ["0-0", "0-0"]);
    }

    #[test]
    fn a_position_of_another_backend_or_beyond_the_shards_is_refused() {
        for bad in ["e42", "s03=x-1", "s16=1-0", "s01", "garbage"] {
            let position: EventPos = bad.parse().unwrap();
            assert!(
                matches!(decode_position(&position, 16), Err(QueueError::InvalidMessage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_of_a_batched_entry_carry_shared_fields_forward() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let id = JobId::new(MessageId::new(), 0).to_string();
        let fields = [
            ("kind", "delivered"),
            ("job", id.as_str()),
            ("rcpts", "a@d.test"),
            ("ts", "5"),
            ("dom", "d.test"),
            ("att", "1"),
            ("reply", "250 ok"),
            ("mx", "mx.d.test"),
            ("kind", "delivered"),
            ("job", id.as_str()),
            ("rcpts", "b@d.test"),
            ("kind", "failed"),
            ("job", id.as_str()),
            ("rcpts", "c@d.test"),
            ("reply", ""),
            ("mx", ""),
        ];
        let entry = Value::Array(fields.iter().flat_map(|(k, v)| [b(k), b(v)]).collect());
        let ev = events_of_entry(3, "5-0", &entry);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[1].domain, "d.test");
        assert_eq!((ev[1].attempt, ev[1].time_ms), (1, 5));
        assert_eq!(ev[1].reply.as_deref(), Some("250 ok"));
        assert_eq!(ev[1].remote_mx.as_deref(), Some("mx.d.test"));
        assert_eq!(ev[1].recipients, ["b@d.test"]);
        assert_eq!(ev[2].kind, EventKind::Failed);
        assert_eq!((ev[2].reply.as_deref(), ev[2].remote_mx.as_deref()), (None, None));
        assert_eq!((ev[2].domain.as_str(), ev[2].attempt), ("d.test", 1));
        assert_eq!(ev[2].id, "s03/5-0/2");
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert!(stream_id_key("9-1") < stream_id_key("10-0"));
        assert!(stream_id_key("10-2") > stream_id_key("10-1"));
    }
}
