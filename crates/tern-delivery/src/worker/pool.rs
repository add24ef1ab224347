//! The worker's connections: its `max_connections` slots, the idle pool with the queue holds that keep
//! idle connections' domain slots, and the reaper that closes idle connections in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_core::Shutdown;
use tern_core::time::now_ms;
use tern_queue::{ClaimedJob, SlotHold};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tracing::debug;

use super::trace::TraceSession;
use super::{Inner, lock};
use crate::smtp::{ConnectError, SmtpClient};

/// How much longer than `idle_connection_time` a hold lasts: time for the idle reaper to notice and for
/// QUIT, so that the hold never lapses while its connection is still open (it is dropped explicitly on
/// close; this only matters when the worker dies).
const HOLD_MARGIN: Duration = Duration::from_secs(10);
/// How many idle connections a stopping worker closes at once.
const CLOSE_AT_ONCE: usize = 64;

/// An open connection as the worker keeps it: the client, the worker slot it takes, its reuse count, and
/// its live trace session.
pub(super) struct Connection {
    pub(super) client: SmtpClient,
    /// One of the worker's `max_connections` slots, given back when the connection is dropped.
    _slot: OwnedSemaphorePermit,
    /// Transactions started on it, against `messages_per_connection`.
    pub(super) transactions: u32,
    /// Its live SMTP trace session (when the worker has a trace bus); says `close` when dropped.
    pub(super) trace: Option<Arc<TraceSession>>,
    /// Unique in the process: tells a connection apart from the one before it in the same place.
    pub(super) id: u64,
}

/// The source of [`Connection::id`].
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

