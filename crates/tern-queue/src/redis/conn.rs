//! Connections: a deadpool pool for one Redis server, or cluster connections for Redis Cluster, behind one
//! type that implements [`redis::aio::ConnectionLike`]; and the mapping of Redis errors to [`QueueError`].
//!
//! Single server: deadpool makes the connections (with its create timeout), but the queue keeps `pool_size`
//! of them checked out and shares them round-robin. Each is a multiplexed connection that serves many
//! concurrent calls (pipelining them on the socket), and keeping them out of the pool spares the PING that
//! deadpool sends on every checkout (one extra round trip per queue call). A connection that fails with an
//! I/O error, a timeout or a dropped connection is marked broken and replaced on next use. A connection the
//! server dropped (closed, reset: not a timeout, which a slow call on a healthy server also gives) also marks
//! stale every connection of its generation or older, i.e. made before the failure: the server went away (a
//! restart), which leaves them all dead, and on a quiet process each would otherwise fail a call of its own
//! before it was replaced.
//!
//! Cluster: `pool_size` cluster connections, each made on first use and shared round-robin the same way; each
//! routes by key, keeps a connection to every node and follows the cluster's changes by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::{Pool, PoolError, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value,
};
use tokio::sync::Mutex;

use crate::QueueError;

/// Where connections come from.
pub(crate) enum Backend {
    /// One server: multiplexed connections made by a deadpool pool and shared round-robin.
    Single {
        pool: Pool,
        slots: Vec<Mutex<Option<Shared>>>,
        next: AtomicUsize,
        /// Connections made in an earlier generation are replaced on their next use (see the module doc).
        generation: Arc<AtomicU64>,
    },
    /// A cluster: `pool_size` multiplexed cluster connections (each routes by key, keeps one connection per
    /// node and reconnects by itself), shared round-robin like the single server's, each made on first use so
    /// that a queue can be built while the cluster is down. More than one because a pipeline ending in `WAIT`
    /// holds its node's connection until the replicas answer: the shards of one operation that live on one
    /// master must each have a connection of their own to wait at once (see `RedisQueue::call_shards`).
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conns: Vec<Mutex<Option<ClusterConnection>>>,
        next: AtomicUsize,
    },
}

/// A shared multiplexed connection and what tells whether it may still serve.
#[derive(Clone)]
pub(crate) struct Shared {
    conn: MultiplexedConnection,
    state: ConnState,
}

/// Whether a connection broke, and the generation it was made in.
#[derive(Clone)]
struct ConnState {
    broken: Arc<AtomicBool>,
    born: u64,
    generation: Arc<AtomicU64>,
}

impl ConnState {
    /// Marks this connection broken, and, when the server dropped it, every connection of its generation or
    /// older stale.
    fn break_off(&self, server_gone: bool) {
        self.broken.store(true, Ordering::Relaxed);
        if server_gone {
            self.generation.fetch_max(self.born + 1, Ordering::Relaxed);
        }
    }

    /// Whether the connection may serve another call.
    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && self.born >= self.generation.load(Ordering::Relaxed)
    }

    /// Marks the connection broken when `reply` is an error of the connection itself.
    fn note<T>(&self, reply: &Result<T, RedisError>) {
        if let Err(e) = reply
            && breaks_connection(e)
        {
            self.break_off(server_gone(e));
        }
    }
}

/// One connection, single-server or cluster.
pub(crate) enum Conn {
    Single(Shared),
    Cluster(ClusterConnection),
}

fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Whether `e` says the server dropped the connection (closed or reset it), as a restart does; a timeout does
/// not (redis-rs reports a timeout as an I/O error too).
fn server_gone(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal())
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => {
                let state = c.state.clone();
                let fut = c.conn.req_packed_command(cmd);
                Box::pin(async move {
                    let r = fut.await;
                    state.note(&r);
                    r
                })
            }
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => {
                let state = c.state.clone();
                let fut = c.conn.req_packed_commands(cmd, offset, count);
                Box::pin(async move {
                    let r = fut.await;
                    state.note(&r);
                    r
                })
            }
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.conn.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A server's error answer as a value; other errors (of the connection) stay errors.
fn error_as_value(reply: Result<Value, RedisError>) -> Result<Value, RedisError> {
    match reply {
        Err(e) if e.code().is_some() => match e.try_into() {
            Ok(server_error) => Ok(Value::ServerError(server_error)),
            Err(e) => Err(e),
        },
        other => other,
    }
}

