//! How the policy fetcher finds the address of `mta-sts.<domain>`: a small trait, so that delivery can
//! pass its own DNS resolver (hickory) and tests can point the fetch at a loopback server while the TLS
//! name stays the real host name.

use std::net::IpAddr;

use async_trait::async_trait;

/// The error a [`HostResolver`] returns: any error, kept for its message.
pub type ResolveError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves a host name to the addresses to connect to, in the order to try them.
///
/// A delivery worker wraps its hickory resolver; the body of `resolve` is then
/// `Ok(self.resolver.lookup_ip(host).await?.iter().collect())`. The shape of an implementation:
///
/// ```
/// use std::net::IpAddr;
/// use tern_mta_sts::{HostResolver, ResolveError};
///
/// struct Pinned(IpAddr);
///
/// #[async_trait::async_trait]
/// impl HostResolver for Pinned {
///     async fn resolve(&self, _host: &str) -> Result<Vec<IpAddr>, ResolveError> {
///         Ok(vec![self.0])
///     }
/// }
/// ```
#[async_trait]
pub trait HostResolver: Send + Sync {
    /// The addresses of `host`. An empty list is reported as "no address".
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError>;
}

/// Resolves through the operating system (`getaddrinfo`, via tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

#[async_trait]
impl HostResolver for SystemResolver {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let addrs = tokio::net::lookup_host((host, 0)).await?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for a in addrs {
            if !ips.contains(&a.ip()) {
                ips.push(a.ip());
            }
        }
        Ok(ips)
    }
}

/// Answers every host with the same fixed addresses: for tests (a policy server on 127.0.0.1) and for
/// pinning the policy host by configuration.
#[derive(Clone, Debug)]
pub struct StaticResolver(pub Vec<IpAddr>);

#[async_trait]
impl HostResolver for StaticResolver {
    async fn resolve(&self, _host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let ips = SystemResolver.resolve("localhost").await.unwrap();
        assert!(ips.iter().any(|ip| ip.is_loopback()), "{ips:?}");
    }
}
