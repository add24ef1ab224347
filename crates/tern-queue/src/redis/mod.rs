//! The Redis backend: one Redis server or a Redis Cluster, with the same code.
//!
//! # Key layout
//!
//! Destination domains map to `shards` shards (default 16) by FNV-1a of the lower-cased domain (see
//! [`keys`](self) for why that is stable). Every key of shard `NN` starts with `{<prefix>:sNN}:`, whose braces
//! are the cluster hash tag: one shard is one cluster slot, so every operation on a job is one atomic
//! script, while the shards spread over the cluster's masters. Per shard:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `jd:<job id>` | string | the job's data: a header line (the whole job record while the job has never been tried: its form, claim token, domain, recipients, times, sender, tags, trace; see `scripts/common.lua`), the envelope (JSON), and for a message's only job (`solo`) the message body |
//! | `job:<job id>` | hash | the job record once the job leaves the string form (a deferral, a release, a lease expiry, an operator action; fields in `codec.rs`): short values only, so Redis keeps it a compact listpack |
//! | `body:<msg id>` | string | the message, once per message and shard, for messages with several jobs only |
//! | `msg:<msg id>` | hash | `live` (jobs of the message left in this shard), `ids`, `sender`, `created`; messages with several jobs only |
//! | `due:<domain>` | zset | the domain's waiting jobs by due time (ms); `due:#bounce` is the admin-bounce schedule |
//! | `domains` | zset | the domain index: each schedule with waiting jobs, by its earliest due time |
//! | `inflight` | zset | jobs in flight by lease deadline (what the reaper scans) |
//! | `slots:<domain>` | zset | the domain's live claims and holds (connections, busy or idle) by deadline |
//! | `claims` | hash | claim id → jobs of the claim still in flight (the slot is freed at 0) |
//! | `cinfo` | hash | claim id → owner and claimed schedule (tab-separated), for the claim's jobs in the string form |
//! | `conc` | hash | per-domain concurrency overrides |
//! | `susp`, `suspu` | hash, zset | suspensions (JSON), and their expiry times |
//! | `jobs` | zset | every job id (score 0, lexical order = time order of ULIDs), for listing |
//! | `dlive` | hash | live jobs per domain |
//! | `cnt` | hash | jobs by state: `queued`, `deferred`, `inflight` |
//! | `stats`, `min:<minute>` | hash | counters, and per-minute counters kept for two hours |
//! | `events` | stream | this shard's events, capped with `XADD MAXLEN ~ events_max_len` entries (an entry holds one event, or all events of one batched call) |
//! | `intake:<msg id>`, `intakes` | hash, zset | durable intake records and their age |
//! | `badintakes` | zset | intake records the reaper could not read, kept for an operator (logged as errors) |
//! | `idem:<key>` | string | idempotency key → first message id, 24 h TTL (shard chosen by hashing the key) |
//! | `mat:<msg id>` | string | "this shard materialised that intake" marker, 24 h TTL |
//!
//! # Enqueue atomicity
//!
//! A message whose jobs all fall in one shard and that has no idempotency key is stored by ONE script
//! (`materialise.lua`) with its body: all or none. `enqueue_batch` groups such messages by shard and stores
//! up to 64 of them (or 4 MiB of bodies) per script call; a call is all or none, so every message of it
//! gets the call's result.
//!
//! A message with exactly one job (one destination domain; the common case) keeps its body in the job's
//! data string `jd:<job id>` after its header and envelope (the header's `solo` field is 1): it has no `msg:`
//! or `body:` key, and deleting the job's keys removes everything. Job records are written by plain
//! `SET ... NX PX` in the same pipeline as the script, which keeps (`PERSIST`) those of the jobs it creates; an
//! unkept record expires and counts as no job meanwhile.
//! A message with several jobs stores its body once per shard in `body:<msg>`, with `msg:<msg>` counting
//! the shard's live jobs of it; the last one deletes both. Otherwise the whole message is first written as an
//! intake record into ONE shard (the idempotency key's shard, else the first job's), together with the
//! idempotency key (`intake.lua`); the message is acknowledged once that record is stored (and, with
//! `wait_replicas`, replicated). Each shard's jobs are then materialised by an idempotent script (guarded
//! by the `mat:` marker) and the intake record is dropped. If anything fails in between, the reaper finds
//! intake records older than five seconds and drives them again, so from the client's view the message is
//! stored completely or (if the intake write failed) not at all, and nothing acknowledged is lost.
//!
//! # Events
//!
//! A Redis stream is one key, so each shard has its own stream (one global stream would break the
//! one-slot-per-script rule). [`Queue::read_events`] reads all of them and merges them by time; an
//! [`EventPos`] holds one stream id per shard.
//!
//! Every state change is still one event, but a script that changes many jobs (`materialise.lua`,
//! `complete.lua`) appends all its events as ONE stream entry: the entry's fields are the events' fields
//! one after another, each event starting with `kind` (fields left out take defaults in the entry's first
//! event: the message is the job's, `att` 0, no tags; after it, `ts` and the fields domain, attempt, tags,
//! reply, MX, IP and TLS are the previous event's unless given, an empty value standing for none). `read_events` expands entries into
//! events; a position is a stream id, so an entry is consumed whole (an answer can exceed `max` when its
//! first entry alone holds more events). The i-th event (i ≥ 1) of an entry has the id
//! `sNN/<stream id>/<i>`, the first `sNN/<stream id>`.
//!
//! # Batched completion
//!
//! [`Queue::complete_batch`] records the outcomes of many jobs with one `complete.lua` call per shard (up
//! to 200 jobs per call). Each job is checked (owner, token, repeat) and changed on its own inside the
//! atomic call, exactly as a single `complete` would; the in-flight index, claim slots, counters, stats
//! and events are updated once per call.
//!
//! # Claims, leases and concurrency slots
//!
//! `claim.lua` takes due jobs of one schedule, stamps each with owner, token (the claim id) and lease
//! deadline, and records the claim as one slot of the domain (`slots:<domain>`, scored by deadline).
//! A domain with `limit` live slots is skipped. A slot is freed when every job of the claim has been
//! completed or released, when the reaper returns its jobs, or simply when its deadline passes.
//!
//! A worker that keeps a connection open after its claim ends keeps the slot too, as a **hold**
//! (`hold.lua`: the claim's slot member `<claim>` becomes `h:<claim>`, scored by the hold's deadline, so
//! the claim's last completion no longer frees it). The worker passes its holds to `claim.lua`, which
//! tries held domains first and lets a claim of a held domain take the hold over (the hold's member is
//! replaced by the claim's) without needing a free slot. `unhold.lua` frees a hold when its connection
//! closes; a dead worker's holds lapse at their deadline. So busy and idle connections together never
//! exceed a domain's limit, cluster-wide.

pub(crate) mod codec;
pub(crate) mod conn;
pub(crate) mod keys;
pub(crate) mod scripts;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use redis::{Script, Value};
use tern_core::MessageId;
use tern_core::time::now_ms;

use crate::model::*;
use crate::{Queue, QueueError};
use codec::{IntakePayload, JobSpec};
use conn::{Backend, Conn, is_noscript, redis_error};
use keys::Keys;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// Intake records older than this are driven again by the reaper.
const INTAKE_REDRIVE_AFTER_MS: u64 = 5_000;
/// How long a domain at its concurrency limit stays out of the claim order.
const LIMIT_PUSHBACK_MS: u64 = 250;
/// How many due domains one claim call looks at.
const CLAIM_SCAN: u32 = 32;
/// Jobs per reaper or admin call.
const CHUNK: u32 = 500;
/// The most messages one `materialise.lua` call stores (a batch is split per shard, then into calls of at
/// most this many messages or [`MATERIALISE_MAX_BYTES`] of bodies, so that no call blocks Redis for long).
const MATERIALISE_MAX_MESSAGES: usize = 64;

