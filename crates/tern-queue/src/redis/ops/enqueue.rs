//! Enqueue, all or none (`enqueue.lua`: `materialise`, `intake`, `intake_done`).
//!
//! - **Fast path**: a message with no idempotency key whose jobs all fall in one shard is stored by ONE
//!   `materialise` call with its body: all or none. Messages are grouped by shard, up to
//!   [`MATERIALISE_MAX_MESSAGES`] (or [`MATERIALISE_MAX_BYTES`] of bodies) per call; a call is all or none,
//!   so every message of it gets the call's result. Each job's record (`jd:<job>`: header, envelope, and
//!   a solo message's body) is written first by a plain `SET ... NX PX` in the same pipeline, since a long
//!   string costs far less in a plain command than through a function; the call keeps (`PERSIST`) the
//!   records of the jobs it creates, and a record no call kept expires.
//! - **Intake path**: otherwise `intake` first writes the whole message (and its idempotency key) as one
//!   intake record into one shard; the message is acknowledged once that is stored (and, with
//!   `wait_replicas`, replicated). Each shard's jobs are then materialised (guarded by `mat:` markers) and
//!   the record dropped (`intake_done`). If that is interrupted, the reaper drives the record again
//!   (`reap.rs`).

use std::collections::BTreeMap;

use bytes::Bytes;
use redis::Value;
use tern_core::time::now_ms;
use tern_core::{JobId, MessageId};

use super::{Arg, arg, codec, unexpected};
use crate::QueueError;
use crate::model::{EnqueueReceipt, NewMessage};
use crate::redis::codec::{IntakePayload, JobSpec};
use crate::redis::library::Function;
use crate::redis::{RedisQueue, ShardCalls};

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// The most messages one `materialise` call stores (a batch is split per shard, then into calls of at most
/// this many messages or [`MATERIALISE_MAX_BYTES`] of bodies, so that no call blocks Redis for long).
const MATERIALISE_MAX_MESSAGES: usize = 64;
/// The most body bytes one `materialise` call carries (a single bigger message still goes alone).
const MATERIALISE_MAX_BYTES: usize = 4 << 20;
/// How long job data stored before its `materialise` call lives if no call keeps it (ms).
const UNKEPT_DATA_TTL_MS: u64 = 3_600_000;
/// The span of message-id time (ms) whose fast-path messages share one repeat set `seen:<bucket>`: a repeat
/// of a message (same id) names the same set, whenever it comes. Small, so that no set holds many ids when
/// it expires (Redis frees an expired key at once).
const REPEAT_BUCKET_MS: u64 = 10_000;

/// The repeat bucket of a message id: the id's time (a ULID's milliseconds) in [`REPEAT_BUCKET_MS`] steps.
pub(crate) fn repeat_bucket(id: MessageId) -> u64 {
    id.timestamp_ms() / REPEAT_BUCKET_MS
}

/// A message ready to store.
pub(crate) struct Prepared {
    pub payload: IntakePayload,
    pub body: Bytes,
    pub idempotency_key: Option<String>,
    pub specs: Vec<JobSpec>,
    /// The tags as stored (JSON).
    pub tags_json: String,
    /// The lower-cased sender address.
    pub sender: String,
}

impl Prepared {
    /// A stored intake record's message, ready to materialise again.
    pub(crate) fn from_intake(payload: IntakePayload, body: Bytes) -> Result<Prepared, QueueError> {
        Ok(Prepared {
            tags_json: codec::tags_json(&payload)?,
            sender: codec::sender_of(&payload),
            specs: codec::job_specs(&payload)?,
            payload,
            body,
            idempotency_key: None,
        })
    }

    fn receipt(&self) -> EnqueueReceipt {
        EnqueueReceipt {
            message: self.payload.id,
            jobs: self.specs.iter().map(|s| (s.id, s.domain.clone())).collect(),
            duplicate: false,
        }
    }
}

/// One `materialise` call: the messages it carries (indexes into the caller's list), its arguments, and
/// its jobs' records, stored by plain commands just before it.
pub(crate) struct MaterialiseCall {
    pub members: Vec<usize>,
    pub records: Vec<(JobId, Vec<u8>)>,
    args: Vec<Arg>,
}

