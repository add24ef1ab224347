//! Operators' reroutes (`ternctl domain route`): the routes in force, re-read from the queue's
//! [`RouteStore`] every [`ROUTE_POLL`] into a table every delivery consults.
//!
//! A domain with a route in force goes to the route's host instead of its MX hosts (and instead of
//! `relay_host` or a `[[delivery.routes]]` entry: the operator's word during an incident wins), with TLS as
//! `delivery.tls` says. MTA-STS does not apply: the operator chose the host, as with a fixed route. A route
//! set or removed anywhere in the cluster takes effect here within one poll; while the store cannot be
//! read, the last set read stays in force.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tern_core::Shutdown;
use tern_core::time::now_ms;
use tern_queue::{Route, RouteStore};
use tracing::{debug, info, warn};

/// How often the routes are re-read: how long a route set or removed takes to reach this worker.
pub(crate) const ROUTE_POLL: Duration = Duration::from_secs(3);
/// The longest a read of the routes may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The routes in force, by domain (lower case), as last read.
#[derive(Default)]
pub(crate) struct Reroutes {
    /// Where the routes live; `None`: no reroutes (a worker built without a store).
    store: Option<Arc<dyn RouteStore>>,
    table: RwLock<Arc<HashMap<String, Route>>>,
}

impl Reroutes {
    /// Routes read from `store`.
    pub(crate) fn new(store: Option<Arc<dyn RouteStore>>) -> Reroutes {
        Reroutes {
            store,
            table: RwLock::default(),
        }
    }

    /// The route in force for `domain`, if any.
    pub(crate) fn get(&self, domain: &str) -> Option<Route> {
        let table = self.snapshot();
        if table.is_empty() {
            return None;
        }
        let key = domain.trim_end_matches('.').to_ascii_lowercase();
        table.get(&key).filter(|r| r.in_force(now_ms())).cloned()
    }

    fn snapshot(&self) -> Arc<HashMap<String, Route>> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the routes once; `false` (the last set kept) when the store could not be read.
    pub(crate) async fn refresh(&self) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        let routes = match tokio::time::timeout(READ_TIMEOUT, store.routes()).await {
            Ok(Ok(routes)) => routes,
            Ok(Err(e)) => {
                debug!(error = %e, "reading the domain routes failed; the last ones read stay in force");
                return false;
            }
            Err(_) => {
                debug!("reading the domain routes timed out; the last ones read stay in force");
                return false;
            }
        };
        let now = now_ms();
        let new: HashMap<String, Route> = routes
            .into_iter()
            .filter(|r| r.in_force(now) && !r.domain.is_empty() && !r.host.is_empty())
            .map(|r| (r.domain.trim_end_matches('.').to_ascii_lowercase(), r))
            .collect();
        let old = self.snapshot();
        log_changes(&old, &new);
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        true
    }

    /// Re-reads the routes every [`ROUTE_POLL`] until `shutdown`. A store that stays unreachable is
    /// reported once when it fails and once when it comes back.
    pub(crate) async fn poll(self: Arc<Self>, shutdown: Shutdown) {
        if self.store.is_none() {
            return;
        }
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ROUTE_POLL) => {}
            }
            let ok = self.refresh().await;
            if ok && failing {
                info!("domain routes readable again");
            } else if !ok && !failing {
                warn!("domain routes unreadable; the last ones read stay in force");
            }
            failing = !ok;
        }
    }
}

/// One line per route that appeared, changed or went, so that the log tells when a worker started and
/// stopped honouring it.
fn log_changes(old: &HashMap<String, Route>, new: &HashMap<String, Route>) {
    for (domain, route) in new {
        if old.get(domain).is_some_and(|o| o.target() == route.target()) {
            continue;
        }
        let until = route.until_ms.map(crate::log_fields::rfc3339);
        info!(
            domain = %domain,
            route = %route.target(),
            until = until.as_deref().unwrap_or("none"),
            reason = %route.reason,
            "domain rerouted by an operator: its mail goes to the route's host, not its MX hosts \
             (MTA-STS does not apply)"
        );
    }
    for (domain, route) in old {
        if !new.contains_key(domain) {
            info!(domain = %domain, route = %route.target(), "domain route removed: its mail goes to its MX hosts again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_found_by_domain_in_any_case_while_in_force() {
        let r = Reroutes::default();
        let mut table = HashMap::new();
        table.insert(
            "b.test".to_string(),
            Route {
                domain: "b.test".into(),
                host: "127.0.0.1".into(),
                port: Some(2525),
                ..Default::default()
            },
        );
        table.insert(
            "old.test".to_string(),
            Route {
                domain: "old.test".into(),
                host: "h".into(),
                until_ms: Some(1),
                ..Default::default()
            },
        );
        *r.table.write().unwrap() = Arc::new(table);
        assert_eq!(
            r.get("B.Test.").map(|r| r.target()).as_deref(),
            Some("127.0.0.1:2525")
        );
        assert!(r.get("old.test").is_none());
        assert!(r.get("c.test").is_none());
    }
}
