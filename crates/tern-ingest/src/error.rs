//! The ingest crate's error type: what can stop a server from starting or running.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the ingest server could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The configuration is unusable (see [`tern_config::IngestConfig::validate`]).
    #[error("ingest configuration: {key}: {message}")]
    Config {
        /// The `ingest.` key at fault.
        key: String,
        /// Why.
        message: String,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The users file could not be read or has a bad line.
    #[error("users file {path}: {message}")]
    UsersFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line number when it is about one line.
        message: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
}