/// What a `materialise` call remembers of its messages, so that a repeat of it makes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Remember {
    /// The intake path: a `mat:` marker per message, kept 24 h (a re-drive of the intake record).
    Intake,
    /// The fast path: each message's id in the repeat set of its id's time bucket (`seen:<bucket>`), kept
    /// `ttl_ms` after the call; 0: nothing is remembered.
    Repeats { ttl_ms: u64 },
}

/// The index of the message count among a call's arguments.
const MESSAGE_COUNT_ARG: usize = 5;

impl MaterialiseCall {
    /// An empty call remembering its messages as `remember` says, in the repeat set of `bucket` on the fast
    /// path; `default_limit`: the default domain concurrency (a domain that becomes due with a free slot
    /// wakes a waiting worker); `history_ms`: the history retention (0: none kept).
    pub(crate) fn new(
        remember: Remember,
        bucket: u64,
        default_limit: u32,
        history_ms: u64,
    ) -> MaterialiseCall {
        let (mark, seen, ttl) = match remember {
            Remember::Intake => ("1", String::new(), 0),
            Remember::Repeats { ttl_ms: 0 } => ("0", String::new(), 0),
            Remember::Repeats { ttl_ms } => ("0", format!("seen:{bucket}"), ttl_ms),
        };
        MaterialiseCall {
            members: Vec::new(),
            records: Vec::new(),
            args: vec![
                arg(mark),
                arg(seen),
                arg(ttl),
                arg(default_limit),
                arg(history_ms),
                arg(0),
            ],
        }
    }

    /// Adds message `member` with its jobs of this call's shard.
    pub(crate) fn push_message(&mut self, member: usize, p: &Prepared, jobs: &[&JobSpec]) {
        self.members.push(member);
        self.args.reserve(8 + jobs.len() * 5);
        // A message with one job in all keeps its body inline in that job: its record (header, envelope,
        // body) is joined here rather than in the function, and the body argument is left empty.
        let solo = p.specs.len() == 1;
        self.args.push(arg(p.payload.id));
        self.args.push(if solo { Vec::new() } else { p.body.to_vec() });
        self.args.push(p.sender.as_bytes().to_vec());
        self.args.push(arg(p.payload.created_ms));
        self.args.push(p.tags_json.as_bytes().to_vec());
        self.args.push(arg(if solo { "1" } else { "0" }));
        self.args.push(arg(jobs.len()));
        // The time in its id: the message's score in the history index.
        self.args.push(arg(p.payload.id.timestamp_ms()));
        for j in jobs {
            let mut record = codec::job_header(j, &p.payload, &p.sender, &p.tags_json, solo);
            record.reserve(j.env_json.len() + 2 + if solo { p.body.len() } else { 0 });
            record.push(b'\n');
            record.extend_from_slice(j.env_json.as_bytes());
            if solo {
                record.push(b'\n');
                record.extend_from_slice(&p.body);
            }
            self.args.extend([
                arg(j.id),
                j.domain.as_bytes().to_vec(),
                arg(j.due_ms),
                arg(j.recipients),
                j.rcpt_list.as_bytes().to_vec(),
            ]);
            self.records.push((j.id, record));
        }
        self.args[MESSAGE_COUNT_ARG] = arg(self.members.len());
    }

    /// The call's arguments.
    #[cfg(test)]
    pub(crate) fn args(&self) -> &[Arg] {
        &self.args
    }

