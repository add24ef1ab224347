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
    /// The blocking thread that signed ended without an answer (the runtime shutting down).
    #[error("DKIM signing was interrupted")]
    Interrupted,
}

/// [`sign`], on tokio's blocking threads when a key may apply. A signature is a private-key operation (an
/// RSA one takes milliseconds, and the message is hashed whole): on the runtime's thread, the only one of
/// `tern ingest` by default, it would hold up every other SMTP session, the rest of a gRPC batch and the
/// health probes meanwhile. Without keys the message comes back at once, with no thread hop.
pub async fn sign_off_runtime(
    signers: Option<&Arc<SharedSigners>>,
    message: Vec<u8>,
    sign_request: Option<bool>,
    sender_domains: Option<&[String]>,
) -> Result<Vec<u8>, SignError> {
    let Some(signers) = signers.filter(|s| !s.current().is_empty()) else {
        return Ok(message);
    };
    let signers = Arc::clone(signers);
    let sender_domains = sender_domains.map(<[String]>::to_vec);
    tokio::task::spawn_blocking(move || {
        sign(Some(&signers), message, sign_request, sender_domains.as_deref())
    })
    .await
    .map_err(|_| SignError::Interrupted)?
}

/// Signs `message` with the keys of `signers` (nothing to do without any); `sign == Some(false)` leaves out
/// optional keys and refuses when a key that is not optional applies. `sender_domains` are the domains the
/// submitter (an SMTP user, a gRPC API key) may send from (`None`: any): a message whose From domain is not
/// one of them is queued unsigned, so that a user allowed one domain cannot get another domain's signature.
/// Returns the message to queue.
pub fn sign(
    signers: Option<&Arc<SharedSigners>>,
    message: Vec<u8>,
    sign: Option<bool>,
    sender_domains: Option<&[String]>,
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
        Some(signed)
            if sender_domains.is_some_and(|allowed| {
                !allowed
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&signed.from_domain))
            }) =>
        {
            tracing::warn!(
                from_domain = %signed.from_domain,
                "not DKIM-signed: the From domain is not one the submitter may send from"
            );
            Ok(message)
        }
        Some(signed) if mode == OptionalKeys::Skip => Err(SignError::Required(signed.domain)),
        Some(signed) => {
            tracing::debug!(domain = %signed.domain, selectors = %signed.selectors.join(","), "DKIM signed");
            Ok(signed.prepend_to(&message))
        }
        None => Ok(message),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tern_config::sections::{DkimAlgorithm, DkimConfig};
    use tern_dkim::keygen::GeneratedKey;

    use super::*;

    fn signers(dir: &std::path::Path) -> Arc<SharedSigners> {
        let key = GeneratedKey::ed25519().unwrap();
        let path = dir.join("bank.pem");
        std::fs::write(&path, key.private_key_pem).unwrap();
        let mut entry = DkimConfig::new("bank.test", "s1", path);
        entry.algorithm = DkimAlgorithm::Ed25519Sha256;
        Arc::new(SharedSigners::load(&[entry]).unwrap())
    }

    const MESSAGE: &[u8] = b"From: ceo@bank.test\r\nTo: x@dest.test\r\nSubject: pay\r\n\r\nNow.\r\n";

    #[test]
    fn a_submitter_gets_a_signature_only_for_a_from_domain_it_may_send_from() {
        let dir = tempfile::tempdir().unwrap();
        let keys = signers(dir.path());
        let signed = |domains: Option<&[String]>| {
            let out = sign(Some(&keys), MESSAGE.to_vec(), None, domains).unwrap();
            out.starts_with(b"DKIM-Signature:")
        };
        assert!(signed(None), "a submitter with no domain list may sign any From");
        assert!(signed(Some(&["bank.test".to_string()])));
        assert!(
            !signed(Some(&["a.test".to_string()])),
            "a user allowed a.test must not get bank.test's signature"
        );
    }

    #[test]
    fn sign_false_is_refused_when_a_key_is_not_optional() {
        let dir = tempfile::tempdir().unwrap();
        let keys = signers(dir.path());
        let refused = sign(Some(&keys), MESSAGE.to_vec(), Some(false), None).unwrap_err();
        assert!(
            matches!(refused, SignError::Required(ref d) if d == "bank.test"),
            "{refused}"
        );
    }

    /// The signing future gives the runtime's thread back while the key signs: on a one-thread runtime a
    /// task beside it is polled before the signature is done. Signed inline, the signature would be done in
    /// the future's first poll, before the other task ever ran.
    #[tokio::test(flavor = "current_thread")]
    async fn signing_leaves_the_runtime_thread_free_for_other_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let keys = signers(dir.path());
        // A large body, so that the signature (its body hash) takes a while.
        let mut message = MESSAGE.to_vec();
        message.extend(
            std::iter::repeat_n(
                b"0123456789abcdef0123456789abcdef0123456789abcdef\r\n".as_slice(),
                200_000,
            )
            .flatten(),
        );
        let done = std::sync::atomic::AtomicBool::new(false);
        let signing = async {
            let signed = sign_off_runtime(Some(&keys), message, None, None).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            signed
        };
        let beside = async {
            let mut polls_while_signing = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                polls_while_signing += 1;
                tokio::task::yield_now().await;
            }
            polls_while_signing
        };
        let (signed, polls_while_signing) = tokio::join!(signing, beside);
        assert!(signed.unwrap().starts_with(b"DKIM-Signature:"));
        assert!(
            polls_while_signing > 0,
            "the signature held the runtime's only thread"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_keys_the_message_comes_back_unchanged() {
        let out = sign_off_runtime(None, MESSAGE.to_vec(), None, None)
            .await
            .unwrap();
        assert_eq!(out, MESSAGE);
    }
}
