//! tern's ingest role: accepting mail from applications and storing it in the queue.
//!
//! Two front doors over one queue: SMTP submission (RFC 6409, in [`smtp`]) and the gRPC Send API
//! (`tern.v1.Submission`, in [`grpc`]). The SMTP side has: plain listeners with STARTTLS (RFC 3207), implicit-TLS
//! listeners (RFC 8314), AUTH PLAIN and LOGIN (RFC 4954) against a users file, XOAUTH2 and OAUTHBEARER
//! (RFC 7628) with JWTs checked against a JWKS, PIPELINING, SIZE, 8BITMIME,
//! BINARYMIME and CHUNKING (RFC 3030), SMTPUTF8, DSN parameters (RFC 3461) and ENHANCEDSTATUSCODES. Ingest
//! nodes are stateless: a message is acknowledged (`250 2.0.0 Ok: queued as <id>`) only once
//! [`tern_queue::Queue::enqueue`] has returned, and nothing else is kept between sessions except the
//! per-process AUTH lockout table and connection counters.
//!
//! ```no_run
//! # async fn demo(cfg: tern_config::IngestConfig, queue: std::sync::Arc<dyn tern_queue::Queue>)
//! # -> Result<(), tern_ingest::IngestError> {
//! let shutdown = tern_core::Shutdown::new();
//! let server = tern_ingest::SmtpServer::new(&cfg, queue)?.bind().await?;
//! println!("listening on {:?}", server.smtp_addrs());
//! server.run(shutdown).await
//! # }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`smtp`] | the server: listeners, connection limits, shutdown |
//! | `smtp::session` | one SMTP session: framing and one function per verb |
//! | [`smtp::auth`] | the users file, SASL PLAIN/LOGIN decoding, the failure lockout |
//! | [`smtp::received`] | Received, Message-ID and Date headers (pure) |
//! | [`smtp::body`] | line checks of BDAT chunks (pure) |
//! | [`smtp::limits`] | connection counting |
//! | [`smtp::tls`] | the rustls server configuration from PEM files |
//! | [`oauth`] | AUTH XOAUTH2 / OAUTHBEARER: JWT verification against a JWKS (file or URL) |
//! | [`grpc`] | the gRPC Send API: MIME composition, validation, per-call limits |
#![forbid(unsafe_code)]

pub mod dkim;
pub mod enqueue;
mod error;
pub mod grpc;
mod log_fields;
pub mod oauth;
pub mod smtp;
mod telemetry;

pub use error::IngestError;
pub use smtp::{BoundSmtpServer, SmtpServer};

/// The shutdown signal the servers take: [`tern_core::Shutdown`].
pub use tern_core::Shutdown;

/// The former name of [`Shutdown`], kept so that callers outside the role crates that still use it (ternctl's
/// tests, the benches) build; new code names [`tern_core::Shutdown`].
pub use tern_core::Shutdown as CancellationToken;
