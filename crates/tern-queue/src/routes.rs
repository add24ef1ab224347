//! Operators' reroutes of destination domains, cluster-wide: [`RouteStore`].
//!
//! During an incident an operator sends a stuck domain's mail to another host (Postfix transport maps,
//! KumoMTA `kcli rebind`) without a config change or a restart: `ternctl domain route <domain>
//! <host[:port]> [--for 2h]`. The route lives in the queue's store, so every worker of the cluster sees it
//! (workers re-read the routes every few seconds), until it is removed or its time runs out.
//!
//! Every backend keeps the same rules (the conformance suite checks them): domains are matched without
//! regard to case and stored lower-case (without a trailing dot); setting a route for a domain replaces the
//! one it had; a route whose `until_ms` has passed is no longer listed (and is dropped by the store in time);
//! a route without a domain or a host is refused.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// A domain's mail sent to a given host instead of its MX hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination domain (stored lower-case).
    pub domain: String,
    /// The host to send to: a name (looked up for A/AAAA, not MX) or an IP address.
    pub host: String,
    /// Its port; `None`: the worker's `delivery.smtp_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// When it was set (Unix ms).
    pub since_ms: u64,
    /// When it ends by itself (Unix ms); `None`: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Why (free text from the operator; may be empty).
    #[serde(default)]
    pub reason: String,
}

impl Route {
    /// Whether the route is in force at `now_ms`.
    pub fn in_force(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|until| until > now_ms)
    }

    /// `host` or `host:port` (`[v6]:port` for an IPv6 address with a port).
    pub fn target(&self) -> String {
        match self.port {
            None => self.host.clone(),
            Some(port) if self.host.contains(':') => format!("[{}]:{port}", self.host),
            Some(port) => format!("{}:{port}", self.host),
        }
    }
}

/// A domain as routes are keyed: lower-case, without surrounding blanks or a trailing dot.
pub(crate) fn route_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A route as stored: its domain as [`route_domain`] makes it, its host trimmed; an empty domain or host is
/// [`QueueError::InvalidMessage`].
pub(crate) fn stored_route(route: &Route) -> Result<Route, QueueError> {
    let domain = route_domain(&route.domain);
    if domain.is_empty() {
        return Err(QueueError::InvalidMessage("a route needs a domain".into()));
    }
    let host = route.host.trim();
    if host.is_empty() {
        return Err(QueueError::InvalidMessage(format!(
            "the route of {domain} needs a host"
        )));
    }
    Ok(Route {
        domain,
        host: host.to_string(),
        ..route.clone()
    })
}

/// The cluster's domain routes, kept in the queue's store.
///
/// Every method is safe to call concurrently from many nodes, and safe to repeat after
/// [`QueueError::Unavailable`].
#[async_trait]
pub trait RouteStore: Send + Sync + Debug {
    /// Sets (or replaces) the route of `route.domain`, durably: every node sees it once this returns. An
    /// empty domain or host is [`QueueError::InvalidMessage`].
    async fn set_route(&self, route: &Route) -> Result<(), QueueError>;

    /// Removes the route of `domain` (any case); returns whether there was one in force.
    async fn remove_route(&self, domain: &str) -> Result<bool, QueueError>;

    /// Every route in force, in domain order.
    async fn routes(&self) -> Result<Vec<Route>, QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_names_its_target_with_the_port_and_brackets_an_ipv6_address() {
        let mut route = Route {
            domain: "example.com".into(),
            host: "relay.example.net".into(),
            ..Default::default()
        };
        assert_eq!(route.target(), "relay.example.net");
        route.port = Some(2525);
        assert_eq!(route.target(), "relay.example.net:2525");
        route.host = "::1".into();
        assert_eq!(route.target(), "[::1]:2525");
        route.until_ms = Some(10);
        assert!(route.in_force(9));
        assert!(!route.in_force(10));
    }

    #[test]
    fn a_stored_route_is_keyed_lower_case_and_needs_a_domain_and_a_host() {
        let route = Route {
            domain: " Example.COM. ".into(),
            host: " relay.example.net ".into(),
            ..Default::default()
        };
        let stored = stored_route(&route).expect("valid");
        assert_eq!(
            (stored.domain.as_str(), stored.host.as_str()),
            ("example.com", "relay.example.net")
        );
        let no_domain = Route {
            domain: ".".into(),
            ..route.clone()
        };
        assert!(matches!(
            stored_route(&no_domain),
            Err(QueueError::InvalidMessage(_))
        ));
        let no_host = Route {
            host: "  ".into(),
            ..route
        };
        assert!(matches!(
            stored_route(&no_host),
            Err(QueueError::InvalidMessage(_))
        ));
    }
}
