//! The Redis backend: one Redis server or a Redis Cluster, with the same code.
//!
//! - [`keys`](self) names the keys and documents every key and field the queue stores (the one place).
//! - `library.rs` is the Redis Functions library (Lua) that runs the operations atomically inside Redis:
//!   how it is put together, versioned, loaded at start and loaded again where a call finds it missing.
//! - `ops/` has one module per operation beside its Lua (`ops/claim.rs` and `ops/claim.lua`, ...): the
//!   typed arguments it sends, the typed reply it reads back, and the steps it takes.
//! - `codec.rs` reads and writes job records; `conn.rs` makes connections and maps Redis errors.
//! - `wake.rs` waits for work: idle workers block on the shards' wake lists (dedicated connections), which
//!   the functions signal.
//! - `quiet.rs` remembers the shards where the worker's claims found nothing, which its next claims skip
//!   until a wake token from the shard, an enqueue there through this handle, or a short bound.
//!
//! This file keeps what every operation shares: the options, the connections, function calls and
//! pipelines with their timeouts, and the [`Queue`] implementation, which hands each method to its
//! operation. The protocols (enqueue all or none, leases, slots and holds, events) are described in
//! `docs/architecture.md` and beside each operation's code.

pub(crate) mod codec;
pub(crate) mod conn;
pub(crate) mod keys;
pub(crate) mod library;
pub(crate) mod ops;
pub(crate) mod quiet;
pub(crate) mod wake;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use redis::Value;
use tern_core::MessageId;

use crate::model::*;
use crate::{Queue, QueueError};
use conn::{Backend, redis_error};
use keys::Keys;
use library::{Function, FunctionLibrary};
use ops::Arg;
use quiet::QuietShards;
use wake::Wakes;

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
    /// Connections shared round-robin (default 16): multiplexed connections to the server, or cluster
    /// connections (each with one connection per node).
    pub pool_size: usize,
    /// Connect timeout (default 2 s).
    pub connect_timeout: Duration,
    /// Reply timeout of one Redis call (default 5 s); every queue call is also bounded by
    /// `connect_timeout + response_timeout` overall, per round trip. A blocking wait
    /// ([`Queue::wait_for_work`]) gets this much on top of the time it blocks.
    pub response_timeout: Duration,
    /// How long after a message's first enqueue its writer may still send the same message (same id)
    /// again: ingest's `ingest.enqueue_retry_for` (default 60 s; zero: writers never repeat). A message of
    /// the fast path (no idempotency key, every job in one shard) is remembered for this plus one call's
    /// time (`connect_timeout + response_timeout`), so that a repeat arriving after its jobs were delivered
    /// and removed makes nothing (the intake path remembers its messages 24 h anyway). Memory: about 73
    /// bytes per message for that time (`docs/configuration.md`). It is the enqueuing process's setting:
    /// the messages a handle writes are remembered as long as this handle says.
    pub repeat_window: Duration,
    /// How long a message's history ([`crate::HistoryStore`]) is kept after its last event: `queue.history`
    /// (default 7 days; zero keeps none).
    pub history: Duration,
    /// How long at most the worker's claims ([`Queue::claim_next`]) skip a shard where this handle last
    /// found nothing, while no wake token from it reached this handle (default 20 ms; `redis/quiet.rs`):
    /// the longest that new work there waits for a worker busy with other shards, and that work due later,
    /// queued by another process, goes unnamed. A library option, not a configuration key.
    pub quiet_shard_bound: Duration,
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
            repeat_window: Duration::from_secs(60),
            history: crate::history::DEFAULT_RETENTION,
            quiet_shard_bound: Duration::from_millis(20),
        }
    }
}

