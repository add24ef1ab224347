//! Turning SIGTERM and SIGINT into a graceful shutdown.

use tern_ingest::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. A second signal exits at once, for an operator who does
/// not want to wait for the grace period.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
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
