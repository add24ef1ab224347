//! The trace bus ([`TraceBus`]) on Redis: a registration hash and a pub/sub channel, both named in shard 0.
//!
//! - **Registrations.** `tracers` (`{<prefix>:s00}:tracers`, see `keys.rs`): field = a trace's id (a ULID),
//!   value = JSON `{"filter": {...}, "until_ms": ...}`. [`RedisQueue::open_trace`] writes it before it
//!   returns, and the trace's task writes it again every [`TRACE_REFRESH`] with `until_ms` pushed to
//!   [`TRACE_TTL`] from then, while the [`TraceSubscription`] lives. Dropping the subscription stops the
//!   task, which deletes the field on its way out; a trace whose process died without that is ignored once
//!   its `until_ms` has passed, and deleted by the next [`RedisQueue::trace_filters`] that meets it (a
//!   compare-and-delete, so that a refresh that comes in between is not undone). `until_ms` is the
//!   opening process's clock and is compared with the reader's: clocks must agree to within a few seconds
//!   (NTP), or a trace's filter shows up late or vanishes early.
//! - **Records.** `trace` (`{<prefix>:s00}:trace`) is a pub/sub channel, named with the key prefix so that
//!   queues sharing a Redis do not see each other's traces. [`RedisQueue::publish_trace`] sends the records
//!   as JSON arrays (at most [`RECORDS_PER_MESSAGE`] each), with `PUBLISH`; a trace subscribes on a
//!   connection of its own and applies its own filter. Nothing is kept: a record published while no trace
//!   listens is gone, as the bus promises.
//! - **Cluster.** `PUBLISH` goes to the master of the channel name's slot (shard 0's), and Redis Cluster
//!   forwards every classic `PUBLISH` to every node over the cluster bus, so a trace subscribes on whichever
//!   seed node answers first. A trace whose node goes away ends (the subscription yields `None`) and the
//!   caller opens it again; a silent connection is noticed by a `PING` every [`TRACE_REFRESH`].
//! - **A slow reader** loses records: the task hands them to a bounded channel ([`TRACE_BUFFER`]) and
//!   drops what does not fit, rather than let Redis buffer an unread subscriber's output (which ends with
//!   Redis closing the connection) or hold up the task's refreshes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{IntoConnectionInfo, Value};
use serde::{Deserialize, Serialize};
use tern_core::time::now_ms;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::codec;
use crate::QueueError;
use crate::redis::RedisQueue;
use crate::redis::conn::{Backend, redis_error};
use crate::trace::{TraceBus, TraceFilter, TraceRecord, TraceSubscription, record_passes};

/// How often an open trace writes its registration again (and pings its subscription's connection).
pub(crate) const TRACE_REFRESH: Duration = Duration::from_secs(2);
/// How long a registration counts after it was last written: a trace whose process died without removing
/// it stops counting this long after its last refresh (several refreshes can be missed before that).
pub(crate) const TRACE_TTL: Duration = Duration::from_secs(10);
/// The records a trace holds for its reader; more are dropped until the reader catches up.
pub(crate) const TRACE_BUFFER: usize = 1024;
/// The most records in one published message.
pub(crate) const RECORDS_PER_MESSAGE: usize = 256;

/// The registration hash's and the channel's names in shard 0.
const TRACERS: &str = "tracers";
const CHANNEL: &str = "trace";

/// A trace's registration, as stored in the hash.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Registration {
    pub filter: TraceFilter,
    pub until_ms: u64,
}

/// A registration's stored value, counting until [`TRACE_TTL`] after `now`.
fn registration(filter: &TraceFilter, now: u64) -> Result<String, QueueError> {
    let until_ms = now.saturating_add(u64::try_from(TRACE_TTL.as_millis()).unwrap_or(u64::MAX));
    serde_json::to_string(&Registration {
        filter: filter.clone(),
        until_ms,
    })
    .map_err(|e| QueueError::Backend(format!("trace registration: {e}")))
}

