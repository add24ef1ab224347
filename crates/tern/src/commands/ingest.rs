//! `tern ingest`: SMTP submission and the gRPC Send API, into the queue.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// How often an ingest node runs the reaper, which among other things finishes enqueues interrupted between
/// their durable intake record and their jobs.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// How long open gRPC connections may delay shutdown once SMTP has stopped. A call in progress has already
/// been answered or failed by then; what remains are idle client channels.
const GRPC_GRACE: Duration = Duration::from_secs(5);

/// Runs the ingest role until SIGTERM or SIGINT, then shuts down gracefully.
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
        let (reaper_stop, reaper_rx) = tokio::sync::watch::channel(false);
        let reaper = tern_queue::reaper::spawn_reaper(queue.clone(), REAP_EVERY, reaper_rx);

        let grpc_settings = tern_ingest::grpc::GrpcSettings::from_config(&config.ingest);
        let grpc = tern_ingest::grpc::GrpcServer::bind(&grpc_settings, queue.clone()).await?;
        let smtp = tern_ingest::SmtpServer::new(&config.ingest, queue)?.bind().await?;
        tracing::info!(
            smtp = ?smtp.smtp_addrs(), smtps = ?smtp.smtps_addrs(), grpc = %grpc.local_addr(), "ingest listening"
        );
        let grpc_task = tokio::spawn(grpc.run(shutdown.clone()));
        let served = smtp.run(shutdown).await;
        // SMTP has drained its sessions by now (within shutdown_grace); gRPC clients get a little longer.
        let grpc_served = crate::signals::join_within("gRPC Send API", grpc_task, GRPC_GRACE).await;

        let _ = reaper_stop.send(true);
        let _ = reaper.await;
        served?;
        grpc_served?;
        tracing::info!("ingest stopped");
        Ok(ExitCode::SUCCESS)
    })
}
