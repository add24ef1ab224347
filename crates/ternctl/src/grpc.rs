//! Connecting to tern's gRPC servers, with the bearer key and a bounded wait.

use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a server to accept the connection: an unreachable server is an error, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a stream that may stay quiet for long checks that the server is still there, and how long it
/// waits for the answer: a control plane that went away without closing the connection is noticed.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(10));

/// A channel to `url`, failing with a one-line reason when the server cannot be reached.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    connect_with(url, CALL_TIMEOUT).await
}

/// [`connect`], for calls that may take up to `call_timeout`.
pub async fn connect_with(url: &str, call_timeout: Duration) -> anyhow::Result<Channel> {
    connect_timeouts(url, CONNECT_TIMEOUT, Some(call_timeout)).await
}

/// [`connect`] for a stream that runs until stopped (no call timeout; keepalive pings).
pub async fn connect_stream(url: &str) -> anyhow::Result<Channel> {
    connect_timeouts(url, CONNECT_TIMEOUT, None).await
}

/// A channel to `url` with these timeouts (`call_timeout` `None`: calls may run for ever, with keepalive
/// pings).
pub async fn connect_timeouts(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("{url:?} is not a valid server URL (expected http://host:port)"))?
        .connect_timeout(connect_timeout);
    endpoint = match call_timeout {
        Some(t) => endpoint.timeout(t),
        None => endpoint
            .http2_keep_alive_interval(KEEPALIVE.0)
            .keep_alive_timeout(KEEPALIVE.1)
            .keep_alive_while_idle(true),
    };
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

/// Which key a server wants, so that a refusal names the flag and the variable that give it.
#[derive(Clone, Copy, Debug)]
pub struct KeyHint {
    /// The server, in words: "the control plane", "the ingest node".
    pub server: &'static str,
    /// The key, in words: "an admin key", "an ingest API key".
    pub key: &'static str,
    /// The environment variable that holds it.
    pub var: &'static str,
    /// Whether a key was sent.
    pub sent: bool,
}

/// A gRPC status as a one-line error: its code in words and the server's message; a missing or refused key
/// says how to give one.
pub fn status_error(url: &str, status: &tonic::Status, key: KeyHint) -> anyhow::Error {
    let msg = status.message();
    match status.code() {
        tonic::Code::Unauthenticated if !key.sent => anyhow::anyhow!(
            "{} needs {}: pass --token or set {} ({url}: {msg})",
            key.server,
            key.key,
            key.var
        ),
        tonic::Code::Unauthenticated => anyhow::anyhow!(
            "the server refused the key ({url}: {msg}): pass {} with --token or {}",
            key.key,
            key.var
        ),
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "{} at {url} does not offer this yet (UNIMPLEMENTED: {msg}): is it older than ternctl?",
            key.server
        ),
        code => {
            let what = match code {
                tonic::Code::PermissionDenied => "the key may not do this",
                tonic::Code::InvalidArgument => "invalid request",
                tonic::Code::NotFound => "not found",
                tonic::Code::Unavailable => "server unavailable",
                tonic::Code::DeadlineExceeded => "the server did not answer in time",
                tonic::Code::FailedPrecondition => "not available on this server",
                _ => "request failed",
            };
            anyhow::anyhow!("{what} ({url}): {msg}")
        }
    }
}

/// Whether a stream that failed with `status` is worth opening again (the server restarted, the
/// connection broke) rather than a refusal that would come back the same.
pub fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::DeadlineExceeded
    )
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
