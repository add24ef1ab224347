//! The ingest role: SMTP submission and the gRPC Send API, into the queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_dkim::SharedSigners;

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

/// The `[[dkim]]` keys, loaded at start (a bad key file stops the start, naming the file), and read again
/// from the configuration file `path` on SIGHUP: a reload with a bad key keeps the keys in use and says why.
/// Without keys at start the set is empty, and a SIGHUP after keys were added to the file loads them.
pub fn load_dkim(
    config: &Config,
    path: Option<&Path>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Arc<SharedSigners>>> {
    let signers = Arc::new(SharedSigners::load(&config.dkim)?);
    if !config.dkim.is_empty() {
        tracing::info!(keys = config.dkim.len(), "DKIM keys loaded");
    }
    if let Some(path) = path {
        spawn_dkim_reload(path.to_path_buf(), Arc::clone(&signers), shutdown.clone())?;
    }
    Ok(Some(signers))
}

/// Reloads the DKIM keys from `path` on every SIGHUP until `shutdown`.
fn spawn_dkim_reload(path: PathBuf, signers: Arc<SharedSigners>, shutdown: Shutdown) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            let reloaded = tern_config::Config::load(&path)
                .map_err(anyhow::Error::from)
                .and_then(|config| Ok(signers.reload(&config.dkim)?));
            match reloaded {
                Ok(keys) => tracing::info!(keys, file = %path.display(), "DKIM keys reloaded"),
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    file = %path.display(),
                    "DKIM keys not reloaded; the keys in use stay"
                ),
            }
        }
    });
    Ok(())
}

/// Every check [`serve`] makes before it binds (the `[ingest]` section, the TLS files, the users file, the
/// API keys file and a keyless gRPC listener on loopback): `tern check-config` runs it.
pub fn check(config: &Config) -> anyhow::Result<()> {
    tern_ingest::SmtpServer::check(&config.ingest)?;
    tern_dkim::DkimSigners::load(&config.dkim)?;
    tern_ingest::grpc::GrpcServer::check(&tern_ingest::grpc::GrpcSettings::from_config(&config.ingest))?;
    Ok(())
}

/// Binds every listener, then serves until `shutdown`; the gRPC listener's health follows `readiness`.
/// Messages are signed with `dkim`'s keys (see [`load_dkim`]) before they are queued.
pub async fn serve(
    config: &Config,
    queue: Arc<dyn Queue>,
    dkim: Option<Arc<SharedSigners>>,
    shutdown: Shutdown,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let grpc_settings = tern_ingest::grpc::GrpcSettings::from_config(&config.ingest);
    let grpc =
        tern_ingest::grpc::GrpcServer::bind_with_dkim(&grpc_settings, queue.clone(), dkim.clone()).await?;
    let smtp = tern_ingest::SmtpServer::with_dkim(&config.ingest, queue, dkim)?
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
