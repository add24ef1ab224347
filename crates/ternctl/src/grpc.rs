//! Connecting to tern's gRPC servers, with the bearer key and a bounded wait.

use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a server to accept the connection: an unreachable server is an error, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A channel to `url`, failing with a one-line reason when the server cannot be reached.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    connect_with(url, CALL_TIMEOUT).await
}

/// [`connect`], for calls that may take up to `call_timeout`.
pub async fn connect_with(url: &str, call_timeout: Duration) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("{url:?} is not a valid server URL (expected http://host:port)"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout);
    endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {}", root_cause(&e)))
}

/// `message` as a request carrying `authorization: Bearer <token>` when there is a token.
pub fn request<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .context("the key has characters that cannot go in a header")?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

/// A gRPC status as a one-line error: its code in words and the server's message.
pub fn status_error(url: &str, status: tonic::Status) -> anyhow::Error {
    let what = match status.code() {
        tonic::Code::Unauthenticated => "the server refused the key",
        tonic::Code::PermissionDenied => "the key may not do this",
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::NotFound => "not found",
        tonic::Code::Unavailable => "server unavailable",
        tonic::Code::DeadlineExceeded => "the server did not answer in time",
        _ => "request failed",
    };
    anyhow::anyhow!("{what} ({url}): {}", status.message())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Fails unless `s` is non-empty.
pub fn nonempty(what: &str, s: &str) -> anyhow::Result<()> {
    if s.trim().is_empty() {
        bail!("{what} is empty");
    }
    Ok(())
}