/// The filters of the registrations in force at `now` (each once), and the fields (id, value) of those
/// whose time has passed. A value that does not read is left alone (it is not ours to judge).
pub(crate) fn split_registrations(v: &Value, now: u64) -> (Vec<TraceFilter>, Vec<(String, String)>) {
    let mut seen = HashSet::new();
    let mut live = Vec::new();
    let mut stale = Vec::new();
    for (id, json) in codec::fields(v) {
        match serde_json::from_str::<Registration>(&json) {
            Ok(r) if r.until_ms > now => {
                if seen.insert(r.filter.clone()) {
                    live.push(r.filter);
                }
            }
            Ok(_) => stale.push((id, json)),
            Err(e) => {
                tracing::debug!(trace = id, error = %e, "skipping a trace registration that does not read")
            }
        }
    }
    (live, stale)
}

/// Runs one command on `backend`, bounded by `limit`.
async fn run_on(backend: &Backend, cmd: redis::Cmd, limit: Duration) -> Result<Value, QueueError> {
    let call = async {
        let mut conn = backend.get().await?;
        cmd.query_async::<Value>(&mut conn).await.map_err(redis_error)
    };
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(QueueError::Unavailable(format!(
            "redis did not answer within {limit:?}"
        ))),
    }
}

fn hset(key: &str, field: &str, value: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key).arg(field).arg(value);
    cmd
}

/// Deletes the registration when the trace's task ends (or is aborted, or dropped before it ran).
struct Unregister {
    backend: Arc<Backend>,
    key: String,
    id: String,
    limit: Duration,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        // Without a runtime (a process shutting down) the registration lapses by its `until_ms` instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = Arc::clone(&self.backend);
        let (key, id, limit) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.id),
            self.limit,
        );
        runtime.spawn(async move {
            let mut del = redis::cmd("HDEL");
            del.arg(&key).arg(&id);
            if let Err(e) = run_on(&backend, del, limit).await {
                tracing::debug!(trace = id, error = %e, "could not remove a trace registration; it lapses");
            }
        });
    }
}

/// An open trace's task: keeps the registration, watches the connection, forwards matching records.
struct Tracer {
    filter: TraceFilter,
    records: mpsc::Sender<TraceRecord>,
    sink: PubSubSink,
    messages: PubSubStream,
    registration: Unregister,
    /// Records dropped because the reader was behind.
    dropped: u64,
}

impl Tracer {
    async fn run(mut self) {
        let start = tokio::time::Instant::now() + TRACE_REFRESH;
        let mut refresh = tokio::time::interval_at(start, TRACE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.records.closed() => break,
                message = self.messages.next() => {
                    let Some(message) = message else {
                        tracing::warn!(trace = self.registration.id, "the trace's connection to redis closed");
                        break;
                    };
                    if !self.forward(message.get_payload_bytes()) {
                        break;
                    }
                }
                _ = refresh.tick() => {
                    if !self.refresh().await {
                        break;
                    }
                }
            }
        }
        if self.dropped > 0 {
            tracing::info!(
                trace = self.registration.id,
                dropped = self.dropped,
                "trace ended; records were dropped while its reader was behind"
            );
        }
    }

    /// Writes the registration again and pings the subscription; false when the subscription is dead.
    async fn refresh(&mut self) -> bool {
        let r = &self.registration;
        let write = registration(&self.filter, now_ms()).map(|value| hset(&r.key, &r.id, &value));
        let written = match write {
            Ok(cmd) => run_on(&r.backend, cmd, r.limit).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(trace = r.id, error = %e, "could not refresh a trace registration");
        }
        match tokio::time::timeout(r.limit, self.sink.ping::<Value>()).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(trace = r.id, error = %e, "the trace's connection to redis failed");
                false
            }
            Err(_) => {
                tracing::warn!(trace = r.id, "the trace's connection to redis does not answer");
                false
            }
        }
    }

    /// Hands the records of one message that pass the filter to the reader; false once the reader is gone.
    fn forward(&mut self, payload: &[u8]) -> bool {
        let records: Vec<TraceRecord> = match serde_json::from_slice(payload) {
            Ok(records) => records,
            Err(e) => {
                tracing::debug!(trace = self.registration.id, error = %e, "skipping a trace message that does not read");
                return true;
            }
        };
        for record in records {
            if !record_passes(&self.filter, &record) {
                continue;
            }
            match self.records.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    if self.dropped == 0 {
                        tracing::warn!(
                            trace = self.registration.id,
                            "the trace's reader is behind: dropping records"
                        );
                    }
                    self.dropped += 1;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        true
    }
}

