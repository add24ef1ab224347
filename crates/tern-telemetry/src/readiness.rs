//! Whether the process can do its work: what `/readyz` and every gRPC listener's `grpc.health.v1` say.
//!
//! Ready means: every role of the process has bound its listeners, the queue store answers, and the
//! process is not draining. A probe ([`spawn_store_probe`]) pings the store every second; a drain (SIGTERM)
//! is for good. Roles follow the state with [`Readiness::subscribe`] (the gRPC listeners set their health
//! from it).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tern_core::Shutdown;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the store probe pings the queue store.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one ping may take before the store counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The parts of readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Roles that have not bound their listeners yet.
    pub roles_starting: usize,
    /// The queue store answered the last probe.
    pub store_reachable: bool,
    /// SIGTERM came: the process finishes its work and stops.
    pub draining: bool,
}

impl State {
    /// Whether the process is ready to take work.
    pub fn is_ready(&self) -> bool {
        self.roles_starting == 0 && self.store_reachable && !self.draining
    }

    /// Why the process is not ready, for `/readyz`'s body.
    pub fn reason(&self) -> &'static str {
        if self.draining {
            "draining"
        } else if !self.store_reachable {
            "queue store unreachable"
        } else if self.roles_starting > 0 {
            "starting"
        } else {
            "ready"
        }
    }
}

/// The process's readiness; clones share it.
#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<watch::Sender<State>>,
}

impl Readiness {
    /// Not ready until `roles` roles have started and the store has answered once.
    pub fn new(roles: usize) -> Readiness {
        let (tx, _) = watch::channel(State {
            roles_starting: roles,
            store_reachable: false,
            draining: false,
        });
        Readiness { state: Arc::new(tx) }
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Whether the process is ready now.
    pub fn is_ready(&self) -> bool {
        self.state().is_ready()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// One role has bound its listeners.
    pub fn role_started(&self) {
        self.state.send_if_modified(|s| {
            s.roles_starting = s.roles_starting.saturating_sub(1);
            true
        });
    }

    /// Records the store probe's answer.
    pub fn set_store_reachable(&self, reachable: bool) {
        self.state.send_if_modified(|s| {
            let changed = s.store_reachable != reachable;
            s.store_reachable = reachable;
            changed
        });
    }

    /// The process is draining (for good).
    pub fn set_draining(&self) {
        self.state.send_if_modified(|s| {
            let changed = !s.draining;
            s.draining = true;
            changed
        });
    }
}

/// Calls `ping` every [`PROBE_EVERY`] (each call bounded by [`PROBE_TIMEOUT`]) and records whether the store
/// answered, until `stop`. A change is logged once.
pub fn spawn_store_probe<F, Fut, E>(readiness: Readiness, ping: F, stop: Shutdown) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        loop {
            let answered = tokio::select! {
                r = tokio::time::timeout(PROBE_TIMEOUT, ping()) => r.map(|r| r.map_err(|e| e.to_string())),
                () = stop.cancelled() => return,
            };
            let reachable = match answered {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    if readiness.state().store_reachable {
                        tracing::warn!(error = %e, "queue store unreachable: not ready");
                    }
                    false
                }
                Err(_) => {
                    if readiness.state().store_reachable {
                        tracing::warn!(
                            timeout_ms = PROBE_TIMEOUT.as_millis() as u64,
                            "queue store did not answer: not ready"
                        );
                    }
                    false
                }
            };
            if reachable && !readiness.state().store_reachable {
                tracing::info!("queue store reachable");
            }
            readiness.set_store_reachable(reachable);
            tokio::select! {
                () = tokio::time::sleep(PROBE_EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_started_reachable_and_not_draining() {
        let r = Readiness::new(2);
        assert_eq!(r.state().reason(), "queue store unreachable");
        r.set_store_reachable(true);
        assert!(!r.is_ready());
        r.role_started();
        r.role_started();
        assert!(r.is_ready());
        r.set_store_reachable(false);
        assert!(!r.is_ready());
        r.set_store_reachable(true);
        r.set_draining();
        assert!(!r.is_ready());
        assert_eq!(r.state().reason(), "draining");
    }
}
