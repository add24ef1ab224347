//! The reaper task: runs [`Queue::reap`] periodically.
//!
//! Any number of nodes may run it at once: each expired lease is handled by exactly one atomic script
//! call, whichever node gets there first; the others find nothing to do.

use std::sync::Arc;
use std::time::Duration;

use tern_core::Shutdown;
use tokio::task::JoinHandle;

use crate::Queue;

/// Runs `queue.reap(now)` every `every` until `shutdown` is cancelled. Errors are logged and the task keeps
/// going, backing off up to 30 s while the queue is unavailable.
pub fn spawn_reaper(queue: Arc<dyn Queue>, every: Duration, shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            match queue.reap(tern_core::time::now_ms()).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(jobs = n, "reaper returned jobs whose lease expired");
                    }
                    wait = every;
                }
                Err(e) => {
                    wait = (wait * 2).min(Duration::from_secs(30)).max(every);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "reaper failed");
                }
            }
        }
    })
}
