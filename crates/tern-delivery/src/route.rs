//! Routing: which hosts, in which order, receive a domain's mail (RFC 5321 section 5.1, RFC 7505).
//!
//! The order of decisions: an operator's reroute (`ternctl domain route`, [`Router::route_to`], chosen by
//! the worker) sends its domain to the route's host; a configured `relay_host` takes everything else; a
//! `[[delivery.routes]]` entry sends its domain to a fixed host; otherwise the domain's MX records are looked up (answers are cached by TTL in
//! the resolver). MX hosts are sorted by preference with equal preferences shuffled; no MX records means the
//! domain itself is the only host (implicit MX); a null MX (RFC 7505) or a non-existent domain fails at once.
//! The host itself and every worse preference are dropped (loop prevention).
//!
//! Only the recipient's domain can fail for good. A configured host (the relay, a route's host) and an MX
//! host never do: NXDOMAIN or no address for them is a mistake in configuration or DNS that may be mended,
//! and the mail waits (4.4.3). A domain without MX fails with 5.4.4 only on proof that it has no address:
//! NODATA for MX and for A and AAAA, each an answer that carries the zone's SOA ([`EmptyAnswer::NoData`],
//! RFC 2308), as Postfix bounces it. An empty answer without SOA, a referral, SERVFAIL or a timeout proves
//! nothing and defers. Before that bounce the family `ip_version` leaves out is asked too: a domain with
//! addresses only of that family exists and is deferred with 4.4.4 saying so, not bounced as having none.
//!
//! [`order_mx`], [`drop_self_and_worse`], [`empty_answer`] and [`addresses_from`] are pure and unit-tested;
//! [`Router`] does the lookups.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;
use tern_config::DeliveryConfig;
use tern_config::sections::{IpVersion, RelayTls, split_host_port};

mod answers;

pub(crate) use answers::is_no_data;
pub use answers::{AddressAnswers, AddressOf, EmptyAnswer, Found, addresses_from, empty_answer};

use crate::error::DeliveryError;
use crate::telemetry::dns;
use tern_telemetry::metrics::DnsKind;

/// One host to try, with every address to try it on (in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The host name (the MX name; used for SNI and certificate checks).
    pub name: String,
    /// Its addresses with the port, in the order to try.
    pub addrs: Vec<SocketAddr>,
    /// TLS from the first byte (a relay with implicit TLS).
    pub implicit_tls: bool,
    /// This host is the configured relay (AUTH credentials apply).
    pub relay: bool,
}

/// Why a domain has no hosts to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteFailure {
    /// A permanent failure (null MX, no such domain, mail loops back): the batch fails with this reply.
    Permanent {
        /// The enhanced status code, e.g. `5.1.10`.
        status: &'static str,
        /// The explanation.
        text: String,
    },
    /// A temporary failure (DNS timeout or SERVFAIL, MX hosts without addresses): the batch is deferred.
    Temporary {
        /// The enhanced status code, e.g. `4.4.3`.
        status: &'static str,
        /// The explanation.
        text: String,
    },
}

impl RouteFailure {
    /// The failure as an SMTP-like reply line (`550 5.1.10 ...` / `451 4.4.3 ...`).
    pub fn reply_line(&self) -> String {
        match self {
            RouteFailure::Permanent { status, text } => format!("550 {status} {text}"),
            RouteFailure::Temporary { status, text } => format!("451 {status} {text}"),
        }
    }

    /// The enhanced status code.
    pub fn status(&self) -> &'static str {
        match self {
            RouteFailure::Permanent { status, .. } | RouteFailure::Temporary { status, .. } => status,
        }
    }

    /// The explanation.
    pub fn text(&self) -> String {
        match self {
            RouteFailure::Permanent { text, .. } | RouteFailure::Temporary { text, .. } => text.clone(),
        }
    }

    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RouteFailure::Permanent { .. })
    }

    /// The failure as the reply every message of the batch takes: 550 when permanent, 451 otherwise.
    pub fn reply(&self) -> tern_smtp::Reply {
        let code = if self.is_permanent() { 550 } else { 451 };
        tern_smtp::Reply::new(code, self.status(), self.text())
    }
}

