//! DKIM signing (RFC 6376, with Ed25519 from RFC 8463) for tern.
//!
//! The keys come from the `[[dkim]]` entries of the configuration ([`tern_config::DkimConfig`]).
//! [`DkimSigners::load`] reads every key file once (at start, and again on reload), so that a bad key is
//! an error at startup naming the file, never a surprise on the first message. A message is signed with
//! every key of the domain of its From header, or of that domain's nearest parent domain with keys
//! (mail from `news.example.com` is signed `d=example.com` when only `example.com` has keys): one
//! DKIM-Signature per key, so an RSA key and an Ed25519 key of a domain sign side by side. A message with no
//! From address, or whose domain has no key, is not signed.
//!
//! Signing is done with [`mail_auth`] on its `ring` backend. [`keygen`] makes new keys and their DNS
//! records, for `tern dkim keygen`.
//!
//! ```no_run
//! # fn demo(config: &tern_config::Config, message: &[u8]) -> Result<(), tern_dkim::DkimError> {
//! let signers = tern_dkim::SharedSigners::load(&config.dkim)?;
//! // For each message, before it is queued:
//! let message = match signers.current().sign(message)? {
//!     Some(signed) => signed.prepend_to(message),
//!     None => message.to_vec(),
//! };
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod key;
pub mod keygen;
mod sign;

use std::path::PathBuf;

pub use key::{RSA_MAX_BITS, RSA_MIN_BITS};
pub use sign::{DkimSigners, OptionalKeys, SharedSigners, Signed};

/// Why keys could not be loaded or made, or a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// A `[[dkim]]` entry does not check (the same checks as loading the configuration).
    #[error("config key `{key}`: {message}")]
    Config {
        /// The dotted key, e.g. `dkim[1].selector`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The key file could not be read.
    #[error("DKIM key {name}: cannot read key file {}: {source}", .path.display())]
    Read {
        /// The key's DNS name, `selector._domainkey.domain`.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file holds no usable private key.
    #[error("DKIM key {name}: key file {}: {reason}", .path.display())]
    Key {
        /// The key's DNS name.
        name: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds a key of another algorithm than the entry says.
    #[error(
        "DKIM key {name}: key file {} holds a key for {found}, but the entry's algorithm is \
         {configured}",
        .path.display()
    )]
    AlgorithmMismatch {
        /// The key's DNS name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The entry's `algorithm`.
        configured: &'static str,
        /// The algorithm of the key in the file.
        found: &'static str,
    },
    /// An RSA key outside 2048 to 4096 bits.
    #[error(
        "DKIM key {name}: key file {} holds an RSA key of {bits} bits; DKIM keys must have {min} to {max} \
         bits (make one with `tern dkim keygen`)",
        .path.display(), min = RSA_MIN_BITS, max = RSA_MAX_BITS
    )]
    RsaKeySize {
        /// The key's DNS name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The key's size.
        bits: usize,
    },
    /// A key failed to sign a message.
    #[error("DKIM key {name}: cannot sign: {reason}")]
    Sign {
        /// The key's DNS name.
        name: String,
        /// The signing library's reason.
        reason: String,
    },
    /// A new key could not be made.
    #[error("cannot make a DKIM key: {0}")]
    Generate(String),
}
