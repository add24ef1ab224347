//! Fetching a domain's policy from `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3).
//!
//! The certificate is verified with rustls against the web PKI roots (`webpki-roots`) plus the operator's
//! extra CA certificates, for the name `mta-sts.<domain>`, which is also sent as SNI; TLS 1.2 or later.
//! One HTTP/1.1 GET (hyper's connection-level client, so nothing is pooled and nothing follows a
//! redirect). Only a 200 with a `text/plain` body of at most 64 KiB is taken, and it must parse as a
//! policy. The whole fetch, from the address lookup to the last byte, has one deadline.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::policy::{Policy, PolicyError};
use crate::resolve::HostResolver;
use crate::tlsrpt::TlsRptResultType;

/// The path of the policy on the policy host.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// The largest policy body taken, in bytes (RFC 8461 §3.3: 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The default deadline of a whole fetch.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The default HTTPS port of the policy host.
pub const DEFAULT_HTTPS_PORT: u16 = 443;

/// How the fetcher fetches (the `delivery.mta_sts` settings, and `delivery.extra_ca_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOptions {
    /// The deadline of a whole fetch: resolving, connecting, TLS, the request and reading the body.
    pub timeout: Duration,
    /// The port of the policy host; only tests use anything but 443.
    pub https_port: u16,
    /// A PEM file of CA certificates trusted besides the web PKI roots.
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            timeout: DEFAULT_FETCH_TIMEOUT,
            https_port: DEFAULT_HTTPS_PORT,
            extra_ca_file: None,
        }
    }
}

/// The fetcher could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The extra CA file could not be read or holds something that is not a certificate.
    #[error("reading the CA certificates in {}: {reason}", .path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The extra CA file holds no certificate.
    #[error("{} holds no certificate", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("building the TLS client: {0}")]
    Tls(String),
}

/// Why a policy could not be fetched. [`FetchError::result_type`] gives its TLS-RPT result type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy domain is not a DNS name (empty, an IP address, bad characters).
    #[error("{domain:?} is not a domain name whose policy can be fetched")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
    },
    /// Looking up the policy host's addresses failed.
    #[error("resolving {host}: {reason}")]
    Resolve {
        /// `mta-sts.<domain>`.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// The policy host has no address.
    #[error("{host} has no address")]
    NoAddress {
        /// `mta-sts.<domain>`.
        host: String,
    },
    /// No address of the policy host accepted a connection.
    #[error("connecting to {host} port {port}: {reason}")]
    Connect {
        /// `mta-sts.<domain>`.
        host: String,
        /// The port.
        port: u16,
        /// The last address's error.
        reason: String,
    },
    /// The policy host's certificate did not verify (PKIX: untrusted, expired, wrong name).
    #[error("the certificate of {host} does not verify: {reason}")]
    Certificate {
        /// `mta-sts.<domain>`.
        host: String,
        /// rustls's verdict.
        reason: String,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// `mta-sts.<domain>`.
        host: String,
        /// What failed.
        reason: String,
    },
    /// The HTTP exchange failed (a malformed response, the connection closing early).
    #[error("the HTTP exchange with {host} failed: {reason}")]
    Http {
        /// `mta-sts.<domain>`.
        host: String,
        /// What failed.
        reason: String,
    },
    /// The policy host answered with a redirect, which is never followed.
    #[error("{host} answered {status} (a redirect to {}); redirects are never followed",
        .location.as_deref().unwrap_or("nowhere"))]
    Redirect {
        /// `mta-sts.<domain>`.
        host: String,
        /// The 3xx status.
        status: u16,
        /// The `Location` header, if any.
        location: Option<String>,
    },
    /// The policy host answered with a status other than 200.
    #[error("{host} answered HTTP status {status}, not 200")]
    Status {
        /// `mta-sts.<domain>`.
        host: String,
        /// The status.
        status: u16,
    },
    /// The response's media type is not `text/plain`.
    #[error("the policy from {host} has the content type {}, not text/plain",
        .found.as_deref().unwrap_or("(none)"))]
    ContentType {
        /// `mta-sts.<domain>`.
        host: String,
        /// The `Content-Type` header, if any.
        found: Option<String>,
    },
    /// The body is longer than [`MAX_POLICY_BYTES`].
    #[error("the policy from {host} is longer than {limit} bytes")]
    TooLarge {
        /// `mta-sts.<domain>`.
        host: String,
        /// The limit.
        limit: usize,
    },
    /// The fetch did not finish within [`FetchOptions::timeout`].
    #[error("fetching the policy from {host} timed out after {after:?}")]
    Timeout {
        /// `mta-sts.<domain>`.
        host: String,
        /// The deadline.
        after: Duration,
    },
    /// The body is not a valid policy.
    #[error("the policy from {host} is invalid: {source}")]
    Invalid {
        /// `mta-sts.<domain>`.
        host: String,
        /// Why.
        #[source]
        source: PolicyError,
    },
}