/// How long job data stored before its `materialise.lua` call lives if no call keeps it (ms).
const UNKEPT_DATA_TTL_MS: u64 = 3_600_000;

/// One `materialise.lua` call: the indexes of its messages, its arguments, and its jobs' data.
struct MaterialiseCall {
    members: Vec<usize>,
    args: Vec<Arg>,
    data: Vec<(tern_core::JobId, Vec<u8>)>,
}
/// The most body bytes one `materialise.lua` call carries (a single bigger message still goes alone).
const MATERIALISE_MAX_BYTES: usize = 4 << 20;
/// The most jobs one `complete.lua` call records.
const COMPLETE_MAX_JOBS: usize = 200;

/// Options of the Redis queue (the `[queue]` configuration section).
#[derive(Clone, Debug)]
pub struct RedisQueueOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS); with `cluster`, a comma-separated
    /// list of seed nodes.
    pub url: String,
    /// Talk Redis Cluster.
    pub cluster: bool,
    /// How many shards domains are spread over (default 16). Fixed for the life of the data.
    pub shards: u16,
    /// The default lease of a claim (default 5 minutes); see [`RedisQueue::default_lease`].
    pub lease: Duration,
    /// The prefix of every key (default `tern`).
    pub key_prefix: String,
    /// Replicas that must acknowledge an enqueue before it returns (Redis `WAIT`; default 0).
    pub wait_replicas: u32,
    /// Claims (connections) per domain at once, cluster-wide, unless overridden (default 10).
    pub default_domain_concurrency: u32,
    /// Approximate cap of each shard's event stream, in stream entries (default 1,000,000); an entry holds
    /// one event, or the events of one batched call.
    pub events_max_len: u64,
    /// Pooled connections (single-server mode; default 16).
    pub pool_size: usize,
    /// Connect timeout (default 2 s).
    pub connect_timeout: Duration,
    /// Reply timeout of one Redis call (default 5 s); every queue call is also bounded by
    /// `connect_timeout + response_timeout` overall, per round trip.
    pub response_timeout: Duration,
}

impl Default for RedisQueueOptions {
    fn default() -> Self {
        RedisQueueOptions {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            shards: 16,
            lease: Duration::from_secs(300),
            key_prefix: "tern".into(),
            wait_replicas: 0,
            default_domain_concurrency: 10,
            events_max_len: 1_000_000,
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// The Redis queue. Cheap to share behind an `Arc`; all methods are safe to call concurrently.
pub struct RedisQueue {
    opts: RedisQueueOptions,
    keys: Keys,
    backend: Backend,
    next_shard: AtomicU64,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("cluster", &self.opts.cluster)
            .field("shards", &self.opts.shards)
            .field("key_prefix", &self.opts.key_prefix)
            .finish()
    }
}

/// A script argument.
type Arg = Vec<u8>;

fn a(v: impl ToString) -> Arg {
    v.to_string().into_bytes()
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisQueue {
    /// Builds the queue. Nothing is connected yet, so this succeeds while Redis is down (calls then return
    /// [`QueueError::Unavailable`] until it is back); only bad options fail.
    pub fn new(opts: RedisQueueOptions) -> Result<RedisQueue, QueueError> {
        if opts.shards == 0 {
            return Err(QueueError::Config("shards must be at least 1".into()));
        }
        if opts.key_prefix.is_empty() || opts.key_prefix.contains(['{', '}']) {
            return Err(QueueError::Config(
                "key_prefix must be non-empty and contain no braces".into(),
            ));
        }
        let backend = Backend::new(
            &opts.url,
            opts.cluster,
            opts.pool_size,
            opts.connect_timeout,
            opts.response_timeout,
        )?;
        Ok(RedisQueue {
            keys: Keys::new(&opts.key_prefix, opts.shards),
            opts,
            backend,
            next_shard: AtomicU64::new(0),
        })
    }

    /// [`RedisQueue::new`], then checks that Redis answers and loads the scripts.
    pub async fn connect(opts: RedisQueueOptions) -> Result<RedisQueue, QueueError> {
        let q = RedisQueue::new(opts)?;
        q.ping().await?;
        q.timed(async {
            let mut conn = q.backend.get().await?;
            for script in scripts::all() {
                script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
            }
            Ok(())
        })
        .await?;
        Ok(q)
    }

    /// The options.
    pub fn options(&self) -> &RedisQueueOptions {
        &self.opts
    }

    /// The lease workers should ask for (the `lease` option).
    pub fn default_lease(&self) -> Duration {
        self.opts.lease
    }

    /// Checks that Redis answers (every master, in a cluster).
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.timed(async {
            let mut conn = self.backend.get().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(redis_error)?;
            Ok(())
        })
        .await
    }

    fn op_timeout(&self) -> Duration {
        self.opts.connect_timeout + self.opts.response_timeout
    }

    /// Bounds a call so that it never hangs.
    async fn timed<T>(&self, fut: impl Future<Output = Result<T, QueueError>>) -> Result<T, QueueError> {
        match tokio::time::timeout(self.op_timeout(), fut).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::Unavailable(format!(
                "redis did not answer within {:?}",
                self.op_timeout()
            ))),
        }
    }

    fn prelude(&self, shard: u16, now: u64) -> Vec<Arg> {
        vec![a(self.keys.tag(shard)), a(now), a(self.opts.events_max_len)]
    }

    /// Runs one script on a shard (EVALSHA, loading the script when Redis does not know it).
    async fn eval(&self, script: &Script, shard: u16, now: u64, args: Vec<Arg>) -> Result<Value, QueueError> {
        self.timed(async {
            let mut conn = self.backend.get().await?;
            eval_on(
                &mut conn,
                script,
                &self.keys,
                shard,
                self.prelude(shard, now),
                args,
            )
            .await
        })
        .await
    }

    /// Runs many calls of one script on one shard as a pipeline, optionally followed by `WAIT`. One result
    /// per call; entries that failed with NOSCRIPT are sent again after loading the script.
    async fn pipeline(
        &self,
        script: &Script,
        shard: u16,
        now: u64,
        calls: Vec<Vec<Arg>>,
        wait: bool,
    ) -> Vec<Result<Value, QueueError>> {
        self.pipeline_after(Vec::new(), script, shard, now, calls, wait)
            .await
    }