impl Connection {
    /// A new connection holding `slot`, traced by `trace`.
    pub(super) fn new(
        client: SmtpClient,
        slot: OwnedSemaphorePermit,
        trace: Option<Arc<TraceSession>>,
    ) -> Connection {
        Connection {
            client,
            _slot: slot,
            transactions: 0,
            trace,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Whether it can take another message: still usable, and under `limit` transactions.
    pub(super) fn reusable(&self, limit: u32) -> bool {
        self.client.is_usable() && self.transactions < limit
    }

    /// QUIT (when still usable) and close; the slot goes back.
    pub(super) async fn quit(self) {
        let usable = self.client.is_usable();
        self.client.quit().await;
        if let Some(trace) = &self.trace {
            trace.close(if usable {
                "closed after QUIT"
            } else {
                "closed (the connection had failed)"
            });
        }
    }
}

/// A connection in the idle pool.
pub(super) struct Idle {
    since: Instant,
    connection: Connection,
    /// The domain slot this idle connection keeps (none when the queue could not keep one).
    hold: Option<SlotHold>,
}

/// Closes idle connections that have idled their time, or whose hold is about to lapse, until `shutdown`.
pub(super) async fn idle_reaper(inner: Arc<Inner>, shutdown: Shutdown) {
    let max_idle = inner.cfg.idle_connection_time.get();
    let tick = (max_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        // A connection closes when it has idled its time, or before its hold lapses (the hold's deadline was
        // set when the claim ended, a little before the connection went idle), so that no open connection is
        // left without a slot.
        let hold_ends_soon = now_ms() + u64::try_from((HOLD_MARGIN / 2).as_millis()).unwrap_or(0);
        let expired: Vec<Idle> = {
            let mut idle = lock(&inner.idle);
            let mut out = Vec::new();
            for v in idle.values_mut() {
                let (old, keep): (Vec<Idle>, Vec<Idle>) = v.drain(..).partition(|i| {
                    i.since.elapsed() >= max_idle
                        || i.hold.as_ref().is_some_and(|h| h.until_ms <= hold_ends_soon)
                });
                *v = keep;
                out.extend(old);
            }
            idle.retain(|_, v| !v.is_empty());
            out
        };
        // At once, so that one slow QUIT does not keep the others (and their slots) open.
        let mut closing = JoinSet::new();
        for i in expired {
            debug!(mx = %i.connection.client.server(), "closing idle connection");
            let inner = inner.clone();
            closing.spawn(async move { inner.close_idle(i).await });
        }
        while closing.join_next().await.is_some() {}
    }
}

impl Inner {
    /// An idle connection for `key` (the one whose hold the claim took over, if any); a hold that the
    /// claim did not take over is given up, as the claim's own slot now covers the connection.
    pub(super) async fn take_idle(&self, key: &str, took_hold: Option<&str>) -> Option<Connection> {
        let taken = self.take_idle_of_key(key, took_hold).await;
        if let Some(stale) = took_hold.and_then(|t| self.take_idle_holding(t)) {
            // The claim took over the hold of a connection pooled under another key: one to the domain's
            // former destination (a reroute set or removed since). Its slot is the claim's now, and it
            // would carry mail to the wrong host: closed.
            debug!(mx = %stale.connection.client.server(), "closing an idle connection to the domain's former destination");
            stale.connection.quit().await;
        }
        taken
    }

    /// The idle connection under any key that keeps the hold `hold_id`, taken out of the pool.
    fn take_idle_holding(&self, hold_id: &str) -> Option<Idle> {
        let mut idle = lock(&self.idle);
        let (key, pos) = idle.iter().find_map(|(k, v)| {
            v.iter()
                .position(|i| i.hold.as_ref().is_some_and(|h| h.id == hold_id))
                .map(|p| (k.clone(), p))
        })?;
        let v = idle.get_mut(&key)?;
        let i = v.remove(pos);
        if v.is_empty() {
            idle.remove(&key);
        }
        Some(i)
    }

    /// [`Inner::take_idle`] within `key`.
    async fn take_idle_of_key(&self, key: &str, took_hold: Option<&str>) -> Option<Connection> {
        let taken = {
            let mut idle = lock(&self.idle);
            let v = idle.get_mut(key)?;
            let pos = v
                .iter()
                .position(|i| took_hold.is_some_and(|t| i.hold.as_ref().is_some_and(|h| h.id == t)))
                .or_else(|| v.len().checked_sub(1));
            let t = pos.map(|p| v.remove(p));
            if v.is_empty() {
                idle.remove(key);
            }
            t
        }?;
        if let Some(h) = taken.hold.as_ref()
            && Some(h.id.as_str()) != took_hold
        {
            self.drop_hold(h).await;
        }
        Some(taken.connection)
    }

    /// Keeps `connection` for the next batch to `key`, with the domain slot `hold` it keeps.
    pub(super) fn put_idle(&self, key: &str, mut connection: Connection, hold: Option<SlotHold>) {
        connection.client.going_idle();
        lock(&self.idle).entry(key.to_string()).or_default().push(Idle {
            since: Instant::now(),
            connection,
            hold,
        });
    }

    /// The holds of idle connections that will still be idle-usable for a while (one per domain), for
    /// the next claim.
    pub(super) fn live_holds(&self) -> Vec<SlotHold> {
        let max_idle = self.cfg.idle_connection_time.get();
        let idle = lock(&self.idle);
        let mut out: Vec<SlotHold> = Vec::new();
        for i in idle.values().flatten() {
            if let Some(h) = &i.hold
                && i.since.elapsed() + Duration::from_millis(100) < max_idle
                && !out.iter().any(|o| o.domain == h.domain)
            {
                out.push(h.clone());
            }
        }
        out
    }

    /// Gives a domain slot back.
    pub(super) async fn drop_hold(&self, hold: &SlotHold) {
        if let Err(e) = self.queue.drop_slot(hold).await {
            // The hold lapses by itself at its deadline.
            debug!(domain = %hold.domain, hold = %hold.id, error = %e, "dropping a slot hold failed");
        }
    }

    /// Closes every connection of `idle` (a stopping worker's pool), [`CLOSE_AT_ONCE`] at a time, so that
    /// peers slow to answer QUIT cost about one QUIT timeout, not one each.
    pub(super) async fn close_all_idle(self: &Arc<Self>, idle: Vec<Idle>) {
        let mut closing = JoinSet::new();
        for i in idle {
            if closing.len() >= CLOSE_AT_ONCE {
                closing.join_next().await;
            }
            let inner = self.clone();
            closing.spawn(async move { inner.close_idle(i).await });
        }
        while closing.join_next().await.is_some() {}
    }

    /// Closes an idle connection, then gives its slot back.
    pub(super) async fn close_idle(&self, i: Idle) {
        i.connection.quit().await;
        if let Some(h) = &i.hold {
            self.drop_hold(h).await;
        }
    }

    /// Keeps the domain's slot of claim `cj` for a connection that goes idle; `None` (close the
    /// connection) when the queue cannot keep it.
    pub(super) async fn hold_for_idle(&self, cj: &ClaimedJob) -> Option<SlotHold> {
        let span = self.cfg.idle_connection_time.get() + HOLD_MARGIN;
        match self
            .queue
            .hold_slot(&cj.lease.domain, &cj.lease.token, span)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                debug!(domain = %cj.lease.domain, error = %e, "keeping the slot for an idle connection failed");
                None
            }
        }
    }

    /// Frees a connection slot by taking the longest-idle connection out of the pool, if any.
    fn evict_oldest_idle(&self) -> Option<Idle> {
        let mut idle = lock(&self.idle);
        let key = idle
            .iter()
            .filter_map(|(k, v)| v.iter().map(|i| i.since).min().map(|t| (t, k.clone())))
            .min()
            .map(|(_, k)| k)?;
        let v = idle.get_mut(&key)?;
        let pos = v
            .iter()
            .enumerate()
            .min_by_key(|(_, i)| i.since)
            .map(|(p, _)| p)?;
        let s = v.remove(pos);
        if v.is_empty() {
            idle.remove(&key);
        }
        Some(s)
    }

    /// One of the worker's `max_connections` slots, for a new connection. When all are taken, the
    /// longest-idle connection is closed (without QUIT) to free one; otherwise this waits.
    pub(super) async fn connection_slot(&self) -> Result<OwnedSemaphorePermit, ConnectError> {
        if let Ok(p) = self.connections.clone().try_acquire_owned() {
            return Ok(p);
        }
        if let Some(i) = self.evict_oldest_idle() {
            let hold = i.hold.clone();
            drop(i);
            if let Some(h) = &hold {
                self.drop_hold(h).await;
            }
        }
        self.connections
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ConnectError::Unreachable("worker is shutting down".into()))
    }
}