impl FetchError {
    /// The RFC 8460 result type to report: `sts-webpki-invalid` when the certificate did not verify,
    /// `sts-policy-invalid` when a response came but is not a policy (wrong media type, too long, does not
    /// parse), `sts-policy-fetch-error` for everything else.
    pub fn result_type(&self) -> TlsRptResultType {
        match self {
            FetchError::Certificate { .. } => TlsRptResultType::StsWebpkiInvalid,
            FetchError::ContentType { .. } | FetchError::TooLarge { .. } | FetchError::Invalid { .. } => {
                TlsRptResultType::StsPolicyInvalid
            }
            _ => TlsRptResultType::StsPolicyFetchError,
        }
    }
}

/// `mta-sts.<domain>`, lower-cased, without a trailing dot; an error when that is no DNS name.
pub fn policy_host(domain: &str) -> Result<String, FetchError> {
    let invalid = || FetchError::InvalidDomain {
        domain: domain.to_owned(),
    };
    let d = domain.strip_suffix('.').unwrap_or(domain);
    if d.is_empty() || d.parse::<IpAddr>().is_ok() {
        return Err(invalid());
    }
    let host = format!("mta-sts.{}", d.to_ascii_lowercase());
    match ServerName::try_from(host.as_str()) {
        Ok(ServerName::DnsName(_)) => Ok(host),
        _ => Err(invalid()),
    }
}

/// The URL a domain's policy is fetched from (with the port when it is not 443).
pub fn policy_url(domain: &str, https_port: u16) -> Result<String, FetchError> {
    let host = policy_host(domain)?;
    Ok(format!("https://{}{POLICY_PATH}", authority(&host, https_port)))
}

