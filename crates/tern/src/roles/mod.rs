//! The long-running roles, and the runner that starts any set of them in one process over one queue handle.
//!
//! `tern ingest`, `tern worker` and `tern control` run one role each; `tern all` runs the three together, for
//! a single node. Every process also runs the queue's reaper: it is safe on any number of nodes, and a
//! cluster needs at least one.

mod control;
mod ingest;
mod threads;
mod worker;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_core::Shutdown;
use tern_queue::Queue;

/// A role a process can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// SMTP submission and the gRPC Send API.
    Ingest,
    /// Delivery workers.
    Worker,
    /// The admin API.
    Control,
}

impl Role {
    /// The role's name, as the subcommand says it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Worker => "worker",
            Role::Control => "control",
        }
    }
}

/// Runs every check that starting `roles` would make, without binding a port or touching the queue: the
/// runtime's thread count (`TOKIO_WORKER_THREADS`), the queue URL, and each role's files and settings. Each
/// failure names its key or variable.
pub fn check(config: &tern_config::Config, roles: &[Role]) -> anyhow::Result<()> {
    runtime_threads()?;
    crate::queue::check(config)?;
    check_store_fits_roles(config, roles)?;
    for &role in roles {
        let checked = match role {
            Role::Ingest => ingest::check(config),
            Role::Worker => worker::check(config),
            Role::Control => control::check(config),
        };
        checked.with_context(|| role.name())?;
    }
    Ok(())
}

/// The runtime's worker threads as the environment asks (`TOKIO_WORKER_THREADS`), checked.
fn runtime_threads() -> anyhow::Result<Option<usize>> {
    threads::worker_threads(std::env::var_os(threads::WORKER_THREADS_VAR).as_deref())
}

/// The embedded store belongs to one process, so a process running only ingest or only workers on it would
/// leave its messages to no one (or have no one to take them in). `tern control` alone is allowed: it
/// inspects and repairs a stopped node's store.
fn check_store_fits_roles(config: &tern_config::Config, roles: &[Role]) -> anyhow::Result<()> {
    if config.queue.backend() != tern_config::QueueBackend::Embedded {
        return Ok(());
    }
    if let [role @ (Role::Ingest | Role::Worker)] = roles {
        anyhow::bail!(
            "tern {} cannot run alone on the embedded queue store ({}): it serves one process; \
             run `tern all`, or set queue.url to a Redis server to run roles as separate processes",
            role.name(),
            crate::queue::describe(config)
        );
    }
    Ok(())
}

/// How long the exit waits for the last spans and metrics to be exported.
const TELEMETRY_FLUSH: Duration = Duration::from_secs(5);

