//! tern's delivery side: what a worker does with a claimed batch.
//!
//! A [`Worker`] claims a batch of one domain's due jobs from the queue, routes it ([`route`]: an operator's
//! reroute, relay, fixed routes, MX records), delivers it over an SMTP connection that is reused across the
//! batch and across batches (publishing its conversation while a live trace matches it), and completes each
//! job with its per-recipient outcome ([`outcome`]). Failures and expiries
//! produce delivery status notifications ([`dsn`]), queued like any other message before the job is
//! completed. The SMTP client ([`smtp::SmtpClient`]) stands on its own: it knows the protocol, and the
//! worker keeps everything else (connection slots, reuse, holds, MX failover). With `sandbox_dir` set,
//! `sandbox` stands in for routing and SMTP: each message is written to a file and recorded as delivered.
#![forbid(unsafe_code)]

pub mod dsn;
pub mod error;
mod log_fields;
pub mod oauth;
pub mod outcome;
pub mod route;
mod sandbox;
pub mod smtp;
mod telemetry;
pub mod worker;

pub use dsn::{Diagnostic, Dsn, DsnAction, DsnContext, DsnRecipient, build_dsn};
pub use error::DeliveryError;
pub use smtp::SmtpClient;
pub use worker::{Stopped, Worker};