fn authority(host: &str, port: u16) -> String {
    if port == DEFAULT_HTTPS_PORT {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

/// Fetches policies over HTTPS. Cheap to clone; one fetcher serves every domain and every task.
#[derive(Clone)]
pub struct PolicyFetcher {
    connector: TlsConnector,
    resolver: Arc<dyn HostResolver>,
    options: FetchOptions,
}

impl std::fmt::Debug for PolicyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyFetcher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PolicyFetcher {
    /// A fetcher that finds policy hosts through `resolver`, reading `options.extra_ca_file` now.
    pub fn new(options: FetchOptions, resolver: Arc<dyn HostResolver>) -> Result<Self, SetupError> {
        let roots = root_store(options.extra_ca_file.as_deref())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| SetupError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(PolicyFetcher {
            connector: TlsConnector::from(Arc::new(config)),
            resolver,
            options,
        })
    }

    /// The options the fetcher was built with.
    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// Fetches and parses the policy of `domain` (the policy domain, not the policy host).
    pub async fn fetch(&self, domain: &str) -> Result<Policy, FetchError> {
        let host = policy_host(domain)?;
        let after = self.options.timeout;
        debug!(domain, host = %host, port = self.options.https_port, "fetching the MTA-STS policy");
        let result = match tokio::time::timeout(after, self.fetch_from(&host)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout {
                host: host.clone(),
                after,
            }),
        };
        match &result {
            Ok(p) => {
                debug!(host = %host, mode = %p.mode(), max_age = p.max_age(), "fetched the MTA-STS policy")
            }
            Err(e) => debug!(host = %host, error = %e, "the MTA-STS policy fetch failed"),
        }
        result
    }

    async fn fetch_from(&self, host: &str) -> Result<Policy, FetchError> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|_| FetchError::InvalidDomain {
            domain: host.to_owned(),
        })?;
        let tcp = self.connect(host).await?;
        let tls = self
            .connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| tls_error(host, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http_error(host, &e))?;
        // The connection task drives the socket; its errors also surface through the request and the
        // body, so they are reported there. Dropping the guard (on return or timeout) stops it.
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let request = Request::get(POLICY_PATH)
            .header(header::HOST, authority(host, self.options.https_port))
            .header(header::USER_AGENT, concat!("tern/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "text/plain")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| http_error(host, &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_error(host, &e))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return Err(FetchError::Redirect {
                host: host.to_owned(),
                status: status.as_u16(),
                location,
            });
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status {
                host: host.to_owned(),
                status: status.as_u16(),
            });
        }
        check_content_type(host, response.headers().get(header::CONTENT_TYPE))?;
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_POLICY_BYTES as u64) {
            return Err(FetchError::TooLarge {
                host: host.to_owned(),
                limit: MAX_POLICY_BYTES,
            });
        }
        let body = read_limited(host, response.into_body()).await?;
        Policy::parse_bytes(&body).map_err(|source| FetchError::Invalid {
            host: host.to_owned(),
            source,
        })
    }

    /// Connects to the first address of `host` that answers.
    async fn connect(&self, host: &str) -> Result<TcpStream, FetchError> {
        let ips = self
            .resolver
            .resolve(host)
            .await
            .map_err(|e| FetchError::Resolve {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        if ips.is_empty() {
            return Err(FetchError::NoAddress {
                host: host.to_owned(),
            });
        }
        let port = self.options.https_port;
        let mut last = String::new();
        for ip in ips {
            match TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(stream) => {
                    // Small request, one response: Nagle would only add a delay.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => {
                    debug!(host, ip = %ip, port, error = %e, "connecting to the MTA-STS policy host failed");
                    last = format!("{ip}: {e}");
                }
            }
        }
        Err(FetchError::Connect {
            host: host.to_owned(),
            port,
            reason: last,
        })
    }
}

