//! The control role: the admin gRPC API (`tern.v1.QueueAdmin`, `tern.v1.Events`) that `ternctl` talks to,
//! and KEDA's external scaler.

use std::sync::Arc;
use std::time::Duration;

use tern_config::Config;
use tern_control::{OperatorStores, StsServices};
use tern_core::Shutdown;
use tern_queue::Queue;
use tern_telemetry::Readiness;

/// How long open admin connections (a live `ternctl queue top`, an events stream) may delay shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// Every check [`serve`] makes before it binds (the admin keys file, a keyless listener on loopback, the TLS
/// files): `tern check-config` runs it.
pub fn check(config: &Config) -> anyhow::Result<()> {
    tern_control::ControlServer::check(&config.control)?;
    Ok(())
}

/// Binds the listener, then serves until `shutdown`; its gRPC health follows `readiness`. `services` are
/// the process's MTA-STS policy cache and TLS reporter, served as `tern.v1.MtaSts` (`None` where
/// `delivery.mta_sts.enabled`, `delivery.tls_rpt.enabled` is off); `operator` the store's history, routes and
/// trace bus.
pub async fn serve(
    config: &Config,
    queue: Arc<dyn Queue>,
    services: StsServices,
    operator: OperatorStores,
    shutdown: Shutdown,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let bound =
        tern_control::ControlServer::bind_all(&config.control, queue, services, Some(operator)).await?;
    crate::telemetry::follow_health(readiness, bound.health(), shutdown.clone());
    readiness.role_started();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    shutdown.cancelled().await;
    crate::signals::join_within("control plane", task, GRACE).await
}
