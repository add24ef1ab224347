//! Waiting for work ([`crate::Queue::wait_for_work`]): idle workers block on the shards' wake lists instead
//! of polling.
//!
//! **Signals.** Each shard has a wake list `wake` (see `keys.rs`). The functions that make work claimable
//! push a token into it (`wake()` in `ops/shared.lua`): an enqueue of jobs due now in a domain that was not
//! due and has a free slot (one token per such domain), a slot freed in a domain with due jobs (the last job
//! of a claim completed, released or deleted, a hold dropped), a release, the reaper's returned jobs, an
//! operator's retry or bounce, a resume. A token is pushed only while the list holds fewer than 8, so a
//! shard where no one waits keeps at most 8; a signal costs an `LLEN`, and an `RPUSH` when there is room.
//! A claim that leaves nothing due in its shard drops the shard's shared list (`drop_old_wakes` in
//! `ops/shared.lua`): its tokens announced work that claims took without waiting for them, and would each
//! wake a worker to find nothing. Holders' own lists are left alone.
//!
//! **The holder.** Every handle has a waiter id (a ULID) and its own wake list per shard, `wake:<waiter>`;
//! the holds it takes for idle connections name it (`h:<claim>/<waiter>`). An enqueue that makes a domain
//! due whose slots are all taken, one by such a hold, can only be claimed by the holder: the token goes to
//! the holder's own list, which only its handle waits on.
//!
//! **Waits.** A blocked `BLPOP` would stall every other call sharing its connection, so waits get their own
//! connections, made by listener tasks on the first wait and kept while the queue lives: on one server one
//! connection whose `BLPOP` names every shard's wake lists; on a Cluster, where a blocking call must stay in
//! one slot (and each shard is its own slot, by its hash tag), one connection per shard, to the master of
//! the shard's slot (found by following `MOVED`, so a failover or a resharding is followed too). Grouping
//! shards by master would not save connections: one connection blocks on one slot at a time. A queue
//! handle's waiters share its listeners: a listener blocks while anyone waits (for as long as the longest
//! wait, at most [`MAX_BLOCK`] per call) and hands each token to one waiter. Redis gives a token to one
//! blocked client (the one blocked longest), so each token wakes one waiter across the whole fleet: no
//! thundering herd. A token that reaches a listener after its waiters left (they timed out, or a Cluster
//! listener of another shard woke them first) is pushed back to its list for the next waiter, so no wake is
//! lost; and a token pushed while no one waited stays in the list, so work that arrives just before a wait
//! ends the wait at once.
//!
//! **Quiet shards.** Each token taken also tells the handle's claims to visit its shard again (`quiet.rs`:
//! claims skip the shards where they last found nothing, until a token from the shard or a time).
//!
//! **Timeouts.** A `BLPOP` blocks at most the longest waiter's time left (at most [`MAX_BLOCK`]) and is given
//! `response_timeout` on top of that to answer; a connection that does not answer in time, or fails, is
//! dropped (which also ends its block on the server) and made again after a pause. While Redis cannot be
//! reached, waits simply run their course: the next claim reports the outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::RedisQueueOptions;
use super::codec;
use super::keys::Keys;
use super::quiet::QuietShards;
use crate::QueueError;
use crate::model::Wakeup;

/// The longest one `BLPOP` blocks; a longer wait blocks again.
const MAX_BLOCK: Duration = Duration::from_secs(10);
/// The shortest block (Redis takes the timeout in seconds, with decimals).
const MIN_BLOCK: Duration = Duration::from_millis(10);
/// The pause after a listener's connection failed, doubled per failure in a row up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Who waits now, and until when the longest of them waits.
#[derive(Clone, Copy, Debug, Default)]
struct Demand {
    waiting: usize,
    until: Option<Instant>,
}

/// Where a listener connects, and how it finds the node of its keys.
#[derive(Clone)]
enum Place {
    /// One server.
    Single(Box<ConnectionInfo>),
    /// A cluster: the seeds (a listener starts at one of them and follows `MOVED` to the master of its
    /// shard's slot).
    Cluster(Vec<ConnectionInfo>),
}

/// The timeouts of a listener's connection.
#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    response: Duration,
}

/// A queue handle's waiting: its waiters, the wakes its listeners hand out, and what the listeners need.
pub(crate) struct Wakes {
    /// The shards this handle's claims skip; a token taken from a shard's list ends its quiet.
    quiet: Arc<QuietShards>,
    demand: watch::Sender<Demand>,
    /// One permit per token a listener took for a waiter.
    wakes: Arc<Semaphore>,
    started: AtomicBool,
    place: Place,
    /// The keys each listener blocks on: one list of every shard's wake lists on one server, one list per
    /// shard on a cluster (the shared wake list and this handle's own).
    keys: Vec<Vec<String>>,
    /// The shard of each of `keys`, in the same places.
    key_shards: Vec<Vec<u16>>,
    timeouts: Timeouts,
    /// This handle's waiter id, naming its own wake lists (`wake:<waiter>`) and its slot holds.
    waiter: String,
}

