//! The SMTP client, split by phase: the wire ([`conn`]), opening a session ([`connect`]: connect, greet,
//! EHLO, STARTTLS, AUTH), TLS ([`tls`]), one message ([`transaction`]) and the pure matching of pipelined
//! replies ([`pipeline`]).

pub mod conn;
pub mod connect;
pub mod pipeline;
pub mod tls;
pub mod transaction;

pub use conn::{WireError, reply_line};
pub use connect::{ConnectError, Session, SessionSettings, Timeouts};
pub use tls::TlsClients;
pub use transaction::{NotStarted, send_message};