/// The web PKI roots plus the certificates in `extra_ca_file`.
pub(crate) fn root_store(extra_ca_file: Option<&Path>) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = extra_ca_file else {
        return Ok(roots);
    };
    let ca_error = |reason: String| SetupError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))? {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(SetupError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// Tells a certificate that does not verify (rustls's `InvalidCertificate`) from other TLS failures.
fn tls_error(host: &str, e: std::io::Error) -> FetchError {
    let reason = e.to_string();
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => FetchError::Certificate {
            host: host.to_owned(),
            reason,
        },
        _ => FetchError::Tls {
            host: host.to_owned(),
            reason,
        },
    }
}

/// An HTTP error with its causes (hyper's own message alone is often just "connection error").
fn http_error(host: &str, e: &(dyn std::error::Error + 'static)) -> FetchError {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    FetchError::Http {
        host: host.to_owned(),
        reason,
    }
}

/// `text/plain`, with or without parameters (`; charset=utf-8`), in any case.
fn check_content_type(host: &str, value: Option<&header::HeaderValue>) -> Result<(), FetchError> {
    let found = value.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media_type = found.as_deref().map(|v| v.split(';').next().unwrap_or("").trim());
    if media_type.is_some_and(|m| m.eq_ignore_ascii_case("text/plain")) {
        return Ok(());
    }
    Err(FetchError::ContentType {
        host: host.to_owned(),
        found,
    })
}

/// Reads the body, failing as soon as it passes [`MAX_POLICY_BYTES`] (whatever Content-Length said,
/// and however it is framed: chunked bodies have no length up front).
async fn read_limited(host: &str, mut body: Incoming) -> Result<Vec<u8>, FetchError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| http_error(host, &e))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_POLICY_BYTES {
                return Err(FetchError::TooLarge {
                    host: host.to_owned(),
                    limit: MAX_POLICY_BYTES,
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
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
    fn the_policy_host_is_under_the_domain_lower_cased() {
        assert_eq!(policy_host("Example.TEST.").unwrap(), "mta-sts.example.test");
        assert_eq!(
            policy_url("example.test", 443).unwrap(),
            "https://mta-sts.example.test/.well-known/mta-sts.txt"
        );
        assert_eq!(
            policy_url("example.test", 8443).unwrap(),
            "https://mta-sts.example.test:8443/.well-known/mta-sts.txt"
        );
    }

    #[test]
    fn addresses_and_malformed_names_are_no_policy_domains() {
        for bad in ["", ".", "127.0.0.1", "::1", "a b.test", "a..test"] {
            assert!(
                matches!(policy_host(bad), Err(FetchError::InvalidDomain { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_content_type_must_be_text_plain_with_any_parameters() {
        let ok = |v: &str| check_content_type("h", Some(&header::HeaderValue::from_str(v).unwrap())).is_ok();
        assert!(ok("text/plain"));
        assert!(ok("Text/Plain; charset=utf-8"));
        assert!(ok(" text/plain ;charset=\"UTF-8\""));
        assert!(!ok("text/html"));
        assert!(!ok("text/plainx"));
        assert!(!ok("application/octet-stream"));
        assert!(check_content_type("h", None).is_err());
    }

    #[test]
    fn each_error_maps_onto_its_tls_rpt_result_type() {
        let host = || "mta-sts.example.test".to_owned();
        let cases = [
            (
                FetchError::Certificate {
                    host: host(),
                    reason: "x".into(),
                },
                TlsRptResultType::StsWebpkiInvalid,
            ),
            (
                FetchError::Invalid {
                    host: host(),
                    source: PolicyError::MissingField("mode"),
                },
                TlsRptResultType::StsPolicyInvalid,
            ),
            (
                FetchError::ContentType {
                    host: host(),
                    found: None,
                },
                TlsRptResultType::StsPolicyInvalid,
            ),
            (
                FetchError::TooLarge {
                    host: host(),
                    limit: MAX_POLICY_BYTES,
                },
                TlsRptResultType::StsPolicyInvalid,
            ),
            (
                FetchError::Redirect {
                    host: host(),
                    status: 301,
                    location: None,
                },
                TlsRptResultType::StsPolicyFetchError,
            ),
            (
                FetchError::Status {
                    host: host(),
                    status: 404,
                },
                TlsRptResultType::StsPolicyFetchError,
            ),
            (
                FetchError::Timeout {
                    host: host(),
                    after: Duration::from_secs(1),
                },
                TlsRptResultType::StsPolicyFetchError,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.result_type(), want, "{e}");
        }
    }

    #[test]
    fn an_extra_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "no certificates here\n").unwrap();
        let options = FetchOptions {
            extra_ca_file: Some(path.clone()),
            ..FetchOptions::default()
        };
        let err = PolicyFetcher::new(options, Arc::new(crate::StaticResolver(vec![]))).unwrap_err();
        assert_eq!(err, SetupError::NoCertificate { path });
        let options = FetchOptions {
            extra_ca_file: Some(dir.path().join("missing.pem")),
            ..FetchOptions::default()
        };
        assert!(matches!(
            PolicyFetcher::new(options, Arc::new(crate::StaticResolver(vec![]))),
            Err(SetupError::CaFile { .. })
        ));
    }
}
