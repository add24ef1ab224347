//! The delivery crate's own errors: what stops a worker from starting.

/// Why a [`Worker`](crate::Worker) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A `[delivery]` setting is unusable.
    #[error("delivery configuration: {0}")]
    Config(String),
    /// The DNS resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Dns(String),
    /// The TLS client could not be set up (for example, `extra_ca_file` is unreadable).
    #[error("TLS: {0}")]
    Tls(String),
}
