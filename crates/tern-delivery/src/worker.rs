//! The worker loop: claim a batch of one domain's jobs, route it, deliver it over a reused connection,
//! complete each job with its per-recipient outcome (queuing DSNs first), and shut down gracefully.
//!
//! Workers keep no state that matters: jobs are owned under a lease, heartbeated while a batch runs, and
//! released on shutdown; a worker that dies leaves its jobs to the reaper. Idle connections are kept per
//! destination for `idle_connection_time` and reused by the next batch of that destination. An idle
//! connection keeps its domain's concurrency slot as a queue hold ([`Queue::hold_slot`]), so that busy and
//! idle connections together stay within `connections_per_domain` cluster-wide; the next claim of that
//! domain takes the hold over, and closing the connection gives it up.
//!
//! | part | job |
//! |---|---|
//! | this file | [`Worker`]: the claim loop, lease heartbeats, shutdown |
//! | `domain.rs` | one domain's jobs of a claim: next host, open or reuse, send, record, keep or close |
//! | `mta_sts.rs` | the MTA-STS policy step: the domain's policy, the hosts and TLS it allows, its TLS results |
//! | `connect.rs` | opening a connection: hosts and addresses in turn, STARTTLS, AUTH to the relay |
//! | `tls_policy.rs` | what a connection asks of TLS, and the hosts reached in plaintext after STARTTLS failed |
//! | `pool.rs` | the worker's connection slots, the idle pool, its holds and its reaper |
//! | `finish.rs` | an attempt's end: outcome, DSNs, completing (or releasing) the job, admin bounces |
//! | `reroute.rs` | operators' reroutes (`ternctl domain route`), re-read every few seconds |
//! | `trace.rs` | live SMTP traces (`ternctl trace`): matching sessions published on the trace bus |
//!
//! With `delivery.sandbox_dir` set, `domain.rs` hands each job to `crate::sandbox` instead of routing and
//! connecting, and records its replies through the same `finish`.

mod connect;
mod domain;
mod finish;
mod mta_sts;
mod pool;
mod reroute;
mod tls_policy;
mod trace;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tern_config::DeliveryConfig;
use tern_core::time::now_ms;
use tern_core::{JobId, RetrySchedule, Shutdown};
use tern_queue::{Claim, ClaimOutcome, ClaimedJob, JobLease, Queue, RouteStore, TraceBus};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::error::DeliveryError;
use crate::route::Router;
use crate::sandbox::Sandbox;
use crate::smtp::{Timeouts, TlsClients};
use connect::{RelayCredentials, SessionSettings};
use domain::DomainDelivery;
use pool::{Idle, idle_reaper};
use reroute::Reroutes;
use tls_policy::TlsFailures;
use trace::Tracer;

/// How long QUIT may take when a connection is closed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between claims while claiming fails (the queue is unreachable).
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The shortest wait after a claim that found nothing (the queue may name a due time already past when more
/// due domains wait than one claim looks at).
const MIN_IDLE_WAIT: Duration = Duration::from_millis(10);

/// What a worker did with the jobs it still held when it stopped, as its last log line says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Jobs given back to the queue (due at once) on shutdown.
    pub released: usize,
    /// Jobs whose release failed (the queue unreachable, or the lease already lost): they come back to
    /// another worker when their lease expires.
    pub not_released: usize,
}

/// A delivery worker. Cheap to clone; every clone shares the same connections and state.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<dyn Queue>,
    owner: String,
    router: Router,
    /// Operators' reroutes in force (`ternctl domain route`), re-read while the worker runs.
    reroutes: Arc<Reroutes>,
    /// The live SMTP trace bus's worker side (`None`: no bus, nothing traced).
    tracer: Option<Arc<Tracer>>,
    /// Where messages are written instead of sent (`delivery.sandbox_dir`).
    sandbox: Option<Sandbox>,
    /// The MTA-STS policy cache, shared by the process's workers and the cluster (`None`: MTA-STS off).
    mta_sts: Option<tern_mta_sts::PolicyCache>,
    /// The queue's TLS-RPT counters (`delivery.tls_rpt.enabled`), fed by the MTA-STS step.
    tls_reports: mta_sts::TlsReports,
    settings: SessionSettings,
    retry: RetrySchedule,
    cfg: DeliveryConfig,
    hostname: String,
    lease: Duration,
    /// The worker's `max_connections` slots: one per open connection, busy or idle.
    connections: Arc<Semaphore>,
    /// Idle connections by destination (a domain, or `#relay`).
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    leases: Mutex<HashMap<JobId, JobLease>>,
    /// Jobs released on shutdown, and releases that failed (see [`Stopped`]).
    released: AtomicUsize,
    not_released: AtomicUsize,
    /// A batch ended: its connection slot is free, and an idle connection may hold its domain's slot for
    /// this worker's next claim (which no queue signal reports, the slot being this worker's): the claim
    /// loop claims again at once.
    batch_done: Notify,
}

