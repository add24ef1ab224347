//! The worker loop: claim a batch of one domain's jobs, route it, deliver it over a reused session, complete
//! each job with its per-recipient outcome (queuing DSNs first), and shut down gracefully.
//!
//! Workers keep no state that matters: jobs are owned under a lease, heartbeated while a batch runs, and
//! released on shutdown; a worker that dies leaves its jobs to the reaper. Idle sessions are kept per
//! destination for `idle_connection_time` and reused by the next batch of that destination. An idle
//! session keeps its domain's concurrency slot as a queue hold ([`Queue::hold_slot`]), so that busy and
//! idle connections together stay within `connections_per_domain` cluster-wide; the next claim of that
//! domain takes the hold over, and closing the session gives it up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tern_config::DeliveryConfig;
use tern_core::time::{from_unix_ms, now_ms};
use tern_core::{JobId, Recipient, RetrySchedule};
use tern_queue::{
    Claim, ClaimedJob, DeliveryAttempt, JobLease, NewMessage, Outcome, OutcomeKind, Queue, RecipientStatus,
    SlotHold,
};
use tern_smtp::Reply;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dsn::{DsnAction, DsnContext, DsnRecipient, build_dsn, idempotency_key};
use crate::error::DeliveryError;
use crate::outcome::{DecideContext, decide};
use crate::route::{Host, Router};
use crate::smtp::{ConnectError, Session, SessionSettings, Timeouts, TlsClients, send_message};

/// Originals larger than this are returned in DSNs as headers only.
const DSN_RETURN_LIMIT: usize = 1 << 20;
/// How much longer than `idle_connection_time` a hold lasts: time for the idle reaper to notice and for
/// QUIT, so that the hold never lapses while its connection is still open (it is dropped explicitly on
/// close; this only matters when the worker dies).
const HOLD_MARGIN: Duration = Duration::from_secs(10);
/// The first and the longest pause between attempts to record an outcome while the queue is unreachable.
const COMPLETE_RETRY_FIRST: Duration = Duration::from_millis(250);
const COMPLETE_RETRY_MAX: Duration = Duration::from_secs(5);
/// The longest pause between claims while claiming fails (the queue is unreachable).
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A delivery worker. Cheap to clone; every clone shares the same connections and state.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Idle {
    since: Instant,
    session: Session,
    /// The domain slot this idle connection keeps (none when the queue could not keep one).
    hold: Option<SlotHold>,
}

struct Inner {
    queue: Arc<dyn Queue>,
    owner: String,
    router: Router,
    settings: SessionSettings,
    retry: RetrySchedule,
    cfg: DeliveryConfig,
    hostname: String,
    lease: Duration,
    connections: Arc<Semaphore>,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    leases: Mutex<HashMap<JobId, JobLease>>,
}