/// The Redis queue. Cheap to share behind an `Arc`; all methods are safe to call concurrently.
pub struct RedisQueue {
    opts: RedisQueueOptions,
    keys: Keys,
    backend: Backend,
    library: FunctionLibrary,
    /// The shard the next index-order visit starts at (a claim's scan of the domain indexes, shard by shard;
    /// moved on by the claims it finds work for).
    next_shard: AtomicU64,
    /// The shard the next held-first visit starts at (held-first claims take turns of their own).
    next_held_shard: AtomicU64,
    /// The last claim was held-first and took a hold over: the next one looks at held domains in their turn
    /// only (and clears this).
    took_hold_last: AtomicBool,
    /// The shards claims skip for now (their last index-order claim found nothing).
    quiet: Arc<QuietShards>,
    /// Waiting for work: the wake lists' listeners, started by the first wait.
    wakes: Wakes,
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

/// A duration in whole milliseconds.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `WAIT`'s timeout for a reply timeout of `response_timeout`: half of it, so that Redis says how many
/// replicas acknowledged before the client gives up on the reply (a missing replica is then reported as such,
/// not as a timeout that also marks the connection broken); at least 1 ms, since 0 makes `WAIT` block forever.
fn wait_timeout_ms(response_timeout: Duration) -> u64 {
    duration_ms(response_timeout / 2).max(1)
}

impl RedisQueue {
    /// Builds the queue. Nothing is connected yet, so this succeeds while Redis is down (calls then return
    /// [`QueueError::Unavailable`] until it is back, and load the function library where it is missing);
    /// only bad options fail.
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
        let keys = Keys::new(&opts.key_prefix, opts.shards);
        let quiet = Arc::new(QuietShards::new(opts.shards, duration_ms(opts.quiet_shard_bound)));
        let wakes = Wakes::new(&opts, &keys, quiet.clone())?;
        Ok(RedisQueue {
            keys,
            library: FunctionLibrary::new(opts.shards),
            opts,
            backend,
            next_shard: AtomicU64::new(0),
            next_held_shard: AtomicU64::new(0),
            took_hold_last: AtomicBool::new(false),
            quiet,
            wakes,
        })
    }

    /// [`RedisQueue::new`], then [`RedisQueue::ping`]: Redis answers and has the function library.
    pub async fn connect(opts: RedisQueueOptions) -> Result<RedisQueue, QueueError> {
        let q = RedisQueue::new(opts)?;
        q.ping().await?;
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

    /// The name of the queue's Redis Functions library (`tern_<version>`; `FUNCTION LIST` shows it). Its
    /// functions are named `<library>_<operation>`.
    pub fn function_library() -> &'static str {
        library::library_name()
    }