/// How often the reaper runs: it returns expired leases to scheduling, ends expired suspensions and finishes
/// enqueues interrupted between their durable intake record and their jobs.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Runs `roles` until SIGTERM or SIGINT, then shuts each down gracefully. A role that fails to start (a port
/// in use, a bad TLS file) stops the others and the process exits 1 with the reason.
pub fn run(path: Option<&Path>, roles: &[Role]) -> anyhow::Result<ExitCode> {
    let config = crate::commands::load_config(path)?;
    check_store_fits_roles(&config, roles)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads::for_roles(runtime_threads()?, roles.len()) {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().context("cannot start tokio")?;
    runtime.block_on(async move {
        // On the runtime: the OTLP exporters' channels live on it.
        let process = match roles {
            [one] => one.name(),
            _ => "all",
        };
        let telemetry = tern_telemetry::Telemetry::init(&config.telemetry, process)?;
        let result = run_roles(&config, path, roles, &telemetry).await;
        // Bounded: an OTLP collector that does not answer must not hold the exit past the pod's grace.
        if tokio::time::timeout(TELEMETRY_FLUSH, telemetry.shutdown())
            .await
            .is_err()
        {
            eprintln!(
                "tern: telemetry not flushed within {}s",
                TELEMETRY_FLUSH.as_secs()
            );
        }
        result
    })
}

/// The roles with their telemetry: the metrics and health listener first (so that `/healthz` answers while
/// the rest starts), then the queue, the reaper and the roles.
async fn run_roles(
    config: &tern_config::Config,
    path: Option<&Path>,
    roles: &[Role],
    telemetry: &tern_telemetry::Telemetry,
) -> anyhow::Result<ExitCode> {
    let shutdown = crate::signals::shutdown_on_signals()?;
    // Which build runs, and on how many threads, is part of what an operator reads first: both move CPU per
    // message.
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        allocator = %crate::ALLOCATOR_NAME,
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        roles = %roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(","),
        "starting"
    );
    // The embedded store is opened first: a second process on its directory is refused with the holder's
    // pid, not with the port the first one's metrics listener already has. Redis is opened after the
    // listener, so that `/healthz` answers while a slow Redis is tried.
    let embedded = config.queue.backend() == tern_config::QueueBackend::Embedded;
    let early = if embedded {
        Some(crate::queue::open(config).await?)
    } else {
        None
    };
    let mut running = crate::telemetry::start(config, telemetry, roles.len(), &shutdown).await?;
    let opened = match early {
        Some(opened) => opened,
        None => crate::queue::open(config).await?,
    };
    let owner = owner_id();
    let dkim = if roles.contains(&Role::Ingest) {
        ingest::load_dkim(config, path, &shutdown)?
    } else {
        None
    };
    // The store's side stores: messages' history, domain routes and the SMTP trace bus, for the control
    // plane (and routes and traces for workers).
    let operator = tern_control::OperatorStores {
        history: opened.history,
        routes: opened.routes,
        traces: opened.traces,
    };
    let sts = crate::mta_sts::policy_cache(config, opened.policies, owner.clone())?;
    let queue: Arc<dyn Queue> = Arc::new(tern_telemetry::TracedQueue::new(opened.shared));
    running.watch_queue(opened.telemetry);
    // The TLS reports: sent daily by worker processes (one of them a day, under the store's lock), and on
    // demand through the control plane.
    let reporter = if roles.iter().any(|r| matches!(r, Role::Worker | Role::Control)) {
        crate::mta_sts::tls_reporter(config, opened.reports, queue.clone(), owner.clone())?
    } else {
        None
    };
    let daily_reports = reporter
        .clone()
        .filter(|_| roles.contains(&Role::Worker))
        .map(|r| r.spawn_daily(shutdown.clone()));
    // Its own signal: the reaper keeps returning expired leases until every role has stopped.
    let reaper_stop = Shutdown::new();
    let reaper = tern_queue::reaper::spawn_reaper(queue.clone(), REAP_EVERY, reaper_stop.clone());

    if roles.len() > 1 {
        crate::banner::spawn(
            config,
            running.metrics_addr(),
            running.readiness(),
            shutdown.clone(),
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for &role in roles {
        let (config, queue, shutdown) = (config.clone(), queue.clone(), shutdown.clone());
        let (readiness, owner, sts) = (running.readiness().clone(), owner.clone(), sts.clone());
        let reporter = reporter.clone();
        let operator = operator.clone();
        let dkim = dkim.clone();
        tasks.spawn(async move {
            let result = match role {
                Role::Ingest => ingest::serve(&config, queue, dkim, shutdown, &readiness).await,
                Role::Worker => {
                    // Session results are counted for TLS-RPT only while reports are sent.
                    let counts = reporter.as_ref().map(|r| Arc::clone(r.store()));
                    let mta_sts = worker::MtaSts {
                        cache: sts,
                        tls_reports: counts,
                    };
                    let stores = worker::Operator {
                        routes: operator.routes.clone(),
                        traces: operator.traces.clone(),
                    };
                    worker::serve(&config, queue, mta_sts, stores, owner, shutdown, &readiness).await
                }
                Role::Control => {
                    let services = tern_control::StsServices { cache: sts, reporter };
                    control::serve(&config, queue, services, operator, shutdown, &readiness).await
                }
            };
            result.with_context(|| role.name())
        });
    }
    let outcome = wait_all(&mut tasks, &shutdown).await;
    if let Some(daily) = daily_reports {
        // Cancelled with the roles: a run under way stops after its current domain.
        stop_within("TLS reports", daily, REPORTS_GRACE).await;
    }
    reaper_stop.cancel();
    let _ = reaper.await;
    running.stop().await;
    outcome?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// How long a TLS report run under way at shutdown may take to finish its current domain.
const REPORTS_GRACE: Duration = Duration::from_secs(30);

/// Waits for a background task that was told to stop, for at most `grace`, then aborts it.
async fn stop_within(what: &str, task: tokio::task::JoinHandle<()>, grace: Duration) {
    let abort = task.abort_handle();
    if tokio::time::timeout(grace, task).await.is_err() {
        tracing::warn!(
            task = what,
            grace_ms = grace.as_millis() as u64,
            "did not stop in time; aborted"
        );
        abort.abort();
    }
}

/// An id unique to this process in the cluster, for lease owners and the MTA-STS refresh lock: the host
/// name for people, the pid, and a random part because in a container every process may be pid 1 on a
/// host name that a restarted pod reuses.
fn owner_id() -> String {
    let host = tern_server::system_hostname();
    format!("{host}-{}-{}", std::process::id(), ulid::Ulid::generate())
}

/// Waits for every role; the first error cancels the rest and is returned once they have stopped.
async fn wait_all(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined
            .map_err(|e| anyhow::anyhow!("a role's task failed: {e}"))
            .and_then(|r| r);
        if let Err(e) = result
            && first_error.is_none()
        {
            shutdown.cancel();
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