impl Worker {
    /// A worker taking work from `queue` as `owner` (unique per worker process, e.g. host name and pid).
    pub fn new(
        cfg: &DeliveryConfig,
        queue: Arc<dyn Queue>,
        owner: impl Into<String>,
    ) -> Result<Worker, DeliveryError> {
        cfg.validate()
            .map_err(|(k, m)| DeliveryError::Config(format!("delivery.{k}: {m}")))?;
        let retry = cfg
            .retry()
            .map_err(|(k, m)| DeliveryError::Config(format!("delivery.{k}: {m}")))?;
        let hostname = cfg.helo_name.clone().unwrap_or_else(system_hostname);
        let router = Router::new(cfg, &hostname)?;
        let tls = TlsClients::new(cfg.extra_ca_file.as_deref(), cfg.tls_handshake_timeout.get())?;
        let settings = SessionSettings {
            helo: hostname.clone(),
            tls_mode: cfg.tls,
            timeouts: Timeouts {
                connect: cfg.connect_timeout.get(),
                greeting: cfg.greeting_timeout.get(),
                command: cfg.command_timeout.get(),
                mail: cfg.mail_timeout.get(),
                rcpt: cfg.rcpt_timeout.get(),
                data: cfg.data_timeout.get(),
                data_block: cfg.data_block_timeout.get(),
                data_done: cfg.data_done_timeout.get(),
            },
            relay_auth: cfg.relay_username.clone().zip(cfg.relay_password.clone()),
            tls,
        };
        Ok(Worker {
            inner: Arc::new(Inner {
                queue,
                owner: owner.into(),
                router,
                settings,
                retry,
                cfg: cfg.clone(),
                hostname,
                lease: Duration::from_secs(300),
                connections: Arc::new(Semaphore::new(cfg.max_connections as usize)),
                idle: Mutex::new(HashMap::new()),
                leases: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Sets the lease asked for with each claim (the queue's `queue.lease`; default 5 minutes). Jobs are
    /// heartbeated every third of it while their batch runs. Call before [`Worker::run`].
    pub fn with_lease(mut self, lease: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.lease = lease.max(Duration::from_secs(1));
        }
        self
    }

    /// The owner name used with the queue.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Runs until `shutdown` is cancelled: then stops claiming, lets batches under way finish for up to
    /// `delivery.shutdown_grace`, releases every claim left and closes idle connections.
    pub async fn run(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        info!(owner = %inner.owner, hostname = %inner.hostname, "delivery worker started");
        let slots = Arc::new(Semaphore::new(inner.cfg.max_connections as usize));
        let mut tasks = JoinSet::new();
        let reaper = tokio::spawn(idle_reaper(inner.clone(), shutdown.clone()));
        let batch = inner.cfg.messages_per_connection as usize;
        let poll = inner.cfg.poll_interval.get();
        // Claim failures in a row: the pause after one grows with them (see `claim_backoff`).
        let mut failures = 0u32;
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let holds = inner.live_holds();
            match inner
                .queue
                .claim_holding(&inner.owner, batch, inner.lease, &holds)
                .await
            {
                Ok(Some(claim)) => {
                    failures = 0;
                    debug!(domain = %claim.domain, jobs = claim.jobs.len(), claim = %claim.claim_id, "claimed");
                    tasks.spawn(inner.clone().process_claim(claim, shutdown.clone(), permit));
                }
                Ok(None) => {
                    failures = 0;
                    drop(permit);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    failures = failures.saturating_add(1);
                    let pause = claim_backoff(poll, failures, rand::random::<f64>());
                    warn!(error = %e, failures, retry_in = ?pause, "claim failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        info!(owner = %inner.owner, batches = tasks.len(), "delivery worker stopping");
        let grace = inner.cfg.shutdown_grace.get();
        let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(grace = ?grace, "shutdown grace over: interrupting batches under way");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let left: Vec<JobLease> = lock(&inner.leases).drain().map(|(_, l)| l).collect();
        for l in &left {
            if let Err(e) = inner.queue.release(&inner.owner, l).await {
                warn!(job = %l.job, error = %e, "release on shutdown failed");
            }
        }
        // The reaper stops at its next tick; awaiting it lets the closes under way drop their holds.
        let _ = reaper.await;
        let idle: Vec<Idle> = lock(&inner.idle).drain().flat_map(|(_, v)| v).collect();
        for i in idle {
            inner.close_idle(i).await;
        }
        info!(owner = %inner.owner, released = left.len(), "delivery worker stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn idle_reaper(inner: Arc<Inner>, shutdown: CancellationToken) {
    let max_idle = inner.cfg.idle_connection_time.get();
    let tick = (max_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        // A session closes when it has idled its time, or before its hold lapses (the hold's deadline was set
        // when the claim ended, a little before the session went idle), so that no open connection is left
        // without a slot.
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
            debug!(mx = %i.session.mx, "closing idle connection");
            let inner = inner.clone();
            closing.spawn(async move { inner.close_idle(i).await });
        }
        while closing.join_next().await.is_some() {}
    }
}

impl Inner {
    async fn process_claim(
        self: Arc<Self>,
        claim: Claim,
        shutdown: CancellationToken,
        _slot: OwnedSemaphorePermit,
    ) {
        {
            let mut leases = lock(&self.leases);
            for cj in &claim.jobs {
                leases.insert(cj.job.id, cj.lease.clone());
            }
        }
        let ids: Vec<JobId> = claim.jobs.iter().map(|cj| cj.job.id).collect();
        let heartbeat = CancellationToken::new();
        let _stop = heartbeat.clone().drop_guard();
        tokio::spawn(self.clone().heartbeat(ids, heartbeat));

        let mut by_domain: Vec<(String, Vec<ClaimedJob>)> = Vec::new();
        for cj in claim.jobs {
            if cj.job.admin_bounce {
                self.admin_bounce(cj).await;
                continue;
            }
            match by_domain.iter_mut().find(|(d, _)| *d == cj.job.domain) {
                Some((_, v)) => v.push(cj),
                None => by_domain.push((cj.job.domain.clone(), vec![cj])),
            }
        }
        for (domain, jobs) in by_domain {
            self.deliver_domain(&domain, jobs, claim.took_hold.as_deref(), &shutdown)
                .await;
        }
    }

    async fn heartbeat(self: Arc<Self>, ids: Vec<JobId>, stop: CancellationToken) {
        let every = self.lease / 3;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let leases: Vec<JobLease> = {
                let l = lock(&self.leases);
                ids.iter().filter_map(|id| l.get(id).cloned()).collect()
            };
            if leases.is_empty() {
                return;
            }
            for l in leases {
                match self.queue.extend(&self.owner, &l, self.lease).await {
                    Ok(_) => {}
                    // The lease ran out before this heartbeat (a stall longer than the lease): the reaper
                    // will give the job to another worker, which may deliver it again.
                    Err(e @ tern_queue::QueueError::NotOwner { .. }) => {
                        warn!(job = %l.job, error = %e, "lease lost before the attempt ended");
                    }
                    Err(e) => debug!(job = %l.job, error = %e, "lease extension failed"),
                }
            }
        }
    }

    /// Drops the job's lease from the heartbeat's set, unless it belongs to a newer claim of the job (this
    /// worker may have claimed it again after the old lease lapsed).
    fn forget(&self, lease: &JobLease) {
        let mut leases = lock(&self.leases);
        if leases.get(&lease.job).is_some_and(|l| l.token == lease.token) {
            leases.remove(&lease.job);
        }
    }

    async fn release(&self, cj: &ClaimedJob) {
        if let Err(e) = self.queue.release(&self.owner, &cj.lease).await {
            warn!(job = %cj.job.id, error = %e, "release failed");
        }
        self.forget(&cj.lease);
    }

    /// An idle session for `key` (the one whose hold the claim took over, if any); a hold that the
    /// claim did not take over is given up, as the claim's own slot now covers the connection.
    async fn take_idle(&self, key: &str, took_hold: Option<&str>) -> Option<Session> {
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
        Some(taken.session)
    }

    fn put_idle(&self, key: &str, session: Session, hold: Option<SlotHold>) {
        lock(&self.idle).entry(key.to_string()).or_default().push(Idle {
            since: Instant::now(),
            session,
            hold,
        });
    }

    /// The holds of idle sessions that will still be idle-usable for a while (one per domain), for
    /// the next claim.
    fn live_holds(&self) -> Vec<SlotHold> {
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

    async fn drop_hold(&self, hold: &SlotHold) {
        if let Err(e) = self.queue.drop_slot(hold).await {
            // The hold lapses by itself at its deadline.
            debug!(domain = %hold.domain, hold = %hold.id, error = %e, "dropping a slot hold failed");
        }
    }

    /// Closes an idle session, then gives its slot back.
    async fn close_idle(&self, i: Idle) {
        i.session.quit().await;
        if let Some(h) = &i.hold {
            self.drop_hold(h).await;
        }
    }

    /// Keeps the domain's slot of claim `cj` for `session`, which goes idle; `None` (close the session)
    /// when the queue cannot keep it.
    async fn hold_for_idle(&self, cj: &ClaimedJob) -> Option<SlotHold> {
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

    /// Frees a connection slot by taking the longest-idle session out of the pool, if any.
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

    async fn connection_slot(&self) -> Result<OwnedSemaphorePermit, ConnectError> {
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

    /// Tries every host from `start` on (wrapping), and every address of each, until one takes a session.
    async fn connect_any(
        &self,
        domain: &str,
        hosts: &[Host],
        start: usize,
    ) -> Result<(Session, usize), ConnectError> {
        let mut last = ConnectError::Unreachable(format!("no host to try for {domain}"));
        for k in 0..hosts.len() {
            let i = (start + k) % hosts.len();
            let host = &hosts[i];
            for addr in &host.addrs {
                let permit = self.connection_slot().await?;
                match Session::open(host, *addr, &self.settings, Some(permit)).await {
                    Ok(s) => {
                        debug!(domain, mx = %host.name, ip = %addr, tls = ?s.tls, "connected");
                        return Ok((s, i));
                    }
                    Err(e) => {
                        info!(domain, mx = %host.name, ip = %addr, error = ?e, "host not usable, trying the next");
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    async fn deliver_domain(
        &self,
        domain: &str,
        jobs: Vec<ClaimedJob>,
        took_hold: Option<&str>,
        shutdown: &CancellationToken,
    ) {
        let key = if self.cfg.relay_host.is_some() {
            "#relay".to_string()
        } else {
            domain.to_string()
        };
        let mut session = self.take_idle(&key, took_hold).await;
        let mut hold: Option<SlotHold> = None;
        let mut hosts: Option<Vec<Host>> = None;
        let mut host_idx = 0usize;
        let mut jobs = jobs.into_iter();
        let limit = self.cfg.messages_per_connection;
        while let Some(cj) = jobs.next() {
            if shutdown.is_cancelled() {
                self.release(&cj).await;
                for rest in jobs.by_ref() {
                    self.release(&rest).await;
                }
                break;
            }
            let pending: Vec<(u32, &Recipient)> = cj.job.pending().map(|(i, r)| (i, &r.recipient)).collect();
            if pending.is_empty() {
                self.complete(&cj, Outcome::delivered()).await;
                continue;
            }
            let mut tries = 0;
            let mut other_hosts_tried = 0usize;
            loop {
                tries += 1;
                let reusable = session
                    .as_ref()
                    .is_some_and(|s| s.usable && s.transactions < limit);
                if !reusable {
                    if let Some(s) = session.take() {
                        if s.usable {
                            s.quit().await;
                        } else {
                            // A 421 or a dropped connection: the next session goes to the next host.
                            host_idx += 1;
                        }
                    }
                    if hosts.is_none() {
                        match self.router.route(domain).await {
                            Ok(h) => hosts = Some(h),
                            Err(f) => {
                                let reply = if f.is_permanent() {
                                    Reply::new(550, f.status(), f.text())
                                } else {
                                    Reply::new(451, f.status(), f.text())
                                };
                                warn!(domain, reply = %crate::smtp::reply_line(&reply), "no route: the whole batch takes this reply");
                                self.fail_all(cj, jobs, &reply, None).await;
                                return;
                            }
                        }
                    }
                    let hs = hosts.as_deref().unwrap_or_default();
                    match self.connect_any(domain, hs, host_idx).await {
                        Ok((s, i)) => {
                            host_idx = i;
                            session = Some(s);
                        }
                        Err(e) => {
                            let reply = e.reply();
                            warn!(domain, reply = %crate::smtp::reply_line(&reply), "no host took a connection: the whole batch is deferred");
                            self.fail_all(cj, jobs, &reply, None).await;
                            return;
                        }
                    }
                }
                let Some(s) = session.as_mut() else { break };
                match send_message(s, &cj.job.envelope, &pending, &cj.body, &self.settings.timeouts).await {
                    Ok(results) => {
                        // The host went away (421, dropped connection) before any recipient had a final
                        // answer: the message is tried on the next host, once per host.
                        let host_failed = !s.usable && results.iter().all(|(_, r)| r.code / 100 == 4);
                        if host_failed && hosts.is_none() {
                            // The session came from the idle pool: learn the other hosts now.
                            hosts = self.router.route(domain).await.ok();
                        }
                        let n_hosts = hosts.as_ref().map_or(0, Vec::len);
                        let Some(s) = session.as_mut() else { break };
                        if host_failed && other_hosts_tried + 1 < n_hosts {
                            other_hosts_tried += 1;
                            info!(message_id = %cj.job.id.message, domain, mx = %s.mx, reply = %results.first().map(|(_, r)| crate::smtp::reply_line(r)).unwrap_or_default(), "host failed mid-session, trying the next host");
                            continue;
                        }
                        let attempt = DeliveryAttempt {
                            remote_mx: Some(s.mx.clone()),
                            remote_ip: Some(s.addr.ip().to_string()),
                            tls: s.tls.clone(),
                        };
                        // Completing the claim's last job frees the domain's connection slot for another
                        // worker: a session that stays open keeps the slot as a hold first, and one that
                        // will not be kept (or cannot keep the slot) is closed first, so that connections
                        // never outnumber the domain's slots (connections_per_domain).
                        let last = jobs.as_slice().is_empty();
                        let keep = s.usable && s.transactions < limit && !shutdown.is_cancelled();
                        if last && keep {
                            hold = self.hold_for_idle(&cj).await;
                        }
                        if last
                            && hold.is_none()
                            && let Some(s) = session.take()
                            && s.usable
                        {
                            s.quit().await;
                        }
                        self.finish(&cj, &results, Some(attempt)).await;
                        break;
                    }
                    Err(_not_started) => {
                        // A reused session went stale (the peer closed it while it was idle): open a new
                        // one and try again (once). It is dropped here, not marked unusable: that would
                        // count as a host failure and send the next connection to the next MX.
                        drop(session.take());
                        if tries >= 2 {
                            let reply = Reply::new(451, "4.4.2", "connection lost before the transaction");
                            let results: Vec<(u32, Reply)> =
                                pending.iter().map(|(i, _)| (*i, reply.clone())).collect();
                            if jobs.as_slice().is_empty() {
                                // Closed before the claim's last job frees the domain's slot (see above).
                                drop(session.take());
                            }
                            self.finish(&cj, &results, None).await;
                            break;
                        }
                    }
                }
            }
        }
        if let Some(s) = session {
            if hold.is_some() && s.usable && s.transactions < limit && !shutdown.is_cancelled() {
                self.put_idle(&key, s, hold);
            } else {
                if s.usable {
                    s.quit().await;
                }
                if let Some(h) = &hold {
                    self.drop_hold(h).await;
                }
            }
        }
    }

    /// The whole batch (from `first` on) takes `reply`, without a connection attempt per message.
    async fn fail_all(
        &self,
        first: ClaimedJob,
        rest: impl Iterator<Item = ClaimedJob>,
        reply: &Reply,
        attempt: Option<DeliveryAttempt>,
    ) {
        for cj in std::iter::once(first).chain(rest) {
            let results: Vec<(u32, Reply)> = cj.job.pending().map(|(i, _)| (i, reply.clone())).collect();
            self.finish(&cj, &results, attempt.clone()).await;
        }
    }

    /// Decides the job's outcome, queues the DSNs due, then completes the job.
    async fn finish(&self, cj: &ClaimedJob, results: &[(u32, Reply)], attempt: Option<DeliveryAttempt>) {
        let now = now_ms();
        let ctx = DecideContext {
            retry: &self.retry,
            now_ms: now,
            spread: rand::random::<f64>() * 2.0 - 1.0,
            delay_notice_after: self.cfg.delay_notice_after.map(|d| d.get()),
            attempt,
        };
        let d = decide(&cj.job, results, &ctx);
        let mut outcome = d.outcome;
        if !d.failed.is_empty() && self.send_dsn(cj, &d.failed, "failed").await.is_err() {
            // Without the DSN queued the failure must not be recorded: those recipients stay pending and
            // are tried again soon (delivered ones are still recorded, so nothing is delivered twice).
            for r in &mut outcome.recipients {
                if r.status == RecipientStatus::Failed {
                    r.status = RecipientStatus::Pending;
                }
            }
            outcome.kind = OutcomeKind::Deferred {
                until_ms: now + 60_000,
            };
        }
        if !d.delayed.is_empty() {
            let _ = self.send_dsn(cj, &d.delayed, "delayed").await;
        }
        if !d.delivered.is_empty() {
            let _ = self.send_dsn(cj, &d.delivered, "delivered").await;
        }
        let counts = |st: RecipientStatus| outcome.recipients.iter().filter(|r| r.status == st).count();
        let (delivered, deferred, failed) = (
            counts(RecipientStatus::Delivered),
            counts(RecipientStatus::Pending),
            counts(RecipientStatus::Failed),
        );
        let a = outcome.attempt.clone().unwrap_or_default();
        info!(
            message_id = %cj.job.id.message,
            job = %cj.job.id,
            domain = %cj.job.domain,
            mx = a.remote_mx.as_deref().unwrap_or("-"),
            ip = a.remote_ip.as_deref().unwrap_or("-"),
            tls = a.tls.as_deref().unwrap_or("-"),
            reply = outcome.reply.as_deref().unwrap_or("-"),
            delivered, deferred, failed,
            "delivery attempt finished"
        );
        self.complete(cj, outcome).await;
    }

    /// Records the outcome. While the queue is unreachable the call is repeated (a repeat is safe: it
    /// answers `AlreadyDone` or `Gone` once the first one landed), with the lease kept alive by the
    /// heartbeat, for up to one lease: an outcome that is not recorded means the job is tried again, and a
    /// delivered message delivered twice. The batch waits meanwhile rather than send more it cannot record.
    async fn complete(&self, cj: &ClaimedJob, outcome: Outcome) {
        let started = tokio::time::Instant::now();
        let mut pause = COMPLETE_RETRY_FIRST;
        loop {
            match self.queue.complete(&self.owner, &cj.lease, outcome.clone()).await {
                Ok(c) => {
                    debug!(job = %cj.job.id, completion = ?c, "completed");
                    break;
                }
                Err(e) if e.is_unavailable() && started.elapsed() + pause < self.lease => {
                    warn!(job = %cj.job.id, error = %e, retry_in = ?pause, "complete failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(COMPLETE_RETRY_MAX);
                }
                Err(e) => {
                    warn!(job = %cj.job.id, error = %e, "complete failed; the lease will expire and the job be retried");
                    break;
                }
            }
        }
        self.forget(&cj.lease);
    }

    /// Queues a DSN for `recipients` of the job (nothing when the sender is `<>` or NOTIFY declines).
    async fn send_dsn(&self, cj: &ClaimedJob, recipients: &[DsnRecipient], event: &str) -> Result<(), ()> {
        let ctx = DsnContext {
            reporting_mta: &self.hostname,
            envelope: &cj.job.envelope,
            arrival: from_unix_ms(cj.job.first_queued_ms),
            original: &cj.body,
            return_limit: DSN_RETURN_LIMIT,
            now: SystemTime::now(),
        };
        let Some(dsn) = build_dsn(&ctx, recipients) else {
            return Ok(());
        };
        let key = idempotency_key(cj.job.id, event, recipients);
        let mut msg = NewMessage::new(dsn.envelope, dsn.body)
            .with_idempotency_key(key)
            .with_tag("dsn", event);
        msg.id = Some(dsn.id);
        for (k, v) in &cj.job.tags {
            msg.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for attempt in 0..3u32 {
            match self.queue.enqueue(msg.clone()).await {
                Ok(r) => {
                    info!(message_id = %cj.job.id.message, dsn = %r.message, event, recipients = recipients.len(), "DSN queued");
                    return Ok(());
                }
                Err(e) => {
                    warn!(message_id = %cj.job.id.message, error = %e, attempt, "queuing the DSN failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        Err(())
    }

    /// An operator bounced the job: a DSN for its pending recipients, then the job fails, undelivered.
    async fn admin_bounce(&self, cj: ClaimedJob) {
        let text = "bounced by the administrator";
        let now = SystemTime::now();
        let recipients: Vec<DsnRecipient> = cj
            .job
            .pending()
            .map(|(_, r)| DsnRecipient {
                recipient: r.recipient.clone(),
                action: DsnAction::Failed,
                status: tern_smtp::EnhancedCode::new(5, 0, 0),
                remote_mta: None,
                diagnostic: Some(format!("550 5.0.0 {text}")),
                last_attempt: Some(now),
                will_retry_until: None,
            })
            .collect();
        if self.send_dsn(&cj, &recipients, "failed").await.is_err() {
            // Tried again later rather than released: a released job is due at once, and with a lasting
            // error this would loop.
            let retry = Outcome::defer(
                now_ms() + 60_000,
                "451 4.3.0 the bounce's DSN could not be queued",
            );
            self.complete(&cj, retry).await;
            return;
        }
        let mut outcome = Outcome::fail(format!("550 5.0.0 {text}"));
        for (i, _) in cj.job.pending() {
            outcome = outcome.with_result(i, RecipientStatus::Failed, Some(format!("550 5.0.0 {text}")));
        }
        info!(message_id = %cj.job.id.message, job = %cj.job.id, domain = %cj.job.domain, "admin bounce");
        self.complete(&cj, outcome).await;
    }
}

/// The pause after the `failures`-th claim failure in a row: the poll interval doubled per failure, at most
/// [`CLAIM_BACKOFF_MAX`], with ±25% jitter from `unit` (in [0, 1)) so that a fleet of workers does not come
/// back to a recovering Redis in step.
fn claim_backoff(poll: Duration, failures: u32, unit: f64) -> Duration {
    let doubled = poll.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled
        .min(CLAIM_BACKOFF_MAX)
        .mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_backoff_doubles_up_to_a_cap_with_jitter() {
        let poll = Duration::from_secs(1);
        assert_eq!(claim_backoff(poll, 1, 0.5), poll);
        assert_eq!(claim_backoff(poll, 3, 0.5), Duration::from_secs(4));
        assert_eq!(claim_backoff(poll, 40, 0.5), CLAIM_BACKOFF_MAX);
        assert_eq!(claim_backoff(poll, 1, 0.0), Duration::from_millis(750));
        assert_eq!(claim_backoff(poll, 1, 1.0), Duration::from_millis(1250));
    }
}
