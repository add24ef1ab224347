//! The ingest role: SMTP submission and the gRPC Send API, into the queue.

use std::sync::Arc;
use std::time::Duration;

use tern_config::Config;
use tern_core::Shutdown;
use tern_queue::Queue;

/// How long open gRPC connections may delay shutdown once SMTP has stopped. A call in progress has been
/// answered or failed by then; what remains are idle client channels.
const GRPC_GRACE: Duration = Duration::from_secs(5);

/// Every check [`serve`] makes before it binds (the `[ingest]` section, the TLS files, the users file, the
/// API keys file and a keyless gRPC listener on loopback): `tern check-config` runs it.
pub fn check(config: &Config) -> anyhow::Result<()> {
    tern_ingest::SmtpServer::check(&config.ingest)?;
    tern_ingest::grpc::GrpcServer::check(&tern_ingest::grpc::GrpcSettings::from_config(&config.ingest))?;
    Ok(())
}

/// Binds every listener, then serves until `shutdown`.
pub async fn serve(config: &Config, queue: Arc<dyn Queue>, shutdown: Shutdown) -> anyhow::Result<()> {
    let grpc_settings = tern_ingest::grpc::GrpcSettings::from_config(&config.ingest);
    let grpc = tern_ingest::grpc::GrpcServer::bind(&grpc_settings, queue.clone()).await?;
    let smtp = tern_ingest::SmtpServer::new(&config.ingest, queue)?
        .bind()
        .await?;
    tracing::info!(
        smtp = ?smtp.smtp_addrs(), smtps = ?smtp.smtps_addrs(), grpc = %grpc.local_addr(), "ingest listening"
    );
    let grpc_task = tokio::spawn(grpc.run(shutdown.clone()));
    let served = smtp.run(shutdown).await;
    let grpc_served = crate::signals::join_within("gRPC Send API", grpc_task, GRPC_GRACE).await;
    served?;
    grpc_served
}