impl Conn {
    /// Sends `cmd` to every master (in single-server mode, the server): each node's name and answer, an error
    /// answer as [`Value::ServerError`]. An error here is one of the connection (or of the only server).
    pub(crate) async fn on_every_master(&mut self, cmd: Cmd) -> Result<Vec<(String, Value)>, RedisError> {
        match self {
            Conn::Single(_) => {
                let reply = error_as_value(self.req_packed_command(&cmd).await)?;
                Ok(vec![("the server".to_string(), reply)])
            }
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                match c.route_command(cmd, routing).await? {
                    // One answer per node, by node address.
                    Value::Map(answers) => Ok(answers
                        .into_iter()
                        .map(|(node, reply)| (super::codec::text(&node).unwrap_or_default(), reply))
                        .collect()),
                    other => Ok(vec![("the cluster".to_string(), other)]),
                }
            }
        }
    }

    /// Sends `cmd` to the master of a slot (in single-server mode, the server); an error answer comes back as
    /// [`Value::ServerError`].
    pub(crate) async fn on_master_of(&mut self, route: Route, cmd: Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Single(_) => error_as_value(self.req_packed_command(&cmd).await),
            Conn::Cluster(c) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                error_as_value(c.route_command(cmd, routing).await)
            }
        }
    }
}

impl Backend {
    /// Builds the backend; nothing is connected yet.
    pub(crate) fn new(
        url: &str,
        cluster: bool,
        pool_size: usize,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Backend, QueueError> {
        if cluster {
            let seeds: Vec<String> = url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if seeds.is_empty() {
                return Err(QueueError::Config("queue url has no cluster seed".into()));
            }
            let client = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout)
                .retries(2)
                .build()
                .map_err(|e| QueueError::Config(format!("queue url: {e}")))?;
            Ok(Backend::Cluster {
                client: Box::new(client),
                conns: (0..pool_size.max(1)).map(|_| Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
            })
        } else {
            if url.contains(',') {
                return Err(QueueError::Config(
                    "queue url lists several nodes but cluster = false".into(),
                ));
            }
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout));
            let manager = deadpool_redis::Manager::new_with_config(url, config)
                .map_err(|e| QueueError::Config(format!("queue url: {e}")))?;
            let pool = Pool::builder(manager)
                .max_size(pool_size.max(1))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(connect_timeout + response_timeout))
                .create_timeout(Some(connect_timeout))
                .recycle_timeout(Some(response_timeout))
                .build()
                .map_err(|e| QueueError::Config(format!("queue pool: {e}")))?;
            let slots = (0..pool_size.max(1)).map(|_| Mutex::new(None)).collect();
            Ok(Backend::Single {
                pool,
                slots,
                next: AtomicUsize::new(0),
                generation: Arc::new(AtomicU64::new(0)),
            })
        }
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster { .. })
    }

    /// A connection: the next one in turn.
    pub(crate) async fn get(&self) -> Result<Conn, QueueError> {
        self.get_at(self.reserve(1)).await
    }

    /// Takes the next `count` connections in turn at once (for calls that must not share a connection, as far
    /// as there are connections enough): the number to give [`Self::get_at`] for the first; the others follow.
    pub(crate) fn reserve(&self, count: usize) -> usize {
        match self {
            Backend::Single { next, .. } | Backend::Cluster { next, .. } => {
                next.fetch_add(count, Ordering::Relaxed)
            }
        }
    }

    /// Connection number `number` (modulo their count), made when it has none (or, on a single server, when
    /// it broke).
    pub(crate) async fn get_at(&self, number: usize) -> Result<Conn, QueueError> {
        match self {
            Backend::Single {
                pool,
                slots,
                generation,
                ..
            } => {
                let slot = &slots[number % slots.len()];
                let mut guard = slot.lock().await;
                if let Some(s) = guard.as_ref()
                    && s.state.usable()
                {
                    return Ok(Conn::Single(s.clone()));
                }
                *guard = None;
                // Read before the connection is made: a failure meanwhile marks it stale as well.
                let born = generation.load(Ordering::Relaxed);
                let obj = pool.get().await.map_err(pool_error)?;
                let shared = Shared {
                    conn: deadpool_redis::Connection::take(obj),
                    state: ConnState {
                        broken: Arc::new(AtomicBool::new(false)),
                        born,
                        generation: generation.clone(),
                    },
                };
                *guard = Some(shared.clone());
                Ok(Conn::Single(shared))
            }
            Backend::Cluster { client, conns, .. } => {
                let mut guard = conns[number % conns.len()].lock().await;
                if let Some(c) = guard.as_ref() {
                    return Ok(Conn::Cluster(c.clone()));
                }
                let c = client.get_async_connection().await.map_err(redis_error)?;
                *guard = Some(c.clone());
                Ok(Conn::Cluster(c))
            }
        }
    }
}