impl Wakes {
    /// The waiting of a queue with these options and keys; nothing is connected until the first wait.
    pub(crate) fn new(
        opts: &RedisQueueOptions,
        keys: &Keys,
        quiet: Arc<QuietShards>,
    ) -> Result<Wakes, QueueError> {
        let waiter = ulid::Ulid::generate().to_string();
        // Per shard: the shared wake list, and this handle's own.
        let lists: Vec<[String; 2]> = (0..keys.shards())
            .map(|s| [keys.key(s, "wake"), keys.key(s, &format!("wake:{waiter}"))])
            .collect();
        let bad_url = |e: redis::RedisError| QueueError::Config(format!("queue url: {e}"));
        let shards: Vec<u16> = (0..keys.shards()).collect();
        let (place, keys, key_shards) = if opts.cluster {
            let seeds = opts
                .url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.into_connection_info().map_err(bad_url))
                .collect::<Result<Vec<_>, _>>()?;
            if seeds.is_empty() {
                return Err(QueueError::Config("queue url has no cluster seed".into()));
            }
            let key_shards = shards.iter().map(|&s| vec![s, s]).collect();
            (
                Place::Cluster(seeds),
                lists.into_iter().map(Vec::from).collect(),
                key_shards,
            )
        } else {
            let info = opts.url.as_str().into_connection_info().map_err(bad_url)?;
            let (shared, own): (Vec<String>, Vec<String>) =
                lists.into_iter().map(|[shared, own]| (shared, own)).unzip();
            (
                Place::Single(Box::new(info)),
                vec![[shared, own].concat()],
                vec![[shards.clone(), shards].concat()],
            )
        };
        Ok(Wakes {
            quiet,
            demand: watch::Sender::new(Demand::default()),
            wakes: Arc::new(Semaphore::new(0)),
            started: AtomicBool::new(false),
            place,
            keys,
            key_shards,
            timeouts: Timeouts {
                connect: opts.connect_timeout,
                response: opts.response_timeout,
            },
            waiter,
        })
    }

    /// This handle's waiter id (a ULID): the holds it takes name it, so that an enqueue to a domain whose
    /// free slot is held by this handle's idle connection wakes this handle's waiters.
    pub(crate) fn waiter(&self) -> &str {
        &self.waiter
    }

    /// [`crate::Queue::wait_for_work`].
    pub(crate) async fn wait(&self, max_wait: Duration) -> Wakeup {
        if max_wait.is_zero() {
            return Wakeup::TimedOut;
        }
        self.start();
        let deadline = Instant::now() + max_wait;
        let _waiting = Waiting::new(&self.demand, deadline);
        match tokio::time::timeout_at(deadline, self.wakes.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Wakeup::Woken
            }
            _ => Wakeup::TimedOut,
        }
    }

    /// Starts the listeners, once.
    fn start(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        for (index, (keys, shards)) in self.keys.iter().zip(&self.key_shards).enumerate() {
            let listener = Listener {
                demand: self.demand.subscribe(),
                wakes: self.wakes.clone(),
                quiet: self.quiet.clone(),
                keys: keys.clone(),
                shards: shards.clone(),
                place: self.place.clone(),
                seed: index,
                timeouts: self.timeouts,
            };
            tokio::spawn(listener.run());
        }
    }
}

/// A waiter, counted in the demand while it lives.
struct Waiting<'a> {
    demand: &'a watch::Sender<Demand>,
}

