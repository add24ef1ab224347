//! The process's telemetry around its roles: the metrics and health listener (`telemetry.metrics_listen`),
//! readiness (the queue store's probe, the listeners, the drain), the queue gauges' sampler, and every gRPC
//! listener's health following readiness. Logs, traces and the instruments themselves are
//! [`tern_telemetry::Telemetry`]'s.

use std::sync::Arc;

use tern_config::Config;
use tern_core::Shutdown;
use tern_queue::Queue;
use tern_server::grpc::HealthHandle;
use tern_telemetry::Readiness;
use tern_telemetry::http::HttpServer;
use tokio::task::JoinHandle;

/// The domain whose depth the store probe reads: a name no real domain has (`.invalid`, RFC 2606).
const PROBE_DOMAIN: &str = "tern-readiness-probe.invalid";

/// The telemetry tasks of a running process; [`Running::stop`] ends them once the roles have stopped.
pub struct Running {
    readiness: Readiness,
    metrics_addr: std::net::SocketAddr,
    stop: Shutdown,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<Result<(), tern_telemetry::TelemetryError>>,
}

/// Binds the metrics and health listener and starts serving it, not ready until `roles` roles have
/// started and the store has answered; readiness turns to draining when `shutdown` is cancelled. A port in
/// use is an error: the process must not run without its probes.
pub async fn start(
    config: &Config,
    telemetry: &tern_telemetry::Telemetry,
    roles: usize,
    shutdown: &Shutdown,
) -> anyhow::Result<Running> {
    let readiness = Readiness::new(roles);
    let server = HttpServer::bind(
        config.telemetry.metrics_listen,
        telemetry.registry(),
        readiness.clone(),
    )
    .await?;
    tracing::info!(
        addr = %server.local_addr(),
        otlp = telemetry.traces_exported(),
        "metrics and health listening"
    );
    let metrics_addr = server.local_addr();
    let stop = Shutdown::new();
    let http = tokio::spawn(server.serve(stop.clone()));
    let draining = {
        let (readiness, shutdown, stop) = (readiness.clone(), shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => readiness.set_draining(),
                () = stop.cancelled() => {}
            }
        })
    };
    Ok(Running {
        readiness,
        metrics_addr,
        stop,
        tasks: vec![draining],
        http,
    })
}

impl Running {
    /// Where the metrics and health listener listens (the port chosen, for a configured port 0).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.metrics_addr
    }

    /// The process's readiness, for the roles to report to and follow.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Starts what reads the queue for telemetry: the store probe (one domain's depth every second: one
    /// light read on one shard, answered only by a store that works: for Redis, one that holds tern's
    /// functions) and the queue gauges' sampler, both through `own`
    /// ([`crate::queue::OpenedQueue::telemetry`]). The sampler's failures count as store errors; the probe's
    /// do not (one a second during an outage would say nothing more).
    pub fn watch_queue(&mut self, own: Arc<dyn Queue>) {
        let probe = {
            let own = Arc::clone(&own);
            tern_telemetry::readiness::spawn_store_probe(
                self.readiness.clone(),
                move || {
                    let own = Arc::clone(&own);
                    async move { own.domain_depth(PROBE_DOMAIN).await.map(drop) }
                },
                self.stop.clone(),
            )
        };
        let traced: Arc<dyn Queue> = Arc::new(tern_telemetry::TracedQueue::new(own));
        let sampler = tern_telemetry::gauges::spawn_sampler(
            traced,
            tern_telemetry::gauges::SAMPLE_EVERY,
            self.stop.clone(),
        );
        self.tasks.extend([probe, sampler]);
    }

    /// Stops the probe, the sampler and the listener (after the roles, so that `/readyz` says `draining`
    /// to the end).
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        match self.http.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics listener failed"),
            Err(e) => tracing::warn!(error = %e, "metrics listener task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// Keeps a gRPC listener's `grpc.health.v1` status equal to the process's readiness: NOT_SERVING while the
/// queue store is unreachable, before every role has started, and from the drain on. Ends with `shutdown`
/// (the listener then reports NOT_SERVING by itself).
pub fn follow_health(readiness: &Readiness, health: HealthHandle, shutdown: Shutdown) -> JoinHandle<()> {
    let mut states = readiness.subscribe();
    tokio::spawn(async move {
        loop {
            let ready = states.borrow_and_update().is_ready();
            if ready {
                health.set_serving().await;
            } else {
                health.set_not_serving().await;
            }
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => {
                    health.set_not_serving().await;
                    return;
                }
            }
        }
    })
}