/// What a worker builds from its configuration before it touches the queue.
struct Prepared {
    retry: RetrySchedule,
    hostname: String,
    router: Router,
    tls: TlsClients,
}

impl Prepared {
    /// Validates the section, and builds the retry schedule, the router (its resolver) and the TLS clients
    /// (reading `extra_ca_file`).
    fn new(cfg: &DeliveryConfig) -> Result<Prepared, DeliveryError> {
        cfg.validate()
            .map_err(|(k, m)| DeliveryError::Config(format!("delivery.{k}: {m}")))?;
        let retry = cfg
            .retry()
            .map_err(|(k, m)| DeliveryError::Config(format!("delivery.{k}: {m}")))?;
        let hostname = cfg.helo_name.clone().unwrap_or_else(tern_server::system_hostname);
        let router = Router::new(cfg, &hostname)?;
        let tls = TlsClients::new(cfg.extra_ca_file.as_deref())?;
        Ok(Prepared {
            retry,
            hostname,
            router,
            tls,
        })
    }
}

impl Worker {
    /// Every check [`Worker::new`] makes (the section's values, the resolver settings, `extra_ca_file`),
    /// without a queue: what `tern check-config` runs.
    pub fn check(cfg: &DeliveryConfig) -> Result<(), DeliveryError> {
        Prepared::new(cfg).map(|_| ())
    }