    /// Checks that Redis answers, on every master in a cluster, and prepares it: each must run Redis 7.0 or
    /// later (an older one is a [`QueueError::Backend`] error saying so), gets the queue's function library
    /// (loaded, replacing any under its name), and loses the libraries of other tern versions. Meant for
    /// start-up: it compiles the library on every master. A master that loses the library later (a restart
    /// without persistence, a failover) gets it again from the first call that finds it missing.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.timed(async {
            let mut conn = self.backend.get().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(redis_error)?;
            library::load_everywhere(&mut conn).await
        })
        .await
    }

    fn op_timeout(&self) -> Duration {
        self.opts.connect_timeout + self.opts.response_timeout
    }

    /// How long a fast-path message is remembered against repeats (ms; 0: not at all): the repeat window
    /// and one call's time, as a repeat sent at the window's end may take that long to reach Redis.
    fn repeat_ttl_ms(&self) -> u64 {
        if self.opts.repeat_window.is_zero() {
            return 0;
        }
        duration_ms(self.opts.repeat_window + self.op_timeout())
    }

    /// The history retention in ms, as the functions that write events take it (0: no history kept).
    fn history_ms(&self) -> u64 {
        duration_ms(self.opts.history)
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

    /// Calls one function on a shard.
    async fn call(
        &self,
        function: Function,
        shard: u16,
        now: u64,
        args: Vec<Arg>,
    ) -> Result<Value, QueueError> {
        self.call_many(Vec::new(), function, shard, now, vec![args], false)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(QueueError::Backend("no reply".into())))
    }

    /// Calls one function on a shard with each argument list of `calls`, in one pipeline: first the plain
    /// commands `pre` (of keys of the same shard), then the calls (`FCALL`, with the calling convention's
    /// arguments: the shard's key prefix, `now`, the events cap and `now`'s minute; see `ops/shared.lua`),
    /// then `WAIT` when `wait` and `wait_replicas` ask for it. One result per call.
    ///
    /// The replies of `pre` are not looked at (the functions check what they need), except that an outage
    /// among them (a server out of memory refusing the writes) is what a failed call reports. Calls that
    /// find the function missing (a node without this version of the library) get the library loaded on
    /// the shard's node and are sent once more (without `pre`, whose writes stand).
    async fn call_many(
        &self,
        pre: Vec<redis::Cmd>,
        function: Function,
        shard: u16,
        now: u64,
        calls: Vec<Vec<Arg>>,
        wait: bool,
    ) -> Vec<Result<Value, QueueError>> {
        let part = ShardCalls {
            shard,
            pre,
            function,
            calls,
        };
        self.call_parts(self.backend.reserve(1), vec![part], now, wait)
            .await
            .pop()
            .unwrap_or_default()
    }

    /// [`Self::call_many`] for several shards at once: one list of results per part, in order.
    ///
    /// On one server every part goes out in ONE pipeline, on one connection, ending in one `WAIT`: one
    /// write and one read for an operation that spans shards (a group commit of messages to ten domains
    /// touches most of the 16 shards) instead of one round trip per shard, each of which costs the caller
    /// and Redis a system call or two and a wakeup. In a cluster each shard's parts (an enqueue's fast-path
    /// and intake calls) are one pipeline, routed to the shard's master, all shards at once, each on a
    /// cluster connection of its own: a cluster connection has one connection per node, and a pipeline
    /// ending in `WAIT` holds it until the replicas answer (Redis reads nothing more from a client blocked in
    /// `WAIT`), so the shards of one master sharing one would wait in turn, each up to half the reply
    /// timeout, and all but the first run out of time. (With more shards than connections, `pool_size`,
    /// some share one.)
    async fn call_shards(
        &self,
        parts: Vec<ShardCalls>,
        now: u64,
        wait: bool,
    ) -> Vec<Vec<Result<Value, QueueError>>> {
        if !self.backend.is_cluster() {
            return self.call_parts(self.backend.reserve(1), parts, now, wait).await;
        }
        let count = parts.len();
        // Each shard's parts with their places in `parts`, in order.
        let mut shards: Vec<(u16, Vec<(usize, ShardCalls)>)> = Vec::new();
        for (place, part) in parts.into_iter().enumerate() {
            match shards.iter_mut().find(|(shard, _)| *shard == part.shard) {
                Some((_, members)) => members.push((place, part)),
                None => shards.push((part.shard, vec![(place, part)])),
            }
        }
        let first = self.backend.reserve(shards.len());
        let answers = join_all(
            shards
                .into_iter()
                .enumerate()
                .map(|(n, (_, members))| async move {
                    let (places, parts): (Vec<usize>, Vec<ShardCalls>) = members.into_iter().unzip();
                    let results = self.call_parts(first.wrapping_add(n), parts, now, wait).await;
                    places.into_iter().zip(results).collect::<Vec<_>>()
                }),
        )
        .await;
        let mut results: Vec<Vec<Result<Value, QueueError>>> = (0..count).map(|_| Vec::new()).collect();
        for (place, part_results) in answers.into_iter().flatten() {
            results[place] = part_results;
        }
        results
    }

    /// Sends `parts` in one pipeline on connection number `connection` (see [`Backend::reserve`]; so on one
    /// server, or one shard's parts in a cluster), within the queue's timeout; calls that found the function
    /// missing are sent once more after the library is loaded, the outage among a part's `pre` replies still
    /// standing for them.
    async fn call_parts(
        &self,
        connection: usize,
        mut parts: Vec<ShardCalls>,
        now: u64,
        wait: bool,
    ) -> Vec<Vec<Result<Value, QueueError>>> {
        let sizes: Vec<usize> = parts.iter().map(|p| p.calls.len()).collect();
        if parts.iter().all(|p| p.pre.is_empty() && p.calls.is_empty()) {
            // Nothing to send (a batch whose every message was refused before): no connection, no wait.
            return sizes.iter().map(|_| Vec::new()).collect();
        }
        let res = self
            .timed(async {
                // A pipeline that ends in `WAIT` holds its connection until the replicas answer (Redis reads
                // nothing more from a client blocked in `WAIT`): the connections taken in turn keep one
                // operation from waiting behind another's (as long as fewer are under way than `pool_size`).
                let mut conn = self.backend.get_at(connection).await?;
                // A reload since these counts means another call loaded the library meanwhile.
                let reloads_seen: Vec<u64> = parts.iter().map(|p| self.library.reloads(p.shard)).collect();
                let mut results: Vec<Vec<Option<Result<Value, QueueError>>>> =
                    sizes.iter().map(|&n| vec![None; n]).collect();
                let mut todo: Vec<Vec<usize>> = sizes.iter().map(|&n| (0..n).collect()).collect();
                let mut outages: Vec<Option<QueueError>> = vec![None; parts.len()];
                for round in 0..2 {
                    let replies = self
                        .pipeline_parts(&mut conn, &mut parts, &todo, &mut outages, now, wait)
                        .await?;
                    let mut first_missing = None;
                    for (p, (todo, replies)) in todo.iter_mut().zip(replies).enumerate() {
                        let mut missing = Vec::new();
                        for (&i, reply) in todo.iter().zip(replies) {
                            match reply {
                                Some(r) => results[p][i] = Some(r),
                                None => missing.push(i),
                            }
                        }
                        if !missing.is_empty() && first_missing.is_none() {
                            first_missing = Some(p);
                        }
                        *todo = missing;
                    }
                    let Some(p) = first_missing else { break };
                    if round == 1 {
                        // Loaded a moment ago, and missing again: the shard moved to another node meanwhile
                        // (a failover), or the library was removed again. The next call loads it again.
                        for ((part, todo), results) in parts.iter().zip(&todo).zip(results.iter_mut()) {
                            let e = QueueError::Unavailable(format!(
                                "redis: function {} still missing after loading the library",
                                part.function.name()
                            ));
                            for &i in todo {
                                results[i] = Some(Err(e.clone()));
                            }
                        }
                        break;
                    }
                    let shard = parts[p].shard;
                    let shard_key = self.keys.key(shard, "domains");
                    let reload = self
                        .library
                        .reload(&mut conn, shard, &shard_key, reloads_seen[p])
                        .await;
                    if let Err(e) = reload {
                        for (p, todo) in todo.iter().enumerate() {
                            for &i in todo {
                                results[p][i] = Some(Err(e.clone()));
                            }
                        }
                        break;
                    }
                }
                Ok(results)
            })
            .await;
        match res {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|r| r.unwrap_or_else(|| Err(QueueError::Backend("no reply".into()))))
                        .collect()
                })
                .collect(),
            Err(e) => sizes.iter().map(|&n| vec![Err(e.clone()); n]).collect(),
        }
    }

    /// One pipeline of [`Self::call_parts`]: each part's `pre` commands (taken: they are sent once) and its
    /// calls at `todo[part]`, then `WAIT` when asked. Per part, in `todo`'s order: the call's result, `None`
    /// where the function was missing. `outages[part]` is set from the part's `pre` replies and stands for
    /// the part's failed calls, in this round and the next.
    async fn pipeline_parts(
        &self,
        conn: &mut conn::Conn,
        parts: &mut [ShardCalls],
        todo: &[Vec<usize>],
        outages: &mut [Option<QueueError>],
        now: u64,
        wait: bool,
    ) -> Result<Vec<Vec<Option<Result<Value, QueueError>>>>, QueueError> {
        let waiting = wait && self.opts.wait_replicas > 0;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut skips = Vec::with_capacity(parts.len());
        for (part, todo) in parts.iter_mut().zip(todo) {
            let pre = std::mem::take(&mut part.pre);
            skips.push(pre.len());
            for c in pre {
                pipe.add_command(c);
            }
            // The calling convention's arguments, made once per part.
            let shard_key = self.keys.key(part.shard, "domains");
            let tag = self.keys.tag(part.shard);
            for &i in todo {
                let cmd = pipe
                    .cmd("FCALL")
                    .arg(part.function.name())
                    .arg(1)
                    .arg(&shard_key)
                    .arg(&tag)
                    .arg(now)
                    .arg(self.opts.events_max_len)
                    .arg(now / 60_000);
                for a in &part.calls[i] {
                    cmd.arg(a.as_slice());
                }
            }
        }
        if waiting {
            pipe.cmd("WAIT")
                .arg(self.opts.wait_replicas)
                .arg(wait_timeout_ms(self.opts.response_timeout));
        }
        let values: Vec<Value> = pipe.query_async(conn).await.map_err(redis_error)?;
        let mut values = values.into_iter();
        let mut out: Vec<Vec<Option<Result<Value, QueueError>>>> = Vec::with_capacity(parts.len());
        for ((todo, skip), outage) in todo.iter().zip(skips).zip(outages.iter_mut()) {
            let found = outage_among(values.by_ref().take(skip));
            if outage.is_none() {
                *outage = found;
            }
            out.push(todo.iter().map(|_| call_result(outage, values.next())).collect());
        }
        if waiting {
            self.check_replicas(values.next(), out.iter_mut().flatten().flatten());
        }
        Ok(out)
    }

    /// Turns the successful `results` into errors when `WAIT`'s answer says too few replicas acknowledged.
    fn check_replicas<'a>(
        &self,
        answer: Option<Value>,
        results: impl Iterator<Item = &'a mut Result<Value, QueueError>>,
    ) {
        let Some(answer) = answer else { return };
        let acked = codec::int(&answer).unwrap_or(0);
        if acked >= i64::from(self.opts.wait_replicas) {
            return;
        }
        let err = QueueError::Unavailable(format!(
            "only {acked} of {} replicas acknowledged the write",
            self.opts.wait_replicas
        ));
        for r in results {
            if r.is_ok() {
                *r = Err(err.clone());
            }
        }
    }

    /// Runs a plain command on a shard's connection.
    async fn command(&self, cmd: redis::Cmd) -> Result<Value, QueueError> {
        self.timed(async {
            let mut conn = self.backend.get().await?;
            cmd.query_async::<Value>(&mut conn).await.map_err(redis_error)
        })
        .await
    }

    /// Runs plain commands as one pipeline; one reply per command.
    async fn commands(&self, pipe: redis::Pipeline) -> Result<Vec<Value>, QueueError> {
        self.timed(async {
            let mut conn = self.backend.get().await?;
            pipe.query_async::<Vec<Value>>(&mut conn)
                .await
                .map_err(redis_error)
        })
        .await
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
}

