//! Turning SIGTERM and SIGINT into a graceful shutdown.

use tern_core::Shutdown;

/// A shutdown signal cancelled on the first SIGTERM or SIGINT. A second signal exits at once, for an operator who does
/// not want to wait for the grace period.
pub fn shutdown_on_signals() -> anyhow::Result<Shutdown> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = Shutdown::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down gracefully"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down gracefully"),
        }
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    Ok(token)
}

/// Waits for a server task that was told to stop, for at most `grace`, then aborts it.
///
/// tonic's graceful shutdown waits for every client connection to close, and a client that keeps one open
/// (a live `ternctl queue top`, an `events --follow` stream, a pooled gRPC channel) would hold the process up
/// for ever. A bounded wait keeps SIGTERM's promise.
pub async fn join_within<E>(
    what: &str,
    task: tokio::task::JoinHandle<Result<(), E>>,
    grace: std::time::Duration,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(result)) => result.map_err(|e| anyhow::anyhow!("{what}: {e}")),
        Ok(Err(join)) => Err(anyhow::anyhow!("{what} task failed: {join}")),
        Err(_) => {
            tracing::warn!(
                server = what,
                grace_ms = grace.as_millis() as u64,
                "clients still connected; closing"
            );
            abort.abort();
            Ok(())
        }
    }
}
