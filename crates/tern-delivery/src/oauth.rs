//! Access tokens for AUTH XOAUTH2 to the relay (`[delivery.relay_oauth]`): from a file another program
//! keeps fresh, re-read when its modification time or size changes; or from the OAuth 2.0
//! client-credentials grant (RFC 6749 4.4), cached until a minute before it expires.
//!
//! A grant's refresh is single-flight within the worker process: the cache sits behind an async mutex,
//! so one task fetches while the others wait for its result. Workers of other processes each fetch their
//! own token (no cluster-wide lock).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::smtp::TlsClients;

/// A cached token is used until this long before it expires.
const EARLY: Duration = Duration::from_secs(60);
/// A token endpoint's answer larger than this is refused.
const MAX_RESPONSE: usize = 64 * 1024;

/// Why no token could be had: the relay is deferred with this text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("OAuth token: {0}")]
pub struct TokenError(pub String);

/// Where the XOAUTH2 access token comes from.
pub enum TokenSource {
    /// A file holding the token.
    File {
        /// The file.
        path: PathBuf,
        /// The token last read, with the file's modification time and size then.
        cache: Mutex<Option<(Option<SystemTime>, u64, String)>>,
    },
    /// The client-credentials grant.
    Grant(Box<Grant>),
}

/// The client-credentials grant's settings and its cached token.
pub struct Grant {
    url: String,
    client_id: String,
    secret_file: PathBuf,
    scope: Option<String>,
    timeout: Duration,
    tls: TlsClients,
    cache: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    /// The source `[delivery.relay_oauth]` describes (already validated); `timeout` bounds a token fetch.
    pub fn from_config(
        cfg: &tern_config::DeliveryConfig,
        tls: TlsClients,
        timeout: Duration,
    ) -> Option<Self> {
        let o = &cfg.relay_oauth;
        if let Some(path) = &o.token_file {
            return Some(TokenSource::File {
                path: path.clone(),
                cache: Mutex::new(None),
            });
        }
        Some(TokenSource::Grant(Box::new(Grant {
            url: o.token_url.clone()?,
            client_id: o.client_id.clone()?,
            secret_file: o.client_secret_file.clone()?,
            scope: o.scope.clone(),
            timeout,
            tls,
            cache: tokio::sync::Mutex::new(None),
        })))
    }

    /// Forgets `token` after the relay refused it (revoked or rotated at the provider before it expired), so
    /// that the next use fetches a new one instead of repeating the refused token until its expiry. A token
    /// file is the operator's to rewrite: it is read again when it changes.
    pub async fn refused(&self, token: &str) {
        if let TokenSource::Grant(g) = self {
            let mut cache = g.cache.lock().await;
            if cache.as_ref().is_some_and(|(cached, _)| cached == token) {
                *cache = None;
                debug!(url = %g.url, "the relay refused the cached OAuth token; the next use fetches a new one");
            }
        }
    }

    /// The current access token.
    pub async fn token(&self) -> Result<String, TokenError> {
        match self {
            TokenSource::File { path, cache } => file_token(path, cache).await,
            TokenSource::Grant(g) => g.token().await,
        }
    }
}

