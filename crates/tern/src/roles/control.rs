//! The control role: the admin gRPC API (`tern.v1.QueueAdmin`, `tern.v1.Events`) that `ternctl` talks to.

use std::sync::Arc;
use std::time::Duration;

use tern_config::Config;
use tern_core::Shutdown;
use tern_queue::Queue;

/// How long open admin connections (a live `ternctl queue top`, an events stream) may delay shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// Every check [`serve`] makes before it binds (the admin keys file, a keyless listener on loopback, the TLS
/// files): `tern check-config` runs it.
pub fn check(config: &Config) -> anyhow::Result<()> {
    tern_control::ControlServer::check(&config.control)?;
    Ok(())
}

/// Binds the listener, then serves until `shutdown`.
pub async fn serve(config: &Config, queue: Arc<dyn Queue>, shutdown: Shutdown) -> anyhow::Result<()> {
    let bound = tern_control::ControlServer::bind(&config.control, queue).await?;
    tracing::info!(grpc = %bound.local_addr(), "control plane listening");
    let task = tokio::spawn(bound.run(shutdown.clone()));
    shutdown.cancelled().await;
    crate::signals::join_within("control plane", task, GRACE).await
}
