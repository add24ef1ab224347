//! The ingest role: SMTP submission and the gRPC Send API, into the queue.

use std::sync::Arc;
use std::time::Duration;

use tern_config::Config;
use tern_core::Shutdown;
use tern_queue::Queue;
use tern_telemetry::Readiness;

/// How long open gRPC connections may delay shutdown once SMTP has stopped and the gRPC calls in progress
/// have answered (see [`grpc_call_grace`]): what remains are client channels, mostly idle.
const GRPC_GRACE: Duration = Duration::from_secs(5);

/// How long shutdown waits for the gRPC calls in progress to answer once SMTP has stopped. Told to stop, a
/// call repeating a queue write stops repeating once its attempt in progress ends, and answers; that attempt
/// takes at most one queue call's bound (`connect_timeout + response_timeout`), twice under group commit
/// (it may wait for the shared call in flight first). A second more for the answer to go out.
fn grpc_call_grace(config: &Config) -> Duration {
    let options = crate::queue::redis_options(config);
    (options.connect_timeout + options.response_timeout) * 2 + Duration::from_secs(1)
}

/// Every check [`serve`] makes before it binds (the `[ingest]` section, the TLS files, the users file, the
/// API keys file and a keyless gRPC listener on loopback): `tern check-config` runs it.
pub fn check(config: &Config) -> anyhow::Result<()> {
    tern_ingest::SmtpServer::check(&config.ingest)?;
    tern_ingest::grpc::GrpcServer::check(&tern_ingest::grpc::GrpcSettings::from_config(&config.ingest))?;
    Ok(())
}

/// Binds every listener, then serves until `shutdown`; the gRPC listener's health follows `readiness`.
pub async fn serve(
    config: &Config,
    queue: Arc<dyn Queue>,
    shutdown: Shutdown,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let grpc_settings = tern_ingest::grpc::GrpcSettings::from_config(&config.ingest);
    let grpc = tern_ingest::grpc::GrpcServer::bind(&grpc_settings, queue.clone()).await?;
    let smtp = tern_ingest::SmtpServer::new(&config.ingest, queue)?
        .bind()
        .await?;
    // The listeners' addresses are logged by the listeners themselves ("SMTP submission listening", "gRPC
    // Send API listening").
    crate::telemetry::follow_health(readiness, grpc.health(), shutdown.clone());
    readiness.role_started();
    let calls = grpc.calls_in_progress();
    let grpc_task = tokio::spawn(grpc.run(shutdown.clone()));
    let served = smtp.run(shutdown).await;
    // The gRPC server was told to stop with SMTP: its calls in progress answer within the call grace.
    let call_grace = grpc_call_grace(config);
    if tokio::time::timeout(call_grace, calls.finished()).await.is_err() {
        tracing::warn!(
            grace_ms = call_grace.as_millis() as u64,
            "gRPC calls still in progress after the grace; closing"
        );
    }
    let grpc_served = crate::signals::join_within("gRPC Send API", grpc_task, GRPC_GRACE).await;
    served?;
    grpc_served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_get_two_queue_call_bounds_to_answer_at_shutdown() {
        let config = Config::default();
        let options = crate::queue::redis_options(&config);
        let call = options.connect_timeout + options.response_timeout;
        let grace = grpc_call_grace(&config);
        assert!(grace > call * 2, "{grace:?} for a queue call bound of {call:?}");
        assert!(grace > GRPC_GRACE, "{grace:?}");
    }
}