    /// [`Self::pipeline`], with the plain commands `pre` (of keys of the same shard) sent first in the same
    /// pipeline, once. Their replies are not looked at (the scripts check what they need), except that an
    /// outage among them (a server out of memory refusing the writes) is what a failed call reports.
    async fn pipeline_after(
        &self,
        pre: Vec<redis::Cmd>,
        script: &Script,
        shard: u16,
        now: u64,
        calls: Vec<Vec<Arg>>,
        wait: bool,
    ) -> Vec<Result<Value, QueueError>> {
        let n = calls.len();
        let res = self
            .timed(async {
                let mut conn = self.backend.get().await?;
                let mut results: Vec<Option<Result<Value, QueueError>>> = vec![None; n];
                let mut todo: Vec<usize> = (0..n).collect();
                let mut pre_outage: Option<QueueError> = None;
                for round in 0..2 {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    let skip = if round == 0 { pre.len() } else { 0 };
                    if round == 0 {
                        for c in &pre {
                            pipe.add_command(c.clone());
                        }
                    }
                    let invocations: Vec<_> = todo
                        .iter()
                        .map(|&i| {
                            let mut inv = script.prepare_invoke();
                            inv.key(self.keys.key(shard, "domains"));
                            for arg in self.prelude(shard, now).iter().chain(calls[i].iter()) {
                                inv.arg(arg.as_slice());
                            }
                            inv
                        })
                        .collect();
                    for inv in &invocations {
                        pipe.invoke_script(inv);
                    }
                    let waiting = wait && self.opts.wait_replicas > 0;
                    if waiting {
                        pipe.cmd("WAIT")
                            .arg(self.opts.wait_replicas)
                            .arg(duration_ms(self.opts.response_timeout));
                    }
                    let values: Vec<Value> = pipe.query_async(&mut conn).await.map_err(redis_error)?;
                    if round == 0 {
                        pre_outage = values.iter().take(skip).find_map(|v| match v {
                            Value::ServerError(e) => {
                                Some(redis_error(e.clone().into())).filter(QueueError::is_unavailable)
                            }
                            _ => None,
                        });
                    }
                    let mut retry = Vec::new();
                    for (pos, &i) in todo.iter().enumerate() {
                        let v = values.get(skip + pos).cloned().unwrap_or(Value::Nil);
                        if round == 0 && is_noscript(&v) {
                            retry.push(i);
                        } else {
                            let r = value_result(v);
                            results[i] = Some(match (&pre_outage, r) {
                                // The call failed for want of what the refused writes would have stored.
                                (Some(outage), Err(_)) => Err(outage.clone()),
                                (_, r) => r,
                            });
                        }
                    }
                    if waiting && let Some(w) = values.get(skip + todo.len()) {
                        let acked = codec::int(w).unwrap_or(0);
                        if acked < i64::from(self.opts.wait_replicas) {
                            let err = QueueError::Unavailable(format!(
                                "only {acked} of {} replicas acknowledged the write",
                                self.opts.wait_replicas
                            ));
                            for r in results.iter_mut().flatten() {
                                if r.is_ok() {
                                    *r = Err(err.clone());
                                }
                            }
                        }
                    }
                    if retry.is_empty() {
                        break;
                    }
                    script
                        .prepare_invoke()
                        .load_async(&mut conn)
                        .await
                        .map_err(redis_error)?;
                    todo = retry;
                }
                Ok(results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(QueueError::Backend("script not loaded".into()))))
                    .collect::<Vec<_>>())
            })
            .await;
        match res {
            Ok(v) => v,
            Err(e) => vec![Err(e); n],
        }
    }

    /// Runs a plain command on a shard's connection.
    async fn cmd(&self, cmd: redis::Cmd) -> Result<Value, QueueError> {
        self.timed(async {
            let mut conn = self.backend.get().await?;
            cmd.query_async::<Value>(&mut conn).await.map_err(redis_error)
        })
        .await
    }

    /// The data `jd:<id>` of each claimed job (`entries` from `claim.lua`: an id, or a field list starting
    /// with the id), and `body:<msg>` for a job whose message has several (None for a solo job), with one
    /// MGET: long strings cost far less in a plain command than through a script. The jobs are in flight for
    /// this claim, so nothing else changes them meanwhile (an operator's delete aside: its job's data is empty
    /// and its completion reports it gone).
    async fn claimed_data(
        &self,
        shard: u16,
        entries: &[Value],
    ) -> Result<Vec<(Bytes, Option<Bytes>)>, QueueError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("MGET");
        for e in entries {
            let id = match e {
                Value::BulkString(id) => String::from_utf8_lossy(id).into_owned(),
                other => codec::items(other)
                    .first()
                    .and_then(codec::text)
                    .unwrap_or_default(),
            };
            let msg = id.rsplit_once('.').map_or(id.as_str(), |(m, _)| m);
            c.arg(self.keys.key(shard, &format!("jd:{id}")));
            c.arg(self.keys.key(shard, &format!("body:{msg}")));
        }
        let v = self.cmd(c).await?;
        Ok(codec::items(&v)
            .chunks(2)
            .map(|pair| {
                let data = pair.first().and_then(codec::bytes).unwrap_or_default();
                let body = pair.get(1).and_then(codec::bytes);
                (Bytes::from(data), body.map(Bytes::from))
            })
            .collect())
    }

    /// Runs `f` on every shard concurrently.
    async fn on_all_shards<T, F, Fut>(&self, f: F) -> Result<Vec<T>, QueueError>
    where
        F: Fn(u16) -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        join_all((0..self.keys.shards()).map(f))
            .await
            .into_iter()
            .collect()
    }

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
        let tags_json = codec::tags_json(&payload)?;
        let sender = codec::sender_of(&payload);
        let specs = codec::job_specs(&payload)?;
        Ok(Prepared {
            payload,
            body: msg.body,
            idempotency_key: msg.idempotency_key,
            specs,
            tags_json,
            sender,
        })
    }

    /// The jobs of a message grouped by shard.
    fn by_shard<'a>(&self, specs: &'a [JobSpec]) -> BTreeMap<u16, Vec<&'a JobSpec>> {
        let mut m: BTreeMap<u16, Vec<&JobSpec>> = BTreeMap::new();
        for s in specs {
            m.entry(self.keys.shard_of_domain(&s.domain)).or_default().push(s);
        }
        m
    }

    /// Appends one message's block of `materialise.lua` arguments (the jobs of it that live in one shard),
    /// and its jobs' data to `data` (stored by plain commands before the script runs; see [`Self::data_sets`]).
    fn push_message_args(
        args: &mut Vec<Arg>,
        data_out: &mut Vec<(tern_core::JobId, Vec<u8>)>,
        p: &Prepared,
        jobs: &[&JobSpec],
    ) {
        args.reserve(7 + jobs.len() * 5);
        // A message with one job in all keeps its body inline in that job: its data (header, envelope,
        // body) is joined here rather than in the script, and the body argument is left empty.
        let solo = p.specs.len() == 1;
        args.push(a(p.payload.id));
        args.push(if solo { Vec::new() } else { p.body.to_vec() });
        args.push(p.sender.as_bytes().to_vec());
        args.push(a(p.payload.created_ms));
        args.push(p.tags_json.as_bytes().to_vec());
        args.push(a(if solo { "1" } else { "0" }));
        args.push(a(jobs.len()));
        for j in jobs {
            // The job's data: its header (the job in the string form), the envelope, and the body of a solo
            // message.
            let mut data = codec::job_header(j, &p.payload, &p.sender, &p.tags_json, solo);
            data.reserve(j.env_json.len() + 2 + if solo { p.body.len() } else { 0 });
            data.push(b'\n');
            data.extend_from_slice(j.env_json.as_bytes());
            if solo {
                data.push(b'\n');
                data.extend_from_slice(&p.body);
            }
            args.extend([
                a(j.id),
                j.domain.as_bytes().to_vec(),
                a(j.due_ms),
                a(j.recipients),
                j.rcpt_list.as_bytes().to_vec(),
            ]);
            data_out.push((j.id, data));
        }
    }

    /// The `materialise.lua` calls that store `messages` (each with its jobs of one shard): as few calls as
    /// the per-call limits allow; each call lists the indexes (into `messages`) it carries.
    fn materialise_calls(messages: &[(&Prepared, Vec<&JobSpec>)], mark: bool) -> Vec<MaterialiseCall> {
        let mut calls = Vec::new();
        let mut start = 0;
        while start < messages.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < messages.len()
                && end - start < MATERIALISE_MAX_MESSAGES
                && (end == start || bytes + messages[end].0.body.len() <= MATERIALISE_MAX_BYTES)
            {
                bytes += messages[end].0.body.len();
                end += 1;
            }
            let mut args = vec![a(if mark { "1" } else { "0" }), a(end - start)];
            let mut data = Vec::new();
            for (p, jobs) in &messages[start..end] {
                Self::push_message_args(&mut args, &mut data, p, jobs);
            }
            calls.push(MaterialiseCall {
                members: (start..end).collect(),
                args,
                data,
            });
            start = end;
        }
        calls
    }

    /// Runs `materialise.lua` calls on one shard: first, in the same pipeline, one plain
    /// `SET jd:<id> <data> NX PX <ttl>` per job (a long string costs far less in a plain command than through
    /// a script), then the scripts, which keep (`PERSIST`) the data of the jobs they create. Data that no
    /// script kept (a failed call, or a re-drive of a message whose jobs already ended) expires by itself.
    /// One result per call, with the call's members.
    async fn materialise(
        &self,
        shard: u16,
        now: u64,
        calls: Vec<MaterialiseCall>,
        wait: bool,
    ) -> Vec<(Vec<usize>, Result<Value, QueueError>)> {
        let mut pre = Vec::new();
        let mut members = Vec::with_capacity(calls.len());
        let mut args = Vec::with_capacity(calls.len());
        for call in calls {
            for (id, data) in call.data {
                let mut c = redis::cmd("SET");
                c.arg(self.keys.key(shard, &format!("jd:{id}")))
                    .arg(data)
                    .arg("NX")
                    .arg("PX")
                    .arg(UNKEPT_DATA_TTL_MS);
                pre.push(c);
            }
            members.push(call.members);
            args.push(call.args);
        }
        let res = self
            .pipeline_after(pre, &scripts::MATERIALISE, shard, now, args, wait)
            .await;
        members.into_iter().zip(res).collect()
    }

    fn intake_shard(&self, p: &Prepared) -> u16 {
        match &p.idempotency_key {
            Some(k) => self.keys.shard_of_idempotency_key(k),
            None => p
                .specs
                .first()
                .map_or(0, |s| self.keys.shard_of_domain(&s.domain)),
        }
    }

    fn receipt(p: &Prepared) -> EnqueueReceipt {
        EnqueueReceipt {
            message: p.payload.id,
            jobs: p.specs.iter().map(|s| (s.id, s.domain.clone())).collect(),
            duplicate: false,
        }
    }

    /// Materialises every shard's jobs of intake-path messages, then drops their intake records. Failures
    /// are logged only: the intake records stay and the reaper drives them again.
    async fn materialise_intakes(&self, prepared: &[&Prepared], now: u64) {
        let mut per_shard: BTreeMap<u16, Vec<(&Prepared, Vec<&JobSpec>)>> = BTreeMap::new();
        for p in prepared {
            for (shard, jobs) in self.by_shard(&p.specs) {
                per_shard.entry(shard).or_default().push((p, jobs));
            }
        }
        let results = join_all(per_shard.into_iter().map(|(shard, msgs)| async move {
            let calls = Self::materialise_calls(&msgs, true);
            self.materialise(shard, now, calls, false).await
        }))
        .await;
        if let Some(e) = results.iter().flatten().find_map(|(_, r)| r.as_ref().err()) {
            tracing::warn!(error = %e, "materialising queued messages failed; the reaper will finish them");
            return;
        }
        let mut done: BTreeMap<u16, Vec<Vec<Arg>>> = BTreeMap::new();
        for p in prepared {
            done.entry(self.intake_shard(p))
                .or_default()
                .push(vec![a(p.payload.id)]);
        }
        let results = join_all(done.into_iter().map(|(shard, calls)| async move {
            self.pipeline(&scripts::INTAKE_DONE, shard, now, calls, false)
                .await
        }))
        .await;
        if let Some(e) = results.iter().flatten().find_map(|r| r.as_ref().err()) {
            tracing::warn!(error = %e, "dropping intake records failed; the reaper will drop them");
        }
    }

    /// Drives intake records older than a few seconds again (an enqueue was interrupted after its
    /// acknowledgement). Returns how many were finished. One record that fails is logged and left for the
    /// next pass; an outage ends the pass.
    async fn redrive_intakes(&self, now: u64) -> Result<u64, QueueError> {
        let mut total = 0;
        for shard in 0..self.keys.shards() {
            let mut c = redis::cmd("ZRANGEBYSCORE");
            c.arg(self.keys.key(shard, "intakes"))
                .arg("-inf")
                .arg(now.saturating_sub(INTAKE_REDRIVE_AFTER_MS))
                .arg("LIMIT")
                .arg(0)
                .arg(100);
            let ids: Vec<String> = codec::items(&self.cmd(c).await?)
                .iter()
                .filter_map(codec::text)
                .collect();
            for id in ids {
                match self.redrive_intake(shard, &id, now).await {
                    Ok(true) => total += 1,
                    Ok(false) => {}
                    Err(e) if e.is_unavailable() => return Err(e),
                    Err(e) => {
                        tracing::warn!(message = %id, shard, error = %e, "re-driving an interrupted enqueue failed; next pass tries again");
                    }
                }
            }
        }
        Ok(total)
    }

    /// Re-drives one intake record; whether it finished an enqueue.
    async fn redrive_intake(&self, shard: u16, id: &str, now: u64) -> Result<bool, QueueError> {
        let mut c = redis::cmd("HGETALL");
        c.arg(self.keys.key(shard, &format!("intake:{id}")));
        let v = self.cmd(c).await?;
        let fields = codec::items(&v);
        if fields.is_empty() {
            // Dropped since it was listed (its enqueue finished meanwhile): only the index entry is left.
            let mut c = redis::cmd("ZREM");
            c.arg(self.keys.key(shard, "intakes")).arg(id);
            self.cmd(c).await?;
            return Ok(false);
        }
        let (mut payload, mut body) = (None, Vec::new());
        for pair in fields.chunks(2) {
            if let [k, val] = pair {
                match codec::text(k).as_deref() {
                    Some("p") => payload = codec::text(val),
                    Some("b") => body = codec::bytes(val).unwrap_or_default(),
                    _ => {}
                }
            }
        }
        let Some(payload) = payload.and_then(|p| serde_json::from_str::<IntakePayload>(&p).ok()) else {
            // An acknowledged message that cannot be read: kept for an operator, out of the re-drive index
            // (where it would be tried on every pass), in `badintakes`.
            tracing::error!(message = %id, shard, "unreadable intake record; moved to badintakes for an operator");
            // Listed there first: should the second step fail, the next pass moves it again.
            let mut c = redis::cmd("ZADD");
            c.arg(self.keys.key(shard, "badintakes")).arg(now).arg(id);
            self.cmd(c).await?;
            let mut c = redis::cmd("ZREM");
            c.arg(self.keys.key(shard, "intakes")).arg(id);
            self.cmd(c).await?;
            return Ok(false);
        };
        let tags_json = codec::tags_json(&payload)?;
        let sender = codec::sender_of(&payload);
        let specs = codec::job_specs(&payload)?;
        let p = Prepared {
            payload,
            body: Bytes::from(body),
            idempotency_key: None,
            specs,
            tags_json,
            sender,
        };
        for (s, jobs) in self.by_shard(&p.specs) {
            let calls = Self::materialise_calls(&[(&p, jobs)], true);
            for (_, r) in self.materialise(s, now, calls, false).await {
                r?;
            }
        }
        self.eval(&scripts::INTAKE_DONE, shard, now, vec![a(id)]).await?;
        tracing::info!(message = %id, "finished an interrupted enqueue");
        Ok(true)
    }

    async fn admin(&self, action: &str, target: &Target) -> Result<u64, QueueError> {
        let now = now_ms();
        match target {
            Target::Job(id) => {
                let counts = self
                    .on_all_shards(|shard| async move {
                        let v = self
                            .eval(
                                &scripts::ADMIN,
                                shard,
                                now,
                                vec![a(action), a("id"), a(id), a(CHUNK)],
                            )
                            .await?;
                        Ok(codec::items(&v).first().and_then(codec::int).unwrap_or(0))
                    })
                    .await?;
                Ok(counts.into_iter().sum::<i64>().max(0) as u64)
            }
            Target::Message(m) => {
                let Some(info) = self.get_message(*m).await? else {
                    return Ok(0);
                };
                let mut n = 0;
                for job in info.jobs {
                    let shard = self.keys.shard_of_domain(&job.domain);
                    let v = self
                        .eval(
                            &scripts::ADMIN,
                            shard,
                            now,
                            vec![a(action), a("id"), a(job.id), a(CHUNK)],
                        )
                        .await?;
                    n += codec::items(&v).first().and_then(codec::int).unwrap_or(0).max(0) as u64;
                }
                Ok(n)
            }
            Target::Domain(d) => {
                let d = d.to_ascii_lowercase();
                let shard = self.keys.shard_of_domain(&d);
                let mut n = 0;
                loop {
                    let v = self
                        .eval(
                            &scripts::ADMIN,
                            shard,
                            now_ms(),
                            vec![a(action), a("domain"), a(&d), a(CHUNK)],
                        )
                        .await?;
                    let it = codec::items(&v);
                    n += it.first().and_then(codec::int).unwrap_or(0).max(0) as u64;
                    if it.get(1).and_then(codec::int).unwrap_or(0) < i64::from(CHUNK) {
                        return Ok(n);
                    }
                }
            }
        }
    }

    fn parse_depth(rec: &[Value]) -> Option<DomainDepth> {
        let [d, waiting, due, total, earliest, active, limit, susp] = rec else {
            return None;
        };
        let domain = codec::text(d)?;
        let int = |v: &Value| codec::int(v).unwrap_or(0);
        let suspension = codec::text(susp).filter(|s| !s.is_empty()).and_then(|s| {
            serde_json::from_str::<Suspension>(&s).ok().map(|mut x| {
                x.domain = domain.clone();
                x
            })
        });
        Some(DomainDepth {
            waiting: int(waiting).max(0) as u64,
            due: int(due).max(0) as u64,
            total: int(total).max(0) as u64,
            earliest_due_ms: u64::try_from(int(earliest)).ok(),
            active_claims: int(active).max(0) as u64,
            concurrency_limit: u32::try_from(int(limit)).ok(),
            suspension,
            domain,
        })
    }
}