impl RedisQueue {
    /// The records' channel.
    fn trace_channel(&self) -> String {
        self.keys.key(0, CHANNEL)
    }

    /// A connection subscribed to the records' channel: to the server, or to the first cluster seed that
    /// answers (a classic `PUBLISH` reaches every node of a cluster).
    async fn subscribe_traces(&self) -> Result<(PubSubSink, PubSubStream), QueueError> {
        let bad_url = |e: redis::RedisError| QueueError::Config(format!("queue url: {e}"));
        let urls: Vec<&str> = if self.opts.cluster {
            self.opts
                .url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        } else {
            vec![self.opts.url.as_str()]
        };
        let channel = self.trace_channel();
        let mut last = QueueError::Config("queue url has no cluster seed".into());
        for url in urls {
            let client =
                redis::Client::open(url.into_connection_info().map_err(bad_url)?).map_err(bad_url)?;
            let subscribe = async {
                let (mut sink, messages) = client.get_async_pubsub().await?.split();
                sink.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>((sink, messages))
            };
            match tokio::time::timeout(self.op_timeout(), subscribe).await {
                Ok(Ok(pair)) => return Ok(pair),
                Ok(Err(e)) => last = redis_error(e),
                Err(_) => {
                    last = QueueError::Unavailable(format!(
                        "redis did not answer a subscription within {:?}",
                        self.op_timeout()
                    ));
                }
            }
        }
        Err(last)
    }
}

#[async_trait]
impl TraceBus for RedisQueue {
    async fn trace_filters(&self) -> Result<Vec<TraceFilter>, QueueError> {
        let key = self.keys.key(0, TRACERS);
        let mut read = redis::cmd("HGETALL");
        read.arg(&key);
        let (live, stale) = split_registrations(&self.command(read).await?, now_ms());
        for (id, json) in stale {
            if let Err(e) = self.delete_if_same(&key, &id, &json).await {
                tracing::debug!(trace = id, error = %e, "could not drop a lapsed trace registration");
                break;
            }
        }
        Ok(live)
    }

    async fn publish_trace(&self, records: &[TraceRecord]) -> Result<(), QueueError> {
        if records.is_empty() {
            return Ok(());
        }
        let channel = self.trace_channel();
        let mut pipe = redis::pipe();
        for chunk in records.chunks(RECORDS_PER_MESSAGE) {
            let json =
                serde_json::to_vec(chunk).map_err(|e| QueueError::Backend(format!("trace records: {e}")))?;
            pipe.cmd("PUBLISH").arg(&channel).arg(json);
        }
        self.commands(pipe).await?;
        Ok(())
    }