impl<'a> Waiting<'a> {
    fn new(demand: &'a watch::Sender<Demand>, until: Instant) -> Waiting<'a> {
        demand.send_modify(|d| {
            d.waiting += 1;
            d.until = Some(d.until.map_or(until, |u| u.max(until)));
        });
        Waiting { demand }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.demand.send_modify(|d| {
            d.waiting = d.waiting.saturating_sub(1);
            if d.waiting == 0 {
                d.until = None;
            }
        });
    }
}

/// One dedicated connection blocking on wake lists while anyone waits.
struct Listener {
    demand: watch::Receiver<Demand>,
    wakes: Arc<Semaphore>,
    quiet: Arc<QuietShards>,
    keys: Vec<String>,
    /// The shard of each of `keys`.
    shards: Vec<u16>,
    place: Place,
    /// Which seed a cluster listener starts at (they spread over the seeds).
    seed: usize,
    timeouts: Timeouts,
}

/// What one `BLPOP` brought.
enum Popped {
    /// Nothing before its timeout.
    Nothing,
    /// A token from this list.
    Token(String, Vec<u8>),
    /// The keys live on another node (a cluster's `MOVED`): connect there.
    Moved(String),
    /// The connection failed or did not answer in time.
    Failed(String),
}

impl Listener {
    async fn run(mut self) {
        let mut node = self.first_node();
        let mut conn: Option<MultiplexedConnection> = None;
        let mut pause = FIRST_PAUSE;
        loop {
            let until = match self.demand.wait_for(|d| d.waiting > 0).await {
                Ok(d) => d.until,
                // The queue was dropped.
                Err(_) => return,
            };
            let block = until
                .map_or(MAX_BLOCK, |u| u.saturating_duration_since(Instant::now()))
                .clamp(MIN_BLOCK, MAX_BLOCK);
            let connection = match conn.as_mut() {
                Some(c) => c,
                None => match self.connect(&node).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "wake listener: cannot connect; waits poll meanwhile");
                        node = self.next_seed(node);
                        if !self.pause(&mut pause).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let popped = tokio::select! {
                popped = blpop(connection, &self.keys, block, self.timeouts.response) => popped,
                () = closed(&mut self.demand) => return,
            };
            match popped {
                Popped::Nothing => pause = FIRST_PAUSE,
                Popped::Token(list, token) => {
                    pause = FIRST_PAUSE;
                    // Whoever claims next, here or (given back) elsewhere, this handle looks there again.
                    if let Some(shard) = self.shard_of(&list) {
                        self.quiet.token(shard);
                    }
                    let waiting = self.demand.borrow().waiting;
                    if waiting > self.wakes.available_permits() {
                        self.wakes.add_permits(1);
                    } else {
                        // No one here wants it any more: back to the list, for the next waiter anywhere.
                        give_back(connection, &list, token, self.timeouts.response).await;
                    }
                }
                Popped::Moved(address) => {
                    conn = None;
                    node = self.at(&address).unwrap_or(node);
                }
                Popped::Failed(e) => {
                    tracing::debug!(error = %e, "wake listener: connection failed; connecting again");
                    conn = None;
                    node = self.next_seed(node);
                    if !self.pause(&mut pause).await {
                        return;
                    }
                }
            }
        }
    }

    /// The shard of the wake list `list`, one of this listener's keys.
    fn shard_of(&self, list: &str) -> Option<u16> {
        let place = self.keys.iter().position(|k| k == list)?;
        self.shards.get(place).copied()
    }

    /// Waits `pause` (doubling it for next time); false when the queue was dropped meanwhile.
    async fn pause(&mut self, pause: &mut Duration) -> bool {
        let wait = *pause;
        *pause = (*pause * 2).min(MAX_PAUSE);
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = closed(&mut self.demand) => false,
        }
    }

    /// Where the listener connects first: the server, or the cluster seed of its turn.
    fn first_node(&self) -> ConnectionInfo {
        match &self.place {
            Place::Single(info) => info.as_ref().clone(),
            Place::Cluster(seeds) => seeds[self.seed % seeds.len()].clone(),
        }
    }

    /// After a failure: the server again, or the next cluster seed (the node that failed may be gone; a
    /// seed redirects to the shard's master).
    fn next_seed(&mut self, failed: ConnectionInfo) -> ConnectionInfo {
        match &self.place {
            Place::Single(_) => failed,
            Place::Cluster(seeds) => {
                self.seed = self.seed.wrapping_add(1);
                seeds[self.seed % seeds.len()].clone()
            }
        }
    }

    /// A cluster node named by a `MOVED` answer (`host:port`), reached as the seeds are (user, password,
    /// TLS).
    fn at(&self, address: &str) -> Option<ConnectionInfo> {
        let Place::Cluster(seeds) = &self.place else {
            return None;
        };
        let (host, port) = address.rsplit_once(':')?;
        let port = port.parse::<u16>().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let seed = seeds.first()?;
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls {
                insecure, tls_params, ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        Some(seed.clone().set_addr(addr))
    }

    /// A dedicated connection to `node`, used by this listener alone. Its requests have no timeout of their
    /// own: each `BLPOP` is bounded by its block time plus `response_timeout`.
    async fn connect(&self, node: &ConnectionInfo) -> Result<MultiplexedConnection, String> {
        let client = redis::Client::open(node.clone()).map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeouts.connect))
            .set_response_timeout(None);
        match tokio::time::timeout(
            self.timeouts.connect + self.timeouts.response,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }
}