/// A message ready to store.
struct Prepared {
    payload: IntakePayload,
    body: Bytes,
    idempotency_key: Option<String>,
    specs: Vec<JobSpec>,
    /// The tags as stored (JSON).
    tags_json: String,
    /// The lower-cased sender address.
    sender: String,
}

async fn eval_on(
    conn: &mut Conn,
    script: &Script,
    keys: &Keys,
    shard: u16,
    prelude: Vec<Arg>,
    args: Vec<Arg>,
) -> Result<Value, QueueError> {
    let mut inv = script.prepare_invoke();
    inv.key(keys.key(shard, "domains"));
    for arg in prelude.iter().chain(args.iter()) {
        inv.arg(arg.as_slice());
    }
    inv.invoke_async::<Value>(conn).await.map_err(redis_error)
}

fn value_result(v: Value) -> Result<Value, QueueError> {
    match v {
        Value::ServerError(e) => Err(redis_error(e.into())),
        other => Ok(other),
    }
}

/// The arguments of one job in a `complete.lua` call (after owner and count).
/// Splits `data` at its first newline (the rest is empty when there is none).
fn split_line(data: Bytes) -> (Bytes, Bytes) {
    match data.iter().position(|c| *c == b'\n') {
        Some(p) => (data.slice(..p), data.slice(p + 1..)),
        None => (data, Bytes::new()),
    }
}

