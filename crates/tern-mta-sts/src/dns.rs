//! DNS for MTA-STS through hickory: the TXT lookup of `_mta-sts.<domain>` ([`TxtResolver`]) and the
//! addresses of `mta-sts.<domain>` ([`HostResolver`]), both answered by [`HickoryDns`].
//!
//! [`HickoryDns::from_servers`] builds its resolver as delivery's router does from `delivery.dns_servers`
//! (the listed servers over UDP and TCP, 5 s per try, 2 tries; none listed: the system's resolv.conf), so
//! that a worker asks the same servers for its MX records and for its MTA-STS records.
//!
//! What a TXT answer means, after RFC 2308: NXDOMAIN, and an empty NOERROR answer (NODATA, with the zone's
//! SOA or without), are "no record" ([`TxtLookup::NotFound`]); a referral (NS records without SOA, from a
//! server that does not recurse), SERVFAIL, REFUSED and timeouts say nothing about the domain
//! ([`TxtLookup::Failed`]).
//!
//! Every query [`HickoryDns`] sends (TXT, and the AAAA and A of a policy host) is reported to the process's
//! lookup observer, when one is set ([`observe_lookups`]): tern's telemetry sets one that counts them in
//! `tern_dns_lookups`, as delivery's own MX and address lookups are.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;

use crate::discovery::TxtLookup;
use crate::resolve::{HostResolver, ResolveError};

/// How long one query to a configured server may take (as delivery's resolver).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a query is tried (as delivery's resolver).
pub const QUERY_ATTEMPTS: usize = 2;

/// The record type of a query [`HickoryDns`] sent, as reported to the lookup observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupKind {
    /// TXT (`_mta-sts.<domain>`, `_smtp._tls.<domain>`).
    Txt,
    /// A (the policy host).
    A,
    /// AAAA (the policy host).
    Aaaa,
}

/// How a query [`HickoryDns`] sent ended, as reported to the lookup observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupOutcome {
    /// Records found.
    Ok,
    /// The name does not exist.
    NxDomain,
    /// The name exists without records of the type (an empty answer that is no referral).
    NoData,
    /// No answer: SERVFAIL, REFUSED, a referral, a timeout.
    Error,
}

/// What the process calls with every query a [`HickoryDns`] sends.
pub type LookupObserver = fn(LookupKind, LookupOutcome);

static OBSERVER: OnceLock<LookupObserver> = OnceLock::new();

/// Reports every query that any [`HickoryDns`] of the process sends from now on to `observer` (tern's
/// telemetry counts them). One observer per process: `false` when one was set already, which stays.
pub fn observe_lookups(observer: LookupObserver) -> bool {
    OBSERVER.set(observer).is_ok()
}

/// Runs one query and reports its kind and outcome to the observer.
async fn observed<T>(
    kind: LookupKind,
    lookup: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    let result = lookup.await;
    if let Some(observer) = OBSERVER.get() {
        let outcome = match &result {
            Ok(_) => LookupOutcome::Ok,
            Err(NetError::Dns(DnsError::NoRecordsFound(no)))
                if no.response_code == ResponseCode::NXDomain =>
            {
                LookupOutcome::NxDomain
            }
            Err(e) if proves_absence(e) => LookupOutcome::NoData,
            Err(_) => LookupOutcome::Error,
        };
        observer(kind, outcome);
    }
    result
}

/// Looks up the TXT records at a DNS name: the seam through which the policy cache discovers policy ids
/// ([`HickoryDns`] in production).
#[async_trait]
pub trait TxtResolver: Send + Sync {
    /// The TXT records at `name` (for example `_mta-sts.example.com`), each record's character strings
    /// concatenated.
    async fn lookup_txt(&self, name: &str) -> TxtLookup;
}

/// The resolver could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("building the DNS resolver: {0}")]
pub struct DnsSetupError(pub String);

/// A hickory resolver answering both the TXT lookups of the cache and the address lookups of the fetcher.
/// Cheap to clone (the resolver and its answer cache are shared).
#[derive(Clone)]
pub struct HickoryDns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for HickoryDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryDns").finish_non_exhaustive()
    }
}

impl HickoryDns {
    /// Wraps a resolver built elsewhere (for example one a worker already holds).
    pub fn new(resolver: TokioResolver) -> Self {
        HickoryDns { resolver }
    }

    /// A resolver asking `servers` (`ip:port`, over UDP and TCP, 5 s per try, 2 tries), as delivery's
    /// `dns_servers` says; an empty list reads the system configuration (`/etc/resolv.conf`).
    pub fn from_servers(servers: &[SocketAddr]) -> Result<Self, DnsSetupError> {
        let resolver = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| DnsSetupError(format!("reading the system resolver configuration: {e}")))?
                .build()
        } else {
            let servers = servers
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
            b.options_mut().timeout = QUERY_TIMEOUT;
            b.options_mut().attempts = QUERY_ATTEMPTS;
            b.build()
        }
        .map_err(|e| DnsSetupError(e.to_string()))?;
        Ok(HickoryDns { resolver })
    }

    /// The wrapped resolver.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }
}

/// A name as a fully qualified query (a final dot), so that no search domain is appended.
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// What a failed lookup means: `true` when it proves there is no record (NXDOMAIN, or an empty NOERROR
/// answer that is no referral), `false` when it proves nothing.
fn proves_absence(e: &NetError) -> bool {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => true,
            // An answer with NS records and no SOA is a referral: the server did not answer the question.
            ResponseCode::NoError => no.soa.is_some() || no.ns.is_none(),
            _ => false,
        },
        _ => false,
    }
}

#[async_trait]
impl TxtResolver for HickoryDns {
    async fn lookup_txt(&self, name: &str) -> TxtLookup {
        match observed(LookupKind::Txt, self.resolver.txt_lookup(fqdn(name))).await {
            Ok(lookup) => {
                let records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    TxtLookup::NotFound
                } else {
                    TxtLookup::Records(records)
                }
            }
            Err(e) if proves_absence(&e) => TxtLookup::NotFound,
            Err(e) => TxtLookup::Failed(e.to_string()),
        }
    }
}

#[async_trait]
impl HostResolver for HickoryDns {
    /// The AAAA and A addresses of `host`, IPv6 first. No address of either family (NXDOMAIN, NODATA) is
    /// an empty list; a failure of both lookups (or one failing and the other finding nothing) is an error.
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let name = fqdn(host);
        let (v6, v4) = tokio::join!(
            observed(LookupKind::Aaaa, self.resolver.ipv6_lookup(name.clone())),
            observed(LookupKind::A, self.resolver.ipv4_lookup(name))
        );
        let mut ips = Vec::new();
        let mut failure: Option<NetError> = None;
        for answer in [v6, v4] {
            match answer {
                Ok(lookup) => ips.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })),
                Err(e) if proves_absence(&e) => {}
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            // One family failing does not matter when the other has addresses.
            Some(e) if ips.is_empty() => Err(e.into()),
            _ => {
                ips.dedup();
                Ok(ips)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_asked_fully_qualified() {
        assert_eq!(fqdn("_mta-sts.example.test"), "_mta-sts.example.test.");
        assert_eq!(fqdn("_mta-sts.example.test."), "_mta-sts.example.test.");
    }

    #[test]
    fn a_resolver_for_listed_servers_builds() {
        let dns = HickoryDns::from_servers(&["127.0.0.1:5353".parse().unwrap()]);
        assert!(dns.is_ok());
    }
}