/// A function's reply, or the error it answered.
fn value_result(v: Value) -> Result<Value, QueueError> {
    match v {
        Value::ServerError(e) => Err(redis_error(e.into())),
        other => Ok(other),
    }
}

/// The outage among the replies of a pipeline's plain commands (a server out of memory refusing the
/// writes), if any: what a function call that failed for want of those writes reports. Reads every reply,
/// so that the replies after them stay in step.
fn outage_among(replies: impl Iterator<Item = Value>) -> Option<QueueError> {
    let mut outage = None;
    for reply in replies {
        if outage.is_none()
            && let Value::ServerError(e) = reply
        {
            outage = Some(redis_error(e.into())).filter(QueueError::is_unavailable);
        }
    }
    outage
}

/// A function call's result from its reply (an error answer while `outage` refused the call's plain writes is
/// that outage); `None` when the function was missing.
fn call_result(outage: &Option<QueueError>, reply: Option<Value>) -> Option<Result<Value, QueueError>> {
    let reply = reply.unwrap_or(Value::Nil);
    if library::is_function_missing(&reply) {
        return None;
    }
    Some(match (outage, value_result(reply)) {
        (Some(outage), Err(_)) => Err(outage.clone()),
        (_, r) => r,
    })
}

/// One shard's part of [`RedisQueue::call_shards`]: plain commands of the shard's keys, then `function`
/// called with each argument list of `calls`.
pub(crate) struct ShardCalls {
    pub(crate) shard: u16,
    pub(crate) pre: Vec<redis::Cmd>,
    pub(crate) function: Function,
    pub(crate) calls: Vec<Vec<Arg>>,
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
        self.enqueue_messages(messages).await
    }

    async fn claim_holding(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<Option<Claim>, QueueError> {
        Ok(
            match self.claim_jobs(owner, max_batch, lease, holds, false).await? {
                ClaimOutcome::Claimed(claim) => Some(claim),
                ClaimOutcome::Nothing { .. } => None,
            },
        )
    }

    async fn claim_next(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
    ) -> Result<ClaimOutcome, QueueError> {
        self.claim_jobs(owner, max_batch, lease, holds, true).await
    }

    async fn wait_for_work(&self, max_wait: Duration) -> Wakeup {
        self.wakes.wait(max_wait).await
    }

    async fn hold_slot(
        &self,
        domain: &str,
        claim_id: &str,
        hold: Duration,
    ) -> Result<Option<SlotHold>, QueueError> {
        self.hold_domain_slot(domain, claim_id, hold).await
    }

    async fn drop_slot(&self, hold: &SlotHold) -> Result<(), QueueError> {
        self.drop_domain_slot(hold).await
    }

    async fn complete(
        &self,
        owner: &str,
        job: &JobLease,
        outcome: Outcome,
    ) -> Result<Completion, QueueError> {
        self.complete_jobs(owner, vec![(job.clone(), outcome)])
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
        self.complete_jobs(owner, jobs).await
    }

    async fn extend(&self, owner: &str, job: &JobLease, lease: Duration) -> Result<u64, QueueError> {
        self.extend_lease(owner, job, lease).await
    }

    async fn release(&self, owner: &str, job: &JobLease) -> Result<(), QueueError> {
        self.release_job(owner, job).await
    }

    async fn reap(&self, now_ms: u64) -> Result<u64, QueueError> {
        self.reap_expired(now_ms).await
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageInfo>, QueueError> {
        self.read_message(id).await
    }

    async fn read_body(&self, id: MessageId) -> Result<Option<Bytes>, QueueError> {
        self.read_message_body(id).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError> {
        self.list_jobs(filter, cursor, limit).await
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        self.read_counts().await
    }

    async fn domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError> {
        self.read_domain_depths().await
    }

    async fn domain_depth(&self, domain: &str) -> Result<DomainDepth, QueueError> {
        self.read_domain_depth(domain).await
    }

    async fn retry_now(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(ops::admin::AdminAction::Retry, target, None).await
    }

    async fn delete(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(ops::admin::AdminAction::Delete, target, None).await
    }

    async fn bounce(&self, target: &Target, reason: Option<&str>) -> Result<u64, QueueError> {
        self.admin(ops::admin::AdminAction::Bounce, target, reason).await
    }

    async fn hold(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(ops::admin::AdminAction::Hold, target, None).await
    }

    async fn unhold(&self, target: &Target) -> Result<u64, QueueError> {
        self.admin(ops::admin::AdminAction::Unhold, target, None).await
    }

    async fn suspend(&self, domain: &str, until_ms: Option<u64>, reason: &str) -> Result<(), QueueError> {
        self.suspend_domain(domain, until_ms, reason).await
    }

    async fn resume(&self, domain: &str) -> Result<bool, QueueError> {
        self.resume_domain(domain).await
    }

    async fn suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        self.read_suspensions().await
    }

    async fn set_domain_concurrency(&self, domain: &str, limit: Option<u32>) -> Result<(), QueueError> {
        self.set_concurrency(domain, limit).await
    }

    async fn read_events(
        &self,
        after: Option<&EventPos>,
        max: usize,
        block: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError> {
        self.read_event_streams(after, max, block).await
    }

    async fn events_end(&self) -> Result<EventPos, QueueError> {
        self.event_streams_end().await
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        self.read_stats().await
    }

    async fn recent_stats(&self, window: Duration) -> Result<Stats, QueueError> {
        self.read_recent_stats(window).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_answers_within_half_the_reply_timeout_and_never_blocks_forever() {
        assert_eq!(wait_timeout_ms(Duration::from_secs(5)), 2_500);
        // 0 would make WAIT block until the replicas answer, however long that takes.
        assert_eq!(wait_timeout_ms(Duration::from_millis(1)), 1);
        assert_eq!(wait_timeout_ms(Duration::ZERO), 1);
    }
}