async fn file_token(
    path: &PathBuf,
    cache: &Mutex<Option<(Option<SystemTime>, u64, String)>>,
) -> Result<String, TokenError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| TokenError(format!("{}: {e}", path.display())))?;
    let stamp = (meta.modified().ok(), meta.len());
    if let Ok(c) = cache.lock()
        && let Some((m, len, token)) = c.as_ref()
        && (*m, *len) == stamp
        && stamp.0.is_some()
    {
        return Ok(token.clone());
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| TokenError(format!("{}: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(TokenError(format!("{} holds no token", path.display())));
    }
    debug!(file = %path.display(), "read the relay's OAuth token");
    if let Ok(mut c) = cache.lock() {
        *c = Some((stamp.0, stamp.1, token.clone()));
    }
    Ok(token)
}

impl Grant {
    async fn token(&self) -> Result<String, TokenError> {
        // Held across the fetch: one task refreshes, the others wait and take its token.
        let mut cache = self.cache.lock().await;
        if let Some((token, refresh_at)) = cache.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = tokio::time::timeout(self.timeout, self.fetch())
            .await
            .map_err(|_| TokenError(format!("no answer from {} in time", self.url)))??;
        *cache = Some((token.clone(), Instant::now() + refresh_after(lifetime)));
        debug!(url = %self.url, expires_in = lifetime.as_secs(), "fetched the relay's OAuth token");
        Ok(token)
    }

    async fn fetch(&self) -> Result<(String, Duration), TokenError> {
        let e = |m: String| TokenError(format!("{}: {m}", self.url));
        let secret = tokio::fs::read_to_string(&self.secret_file)
            .await
            .map_err(|err| TokenError(format!("{}: {err}", self.secret_file.display())))?;
        let mut form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            form_encode(&self.client_id),
            form_encode(secret.trim())
        );
        if let Some(scope) = &self.scope {
            form.push_str(&format!("&scope={}", form_encode(scope)));
        }
        let (https, authority, path) = split_url(&self.url).ok_or_else(|| e("not a URL".into()))?;
        let (host, port) = host_port(authority, if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|err| e(err.to_string()))?;
        let request = Request::post(path)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, concat!("tern/", env!("CARGO_PKG_VERSION")))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::CONNECTION, "close")
            .body(Full::new(Bytes::from(form)))
            .map_err(|err| e(err.to_string()))?;
        let (status, body) = if https {
            let (tls, _) = self
                .tls
                .handshake(tcp, &host, true, self.timeout)
                .await
                .map_err(|err| e(err.to_string()))?;
            exchange(TokioIo::new(tls), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
        .map_err(e)?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| e(format!("HTTP {status}, not JSON")))?;
        if status != 200 {
            let error = json.get("error").and_then(|v| v.as_str()).unwrap_or("");
            warn!(url = %self.url, status, error, "the OAuth token endpoint refused the client credentials");
            return Err(e(format!("HTTP {status} {error}")));
        }
        let token = json
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| e("no access_token in the answer".into()))?;
        let expires_in = json
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
        Ok((token.to_string(), Duration::from_secs(expires_in.unwrap_or(3600))))
    }
}

/// One HTTP/1.1 request and its status and (bounded) body.
async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

/// `https://authority/path` → (true, authority, path).
fn split_url(url: &str) -> Option<(bool, &str, &str)> {
    let (https, rest) = match url.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("http://")?),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then_some((https, authority, path))
}

fn host_port(authority: &str, default: u16) -> (String, u16) {
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').unwrap_or((v6, ""));
        let port = rest.strip_prefix(':').and_then(|p| p.parse().ok());
        return (h.to_string(), port.unwrap_or(default));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(default)),
        None => (authority.to_string(), default),
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// How long a token that lives `lifetime` is used before a new one is fetched: until [`EARLY`] before it
/// expires, or half its life for a short-lived one (a token of 60 s or less is not fetched anew for every
/// connection).
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(EARLY.min(lifetime / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_a_minute_early_or_at_half_life_when_short() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(refresh_after(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(refresh_after(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn urls_and_form_values() {
        assert_eq!(
            split_url("https://login.example/t/oauth2/v2.0/token"),
            Some((true, "login.example", "/t/oauth2/v2.0/token"))
        );
        assert_eq!(
            split_url("http://127.0.0.1:8080"),
            Some((false, "127.0.0.1:8080", "/"))
        );
        assert_eq!(host_port("[::1]:99", 80), ("::1".into(), 99));
        assert_eq!(host_port("a.example", 443), ("a.example".into(), 443));
        assert_eq!(
            form_encode("https://x/.default a&b"),
            "https%3A%2F%2Fx%2F.default+a%26b"
        );
    }
}
