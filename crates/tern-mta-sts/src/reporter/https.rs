//! Posting a report to an `https:` URI of a domain's `rua` (RFC 8460 §5.4): one HTTP/1.1 POST of the
//! gzipped report with `Content-Type: application/tlsrpt+gzip`, over TLS verified with rustls against the
//! web PKI roots plus the operator's extra CA certificates (as the policy fetch, [`crate::fetch`]), the URI's
//! host sent as SNI. A 2xx answer is success; anything else (redirects included: none is followed) is an
//! error. The whole POST, from the address lookup to the response's head, has one deadline.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::fetch::{SetupError, root_store};
use crate::report::TLSRPT_GZIP;
use crate::resolve::HostResolver;

/// Why a report could not be posted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The URI is not an `https://host[:port]/path` URL this client can post to.
    #[error("{0:?} is not an https URL to post to")]
    Url(String),
    /// The host's addresses could not be looked up, or it has none.
    #[error("resolving {host}: {reason}")]
    Resolve {
        /// The URL's host.
        host: String,
        /// Why.
        reason: String,
    },
    /// No address of the host accepted a connection.
    #[error("connecting to {host} port {port}: {reason}")]
    Connect {
        /// The URL's host.
        host: String,
        /// The port.
        port: u16,
        /// The last address's error.
        reason: String,
    },
    /// The TLS handshake failed (the certificate did not verify, among others).
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// The URL's host.
        host: String,
        /// rustls's verdict.
        reason: String,
    },
    /// The HTTP exchange failed.
    #[error("the HTTP exchange with {host} failed: {reason}")]
    Http {
        /// The URL's host.
        host: String,
        /// What failed.
        reason: String,
    },
    /// The collector answered with a status other than 2xx.
    #[error("{host} answered HTTP status {status}")]
    Status {
        /// The URL's host.
        host: String,
        /// The status.
        status: u16,
    },
    /// The POST did not finish in time.
    #[error("posting to {host} timed out after {after:?}")]
    Timeout {
        /// The URL's host.
        host: String,
        /// The deadline.
        after: Duration,
    },
}

/// Where a URL points: the host to connect to and verify, its port, the `Host` header and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host name or IP address (without brackets).
    pub host: String,
    /// The port (443 unless the URL names one).
    pub port: u16,
    /// The URL's authority, for the `Host` header.
    pub authority: String,
    /// The path and query (`/` when empty).
    pub path: String,
}

/// Splits an `https:` URL into what the POST needs; user information, other schemes and a missing host
/// are refused.
pub(crate) fn target(url: &str) -> Result<Target, PostError> {
    let bad = || PostError::Url(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if !uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    if authority.as_str().contains('@') {
        return Err(bad());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(443),
        authority: authority.as_str().to_owned(),
        path: if path.is_empty() { "/".into() } else { path },
    })
}

/// Posts reports over HTTPS. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Poster {
    connector: TlsConnector,
    resolver: Arc<dyn HostResolver>,
    timeout: Duration,
}

impl Poster {
    /// A client trusting the web PKI roots and `extra_ca_file`, finding hosts through `resolver`.
    pub(crate) fn new(
        extra_ca_file: Option<&Path>,
        resolver: Arc<dyn HostResolver>,
        timeout: Duration,
    ) -> Result<Poster, SetupError> {
        let roots = root_store(extra_ca_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| SetupError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Poster {
            connector: TlsConnector::from(Arc::new(config)),
            resolver,
            timeout,
        })
    }

    /// Posts `report_gz` to `url`; the 2xx status on success.
    pub(crate) async fn post(&self, url: &str, report_gz: Bytes) -> Result<u16, PostError> {
        let target = target(url)?;
        match tokio::time::timeout(self.timeout, self.post_to(&target, report_gz)).await {
            Ok(result) => result,
            Err(_) => Err(PostError::Timeout {
                host: target.host,
                after: self.timeout,
            }),
        }
    }

    async fn post_to(&self, target: &Target, body: Bytes) -> Result<u16, PostError> {
        let host = target.host.as_str();
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned())
                .map_err(|_| PostError::Url(format!("https://{}", target.authority)))?,
        };
        let tcp = self.connect(target).await?;
        let tls = self
            .connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| PostError::Tls {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        let http = |e: &(dyn std::error::Error + 'static)| PostError::Http {
            host: host.to_owned(),
            reason: with_causes(e),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http(&e))?;
        // The connection task drives the socket; dropping the guard (on return or timeout) stops it.
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let request = Request::post(target.path.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::USER_AGENT, concat!("tern/", env!("CARGO_PKG_VERSION")))
            .header(header::CONTENT_TYPE, TLSRPT_GZIP)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::CONNECTION, "close")
            .body(Full::new(body))
            .map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(PostError::Status {
                host: host.to_owned(),
                status: status.as_u16(),
            });
        }
        Ok(status.as_u16())
    }

    /// Connects to the first address of the target's host that answers.
    async fn connect(&self, target: &Target) -> Result<TcpStream, PostError> {
        let host = target.host.as_str();
        let ips = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .resolver
                .resolve(host)
                .await
                .map_err(|e| PostError::Resolve {
                    host: host.to_owned(),
                    reason: e.to_string(),
                })?,
        };
        if ips.is_empty() {
            return Err(PostError::Resolve {
                host: host.to_owned(),
                reason: "no address".into(),
            });
        }
        let mut last = String::new();
        for ip in ips {
            match TcpStream::connect(SocketAddr::new(ip, target.port)).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = format!("{ip}: {e}"),
            }
        }
        Err(PostError::Connect {
            host: host.to_owned(),
            port: target.port,
            reason: last,
        })
    }
}

/// An error with its causes (hyper's own message alone is often just "connection error").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_split_into_host_port_authority_and_path() {
        assert_eq!(
            target("https://Collector.Test:8443/tlsrpt?x=1").unwrap(),
            Target {
                host: "collector.test".into(),
                port: 8443,
                authority: "Collector.Test:8443".into(),
                path: "/tlsrpt?x=1".into(),
            }
        );
        let t = target("https://reports.example").unwrap();
        assert_eq!((t.port, t.path.as_str()), (443, "/"));
        assert_eq!(target("https://[::1]:9/r").unwrap().host, "::1");
    }

    #[test]
    fn other_schemes_user_information_and_garbage_are_refused() {
        for bad in [
            "http://collector.test/r",
            "mailto:a@b.test",
            "https://user:pw@collector.test/r",
            "https:///r",
            "not a url",
        ] {
            assert!(matches!(target(bad), Err(PostError::Url(_))), "{bad:?}");
        }
    }
}
