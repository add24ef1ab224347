//! `tern control`: the control-plane gRPC API (`tern.v1.QueueAdmin`, `tern.v1.Events`) for `ternctl`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

/// How long open admin connections (a live `ternctl queue top`, an events stream) may delay shutdown.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the control role until SIGTERM or SIGINT.
pub fn run(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    crate::telemetry::init(&config.telemetry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    runtime.block_on(async move {
        let shutdown = crate::signals::shutdown_on_signals()?;
        let queue = crate::queue::open(&config.queue).await?;
        let bound = tern_control::ControlServer::bind(&config.control, queue).await?;
        tracing::info!(grpc = %bound.local_addr(), "control plane listening");
        let task = tokio::spawn(bound.run(shutdown.clone()));
        shutdown.cancelled().await;
        crate::signals::join_within("control plane", task, GRACE).await?;
        tracing::info!("control plane stopped");
        Ok(ExitCode::SUCCESS)
    })
}
