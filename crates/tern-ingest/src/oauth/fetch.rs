//! Fetching a `jwks_url`: one HTTP/1.1 GET (hyper's connection-level client: nothing pooled, no redirect
//! followed) over TLS verified against the web PKI roots, or in clear to a loopback address only. Only a 200
//! with a body of at most [`MAX_JWKS_BYTES`] is taken; the whole fetch has one deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest JWKS taken, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The deadline of one fetch, from the address lookup to the last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Fetches one URL. See the module docs.
pub struct JwksFetcher {
    url: String,
    uri: Uri,
    tls: Option<TlsConnector>,
}

impl JwksFetcher {
    /// A fetcher for `url` (checked by the configuration: `https://`, or `http://` to a loopback host).
    pub fn new(url: &str) -> Result<JwksFetcher, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        if uri.host().is_none() {
            return Err("the URL has no host".into());
        }
        let tls = match uri.scheme_str() {
            Some("https") => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsConnector::from(Arc::new(config)))
            }
            Some("http") => None,
            _ => return Err("the URL is neither https:// nor http://".into()),
        };
        Ok(JwksFetcher {
            url: url.to_owned(),
            uri,
            tls,
        })
    }

    /// The URL, for logs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the body.
    pub async fn fetch(&self) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {}s", FETCH_TIMEOUT.as_secs())),
        }
    }

    async fn fetch_inner(&self) -> Result<Vec<u8>, String> {
        let host = self.uri.host().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("resolving {bare}: {e}"))?
            .collect();
        if self.tls.is_none() && addrs.iter().any(|a| !a.ip().is_loopback()) {
            // The configuration allows http:// only to loopback; a name that resolves elsewhere is refused too.
            return Err(format!("{bare} is not a loopback address: http:// is refused"));
        }
        let mut last = format!("{bare} has no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return match &self.tls {
                        Some(connector) => {
                            let name = ServerName::try_from(bare.to_owned())
                                .map_err(|e| format!("{bare} is not a server name: {e}"))?;
                            let tls = connector
                                .connect(name, tcp)
                                .await
                                .map_err(|e| format!("TLS with {bare}: {e}"))?;
                            self.get(tls).await
                        }
                        None => self.get(tcp).await,
                    };
                }
                Err(e) => last = format!("connecting to {addr}: {e}"),
            }
        }
        Err(last)
    }

    async fn get<S>(&self, io: S) -> Result<Vec<u8>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let result = async {
            let path = self.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let authority = self.uri.authority().map_or("", |a| a.as_str()).to_owned();
            let request = Request::get(path)
                .header(header::HOST, authority)
                .header(header::USER_AGENT, concat!("tern/", env!("CARGO_PKG_VERSION")))
                .header(header::ACCEPT, "application/json")
                .header(header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("HTTP request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("HTTP status {}", response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the body (at most {MAX_JWKS_BYTES} bytes): {e}"))?;
            Ok(body.to_bytes().to_vec())
        }
        .await;
        driver.abort();
        result
    }
}
