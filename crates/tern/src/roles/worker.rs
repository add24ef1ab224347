//! The worker role: claims due work from the queue and delivers it.

use std::sync::Arc;

use tern_config::Config;
use tern_core::Shutdown;
use tern_mta_sts::PolicyCache;
use tern_queue::{Queue, RouteStore, TlsReportStore, TraceBus};
use tern_telemetry::Readiness;

/// What a worker needs for MTA-STS (RFC 8461) and TLS-RPT (RFC 8460).
pub struct MtaSts {
    /// The process's policy cache (`None`: `delivery.mta_sts.enabled` is off).
    pub cache: Option<PolicyCache>,
    /// The queue store's TLS-RPT counters (`None`: `delivery.tls_rpt.enabled` is off).
    pub tls_reports: Option<Arc<dyn TlsReportStore>>,
}

/// What a worker needs of the operator's toolkit (`ternctl domain route`, `ternctl trace`): the queue
/// store's domain routes and its live SMTP trace bus.
pub struct Operator {
    /// Operators' domain routes, re-read by the worker every few seconds.
    pub routes: Arc<dyn RouteStore>,
    /// Where the SMTP conversations of traced deliveries are published.
    pub traces: Arc<dyn TraceBus>,
}

/// Every check [`serve`] makes before it starts (the `[delivery]` section, its resolver settings, its CA
/// file): `tern check-config` runs it.
pub fn check(config: &Config) -> anyhow::Result<()> {
    tern_delivery::Worker::check(&config.delivery)?;
    Ok(())
}

/// Runs a delivery worker until `shutdown`; it then finishes transactions under way (up to
/// `delivery.shutdown_grace`) and releases the rest of its claims. It has no listener: it counts as started
/// once built.
///
/// `mta_sts` is the process's MTA-STS policy cache and TLS-RPT counters; `operator` the store's domain
/// routes and trace bus; `owner` names the worker's leases.
pub async fn serve(
    config: &Config,
    queue: Arc<dyn Queue>,
    mta_sts: MtaSts,
    operator: Operator,
    owner: String,
    shutdown: Shutdown,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let worker = tern_delivery::Worker::new(&config.delivery, queue, owner.clone())?
        .with_lease(config.queue.lease.get())
        .with_mta_sts(mta_sts.cache)
        .with_tls_reports(mta_sts.tls_reports)
        .with_routes(operator.routes)
        .with_trace_bus(operator.traces);
    readiness.role_started();
    // The worker logs its own start (and stop) lines.
    worker.run(shutdown).await;
    Ok(())
}
