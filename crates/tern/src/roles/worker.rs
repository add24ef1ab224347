//! The worker role: claims due work from the queue and delivers it.

use std::sync::Arc;

use tern_config::Config;
use tern_core::Shutdown;
use tern_queue::Queue;
use tern_telemetry::Readiness;

/// Every check [`serve`] makes before it starts (the `[delivery]` section, its resolver settings, its CA
/// file): `tern check-config` runs it.
pub fn check(config: &Config) -> anyhow::Result<()> {
    tern_delivery::Worker::check(&config.delivery)?;
    Ok(())
}

/// Runs a delivery worker until `shutdown`; it then finishes transactions under way (up to
/// `delivery.shutdown_grace`) and releases the rest of its claims. It has no listener: it counts as started
/// once built.
pub async fn serve(
    config: &Config,
    queue: Arc<dyn Queue>,
    shutdown: Shutdown,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let owner = owner_id();
    let worker = tern_delivery::Worker::new(&config.delivery, queue, owner.clone())?
        .with_lease(config.queue.lease.get());
    readiness.role_started();
    tracing::info!(owner = %owner, "delivery worker started");
    worker.run(shutdown).await;
    Ok(())
}

/// A lease owner id unique to this process: the host name for people, the pid, and a random part because in
/// a container every process may be pid 1 on a host name that a restarted pod reuses.
fn owner_id() -> String {
    let host = tern_server::system_hostname();
    format!("{host}-{}-{}", std::process::id(), ulid::Ulid::generate())
}