    async fn open_trace(&self, filter: TraceFilter) -> Result<TraceSubscription, QueueError> {
        // Subscribed before registered: a worker that sees the filter publishes to a listening trace.
        let (sink, messages) = self.subscribe_traces().await?;
        // The task outlives this call (and may outlive `self`): it refreshes on a connection of its own.
        let backend = Backend::new(
            &self.opts.url,
            self.opts.cluster,
            1,
            self.opts.connect_timeout,
            self.opts.response_timeout,
        )?;
        let key = self.keys.key(0, TRACERS);
        let id = ulid::Ulid::generate().to_string();
        self.command(hset(&key, &id, &registration(&filter, now_ms())?))
            .await?;
        let registration = Unregister {
            backend: Arc::new(backend),
            key,
            id,
            limit: self.op_timeout(),
        };
        let (records, reader) = mpsc::channel(TRACE_BUFFER);
        let tracer = Tracer {
            filter,
            records,
            sink,
            messages,
            registration,
            dropped: 0,
        };
        let task = tokio::spawn(tracer.run());
        Ok(TraceSubscription::new(reader, Some(task.abort_handle())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk};

    #[test]
    fn lapsed_registrations_are_set_apart_and_filters_listed_once() {
        let filter = TraceFilter {
            domain: Some("example.test".into()),
            mx: None,
        };
        let reg = |until_ms: u64| {
            serde_json::to_string(&Registration {
                filter: filter.clone(),
                until_ms,
            })
            .expect("encodes")
        };
        let v = array(vec![
            bulk("a"),
            bulk(&reg(200)),
            bulk("b"),
            bulk(&reg(300)),
            bulk("old"),
            bulk(&reg(100)),
            bulk("bad"),
            bulk("not json"),
        ]);
        let (live, stale) = split_registrations(&v, 100);
        assert_eq!(stale, [("old".to_string(), reg(100))]);
        assert_eq!(live, [filter]);
    }

    #[test]
    fn a_registration_counts_for_the_ttl_from_its_write() {
        let json = registration(&TraceFilter::default(), 1_000).expect("encodes");
        let r: Registration = serde_json::from_str(&json).expect("decodes");
        assert_eq!(r.until_ms, 1_000 + TRACE_TTL.as_millis() as u64);
        assert_eq!(r.filter, TraceFilter::default());
    }

    /// A queue on a real redis-server, for what only this backend does (refreshes, lapsed entries).
    async fn queue(server: &tern_testkit::redis::RedisServer, prefix: &str) -> RedisQueue {
        RedisQueue::connect(crate::RedisQueueOptions {
            url: server.url(),
            key_prefix: prefix.into(),
            ..Default::default()
        })
        .await
        .expect("connect")
    }

    async fn stored(q: &RedisQueue, id_count: usize) -> Vec<Registration> {
        let mut read = redis::cmd("HVALS");
        read.arg(q.keys.key(0, TRACERS));
        let v = q.command(read).await.expect("HVALS");
        let regs: Vec<Registration> = codec::items(&v)
            .iter()
            .filter_map(codec::text)
            .map(|j| serde_json::from_str(&j).expect("a registration"))
            .collect();
        assert_eq!(regs.len(), id_count);
        regs
    }

    #[tokio::test]
    async fn an_open_trace_refreshes_its_registration_and_a_lapsed_one_is_ignored_and_dropped() {
        let server = tern_testkit::redis::RedisServer::start().expect("redis-server");
        let q = queue(&server, "trace-refresh").await;
        let filter = TraceFilter {
            domain: Some("refresh.test".into()),
            mx: None,
        };
        let sub = q.open_trace(filter.clone()).await.expect("open");
        let first = stored(&q, 1).await[0].until_ms;
        tokio::time::sleep(TRACE_REFRESH + Duration::from_millis(500)).await;
        let second = stored(&q, 1).await[0].until_ms;
        assert!(second > first, "refreshed: {first} then {second}");

        // A trace whose process died: its registration lapsed, and the next reader drops it.
        let lapsed = serde_json::to_string(&Registration {
            filter: TraceFilter::default(),
            until_ms: now_ms() - 1,
        })
        .expect("encodes");
        q.command(hset(&q.keys.key(0, TRACERS), "dead", &lapsed))
            .await
            .expect("HSET");
        assert_eq!(q.trace_filters().await.expect("filters"), [filter]);
        stored(&q, 1).await;

        drop(sub);
        for _ in 0..50 {
            if q.trace_filters().await.expect("filters").is_empty() {
                stored(&q, 0).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the registration outlived its subscription");
    }

    #[tokio::test]
    async fn a_trace_ends_when_its_connection_to_redis_is_lost() {
        let mut server = tern_testkit::redis::RedisServer::start().expect("redis-server");
        let q = queue(&server, "trace-lost").await;
        let mut sub = q.open_trace(TraceFilter::default()).await.expect("open");
        server.kill_hard().expect("kill redis-server");
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(None) => {}
            Ok(Some(r)) => panic!("a record from a dead server: {r:?}"),
            Err(_) => panic!("the trace did not end"),
        }
    }
}