/// Resolves when the queue (the demand's sender) is dropped.
async fn closed(demand: &mut watch::Receiver<Demand>) {
    while demand.changed().await.is_ok() {}
}

/// One `BLPOP` of `keys` for at most `block`, given `response` more to answer.
async fn blpop(
    conn: &mut MultiplexedConnection,
    keys: &[String],
    block: Duration,
    response: Duration,
) -> Popped {
    let mut cmd = redis::cmd("BLPOP");
    cmd.arg(keys).arg(format!("{:.3}", block.as_secs_f64()));
    match tokio::time::timeout(block + response, cmd.query_async::<Value>(conn)).await {
        Err(_) => Popped::Failed(format!("BLPOP did not answer within {:?}", block + response)),
        Ok(Err(e)) => match e.redirect_node() {
            Some((address, _)) => Popped::Moved(address.to_string()),
            None => Popped::Failed(e.to_string()),
        },
        Ok(Ok(Value::Nil)) => Popped::Nothing,
        Ok(Ok(v)) => {
            let items = codec::items(&v);
            match (
                items.first().and_then(codec::text),
                items.get(1).and_then(codec::bytes),
            ) {
                (Some(list), Some(token)) => Popped::Token(list, token),
                _ => Popped::Nothing,
            }
        }
    }
}

/// Pushes a token back to the head of its list. A failure only costs that wake (a worker's poll finds the
/// work).
async fn give_back(conn: &mut MultiplexedConnection, list: &str, token: Vec<u8>, response: Duration) {
    let mut cmd = redis::cmd("LPUSH");
    cmd.arg(list).arg(token);
    match tokio::time::timeout(response, cmd.query_async::<Value>(conn)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "wake listener: giving a token back failed"),
        Err(_) => tracing::debug!("wake listener: giving a token back timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(shards: u16) -> Arc<QuietShards> {
        Arc::new(QuietShards::new(shards, 50))
    }

    fn opts(url: &str, cluster: bool) -> RedisQueueOptions {
        RedisQueueOptions {
            url: url.into(),
            cluster,
            shards: 3,
            ..RedisQueueOptions::default()
        }
    }

    #[test]
    fn one_server_blocks_on_every_shard_at_once_and_a_cluster_per_shard() {
        let keys = Keys::new("t", 3);
        let single = Wakes::new(&opts("redis://127.0.0.1:1", false), &keys, quiet(3)).expect("wakes");
        let own = |s: u16| format!("{{t:s{s:02}}}:wake:{}", single.waiter());
        assert_eq!(
            single.keys,
            [vec![
                "{t:s00}:wake".to_string(),
                "{t:s01}:wake".into(),
                "{t:s02}:wake".into(),
                own(0),
                own(1),
                own(2)
            ]]
        );
        let cluster = Wakes::new(
            &opts("redis://u:p@127.0.0.1:1, rediss://127.0.0.1:2", true),
            &keys,
            quiet(3),
        )
        .expect("wakes");
        let own = |s: u16| format!("{{t:s{s:02}}}:wake:{}", cluster.waiter());
        assert_eq!(
            cluster.keys,
            [
                vec!["{t:s00}:wake".to_string(), own(0)],
                vec!["{t:s01}:wake".into(), own(1)],
                vec!["{t:s02}:wake".into(), own(2)]
            ]
        );
        assert_eq!(single.key_shards, [vec![0, 1, 2, 0, 1, 2]]);
        assert_eq!(cluster.key_shards, [vec![0, 0], vec![1, 1], vec![2, 2]]);
        assert_ne!(single.waiter(), cluster.waiter(), "every handle has its own");
    }

    #[test]
    fn a_moved_answer_is_followed_with_the_seeds_credentials_and_tls() {
        let keys = Keys::new("t", 1);
        let wakes = Wakes::new(&opts("rediss://u:p@seed.test:7000", true), &keys, quiet(1)).expect("wakes");
        let listener = Listener {
            demand: wakes.demand.subscribe(),
            wakes: wakes.wakes.clone(),
            quiet: wakes.quiet.clone(),
            keys: vec![],
            shards: vec![],
            place: wakes.place.clone(),
            seed: 0,
            timeouts: wakes.timeouts,
        };
        let node = listener.at("10.0.0.7:7001").expect("an address");
        match node.addr() {
            ConnectionAddr::TcpTls { host, port, .. } => {
                assert_eq!((host.as_str(), *port), ("10.0.0.7", 7001))
            }
            other => panic!("not TLS: {other:?}"),
        }
        assert_eq!(node.redis_settings().username(), Some("u"));
        assert!(listener.at("no port").is_none());
    }
}