    /// A worker taking work from `queue` as `owner` (unique per worker process, e.g. host name and pid).
    pub fn new(
        cfg: &DeliveryConfig,
        queue: Arc<dyn Queue>,
        owner: impl Into<String>,
    ) -> Result<Worker, DeliveryError> {
        let Prepared {
            retry,
            hostname,
            router,
            tls,
        } = Prepared::new(cfg)?;
        let settings = SessionSettings {
            helo: hostname.clone(),
            tls_mode: cfg.tls,
            timeouts: Timeouts {
                connect: cfg.connect_timeout.get(),
                tls_handshake: cfg.tls_handshake_timeout.get(),
                greeting: cfg.greeting_timeout.get(),
                command: cfg.command_timeout.get(),
                mail: cfg.mail_timeout.get(),
                rcpt: cfg.rcpt_timeout.get(),
                data: cfg.data_timeout.get(),
                data_block: cfg.data_block_timeout.get(),
                data_done: cfg.data_done_timeout.get(),
                quit: QUIT_TIMEOUT,
            },
            relay_auth: RelayCredentials::from_config(cfg, &tls),
            tls,
            tls_failures: Arc::new(TlsFailures::new(cfg.tls_failure_memory.get())),
        };
        Ok(Worker {
            inner: Arc::new(Inner {
                queue,
                owner: owner.into(),
                router,
                reroutes: Arc::new(Reroutes::default()),
                tracer: None,
                sandbox: cfg.sandbox_dir.as_deref().map(Sandbox::open),
                mta_sts: None,
                tls_reports: mta_sts::TlsReports::default(),
                settings,
                retry,
                cfg: cfg.clone(),
                hostname,
                lease: Duration::from_secs(300),
                connections: Arc::new(Semaphore::new(cfg.max_connections as usize)),
                idle: Mutex::new(HashMap::new()),
                leases: Mutex::new(HashMap::new()),
                released: AtomicUsize::new(0),
                not_released: AtomicUsize::new(0),
                batch_done: Notify::new(),
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

    /// Sets the MTA-STS policy cache (RFC 8461) deliveries consult (`None`: MTA-STS off). Call before
    /// [`Worker::run`].
    pub fn with_mta_sts(mut self, cache: Option<tern_mta_sts::PolicyCache>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.mta_sts = cache;
        }
        self
    }

    /// Sets where TLS results are counted for TLS-RPT reports (RFC 8460): the queue store's counters when
    /// `delivery.tls_rpt.enabled`, `None` otherwise. Call before [`Worker::run`].
    pub fn with_tls_reports(mut self, store: Option<Arc<dyn tern_queue::TlsReportStore>>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.tls_reports = mta_sts::TlsReports(store);
        }
        self
    }

    /// Sets where operators' domain routes are read (`ternctl domain route`; the queue store's
    /// [`RouteStore`]): a domain with a route in force goes to the route's host instead of its MX hosts.
    /// The routes are read when the worker starts and every few seconds while it runs. Call before
    /// [`Worker::run`].
    pub fn with_routes(mut self, store: Arc<dyn RouteStore>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.reroutes = Arc::new(Reroutes::new(Some(store)));
        }
        self
    }

    /// Sets the live SMTP trace bus (`ternctl trace`; the queue store's [`TraceBus`]): the SMTP
    /// conversations of deliveries that match an open trace are published on it. Call before
    /// [`Worker::run`].
    pub fn with_trace_bus(mut self, bus: Arc<dyn TraceBus>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.tracer = Some(Arc::new(Tracer::new(bus, &inner.owner)));
        }
        self
    }

    /// The owner name used with the queue.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Runs until `shutdown` is cancelled: then stops claiming, lets batches under way finish for up to
    /// `delivery.shutdown_grace`, releases every claim left and closes idle connections. Returns what was
    /// released (and what could not be).
    pub async fn run(&self, shutdown: Shutdown) -> Stopped {
        let inner = &self.inner;
        // The routes in force before the first claim, so that no batch goes to its MX hosts meanwhile.
        if !inner.reroutes.refresh().await {
            warn!("domain routes unreadable at start; none applies until they can be read");
        }
        info!(owner = %inner.owner, hostname = %inner.hostname, "delivery worker started");
        let slots = Arc::new(Semaphore::new(inner.cfg.max_connections as usize));
        let mut tasks = JoinSet::new();
        let reaper = tokio::spawn(idle_reaper(inner.clone(), shutdown.clone()));
        // Background readers of the routes and trace filters, and the trace publisher: stopped after the
        // last connection closed, so that the traces see the closes.
        let background_stop = Shutdown::new();
        let mut background = JoinSet::new();
        background.spawn(inner.reroutes.clone().poll(background_stop.clone()));
        if let Some(tracer) = &inner.tracer {
            background.spawn(tracer.clone().poll_filters(background_stop.clone()));
            background.spawn(tracer.clone().publish(background_stop.clone()));
        }
        let batch = claim_size(inner.cfg.messages_per_connection);
        let poll = inner.cfg.poll_interval.get();
        let claim_linger = inner.cfg.claim_linger.get();
        // Claim failures in a row: the pause after one grows with them (see `claim_backoff`).
        let mut failures = 0u32;
        // The domain of the last claim, while claims find work; and whether to linger before the next.
        let mut last_domain: Option<String> = None;
        let mut linger = false;
        loop {
            while tasks.try_join_next().is_some() {}
            if std::mem::take(&mut linger) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(claim_linger) => {}
                }
            }
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
                .claim_next(&inner.owner, batch, inner.lease, &holds)
                .await
            {
                Ok(ClaimOutcome::Claimed(claim)) => {
                    failures = 0;
                    linger = !claim_linger.is_zero()
                        && linger_before_next_claim(
                            last_domain.as_deref(),
                            &claim.domain,
                            claim.jobs.len(),
                            batch,
                        );
                    if last_domain.as_deref() != Some(claim.domain.as_str()) {
                        last_domain = Some(claim.domain.clone());
                    }
                    debug!(domain = %claim.domain, jobs = claim.jobs.len(), claim = %claim.claim_id, "claimed");
                    tasks.spawn(inner.clone().process_claim(claim, shutdown.clone(), permit));
                }
                Ok(ClaimOutcome::Nothing { next_due_ms }) => {
                    failures = 0;
                    last_domain = None;
                    drop(permit);
                    // Until the queue signals work (new due jobs, a freed slot) or the next due time it
                    // knows of comes; the poll interval bounds a missed wake.
                    let wait = idle_wait(poll, next_due_ms, now_ms());
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = inner.queue.wait_for_work(wait) => {}
                        _ = inner.batch_done.notified() => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    failures = failures.saturating_add(1);
                    let pause = claim_backoff(poll, failures, rand::random::<f64>());
                    let retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
                    warn!(error = %e, failures, retry_in_ms, "claim failed");
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
            let grace_s = grace.as_secs_f64();
            warn!(grace_s, "shutdown grace over: interrupting batches under way");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Released together, under one bound: with the queue stalled, one by one they could outlast the
        // pod's termination grace. What is not released comes back when its lease runs out.
        let left: Vec<JobLease> = lock(&inner.leases).drain().map(|(_, l)| l).collect();
        let releases = futures::future::join_all(left.iter().map(|l| inner.release_lease(l)));
        if tokio::time::timeout(RELEASE_BOUND, releases).await.is_err() {
            warn!(
                jobs = left.len(),
                "releasing the claims took too long; their leases will run out"
            );
        }
        // The reaper stops at its next tick; awaiting it lets the closes under way drop their holds.
        let _ = reaper.await;
        let idle: Vec<Idle> = lock(&inner.idle).drain().flat_map(|(_, v)| v).collect();
        inner.close_all_idle(idle).await;
        background_stop.cancel();
        if tokio::time::timeout(BACKGROUND_BOUND, async {
            while background.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            background.shutdown().await;
        }
        let stopped = Stopped {
            released: inner.released.load(Ordering::Relaxed),
            not_released: inner.not_released.load(Ordering::Relaxed),
        };
        info!(
            owner = %inner.owner, released = stopped.released, not_released = stopped.not_released,
            "delivery worker stopped"
        );
        stopped
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    async fn process_claim(self: Arc<Self>, claim: Claim, shutdown: Shutdown, slot: OwnedSemaphorePermit) {
        {
            let mut leases = lock(&self.leases);
            for cj in &claim.jobs {
                leases.insert(cj.job.id, cj.lease.clone());
            }
        }
        let ids: Vec<JobId> = claim.jobs.iter().map(|cj| cj.job.id).collect();
        let heartbeat = Shutdown::new();
        let _stop = heartbeat.clone().drop_guard();
        tokio::spawn(self.clone().heartbeat(ids, heartbeat));

        // Grouped by domain and by whether the job is TLS-RPT report mail, which goes without MTA-STS.
        let mut groups: Vec<((String, bool), Vec<ClaimedJob>)> = Vec::new();
        let mut bounced = Vec::new();
        for cj in claim.jobs {
            if cj.job.admin_bounce {
                bounced.push(cj);
                continue;
            }
            let key = (cj.job.domain.clone(), is_tls_report(&cj));
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(cj),
                None => groups.push((key, vec![cj])),
            }
        }
        futures::stream::iter(bounced)
            .for_each_concurrent(finish::FINISH_CONCURRENCY, |cj| self.admin_bounce(cj))
            .await;
        let count = groups.len();
        for (n, ((domain, report), jobs)) in groups.into_iter().enumerate() {
            let mut delivery = DomainDelivery::new(&self, &domain, &shutdown);
            if report {
                delivery = delivery.without_mta_sts();
            }
            // Only the claim's last group may keep its connection idle on the claim's slot: an earlier
            // one would make the slot a hold while the claim still has jobs to deliver.
            if n + 1 < count {
                delivery = delivery.closing_at_end();
            }
            delivery.deliver(jobs, claim.took_hold.as_deref()).await;
        }
        drop(slot);
        self.batch_done.notify_one();
    }

    async fn heartbeat(self: Arc<Self>, ids: Vec<JobId>, stop: Shutdown) {
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
}

/// Whether `cj` is a TLS-RPT report (RFC 8460 §3, tagged `tlsrpt` by the reporter): it must be delivered
/// despite TLS failures, so no MTA-STS policy applies to it and its sessions are not reported on.
fn is_tls_report(cj: &ClaimedJob) -> bool {
    cj.job.tags.contains_key(TLS_REPORT_TAG)
}

/// The tag the TLS-RPT reporter puts on the report mail it queues (`tlsrpt=<policy domain>`).
const TLS_REPORT_TAG: &str = "tlsrpt";

/// How long a worker whose claim found nothing waits for a wake: until the next due time the queue named
/// (`next_due_ms`, Unix ms, against `now`), at most `poll`, at least [`MIN_IDLE_WAIT`].
fn idle_wait(poll: Duration, next_due_ms: Option<u64>, now: u64) -> Duration {
    next_due_ms
        .map_or(poll, |due| Duration::from_millis(due.saturating_sub(now)))
        .min(poll)
        .max(MIN_IDLE_WAIT)
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

/// Whether the worker waits `delivery.claim_linger` before its next claim: after a claim that took fewer
/// jobs than it asked for (`jobs` of `asked`: the domain's due work is drained) of the same domain as the
/// claim before it (`previous`). A claimed domain goes behind every other due domain of its shard, and
/// claims visit the shards in turn, so two claims in a row of one domain mean that no other domain had due
/// work: the wait delays no one else's mail, and the next claim carries what arrived meanwhile instead of a
/// job or two (fewer claims and completions per message). One exception: every other claim of a worker
/// with an idle connection looks at the held domains first, so after such a claim another domain's due
/// work may wait up to the linger more (the claim after it goes in index order). Not lingering after
/// claims that took a hold over kept about half of the CPU saved and a seventh of the rate gained (seven
/// A/B rounds, `docs/performance.md`). A single message on a quiet system is claimed after a claim that
/// found nothing, so it never waits.
fn linger_before_next_claim(previous: Option<&str>, domain: &str, jobs: usize, asked: usize) -> bool {
    jobs < asked && previous == Some(domain)
}

/// How long a stopping worker waits for its background tasks (the last trace records published).
const BACKGROUND_BOUND: Duration = Duration::from_secs(5);

/// How long a stopping worker spends giving its unstarted claims back to the queue.
const RELEASE_BOUND: Duration = Duration::from_secs(10);

/// The most jobs one claim takes. A claim's jobs are heartbeated one call each every third of the lease
/// while its batch runs; a claim of tens of thousands of jobs (a `messages_per_connection` of 100,000)
/// could not be extended in time, its leases ran out and the reaper gave its jobs to other workers, which
/// sent them again. A connection outlives its claim (it goes idle with its slot and the next claim takes
/// it), so `messages_per_connection` still counts over several claims.
const MAX_CLAIM_JOBS: usize = 500;

/// How many jobs to claim at once: a connection's worth, at most [`MAX_CLAIM_JOBS`].
fn claim_size(messages_per_connection: u32) -> usize {
    usize::try_from(messages_per_connection)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CLAIM_JOBS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_takes_a_connections_worth_of_jobs_but_never_more_than_can_be_heartbeated() {
        assert_eq!(claim_size(100), 100);
        assert_eq!(claim_size(1), 1);
        assert_eq!(claim_size(0), 1);
        assert_eq!(claim_size(100_000), MAX_CLAIM_JOBS);
    }

    #[test]
    fn a_worker_lingers_only_after_a_short_claim_of_the_domain_it_claimed_last() {
        // The domain drained twice in a row: no other domain had due work.
        assert!(linger_before_next_claim(Some("a.test"), "a.test", 3, 100));
        // A full claim: more is due at once.
        assert!(!linger_before_next_claim(Some("a.test"), "a.test", 100, 100));
        // Claims taking turns between domains, or the first claim after an idle spell.
        assert!(!linger_before_next_claim(Some("b.test"), "a.test", 3, 100));
        assert!(!linger_before_next_claim(None, "a.test", 1, 100));
    }

    #[test]
    fn an_idle_worker_waits_until_the_next_due_time_within_the_poll_interval() {
        let poll = Duration::from_secs(60);
        assert_eq!(idle_wait(poll, None, 1_000), poll);
        assert_eq!(idle_wait(poll, Some(1_250), 1_000), Duration::from_millis(250));
        assert_eq!(idle_wait(poll, Some(1_000_000), 1_000), poll);
        assert_eq!(idle_wait(poll, Some(900), 1_000), MIN_IDLE_WAIT);
    }

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