    /// The `materialise` calls that store `messages` (each with its jobs of one shard): as few calls as the
    /// per-call limits allow, and on the fast path one per repeat bucket of the messages' ids.
    pub(crate) fn split(
        messages: &[(&Prepared, Vec<&JobSpec>)],
        remember: Remember,
        default_limit: u32,
        history_ms: u64,
    ) -> Vec<MaterialiseCall> {
        let bucket = |p: &Prepared| match remember {
            Remember::Repeats { ttl_ms } if ttl_ms > 0 => repeat_bucket(p.payload.id),
            _ => 0,
        };
        let mut calls = Vec::new();
        let mut start = 0;
        while start < messages.len() {
            let mut end = start;
            let mut bytes = 0;
            let first_bucket = bucket(messages[start].0);
            while end < messages.len()
                && end - start < MATERIALISE_MAX_MESSAGES
                && (end == start
                    || (bytes + messages[end].0.body.len() <= MATERIALISE_MAX_BYTES
                        && bucket(messages[end].0) == first_bucket))
            {
                bytes += messages[end].0.body.len();
                end += 1;
            }
            let mut call = MaterialiseCall::new(remember, first_bucket, default_limit, history_ms);
            for (member, (p, jobs)) in messages.iter().enumerate().take(end).skip(start) {
                call.push_message(member, p, jobs);
            }
            calls.push(call);
            start = end;
        }
        calls
    }
}

/// The arguments of one `intake` call.
pub(crate) fn intake_args(p: &Prepared) -> Result<Vec<Arg>, QueueError> {
    let payload = serde_json::to_string(&p.payload).map_err(|e| QueueError::InvalidMessage(e.to_string()))?;
    Ok(vec![
        arg(p.payload.id),
        arg(payload),
        p.body.to_vec(),
        arg(p.idempotency_key.as_deref().unwrap_or("")),
        arg(IDEMPOTENCY_TTL_SECS),
    ])
}

/// What `intake` answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IntakeReply {
    /// The record is stored (or was, by the same message).
    Stored,
    /// The idempotency key belongs to this earlier message.
    Duplicate(MessageId),
}

impl IntakeReply {
    pub(crate) fn decode(v: &Value) -> Result<IntakeReply, QueueError> {
        let items = codec::items(v);
        match (
            items.first().and_then(codec::text).as_deref(),
            items.get(1).and_then(codec::text),
        ) {
            (Some("ok"), _) => Ok(IntakeReply::Stored),
            (Some("dup"), Some(first)) => first
                .parse()
                .map(IntakeReply::Duplicate)
                .map_err(|_| QueueError::Corrupt(format!("idempotency record {first:?}"))),
            _ => Err(unexpected("intake", v)),
        }
    }
}

/// The arguments of one `intake_done` call.
pub(crate) fn intake_done_args(message: MessageId) -> Vec<Arg> {
    vec![arg(message)]
}

impl RedisQueue {
    fn prepare(&self, msg: NewMessage, now: u64) -> Result<Prepared, QueueError> {
        msg.envelope
            .validate()
            .map_err(|e| QueueError::InvalidMessage(e.to_string()))?;
        if msg.envelope.recipients.iter().any(|r| r.domain().contains('#')) {
            return Err(QueueError::InvalidMessage("recipient domain contains '#'".into()));
        }
        let payload = IntakePayload {
            id: msg.id.unwrap_or_default(),
            created_ms: now,
            due_ms: msg.not_before_ms.unwrap_or(now),
            envelope: msg.envelope,
            tags: msg.tags,
            // A trace context is a short printable token (W3C traceparent); one with a control character is
            // dropped rather than stored (job headers are tab-separated lines).
            trace: msg.trace.filter(|t| !t.chars().any(char::is_control)),
        };
        Ok(Prepared {
            tags_json: codec::tags_json(&payload)?,
            sender: codec::sender_of(&payload),
            specs: codec::job_specs(&payload)?,
            payload,
            body: msg.body,
            idempotency_key: msg.idempotency_key,
        })
    }