/// The single server's pool handed out no connection, so the call was never sent: an outage here is
/// [`QueueError::NotSent`]. (Only here: the cluster client retries a call by itself, and its last error,
/// even a refused connection, does not tell whether an earlier try was applied.)
fn pool_error(e: PoolError) -> QueueError {
    let error = match e {
        PoolError::Backend(e) => redis_error(e),
        PoolError::Timeout(t) => QueueError::Unavailable(format!("redis: no connection ({t:?} timeout)")),
        other => QueueError::Unavailable(format!("redis pool: {other}")),
    };
    match error {
        QueueError::Unavailable(m) => QueueError::NotSent(m),
        other => other,
    }
}

/// Maps a Redis error: outages (I/O, timeouts, refused or dropped connections, cluster down, loading,
/// read-only replica after failover, a server out of memory, which refuses writes until it is given room,
/// busy with a long script, refusing writes after a failed save, or short of replicas) are
/// [`QueueError::Unavailable`]; anything else is a backend error.
pub(crate) fn redis_error(e: RedisError) -> QueueError {
    let outage = e.is_io_error()
        // Out of memory, a script or function running too long (BUSY), a failed RDB save refusing writes
        // (MISCONF), too few replicas for `min-replicas-to-write` (NOREPLICAS): each passes by itself.
        || matches!(e.code(), Some("OOM" | "BUSY" | "MISCONF" | "NOREPLICAS"))
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if outage {
        QueueError::Unavailable(format!("redis: {e}"))
    } else if e.detail().is_some_and(|d| {
        let d = d.to_ascii_lowercase();
        d.starts_with("unknown command") && (d.contains("fcall") || d.contains("function"))
    }) {
        QueueError::Backend(format!(
            "redis: {e} (tern's queue runs its operations as Redis Functions: it needs Redis 7.0 or later)"
        ))
    } else {
        QueueError::Backend(format!("redis: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(resp: &[u8]) -> RedisError {
        match redis::parse_redis_value(resp) {
            Ok(Value::ServerError(e)) => e.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn a_redis_without_functions_is_a_backend_error_that_says_what_is_needed() {
        // Redis 6 quotes the command with backticks, 7 with quotes.
        for reply in [
            &b"-ERR unknown command `FCALL`, with args beginning with: `tern_0_claim`, \r\n"[..],
            &b"-ERR unknown command 'FUNCTION', with args beginning with: 'LOAD' \r\n"[..],
        ] {
            match redis_error(server_error(reply)) {
                QueueError::Backend(m) => assert!(m.contains("Redis 7.0 or later"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn only_the_single_servers_pool_says_that_nothing_was_sent() {
        let port = tern_testkit::free_port().expect("a free port");
        let url = format!("redis://127.0.0.1:{port}");
        let (connect, respond) = (Duration::from_millis(500), Duration::from_secs(1));
        let single = Backend::new(&url, false, 1, connect, respond).expect("single");
        match single.get().await {
            Err(QueueError::NotSent(m)) => assert!(m.to_ascii_lowercase().contains("refused"), "{m}"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("connected to a free port"),
        }
        let cluster = Backend::new(&url, true, 1, connect, respond).expect("cluster");
        match cluster.get().await {
            Err(e) => assert!(matches!(e, QueueError::Unavailable(_)), "{e:?}"),
            Ok(_) => panic!("connected to a free port"),
        }
        let timeout = pool_error(PoolError::Timeout(deadpool_redis::TimeoutType::Wait));
        assert!(matches!(timeout, QueueError::NotSent(_)), "{timeout:?}");
    }

    #[test]
    fn a_dropped_connection_means_the_server_went_away_and_a_timeout_does_not() {
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert!(server_gone(&io(std::io::ErrorKind::BrokenPipe)));
        assert!(server_gone(&io(std::io::ErrorKind::ConnectionReset)));
        let timeout = io(std::io::ErrorKind::TimedOut);
        assert!(breaks_connection(&timeout) && !server_gone(&timeout));
    }

    #[test]
    fn outages_are_unavailable_and_a_missing_function_is_not() {
        for reply in [
            &b"-OOM command not allowed\r\n"[..],
            b"-LOADING loading\r\n",
            b"-READONLY no\r\n",
        ] {
            assert!(redis_error(server_error(reply)).is_unavailable());
        }
        assert!(!redis_error(server_error(b"-ERR Function not found\r\n")).is_unavailable());
    }
}
