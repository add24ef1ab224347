//! DKIM signing of submissions (`[[dkim]]`, the `tern-dkim` crate): every message is signed here, once,
//! before it is queued, so that every attempt sends the same signed message.
//!
//! A message is signed with every key of its From domain (or that domain's nearest parent with keys); a
//! message whose From domain has no key goes unsigned. A key that fails to sign is a temporary failure (SMTP
//! `451 4.3.0`, gRPC `UNAVAILABLE`): sending the message unsigned would be worse than a retry. A gRPC Send
//! with `sign = false` leaves out keys marked `optional`; when a key that is not optional applies, the call is
//! refused (`FAILED_PRECONDITION`) rather than signed against the caller's wish.

use std::sync::Arc;

use tern_dkim::{OptionalKeys, SharedSigners};

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// `sign = false`, but a key that is not optional applies to the From domain.
    #[error("the DKIM keys of {0} are not optional: the message is always signed")]
    Required(String),
    /// A key failed to sign.
    #[error("DKIM signing failed: {0}")]
    Failed(#[from] tern_dkim::DkimError),
}

/// Signs `message` with the keys of `signers` (nothing to do without any); `sign == Some(false)` leaves out
/// optional keys and refuses when a key that is not optional applies. Returns the message to queue.
pub fn sign(
    signers: Option<&Arc<SharedSigners>>,
    message: Vec<u8>,
    sign: Option<bool>,
) -> Result<Vec<u8>, SignError> {
    let Some(signers) = signers else {
        return Ok(message);
    };
    let keys = signers.current();
    if keys.is_empty() {
        return Ok(message);
    }
    let mode = if sign == Some(false) {
        OptionalKeys::Skip
    } else {
        OptionalKeys::Use
    };
    match keys.sign_with(&message, mode)? {
        Some(signed) if mode == OptionalKeys::Skip => Err(SignError::Required(signed.domain)),
        Some(signed) => {
            tracing::debug!(domain = %signed.domain, selectors = %signed.selectors.join(","), "DKIM signed");
            Ok(signed.prepend_to(&message))
        }
        None => Ok(message),
    }
}