    /// The jobs of a message grouped by shard.
    pub(crate) fn by_shard<'a>(&self, specs: &'a [JobSpec]) -> BTreeMap<u16, Vec<&'a JobSpec>> {
        let mut m: BTreeMap<u16, Vec<&JobSpec>> = BTreeMap::new();
        for s in specs {
            m.entry(self.keys.shard_of_domain(&s.domain)).or_default().push(s);
        }
        m
    }

    /// The shard of a message's intake record: its idempotency key's, else its first job's.
    fn intake_shard(&self, p: &Prepared) -> u16 {
        match &p.idempotency_key {
            Some(k) => self.keys.shard_of_idempotency_key(k),
            None => p
                .specs
                .first()
                .map_or(0, |s| self.keys.shard_of_domain(&s.domain)),
        }
    }

    /// One shard's `materialise` calls as a part of [`RedisQueue::call_shards`]: first one plain
    /// `SET jd:<id> <record> NX PX <ttl>` per job, then the calls, which keep (`PERSIST`) the records of the
    /// jobs they create. Also each call's members.
    fn materialise_part(&self, shard: u16, calls: Vec<MaterialiseCall>) -> (ShardCalls, Vec<Vec<usize>>) {
        let mut pre = Vec::new();
        let mut members = Vec::with_capacity(calls.len());
        let mut args = Vec::with_capacity(calls.len());
        for call in calls {
            for (id, record) in call.records {
                let mut set = redis::cmd("SET");
                set.arg(self.keys.key(shard, &format!("jd:{id}")))
                    .arg(record)
                    .arg("NX")
                    .arg("PX")
                    .arg(UNKEPT_DATA_TTL_MS);
                pre.push(set);
            }
            members.push(call.members);
            args.push(call.args);
        }
        let part = ShardCalls {
            shard,
            pre,
            function: Function::Materialise,
            calls: args,
        };
        (part, members)
    }

    /// One shard's `materialise` replies, each with its call's members (see [`Self::materialise_part`]).
    fn materialise_replies(
        &self,
        shard: u16,
        members: Vec<Vec<usize>>,
        replies: Vec<Result<Value, QueueError>>,
    ) -> Vec<(Vec<usize>, Result<Value, QueueError>)> {
        // Whatever the replies say (a call that timed out may have run), this handle's claims look there again.
        self.quiet.touched(shard);
        members.into_iter().zip(replies).collect()
    }

    /// The `materialise` calls of intake-path messages (kept in their intake records meanwhile), per shard of
    /// their jobs.
    pub(crate) fn intake_materialise_calls(
        &self,
        prepared: &[&Prepared],
    ) -> Vec<(u16, Vec<MaterialiseCall>)> {
        let mut per_shard: BTreeMap<u16, Vec<(&Prepared, Vec<&JobSpec>)>> = BTreeMap::new();
        for p in prepared {
            for (shard, jobs) in self.by_shard(&p.specs) {
                per_shard.entry(shard).or_default().push((p, jobs));
            }
        }
        per_shard
            .into_iter()
            .map(|(shard, msgs)| {
                let calls = MaterialiseCall::split(
                    &msgs,
                    Remember::Intake,
                    self.opts.default_domain_concurrency,
                    self.history_ms(),
                );
                (shard, calls)
            })
            .collect()
    }

    /// Runs `materialise` calls on each shard given (see [`Self::materialise_part`]), all in one pipeline
    /// on one server. Per shard, in the order given: one result per call, with the call's members.
    pub(crate) async fn materialise(
        &self,
        now: u64,
        per_shard: Vec<(u16, Vec<MaterialiseCall>)>,
        wait: bool,
    ) -> Vec<Vec<(Vec<usize>, Result<Value, QueueError>)>> {
        let mut shards = Vec::with_capacity(per_shard.len());
        let mut parts = Vec::with_capacity(per_shard.len());
        let mut members = Vec::with_capacity(per_shard.len());
        for (shard, calls) in per_shard {
            let (part, of_calls) = self.materialise_part(shard, calls);
            shards.push(shard);
            parts.push(part);
            members.push(of_calls);
        }
        let replies = self.call_shards(parts, now, wait).await;
        shards
            .into_iter()
            .zip(members)
            .zip(replies)
            .map(|((shard, members), replies)| self.materialise_replies(shard, members, replies))
            .collect()
    }

    /// [`crate::Queue::enqueue_batch`].
    pub(crate) async fn enqueue_messages(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<EnqueueReceipt, QueueError>> {
        let now = now_ms();
        let mut results: Vec<Option<Result<EnqueueReceipt, QueueError>>> = Vec::with_capacity(messages.len());
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(messages.len());
        for m in messages {
            match self.prepare(m, now) {
                Ok(p) => {
                    prepared.push(Some(p));
                    results.push(None);
                }
                Err(e) => {
                    prepared.push(None);
                    results.push(Some(Err(e)));
                }
            }
        }
        let mut fast: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        let mut intake: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, p) in prepared.iter().enumerate() {
            let Some(p) = p else { continue };
            let shards = self.by_shard(&p.specs);
            if p.idempotency_key.is_none() && shards.len() == 1 {
                if let Some(s) = shards.keys().next() {
                    fast.entry(*s).or_default().push(i);
                }
            } else {
                intake.entry(self.intake_shard(p)).or_default().push(i);
            }
        }
        // Every shard's fast-path calls, then every shard's intake calls, in one `call_shards`.
        let mut parts = Vec::with_capacity(fast.len() + intake.len());
        let mut fast_members = Vec::with_capacity(fast.len());
        for (shard, idx) in &fast {
            let msgs: Vec<(&Prepared, Vec<&JobSpec>)> = idx
                .iter()
                .filter_map(|&i| prepared[i].as_ref())
                .map(|p| (p, p.specs.iter().collect()))
                .collect();
            let calls = MaterialiseCall::split(
                &msgs,
                Remember::Repeats {
                    ttl_ms: self.repeat_ttl_ms(),
                },
                self.opts.default_domain_concurrency,
                self.history_ms(),
            );
            let (part, members) = self.materialise_part(*shard, calls);
            parts.push(part);
            fast_members.push(members);
        }
        let mut intake_members = Vec::with_capacity(intake.len());
        let mut intake_done: Vec<(usize, Result<Value, QueueError>)> = Vec::new();
        for (&shard, idx) in &intake {
            let mut calls = Vec::new();
            let mut members = Vec::new();
            for &i in idx {
                let Some(p) = prepared[i].as_ref() else { continue };
                match intake_args(p) {
                    Ok(args) => {
                        calls.push(args);
                        members.push(i);
                    }
                    Err(e) => intake_done.push((i, Err(e))),
                }
            }
            parts.push(ShardCalls {
                shard,
                pre: Vec::new(),
                function: Function::Intake,
                calls,
            });
            intake_members.push(members);
        }
        let mut replies = self.call_shards(parts, now, true).await.into_iter();
        for ((shard, idx), members) in fast.iter().zip(fast_members) {
            let shard_replies = replies.next().unwrap_or_default();
            // One result per call, for every message of the call (a call is all or none).
            for (members, r) in self.materialise_replies(*shard, members, shard_replies) {
                for k in members {
                    let i = idx[k];
                    let receipt = prepared[i].as_ref().map(Prepared::receipt);
                    results[i] = Some(
                        r.clone()
                            .and_then(|_| receipt.ok_or_else(|| QueueError::Backend("lost message".into()))),
                    );
                }
            }
        }
        for members in intake_members {
            let shard_replies = replies.next().unwrap_or_default();
            intake_done.extend(members.into_iter().zip(shard_replies));
        }
        let mut to_materialise = Vec::new();
        for (i, r) in intake_done {
            let Some(p) = prepared[i].as_ref() else { continue };
            results[i] = Some(r.and_then(|v| match IntakeReply::decode(&v)? {
                IntakeReply::Duplicate(first) => Ok(EnqueueReceipt {
                    message: first,
                    jobs: Vec::new(),
                    duplicate: true,
                }),
                IntakeReply::Stored => {
                    to_materialise.push(p);
                    Ok(p.receipt())
                }
            }));
        }
        if !to_materialise.is_empty() {
            self.materialise_intakes(&to_materialise, now).await;
        }
        let out: Vec<_> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(QueueError::Backend("no result".into()))))
            .collect();
        let ok = out.iter().filter(|r| r.is_ok()).count();
        tracing::debug!(messages = out.len(), ok, "enqueued");
        out
    }

    /// Materialises every shard's jobs of intake-path messages, then drops their intake records. Failures
    /// are logged only: the intake records stay and the reaper drives them again.
    async fn materialise_intakes(&self, prepared: &[&Prepared], now: u64) {
        let calls = self.intake_materialise_calls(prepared);
        let results = self.materialise(now, calls, false).await;
        if let Some(e) = results.iter().flatten().find_map(|(_, r)| r.as_ref().err()) {
            tracing::warn!(error = %e, "materialising queued messages failed; the reaper will finish them");
            return;
        }
        let mut done: BTreeMap<u16, Vec<Vec<Arg>>> = BTreeMap::new();
        for p in prepared {
            done.entry(self.intake_shard(p))
                .or_default()
                .push(intake_done_args(p.payload.id));
        }
        let parts = done
            .into_iter()
            .map(|(shard, calls)| ShardCalls {
                shard,
                pre: Vec::new(),
                function: Function::IntakeDone,
                calls,
            })
            .collect();
        let results = self.call_shards(parts, now, false).await;
        if let Some(e) = results.iter().flatten().find_map(|r| r.as_ref().err()) {
            tracing::warn!(error = %e, "dropping intake records failed; the reaper will drop them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};
    use tern_core::{Envelope, Recipient, ReversePath};

    fn prepared(rcpts: &[&str], body: &str) -> Prepared {
        let envelope = Envelope::new(
            ReversePath::Mailbox("s@a.test".parse().expect("sender")),
            rcpts
                .iter()
                .map(|r| Recipient::new(r.parse().expect("recipient")))
                .collect(),
        );
        let payload = IntakePayload {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().expect("id"),
            created_ms: 10,
            due_ms: 20,
            envelope,
            tags: BTreeMap::new(),
            trace: None,
        };
        Prepared::from_intake(payload, Bytes::from(body.to_string())).expect("prepared")
    }

    #[test]
    fn a_solo_message_goes_with_its_body_in_the_record_and_none_in_the_arguments() {
        let p = prepared(&["x@b.test"], "Subject: hi\r\n\r\nhi\r\n");
        let jobs: Vec<&JobSpec> = p.specs.iter().collect();
        let remember = Remember::Repeats { ttl_ms: 67_000 };
        let mut call = MaterialiseCall::new(remember, repeat_bucket(p.payload.id), 10, 604_800_000);
        call.push_message(3, &p, &jobs);
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert_eq!(
            texts(call.args()),
            [
                "0",
                // The repeat set of the id's 10 s bucket, kept the repeat window and a call's time.
                "seen:146992285",
                "67000",
                "10",
                // The history retention.
                "604800000",
                "1",
                id,
                "",
                "s@a.test",
                "10",
                "{}",
                "1",
                "1",
                // The time in the id (its score in the history index).
                "1469922850259",
                &format!("{id}.0"),
                "b.test",
                "20",
                "1",
                "x@b.test"
            ]
        );
        assert_eq!(call.members, [3]);
        let (job, record) = &call.records[0];
        assert_eq!(job.to_string(), format!("{id}.0"));
        let record = String::from_utf8_lossy(record);
        let mut lines = record.splitn(3, '\n');
        assert!(lines.next().is_some_and(|h| h.starts_with('q')));
        assert!(lines.next().is_some_and(|e| e.starts_with('{')));
        assert_eq!(lines.next(), Some("Subject: hi\r\n\r\nhi\r\n"));
    }

    #[test]
    fn a_message_with_several_jobs_sends_its_body_once() {
        let p = prepared(&["x@b.test", "y@c.test"], "body");
        let jobs: Vec<&JobSpec> = p.specs.iter().collect();
        let mut call = MaterialiseCall::new(Remember::Intake, 0, 10, 0);
        call.push_message(0, &p, &jobs);
        let args = texts(call.args());
        assert_eq!(args[..6], ["1", "", "0", "10", "0", "1"]);
        assert_eq!(args[7], "body");
        assert_eq!(args[11], "0", "not solo");
        assert_eq!(args[12], "2", "two jobs");
        assert_eq!(args.len(), 6 + 8 + 2 * 5);
        assert!(call.records.iter().all(|(_, r)| !r.ends_with(b"body")));
    }

    #[test]
    fn big_batches_split_by_count_and_by_body_size() {
        let small = prepared(&["x@b.test"], "b");
        let many: Vec<(&Prepared, Vec<&JobSpec>)> = (0..MATERIALISE_MAX_MESSAGES + 1)
            .map(|_| (&small, small.specs.iter().collect()))
            .collect();
        let fast = Remember::Repeats { ttl_ms: 1 };
        let calls = MaterialiseCall::split(&many, fast, 10, 0);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].members, [MATERIALISE_MAX_MESSAGES]);
        let big = prepared(&["x@b.test"], &"x".repeat(MATERIALISE_MAX_BYTES));
        let two = vec![
            (&big, big.specs.iter().collect()),
            (&small, small.specs.iter().collect()),
        ];
        let calls = MaterialiseCall::split(&two, fast, 10, 0);
        assert_eq!(
            calls.iter().map(|c| c.members.clone()).collect::<Vec<_>>(),
            [vec![0], vec![1]]
        );
    }

    #[test]
    fn fast_path_calls_hold_messages_of_one_repeat_bucket() {
        let first = prepared(&["x@b.test"], "b");
        let mut same = prepared(&["y@b.test"], "b");
        // 2 ms later: the same 10 s bucket.
        same.payload.id = "01ARZ3NDEMTSV4RRFFQ69G5FAV".parse().expect("id");
        let mut later = prepared(&["z@b.test"], "b");
        // 32.768 s later.
        later.payload.id = "01ARZ3PDEKTSV4RRFFQ69G5FAV".parse().expect("id");
        let messages: Vec<(&Prepared, Vec<&JobSpec>)> = [&first, &same, &later]
            .into_iter()
            .map(|p| (p, p.specs.iter().collect()))
            .collect();
        let calls = MaterialiseCall::split(&messages, Remember::Repeats { ttl_ms: 5 }, 10, 0);
        assert_eq!(
            calls.iter().map(|c| c.members.clone()).collect::<Vec<_>>(),
            [vec![0, 1], vec![2]]
        );
        let sets: Vec<String> = calls.iter().map(|c| texts(c.args())[1].clone()).collect();
        assert_eq!(
            sets,
            [
                format!("seen:{}", repeat_bucket(first.payload.id)),
                format!("seen:{}", repeat_bucket(later.payload.id))
            ]
        );
        // Nothing remembered: one call, no set.
        let calls = MaterialiseCall::split(&messages, Remember::Repeats { ttl_ms: 0 }, 10, 0);
        assert_eq!(calls.len(), 1);
        assert_eq!(texts(calls[0].args())[..3], ["0", "", "0"]);
    }

    #[test]
    fn intake_sends_the_whole_message_and_its_key() {
        let mut p = prepared(&["x@b.test"], "body");
        p.idempotency_key = Some("k1".into());
        let args = texts(&intake_args(&p).expect("args"));
        assert_eq!(args[0], "01ARZ3NDEKTSV4RRFFQ69G5FAV");
        let payload: IntakePayload = serde_json::from_str(&args[1]).expect("payload JSON");
        assert_eq!(payload.due_ms, 20);
        assert_eq!(args[2..], ["body", "k1", "86400"]);
        assert_eq!(
            texts(&intake_done_args(p.payload.id)),
            ["01ARZ3NDEKTSV4RRFFQ69G5FAV"]
        );
    }

    #[test]
    fn the_function_gives_an_unkept_record_the_ttl_the_client_sets() {
        let lua = include_str!("enqueue.lua");
        assert!(lua.contains(&format!("local UNKEPT_TTL_MS = '{UNKEPT_DATA_TTL_MS}'")));
    }

    #[test]
    fn intake_replies_decode() {
        assert_eq!(
            IntakeReply::decode(&array(vec![bulk("ok"), bulk("01ARZ3NDEKTSV4RRFFQ69G5FAV")])),
            Ok(IntakeReply::Stored)
        );
        assert_eq!(
            IntakeReply::decode(&array(vec![bulk("dup"), bulk("01ARZ3NDEKTSV4RRFFQ69G5FAW")])),
            Ok(IntakeReply::Duplicate(
                "01ARZ3NDEKTSV4RRFFQ69G5FAW".parse().expect("id")
            ))
        );
        assert!(matches!(
            IntakeReply::decode(&array(vec![bulk("dup"), bulk("junk")])),
            Err(QueueError::Corrupt(_))
        ));
        assert!(matches!(
            IntakeReply::decode(&Value::Nil),
            Err(QueueError::Backend(_))
        ));
    }
}
