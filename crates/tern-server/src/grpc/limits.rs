//! The transport limits every gRPC listener of tern has, whichever role serves on it.
//!
//! | limit | what a caller sees |
//! |---|---|
//! | connections at once ([`ServerLimits::max_connections`]) | a connection over the limit is accepted and closed at once: the client's channel fails with `UNAVAILABLE` and retries |
//! | first bytes ([`ServerLimits::handshake_timeout`]) | a connection that sends nothing (or does not finish its TLS handshake) in time is closed, so idle sockets cannot fill the connection limit |
//! | streams per connection ([`ServerLimits::max_concurrent_streams`]) | HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: further calls wait in the client |
//! | dead peers ([`ServerLimits::keepalive_interval`], [`ServerLimits::keepalive_timeout`]) | HTTP/2 PING; a peer that does not answer is disconnected and its streams freed |
//!
//! There are no configuration keys for them: every listener (ingest's Send API, the control plane) gets the
//! defaults below. A role's own per-call limits (ingest's request sizes, deadlines and in-flight budget) are
//! the role's business and live with its services.

use std::time::Duration;

/// The default of [`ServerLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;

/// The default of [`ServerLimits::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default of [`ServerLimits::max_concurrent_streams`].
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 32;

/// The default of [`ServerLimits::keepalive_interval`].
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// The default of [`ServerLimits::keepalive_timeout`].
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The transport limits of one gRPC listener (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// TCP connections open at once (TLS handshakes included). Zero counts as one.
    pub max_connections: u32,
    /// How long a new connection may take to send its first bytes, and to finish its TLS handshake on a TLS
    /// listener.
    pub handshake_timeout: Duration,
    /// HTTP/2 streams (calls of any service) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 PING is sent on each connection, so that a peer that has gone away is noticed
    /// and its streams are freed.
    pub keepalive_interval: Duration,
    /// How long to wait for a PING's acknowledgement before closing the connection.
    pub keepalive_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}
