//! The listener's `grpc.health.v1.Health` status, as a handle its role can set.
//!
//! Every service of the listener, and the server as a whole (the empty service name), share one status: a
//! role is ready or not as a whole (its queue reachable or not), whichever of its services a probe asks
//! about. The listener starts SERVING and turns NOT_SERVING when it shuts down; in between the role may
//! flip it with [`HealthHandle::set_not_serving`] and [`HealthHandle::set_serving`].

use std::sync::Arc;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Sets the health status of every service of one listener (and of the server as a whole). Clones share
/// the status.
#[derive(Clone, Debug)]
pub struct HealthHandle {
    reporter: HealthReporter,
    services: Arc<[&'static str]>,
}

impl HealthHandle {
    /// A handle over `reporter` for `services` (their fully qualified names).
    pub(crate) fn new(reporter: HealthReporter, services: Vec<&'static str>) -> Self {
        HealthHandle {
            reporter,
            services: services.into(),
        }
    }

    /// Reports SERVING: the role can do its work.
    pub async fn set_serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Reports NOT_SERVING: the role cannot do its work now (its queue is unreachable, it is shutting down);
    /// load balancers and orchestrators send callers elsewhere.
    pub async fn set_not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        // The empty name is the server as a whole (gRPC health checking protocol).
        self.reporter.set_service_status("", status).await;
        for service in self.services.iter() {
            self.reporter.set_service_status(service, status).await;
        }
    }
}
