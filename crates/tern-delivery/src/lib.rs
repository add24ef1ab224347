//! tern's delivery side: what a worker does with a claimed batch.
//!
//! Today this crate holds the delivery status notifications ([`dsn`]) that every ending of a message other
//! than plain delivery produces. The worker loop, MX routing and the SMTP client arrive with the delivery
//! capability.
#![forbid(unsafe_code)]

pub mod dsn;

pub use dsn::{Dsn, DsnAction, DsnContext, DsnRecipient, build_dsn};