fn complete_args(job: &JobLease, outcome: Outcome) -> Result<Vec<Arg>, QueueError> {
    let (kind, retry) = match outcome.kind {
        OutcomeKind::Delivered => ("delivered", String::new()),
        OutcomeKind::Deferred { until_ms } => ("deferred", until_ms.to_string()),
        OutcomeKind::Failed => ("failed", String::new()),
        OutcomeKind::Expired => ("expired", String::new()),
    };
    if retry.is_empty()
        && outcome
            .recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Pending)
    {
        return Err(QueueError::InvalidOutcome(
            "recipients left pending need a deferred outcome with a retry time".into(),
        ));
    }
    let attempt = outcome.attempt.unwrap_or_default();
    let mut args = Vec::with_capacity(9 + 3 * outcome.recipients.len());
    args.extend([
        a(job.job),
        job.token.as_bytes().to_vec(),
        a(kind),
        a(retry),
        outcome.reply.unwrap_or_default().into_bytes(),
        attempt.remote_mx.unwrap_or_default().into_bytes(),
        attempt.remote_ip.unwrap_or_default().into_bytes(),
        attempt.tls.unwrap_or_default().into_bytes(),
        a(outcome.recipients.len()),
    ]);
    for r in outcome.recipients {
        let st = match r.status {
            RecipientStatus::Delivered => "d",
            RecipientStatus::Pending => "p",
            RecipientStatus::Failed => "f",
        };
        args.extend([a(r.index), a(st), r.reply.unwrap_or_default().into_bytes()]);
    }
    Ok(args)
}

/// One job's reply of `complete.lua`.
fn completion(v: &Value, job: tern_core::JobId) -> Result<Completion, QueueError> {
    match status(v).as_str() {
        "finished" => Ok(Completion::Finished),
        "deferred" => Ok(Completion::Deferred {
            next_attempt_ms: codec::items(v).get(1).and_then(codec::int).unwrap_or(0).max(0) as u64,
        }),
        "dup" => Ok(Completion::AlreadyDone),
        "gone" => Ok(Completion::Gone),
        "notowner" => Err(QueueError::NotOwner { job }),
        other => Err(QueueError::Backend(format!(
            "unexpected complete reply {other:?}"
        ))),
    }
}