/// Sorts MX records by preference, shuffling hosts of equal preference (RFC 5321 5.1). Names are lower-cased
/// and lose their trailing dot.
pub fn order_mx<R: rand::Rng + ?Sized>(records: &[(u16, String)], rng: &mut R) -> Vec<(u16, String)> {
    let mut v: Vec<(u16, String)> = records.iter().map(|(p, n)| (*p, normalize(n))).collect();
    v.shuffle(rng);
    // A stable sort keeps the shuffled order within one preference.
    v.sort_by_key(|(p, _)| *p);
    v.dedup_by(|a, b| a.1 == b.1);
    v
}

/// Drops this host (`me`) and every MX of the same or a worse preference (RFC 5321 5.1: a host that finds
/// itself in the list may only relay to more preferred hosts).
pub fn drop_self_and_worse(ordered: Vec<(u16, String)>, me: &str) -> Vec<(u16, String)> {
    let me = normalize(me);
    match ordered.iter().find(|(_, n)| *n == me) {
        Some((pref, _)) => {
            let pref = *pref;
            ordered.into_iter().filter(|(p, _)| *p < pref).collect()
        }
        None => ordered,
    }
}

/// Whether MX records are a null MX (RFC 7505: a single record whose exchange is the root).
pub fn is_null_mx(records: &[(u16, String)]) -> bool {
    records.len() == 1 && (records[0].1.is_empty() || records[0].1 == ".")
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Orders addresses by the configured IP version: `any` keeps IPv6 first, then IPv4.
pub fn filter_ips(mut ips: Vec<IpAddr>, version: IpVersion) -> Vec<IpAddr> {
    ips.retain(|ip| match version {
        IpVersion::Any => true,
        IpVersion::V4 => ip.is_ipv4(),
        IpVersion::V6 => ip.is_ipv6(),
    });
    ips.sort_by_key(|ip| ip.is_ipv4());
    ips.dedup();
    ips
}

/// Resolves domains to ordered host lists.
pub struct Router {
    resolver: TokioResolver,
    ip_version: IpVersion,
    port: u16,
    me: String,
    relay: Option<(String, u16, bool)>,
    routes: Vec<(String, String, Option<u16>)>,
}

impl Router {
    /// A router for `cfg`; `me` is this host's name (for loop prevention).
    pub fn new(cfg: &DeliveryConfig, me: &str) -> Result<Router, DeliveryError> {
        let resolver = if cfg.dns_servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| DeliveryError::Dns(format!("reading the system resolver configuration: {e}")))?
                .build()
        } else {
            let servers = cfg
                .dns_servers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for conn in &mut ns.connections {
                        conn.port = sa.port();
                    }
                    ns
                })
                .collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().timeout = std::time::Duration::from_secs(5);
            b.options_mut().attempts = 2;
            b.build()
        }
        .map_err(|e| DeliveryError::Dns(e.to_string()))?;
        let relay = match &cfg.relay_host {
            Some(r) => {
                let (h, p) = split_host_port(r)
                    .ok_or_else(|| DeliveryError::Config(format!("relay_host {r:?} is not [host]:port")))?;
                let implicit = cfg.relay_tls == RelayTls::Implicit;
                Some((h, p.unwrap_or(if implicit { 465 } else { 25 }), implicit))
            }
            None => None,
        };
        let mut routes = Vec::new();
        for r in &cfg.routes {
            let (h, p) = split_host_port(&r.host)
                .ok_or_else(|| DeliveryError::Config(format!("route host {:?} is not a host", r.host)))?;
            routes.push((normalize(&r.domain), h, p));
        }
        Ok(Router {
            resolver,
            ip_version: cfg.ip_version,
            port: cfg.smtp_port,
            me: me.to_string(),
            relay,
            routes,
        })
    }

    /// Whether mail for `domain` goes to the domain's own MX hosts (or, without MX, to its own address):
    /// not through `relay_host`, a fixed route or to an address literal. Only such mail has an MTA-STS
    /// policy: the other hosts are the operator's choice.
    pub fn routes_by_mx(&self, domain: &str) -> bool {
        let domain = normalize(domain);
        self.relay.is_none() && !domain.starts_with('[') && !self.routes.iter().any(|(d, _, _)| *d == domain)
    }

    /// The host of an operator's reroute (`ternctl domain route`): the route's host name looked up for
    /// A/AAAA (not MX), or its IP address as it is, on the route's port or `smtp_port`. TLS as for an MX
    /// host (STARTTLS per `delivery.tls`); no AUTH. A name without an address defers (4.4.3), as a
    /// configured host's does.
    pub async fn route_to(&self, route: &tern_queue::Route) -> Result<Vec<Host>, RouteFailure> {
        let host = route
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.');
        let addrs = self
            .addresses(host, route.port.unwrap_or(self.port), AddressOf::Host)
            .await?;
        Ok(vec![Host {
            name: host.to_ascii_lowercase(),
            addrs,
            implicit_tls: false,
            relay: false,
        }])
    }

    /// The hosts to try for `domain`, best first.
    pub async fn route(&self, domain: &str) -> Result<Vec<Host>, RouteFailure> {
        let domain = normalize(domain);
        if let Some((h, port, implicit)) = &self.relay {
            let addrs = self.addresses(h, *port, AddressOf::Host).await?;
            return Ok(vec![Host {
                name: h.clone(),
                addrs,
                implicit_tls: *implicit,
                relay: true,
            }]);
        }
        if let Some((_, h, p)) = self.routes.iter().find(|(d, _, _)| *d == domain) {
            let addrs = self.addresses(h, p.unwrap_or(self.port), AddressOf::Host).await?;
            return Ok(vec![Host {
                name: h.clone(),
                addrs,
                implicit_tls: false,
                relay: false,
            }]);
        }
        // An address literal: that address, no DNS.
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr =
                lit.trim_start_matches("ipv6:")
                    .parse()
                    .map_err(|_| RouteFailure::Permanent {
                        status: "5.1.2",
                        text: format!("bad address literal {domain}"),
                    })?;
            return Ok(vec![Host {
                name: lit.to_string(),
                addrs: vec![SocketAddr::new(ip, self.port)],
                implicit_tls: false,
                relay: false,
            }]);
        }
        let records = self.mx_records(&domain).await?;
        if is_null_mx(&records) {
            return Err(RouteFailure::Permanent {
                status: "5.1.10",
                text: format!("{domain} does not accept mail (null MX)"),
            });
        }
        if records.is_empty() {
            // Implicit MX: the domain's own addresses (RFC 5321 5.1).
            let addrs = self.addresses(&domain, self.port, AddressOf::ImplicitMx).await?;
            return Ok(vec![Host {
                name: domain,
                addrs,
                implicit_tls: false,
                relay: false,
            }]);
        }
        let ordered = order_mx(&records, &mut rand::rng());
        let kept = drop_self_and_worse(ordered, &self.me);
        if kept.is_empty() {
            return Err(RouteFailure::Permanent {
                status: "5.4.6",
                text: format!("mail for {domain} loops back to myself"),
            });
        }
        let mut hosts = Vec::new();
        let mut last = None;
        for (_, name) in kept {
            match self.addresses(&name, self.port, AddressOf::Host).await {
                Ok(addrs) => hosts.push(Host {
                    name,
                    addrs,
                    implicit_tls: false,
                    relay: false,
                }),
                Err(e) => last = Some(e),
            }
        }
        if hosts.is_empty() {
            return Err(match last {
                Some(RouteFailure::Temporary { text, .. }) | Some(RouteFailure::Permanent { text, .. }) => {
                    RouteFailure::Temporary {
                        status: "4.4.3",
                        text: format!("no usable address for any MX host of {domain}: {text}"),
                    }
                }
                None => RouteFailure::Temporary {
                    status: "4.4.3",
                    text: format!("no MX host of {domain} has an address"),
                },
            });
        }
        Ok(hosts)
    }

    async fn mx_records(&self, domain: &str) -> Result<Vec<(u16, String)>, RouteFailure> {
        match dns(DnsKind::Mx, domain, self.resolver.mx_lookup(format!("{domain}."))).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() => Err(RouteFailure::Permanent {
                status: "5.1.2",
                text: format!("domain {domain} does not exist"),
            }),
            // No MX: the domain's own addresses are asked next, and decide (an empty answer without SOA is
            // no proof there either).
            Err(e) if matches!(empty_answer(&e), Some(EmptyAnswer::NoData | EmptyAnswer::Bare)) => {
                Ok(Vec::new())
            }
            Err(e) => Err(temporary(domain, "MX", &e)),
        }
    }

    /// Every address of `name` allowed by `ip_version`, with `port`. An IP address is used as it is.
    ///
    /// Each family `ip_version` allows is asked (A even after NXDOMAIN for AAAA: some broken servers answer
    /// NXDOMAIN for AAAA alone). For a domain without MX and without an address of those families, the
    /// other family is asked too before anything is final (see [`addresses_from`]).
    async fn addresses(&self, name: &str, port: u16, of: AddressOf) -> Result<Vec<SocketAddr>, RouteFailure> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let fqdn = format!("{}.", normalize(name));
        let mut answers = AddressAnswers::default();
        if self.ip_version != IpVersion::V4 {
            answers.v6 = Some(self.aaaa(name, &fqdn).await);
        }
        if self.ip_version != IpVersion::V6 {
            answers.v4 = Some(self.a(name, &fqdn).await);
        }
        if of == AddressOf::ImplicitMx && !answers.has_usable_address(self.ip_version) {
            match self.ip_version {
                IpVersion::V4 => answers.v6 = Some(self.aaaa(name, &fqdn).await),
                IpVersion::V6 => answers.v4 = Some(self.a(name, &fqdn).await),
                IpVersion::Any => {}
            }
        }
        addresses_from(name, port, answers, of, self.ip_version)
    }

    /// The AAAA lookup of `name` (`fqdn`: the same with the final dot).
    async fn aaaa(&self, name: &str, fqdn: &str) -> Found {
        match dns(DnsKind::Aaaa, name, self.resolver.ipv6_lookup(fqdn)).await {
            Ok(l) => Found::Addresses(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => found_of_error(name, "AAAA", &e),
        }
    }

    /// The A lookup of `name` (`fqdn`: the same with the final dot).
    async fn a(&self, name: &str, fqdn: &str) -> Found {
        match dns(DnsKind::A, name, self.resolver.ipv4_lookup(fqdn)).await {
            Ok(l) => Found::Addresses(
                l.answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => found_of_error(name, "A", &e),
        }
    }
}

/// What a failed address lookup means: NXDOMAIN, NODATA (with SOA or without), or a failure (a referral
/// among them).
fn found_of_error(name: &str, rtype: &str, e: &NetError) -> Found {
    if e.is_nx_domain() {
        return Found::NxDomain;
    }
    match empty_answer(e) {
        Some(EmptyAnswer::NoData) => Found::NoData,
        Some(EmptyAnswer::Bare) => Found::Empty,
        Some(EmptyAnswer::Referral) | None => Found::Failed(temporary(name, rtype, e)),
    }
}

fn temporary(name: &str, rtype: &str, e: &NetError) -> RouteFailure {
    let why = match empty_answer(e) {
        Some(EmptyAnswer::Referral) => {
            "the server sent a referral (NS records, no SOA) instead of an answer: is it a recursive resolver?"
                .to_string()
        }
        _ => e.to_string(),
    };
    RouteFailure::Temporary {
        status: "4.4.3",
        text: format!("DNS {rtype} lookup of {name} failed: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    #[test]
    fn mx_sorted_by_preference_names_normalised() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let o = order_mx(&recs(&[(20, "MX2.b.test."), (10, "mx1.b.test.")]), &mut rng);
        assert_eq!(o, recs(&[(10, "mx1.b.test"), (20, "mx2.b.test")]));
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let input = recs(&[(10, "a."), (10, "b."), (10, "c."), (5, "first.")]);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let o = order_mx(&input, &mut rng);
            assert_eq!(o[0].1, "first");
            seen.insert(o.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>().join(","));
        }
        assert!(seen.len() > 1, "{seen:?}");
    }

    #[test]
    fn self_and_worse_preferences_are_dropped() {
        let o = recs(&[
            (10, "mx1.b.test"),
            (20, "me.test"),
            (20, "mx2.b.test"),
            (30, "mx3.b.test"),
        ]);
        assert_eq!(
            drop_self_and_worse(o.clone(), "ME.test."),
            recs(&[(10, "mx1.b.test")])
        );
        assert_eq!(drop_self_and_worse(o.clone(), "other.test"), o);
        assert!(drop_self_and_worse(recs(&[(10, "me.test")]), "me.test").is_empty());
    }

    #[test]
    fn null_mx_is_recognised() {
        assert!(is_null_mx(&recs(&[(0, ".")])));
        assert!(!is_null_mx(&recs(&[(0, "."), (10, "mx.b.test")])));
        assert!(!is_null_mx(&recs(&[(10, "mx.b.test.")])));
    }

    #[test]
    fn ip_version_filters_addresses() {
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(filter_ips(ips.clone(), IpVersion::V4), vec![ips[0]]);
        assert_eq!(filter_ips(ips.clone(), IpVersion::V6), vec![ips[1]]);
        assert_eq!(filter_ips(ips.clone(), IpVersion::Any), vec![ips[1], ips[0]]);
    }
}
