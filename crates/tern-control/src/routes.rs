//! Domain routes (RouteDomain, UnrouteDomain, ListRoutes): an operator sends a domain's mail to a given host
//! instead of its MX hosts, cluster-wide and without a restart ([`tern_queue::RouteStore`]).

use tern_core::time::now_ms;
use tern_proto::v1 as pb;
use tern_queue::{Route, RouteStore};
use tonic::{Response, Status};

use crate::admin::{AdminService, check_domain};
use crate::convert::{invalid, queue_status};

impl AdminService {
    fn route_store(&self) -> Result<&dyn RouteStore, Status> {
        self.routes
            .as_deref()
            .ok_or_else(|| Status::failed_precondition("this control server has no route store"))
    }

    /// RouteDomain.
    pub(crate) async fn route(
        &self,
        req: pb::RouteDomainRequest,
        key: &str,
    ) -> Result<Response<pb::RouteDomainResponse>, Status> {
        let store = self.route_store()?;
        let domain = check_domain("domain", &req.domain)?;
        let (host, port) = parse_target(&req.target).map_err(|why| invalid("target", why))?;
        let now = now_ms();
        let route = Route {
            domain,
            host,
            port,
            since_ms: now,
            until_ms: (req.duration_seconds > 0)
                .then(|| now.saturating_add(req.duration_seconds.saturating_mul(1000))),
            reason: req.reason.trim().to_string(),
        };
        store.set_route(&route).await.map_err(queue_status)?;
        tracing::info!(
            domain = %route.domain,
            target = %route.target(),
            until_ms = route.until_ms.unwrap_or(0),
            reason = %route.reason,
            key = %key,
            "control: domain routed"
        );
        Ok(Response::new(pb::RouteDomainResponse {
            route: Some(route_proto(&route)),
        }))
    }

    /// UnrouteDomain.
    pub(crate) async fn unroute(
        &self,
        req: pb::UnrouteDomainRequest,
        key: &str,
    ) -> Result<Response<pb::UnrouteDomainResponse>, Status> {
        let store = self.route_store()?;
        let domain = check_domain("domain", &req.domain)?;
        let was_routed = store.remove_route(&domain).await.map_err(queue_status)?;
        tracing::info!(domain = %domain, was_routed, key = %key, "control: domain route removed");
        Ok(Response::new(pb::UnrouteDomainResponse { was_routed }))
    }

    /// ListRoutes.
    pub(crate) async fn list_routes_now(&self) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let store = self.route_store()?;
        let mut routes = store.routes().await.map_err(queue_status)?;
        routes.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(Response::new(pb::ListRoutesResponse {
            routes: routes.iter().map(route_proto).collect(),
        }))
    }
}

/// A route as the API shows it.
fn route_proto(route: &Route) -> pb::Route {
    pb::Route {
        domain: route.domain.clone(),
        target: route.target(),
        since_ms: route.since_ms,
        until_ms: route.until_ms.unwrap_or(0),
        reason: route.reason.clone(),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address: the host and the port, if any.
pub fn parse_target(text: &str) -> Result<(String, Option<u16>), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty (give host or host:port)".into());
    }
    let port_of = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port"))
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: a [ without its ]"))?;
        match after {
            "" => (host.to_string(), None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host.to_string(), Some(port_of(p)?)),
                None => return Err(format!("{text:?} is not [address]:port")),
            },
        }
    } else if text.parse::<std::net::Ipv6Addr>().is_ok() {
        (text.to_string(), None)
    } else {
        match text.rsplit_once(':') {
            Some((host, p)) => (host.to_string(), Some(port_of(p)?)),
            None => (text.to_string(), None),
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'));
    if !valid {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_host_with_an_optional_port_and_ipv6_takes_brackets() {
        assert_eq!(
            parse_target("Relay.Example.net."),
            Ok(("relay.example.net".into(), None))
        );
        assert_eq!(
            parse_target("relay.example.net:2525"),
            Ok(("relay.example.net".into(), Some(2525)))
        );
        assert_eq!(parse_target("127.0.0.1:25"), Ok(("127.0.0.1".into(), Some(25))));
        assert_eq!(parse_target("[::1]:2525"), Ok(("::1".into(), Some(2525))));
        assert_eq!(parse_target("::1"), Ok(("::1".into(), None)));
        assert!(parse_target("").is_err());
        assert!(parse_target("host:0").is_err());
        assert!(parse_target("host:x").is_err());
        assert!(parse_target("a b").is_err());
        assert!(parse_target("[::1").is_err());
    }
}