fn status(v: &Value) -> String {
    codec::items(v).first().and_then(codec::text).unwrap_or_default()
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue(&self, message: NewMessage) -> Result<EnqueueReceipt, QueueError> {
        self.enqueue_batch(vec![message])
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(QueueError::Backend("no result".into())))
    }

    async fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<EnqueueReceipt, QueueError>> {
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
        // Fast path: one shard, no idempotency key: one script stores everything.
        // Intake path: intake record first (the acknowledgement), then the jobs shard by shard.
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
        let fast_runs = fast.into_iter().map(|(shard, idx)| {
            let msgs: Vec<(&Prepared, Vec<&JobSpec>)> = idx
                .iter()
                .filter_map(|&i| prepared[i].as_ref())
                .map(|p| (p, p.specs.iter().collect()))
                .collect();
            let calls = Self::materialise_calls(&msgs, false);
            async move {
                let res = self.materialise(shard, now, calls, true).await;
                // One result per call, for every message of the call (a call is all or nothing).
                let mut out = Vec::with_capacity(idx.len());
                for (m, r) in res {
                    for k in m {
                        out.push((idx[k], r.clone()));
                    }
                }
                out
            }
        });
        let intake_runs = intake.into_iter().map(|(shard, idx)| {
            let calls = idx
                .iter()
                .filter_map(|&i| prepared[i].as_ref())
                .map(|p| {
                    let payload = serde_json::to_string(&p.payload).unwrap_or_default();
                    vec![
                        a(p.payload.id),
                        a(payload),
                        p.body.to_vec(),
                        a(p.idempotency_key.as_deref().unwrap_or("")),
                        a(IDEMPOTENCY_TTL_SECS),
                    ]
                })
                .collect();
            async move {
                (
                    idx,
                    self.pipeline(&scripts::INTAKE, shard, now, calls, true).await,
                )
            }
        });
        let (fast_done, intake_done) = futures::join!(join_all(fast_runs), join_all(intake_runs));
        for res in fast_done {
            for (i, r) in res {
                let receipt = prepared[i].as_ref().map(Self::receipt);
                results[i] =
                    Some(r.and_then(|_| receipt.ok_or_else(|| QueueError::Backend("lost message".into()))));
            }
        }
        let mut to_materialise = Vec::new();
        for (idx, res) in intake_done {
            for (i, r) in idx.into_iter().zip(res) {
                let Some(p) = prepared[i].as_ref() else { continue };
                results[i] = Some(r.and_then(|v| {
                    let it = codec::items(&v);
                    match (
                        it.first().and_then(codec::text).as_deref(),
                        it.get(1).and_then(codec::text),
                    ) {
                        (Some("dup"), Some(first)) => Ok(EnqueueReceipt {
                            message: first
                                .parse()
                                .map_err(|_| QueueError::Corrupt(format!("idempotency record {first:?}")))?,
                            jobs: Vec::new(),
                            duplicate: true,
                        }),
                        (Some("ok"), _) => {
                            to_materialise.push(p);
                            Ok(Self::receipt(p))
                        }
                        _ => Err(QueueError::Backend(format!("unexpected intake reply {v:?}"))),
                    }
                }));
            }
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

    async fn claim_holding(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<Option<Claim>, QueueError> {
        let shards = self.keys.shards();
        let start = (self.next_shard.load(Ordering::Relaxed) % u64::from(shards)) as u16;
        let claim_id = ulid::Ulid::generate().to_string();
        // First the held domains alone (scan 0), shard by shard, so that an idle connection is used before
        // any other domain is taken; then every shard in turn, the usual way.
        let rotation = (0..shards).map(|i| (start + i) % shards);
        let held_first = rotation
            .clone()
            .filter(|s| holds.iter().any(|h| self.keys.shard_of_domain(&h.domain) == *s))
            .map(|s| (s, 0));
        let visits: Vec<(u16, u32)> = held_first.chain(rotation.map(|s| (s, CLAIM_SCAN))).collect();
        for (shard, scan) in visits {
            let mut args = vec![
                a(owner),
                a(max_batch.max(1)),
                a(duration_ms(lease).max(1)),
                a(self.opts.default_domain_concurrency),
                a(&claim_id),
                a(scan),
                a(LIMIT_PUSHBACK_MS),
            ];
            // Only this shard's holds; the first hold of a domain stands for the domain (one claim takes
            // over one hold).
            let mine: Vec<&SlotHold> = holds
                .iter()
                .filter(|h| self.keys.shard_of_domain(&h.domain) == shard)
                .collect();
            args.push(a(mine.len()));
            for h in mine {
                args.push(a(&h.domain));
                args.push(a(&h.id));
            }
            let v = match self.eval(&scripts::CLAIM, shard, now_ms(), args).await {
                Ok(v) => v,
                Err(e) => {
                    // Fail fast (a dead server would otherwise cost one timeout per shard), but start the
                    // next claim at the following shard, so that one dead cluster node does not stop work
                    // on the shards the other nodes hold.
                    self.next_shard.store(u64::from(shard) + 1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let it = codec::items(&v);
            if it.len() < 4 {
                continue;
            }
            let domain = codec::text(&it[0]).unwrap_or_default();
            let lease_until_ms = codec::int(&it[2]).unwrap_or(0).max(0) as u64;
            let took_hold = codec::text(&it[3]).filter(|h| !h.is_empty());
            let entries = &it[4..];
            let data = self.claimed_data(shard, entries).await?;
            let mut jobs = Vec::new();
            for (fields, (data, body)) in entries.iter().zip(data) {
                if data.is_empty() {
                    // Deleted by an operator since the claim (which took it out of flight).
                    continue;
                }
                // A job's data is its header line, its envelope, and for a solo job the body after another
                // newline; otherwise the body is the message's shared one.
                let (header, rest) = split_line(data);
                let (env, body) = match body {
                    Some(b) => (rest, b),
                    None => split_line(rest),
                };
                // A job in the string form comes as its id alone, and is read from its header.
                let job = match fields {
                    Value::BulkString(id) => {
                        codec::header_job(id, &header, &env, &domain, owner, lease_until_ms)?
                    }
                    other => codec::claimed_job(codec::items(other), &env, &domain, owner, lease_until_ms)?,
                };
                let lease = JobLease {
                    job: job.id,
                    domain: job.domain.clone(),
                    token: claim_id.clone(),
                };
                jobs.push(ClaimedJob { body, job, lease });
            }
            // The next claim of this node starts at the following shard, so that shards (and the domains in
            // them) take turns whatever the gaps between non-empty shards.
            if scan > 0 {
                self.next_shard.store(u64::from(shard) + 1, Ordering::Relaxed);
            }
            tracing::debug!(owner, domain = %domain, jobs = jobs.len(), shard, "claimed");
            return Ok(Some(Claim {
                domain,
                claim_id,
                lease_until_ms,
                jobs,
                took_hold,
            }));
        }
        Ok(None)
    }

    async fn hold_slot(
        &self,
        domain: &str,
        claim_id: &str,
        hold: Duration,
    ) -> Result<Option<SlotHold>, QueueError> {
        let shard = self.keys.shard_of_domain(domain);
        let args = vec![
            a(domain),
            a(claim_id),
            a(duration_ms(hold).max(1)),
            a(self.opts.default_domain_concurrency),
        ];
        let v = self.eval(&scripts::HOLD, shard, now_ms(), args).await?;
        let it = codec::items(&v);
        let (Some(id), Some(until)) = (it.first().and_then(codec::text), it.get(1).and_then(codec::int))
        else {
            return Ok(None);
        };
        Ok(Some(SlotHold {
            domain: domain.to_string(),
            id,
            until_ms: until.max(0) as u64,
        }))
    }

    async fn drop_slot(&self, hold: &SlotHold) -> Result<(), QueueError> {
        let shard = self.keys.shard_of_domain(&hold.domain);
        self.eval(
            &scripts::UNHOLD,
            shard,
            now_ms(),
            vec![a(&hold.domain), a(&hold.id)],
        )
        .await?;
        Ok(())
    }

    async fn complete(
        &self,
        owner: &str,
        job: &JobLease,
        outcome: Outcome,
    ) -> Result<Completion, QueueError> {
        self.complete_batch(owner, vec![(job.clone(), outcome)])
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(QueueError::Backend("no result".into())))
    }

    async fn complete_batch(
        &self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
    ) -> Vec<Result<Completion, QueueError>> {
        let n = jobs.len();
        let mut results: Vec<Option<Result<Completion, QueueError>>> = vec![None; n];
        // Per shard: the jobs' positions and their script arguments.
        let mut per_shard: BTreeMap<u16, Vec<(usize, Vec<Arg>)>> = BTreeMap::new();
        let mut leases = Vec::with_capacity(n);
        for (i, (lease, outcome)) in jobs.into_iter().enumerate() {
            match complete_args(&lease, outcome) {
                Ok(args) => per_shard
                    .entry(self.keys.shard_of_domain(&lease.domain))
                    .or_default()
                    .push((i, args)),
                Err(e) => results[i] = Some(Err(e)),
            }
            leases.push(lease);
        }
        let now = now_ms();
        let runs = per_shard.into_iter().map(|(shard, list)| async move {
            let mut members = Vec::new();
            let mut calls = Vec::new();
            for chunk in list.chunks(COMPLETE_MAX_JOBS) {
                let mut args = Vec::with_capacity(2 + chunk.iter().map(|(_, a)| a.len()).sum::<usize>());
                args.push(a(owner));
                args.push(a(chunk.len()));
                // A job whose attempt details (token, kind, retry, reply, MX, IP, TLS: the arguments after
                // its id) are the previous job's sends "=" instead (the jobs of one claim usually share them).
                let mut prev: Option<&[Arg]> = None;
                for (_, job_args) in chunk {
                    let (id, rest) = job_args.split_at(job_args.len().min(1));
                    let (details, results) = rest.split_at(rest.len().min(7));
                    args.extend(id.iter().cloned());
                    if prev == Some(details) {
                        args.push(a("="));
                    } else {
                        args.extend(details.iter().cloned());
                    }
                    args.extend(results.iter().cloned());
                    prev = Some(details);
                }
                members.push(chunk.iter().map(|(i, _)| *i).collect::<Vec<_>>());
                calls.push(args);
            }
            let res = self.pipeline(&scripts::COMPLETE, shard, now, calls, false).await;
            members.into_iter().zip(res).collect::<Vec<_>>()
        });
        for (members, res) in join_all(runs).await.into_iter().flatten() {
            match res {
                Ok(v) => {
                    let replies = codec::items(&v);
                    for (k, i) in members.into_iter().enumerate() {
                        let job = leases[i].job;
                        results[i] = Some(match replies.get(k) {
                            Some(r) => completion(r, job),
                            None => Err(QueueError::Backend(format!(
                                "missing complete reply for job {job}"
                            ))),
                        });
                    }
                }
                Err(e) => {
                    for i in members {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(QueueError::Backend("no result".into()))))
            .collect()
    }

    async fn extend(&self, owner: &str, job: &JobLease, lease: Duration) -> Result<u64, QueueError> {
        let shard = self.keys.shard_of_domain(&job.domain);
        let args = vec![a(job.job), a(owner), a(&job.token), a(duration_ms(lease).max(1))];
        let v = self.eval(&scripts::EXTEND, shard, now_ms(), args).await?;
        match status(&v).as_str() {
            "ok" => Ok(codec::items(&v).get(1).and_then(codec::int).unwrap_or(0).max(0) as u64),
            "gone" => Err(QueueError::NotFound(format!("job {}", job.job))),
            _ => Err(QueueError::NotOwner { job: job.job }),
        }
    }

    async fn release(&self, owner: &str, job: &JobLease) -> Result<(), QueueError> {
        let shard = self.keys.shard_of_domain(&job.domain);
        let v = self
            .eval(
                &scripts::RELEASE,
                shard,
                now_ms(),
                vec![a(job.job), a(owner), a(&job.token)],
            )
            .await?;
        match status(&v).as_str() {
            "ok" | "dup" => Ok(()),
            "gone" => Err(QueueError::NotFound(format!("job {}", job.job))),
            _ => Err(QueueError::NotOwner { job: job.job }),
        }
    }

    async fn reap(&self, now: u64) -> Result<u64, QueueError> {
        let counts = self
            .on_all_shards(|shard| async move {
                let mut n = 0u64;
                loop {
                    let v = self.eval(&scripts::REAP, shard, now, vec![a(CHUNK)]).await?;
                    let got = codec::items(&v).first().and_then(codec::int).unwrap_or(0).max(0) as u64;
                    n += got;
                    if got < u64::from(CHUNK) {
                        return Ok(n);
                    }
                }
            })
            .await?;
        let reaped: u64 = counts.into_iter().sum();
        let redriven = self.redrive_intakes(now).await?;
        if reaped > 0 || redriven > 0 {
            tracing::info!(lease_expired = reaped, intakes = redriven, "reaped");
        }
        Ok(reaped)
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageInfo>, QueueError> {
        let now = now_ms();
        let parts = self
            .on_all_shards(|shard| async move {
                self.eval(&scripts::READ, shard, now, vec![a("message"), a(id)])
                    .await
            })
            .await?;
        let mut found = false;
        let mut body_size = 0;
        let mut jobs = Vec::new();
        for v in parts {
            let it = codec::items(&v);
            let Some(size) = it.first() else { continue };
            found = true;
            body_size = body_size.max(codec::int(size).unwrap_or(0).max(0) as u64);
            for f in &it[1..] {
                jobs.push(codec::job_from_fields(&codec::fields(f))?);
            }
        }
        if !found {
            return Ok(None);
        }
        jobs.sort_by_key(|j| j.id.index);
        Ok(Some(MessageInfo { id, body_size, jobs }))
    }

    async fn read_body(&self, id: MessageId) -> Result<Option<Bytes>, QueueError> {
        let now = now_ms();
        // A message's body lives in each shard that holds one of its jobs; any copy will do.
        let parts = self
            .on_all_shards(|shard| async move {
                self.eval(&scripts::READ, shard, now, vec![a("body"), a(id)])
                    .await
            })
            .await?;
        Ok(parts.into_iter().find_map(|v| match v {
            Value::BulkString(b) => Some(Bytes::from(b)),
            _ => None,
        }))
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError> {
        let limit = limit.max(1);
        let domain = filter.domain.as_ref().map(|d| d.to_ascii_lowercase());
        let shards: Vec<u16> = match &domain {
            Some(d) => vec![self.keys.shard_of_domain(d)],
            None => (0..self.keys.shards()).collect(),
        };
        let (mut pos, mut after) = match &cursor {
            Some(Cursor(c)) => {
                let (s, id) = c
                    .split_once('/')
                    .ok_or_else(|| QueueError::InvalidMessage(format!("bad cursor {c:?}")))?;
                let s: u16 = s
                    .parse()
                    .map_err(|_| QueueError::InvalidMessage(format!("bad cursor {c:?}")))?;
                (
                    shards.iter().position(|x| *x == s).unwrap_or(shards.len()),
                    id.to_string(),
                )
            }
            None => (0, String::new()),
        };
        let mut items = Vec::new();
        let scan = 500usize;
        let mut calls = 0;
        while pos < shards.len() {
            let shard = shards[pos];
            let args = vec![
                a("page"),
                a(&after),
                a(scan),
                a(domain.as_deref().unwrap_or("")),
                a(filter.state.map(|s| s.as_str()).unwrap_or("")),
                a(filter.sender.as_deref().unwrap_or("").to_ascii_lowercase()),
                a(filter.recipient.as_deref().unwrap_or("").to_ascii_lowercase()),
            ];
            let v = self.eval(&scripts::READ, shard, now_ms(), args).await?;
            calls += 1;
            let it = codec::items(&v);
            let last = it.first().and_then(codec::text).unwrap_or_default();
            let done = it.get(1).and_then(codec::text).as_deref() == Some("1");
            for f in it.iter().skip(2) {
                let job = codec::job_from_fields(&codec::fields(f))?;
                items.push(job);
                if items.len() == limit {
                    let next = Cursor(format!("{shard}/{}", items[limit - 1].id));
                    return Ok(Page {
                        items,
                        next: Some(next),
                    });
                }
            }
            if done {
                pos += 1;
                after.clear();
            } else {
                after = last;
            }
            if calls >= 20 && pos < shards.len() {
                let next = Cursor(format!("{}/{}", shards[pos], after));
                return Ok(Page {
                    items,
                    next: Some(next),
                });
            }
        }
        Ok(Page { items, next: None })
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let now = now_ms();
        let parts = self
            .on_all_shards(
                |shard| async move { self.eval(&scripts::READ, shard, now, vec![a("counts")]).await },
            )
            .await?;
        let mut c = QueueCounts::default();
        for v in parts {
            let items = codec::items(&v);
            let n: Vec<i64> = items.iter().take(7).map(|x| codec::int(x).unwrap_or(0)).collect();
            let [queued, deferred, inflight, total, oldest, bounce, susp] = n[..] else {
                return Err(QueueError::Backend(format!("unexpected counts reply {v:?}")));
            };
            let first_message = items
                .get(7)
                .and_then(codec::text)
                .and_then(|id| id.split('.').next().and_then(|m| m.parse::<MessageId>().ok()));
            if let Some(m) = first_message {
                let t = m.timestamp_ms();
                c.oldest_message_ms = Some(c.oldest_message_ms.map_or(t, |x| x.min(t)));
            }
            c.queued += queued.max(0) as u64;
            c.deferred += deferred.max(0) as u64;
            c.in_flight += inflight.max(0) as u64;
            c.total += total.max(0) as u64;
            c.bounce_pending += bounce.max(0) as u64;
            c.suspended_domains += susp.max(0) as u64;
            if let Ok(o) = u64::try_from(oldest) {
                c.oldest_due_ms = Some(c.oldest_due_ms.map_or(o, |x| x.min(o)));
            }
        }
        Ok(c)
    }

    async fn domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError> {
        let now = now_ms();
        let parts = self
            .on_all_shards(|shard| async move {
                self.eval(&scripts::READ, shard, now, vec![a("depths"), a("")])
                    .await
            })
            .await?;
        let mut out: Vec<DomainDepth> = parts
            .iter()
            .flat_map(|v| {
                codec::items(v)
                    .chunks(8)
                    .filter_map(Self::parse_depth)
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }

    async fn domain_depth(&self, domain: &str) -> Result<DomainDepth, QueueError> {
        let d = domain.to_ascii_lowercase();
        let shard = self.keys.shard_of_domain(&d);
        let v = self
            .eval(&scripts::READ, shard, now_ms(), vec![a("depths"), a(&d)])
            .await?;
        codec::items(&v)
            .chunks(8)
            .find_map(Self::parse_depth)
            .ok_or_else(|| QueueError::Backend(format!("unexpected depth reply {v:?}")))
    }

    async fn retry_now(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin("retry", target).await
    }

    async fn delete(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin("delete", target).await
    }

    async fn bounce(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin("bounce", target).await
    }

    async fn suspend(&self, domain: &str, until_ms: Option<u64>, reason: &str) -> Result<(), QueueError> {
        let d = domain.to_ascii_lowercase();
        let now = now_ms();
        let rec = Suspension {
            domain: d.clone(),
            reason: reason.to_string(),
            since_ms: now,
            until_ms,
        };
        let json = serde_json::to_string(&rec).map_err(|e| QueueError::Backend(e.to_string()))?;
        let shard = self.keys.shard_of_domain(&d);
        self.eval(
            &scripts::SUSPEND,
            shard,
            now,
            vec![
                a(&d),
                a(json),
                a(until_ms.map(|u| u.to_string()).unwrap_or_default()),
            ],
        )
        .await?;
        tracing::info!(domain = %d, reason, until_ms, "domain suspended");
        Ok(())
    }

    async fn resume(&self, domain: &str) -> Result<bool, QueueError> {
        let d = domain.to_ascii_lowercase();
        let shard = self.keys.shard_of_domain(&d);
        let v = self.eval(&scripts::RESUME, shard, now_ms(), vec![a(&d)]).await?;
        let was = codec::int(&v).unwrap_or(0) == 1;
        tracing::info!(domain = %d, was_suspended = was, "domain resumed");
        Ok(was)
    }

    async fn suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        let parts = self
            .on_all_shards(|shard| async move {
                let mut c = redis::cmd("HGETALL");
                c.arg(self.keys.key(shard, "susp"));
                self.cmd(c).await
            })
            .await?;
        let mut out = Vec::new();
        for v in parts {
            for (d, rec) in codec::fields(&v) {
                if let Ok(mut s) = serde_json::from_str::<Suspension>(&rec) {
                    s.domain = d;
                    out.push(s);
                }
            }
        }
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }

    async fn set_domain_concurrency(&self, domain: &str, limit: Option<u32>) -> Result<(), QueueError> {
        let d = domain.to_ascii_lowercase();
        let key = self.keys.key(self.keys.shard_of_domain(&d), "conc");
        let mut c = match limit {
            Some(_) => redis::cmd("HSET"),
            None => redis::cmd("HDEL"),
        };
        c.arg(key).arg(&d);
        if let Some(l) = limit {
            c.arg(l);
        }
        self.cmd(c).await?;
        Ok(())
    }

    async fn read_events(
        &self,
        after: Option<&EventPos>,
        max: usize,
        block: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError> {
        let shards = usize::from(self.keys.shards());
        let mut pos: Vec<String> = after.map(|p| p.0.clone()).unwrap_or_default();
        pos.resize(shards, "0-0".to_string());
        let max = max.max(1);
        let deadline = block.map(|b| tokio::time::Instant::now() + b);
        loop {
            let pos_ref = &pos;
            let parts = self
                .on_all_shards(|shard| async move {
                    let mut c = redis::cmd("XREAD");
                    c.arg("COUNT")
                        .arg(max)
                        .arg("STREAMS")
                        .arg(self.keys.key(shard, "events"))
                        .arg(&pos_ref[usize::from(shard)]);
                    self.cmd(c).await.map(|v| (shard, v))
                })
                .await?;
            // Every entry read, with its events (one, or several for a batched call).
            let mut entries: Vec<(u16, String, Vec<Event>)> = Vec::new();
            for (shard, v) in parts {
                // [[key, [[id, [field, value, ...]], ...]]]
                for stream in codec::items(&v) {
                    let Some(list) = codec::items(stream).get(1) else {
                        continue;
                    };
                    for entry in codec::items(list) {
                        let e = codec::items(entry);
                        let (Some(id), Some(f)) = (e.first().and_then(codec::text), e.get(1)) else {
                            continue;
                        };
                        let evs = codec::events_of_entry(shard, &id, f);
                        entries.push((shard, id, evs));
                    }
                }
            }
            if !entries.is_empty() {
                // Merged by time; an entry is taken whole (the position is its stream id), so a batched
                // entry may make the answer longer than `max` when it comes first.
                entries.sort_by_key(|(shard, id, _)| (codec::stream_id_key(id), *shard));
                let mut events = Vec::new();
                for (shard, id, evs) in entries {
                    if !events.is_empty() && events.len() + evs.len() > max {
                        break;
                    }
                    pos[usize::from(shard)] = id;
                    events.extend(evs);
                }
                if !events.is_empty() {
                    return Ok((events, EventPos(pos)));
                }
            }
            match deadline {
                Some(d) if tokio::time::Instant::now() < d => {
                    tokio::time::sleep(Duration::from_millis(50).min(d - tokio::time::Instant::now())).await;
                }
                _ => return Ok((Vec::new(), EventPos(pos))),
            }
        }
    }

    async fn events_end(&self) -> Result<EventPos, QueueError> {
        let parts = self
            .on_all_shards(|shard| async move {
                let mut c = redis::cmd("XREVRANGE");
                c.arg(self.keys.key(shard, "events"))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                let v = self.cmd(c).await?;
                Ok(codec::items(&v)
                    .first()
                    .and_then(|e| codec::items(e).first().and_then(codec::text))
                    .unwrap_or_else(|| "0-0".to_string()))
            })
            .await?;
        Ok(EventPos(parts))
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let parts = self
            .on_all_shards(|shard| async move {
                let mut c = redis::cmd("HGETALL");
                c.arg(self.keys.key(shard, "stats"));
                self.cmd(c).await
            })
            .await?;
        let mut s = Stats::default();
        for v in parts {
            for (k, n) in codec::fields(&v) {
                s.add(&k, n.parse::<i64>().unwrap_or(0).max(0) as u64);
            }
        }
        Ok(s)
    }

    async fn recent_stats(&self, window: Duration) -> Result<Stats, QueueError> {
        let minutes = window.as_secs().div_ceil(60).clamp(1, 120);
        let current = now_ms() / 60_000;
        let parts = self
            .on_all_shards(|shard| async move {
                let mut pipe = redis::pipe();
                for m in 0..minutes {
                    pipe.cmd("HGETALL").arg(
                        self.keys
                            .key(shard, &format!("min:{}", current.saturating_sub(m))),
                    );
                }
                self.timed(async {
                    let mut conn = self.backend.get().await?;
                    pipe.query_async::<Vec<Value>>(&mut conn)
                        .await
                        .map_err(redis_error)
                })
                .await
            })
            .await?;
        let mut s = Stats::default();
        for v in parts.iter().flatten() {
            for (k, n) in codec::fields(v) {
                s.add(&k, n.parse::<i64>().unwrap_or(0).max(0) as u64);
            }
        }
        Ok(s)
    }
}
