//! Reading a private key file: PEM, then the key type (told by the PEM label and the PKCS#8 algorithm), then
//! the checks a DKIM key must pass, each failure naming the file.

use std::path::Path;

use mail_auth::common::crypto::{Algorithm, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use rsa::pkcs8::{ObjectIdentifier, PrivateKeyInfo};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tern_config::sections::DkimAlgorithm;

use crate::DkimError;

/// The smallest RSA key accepted (RFC 8301 3.2: signers MUST use at least 1024 bits, and 1024-bit keys are
/// within reach of factoring; the large mailbox providers ask for 2048).
pub const RSA_MIN_BITS: usize = 2048;
/// The largest RSA key accepted: the most RFC 8301 asks verifiers to handle, and the most ring signs with.
pub const RSA_MAX_BITS: usize = 4096;

/// The OID of Ed25519 keys in PKCS#8 (RFC 8410).
pub(crate) const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// A loaded private key.
pub(crate) enum SecretKey {
    /// An RSA key, signing `rsa-sha256`.
    Rsa(RsaKey<Sha256>),
    /// An Ed25519 key, signing `ed25519-sha256`.
    Ed25519(Ed25519Key),
}

/// What a key file holds, before it is loaded.
enum KeyDer<'a> {
    /// The PKCS#1 `RSAPrivateKey` and, when the file was PKCS#8, the whole PKCS#8 document.
    Rsa { pkcs1: &'a [u8], der: PrivateKeyDer<'a> },
    /// The PKCS#8 document of an Ed25519 key.
    Ed25519(&'a [u8]),
}

/// Reads and checks the key in `path`, which `[[dkim]]` says is an `algorithm` key; `name` is the key's DNS
/// name (`selector._domainkey.domain`), for errors.
pub(crate) fn load(path: &Path, algorithm: DkimAlgorithm, name: &str) -> Result<SecretKey, DkimError> {
    let bad = |reason: String| DkimError::Key {
        name: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|source| DkimError::Read {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        bad(format!(
            "no PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY) in it: {e}"
        ))
    })?;
    let found = classify(&der).map_err(bad)?;
    let found_algorithm = match found {
        KeyDer::Rsa { .. } => DkimAlgorithm::RsaSha256,
        KeyDer::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
    };
    if found_algorithm != algorithm {
        return Err(DkimError::AlgorithmMismatch {
            name: name.to_string(),
            path: path.to_path_buf(),
            configured: algorithm.as_str(),
            found: found_algorithm.as_str(),
        });
    }
    match found {
        KeyDer::Rsa { pkcs1, der } => {
            let bits = rsa_modulus_bits(pkcs1).map_err(bad)?;
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(DkimError::RsaKeySize {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    bits,
                });
            }
            let key =
                RsaKey::<Sha256>::from_key_der(der).map_err(|e| bad(format!("not a usable RSA key: {e}")))?;
            Ok(SecretKey::Rsa(key))
        }
        KeyDer::Ed25519(pkcs8) => {
            // "Maybe unchecked": OpenSSL writes PKCS#8 v1, without the public key, which ring's checked
            // form refuses.
            let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8)
                .map_err(|e| bad(format!("not a usable Ed25519 key: {e}")))?;
            Ok(SecretKey::Ed25519(key))
        }
    }
}

/// Tells the key type apart: PKCS#1 is RSA; PKCS#8 says by its algorithm OID.
fn classify<'a>(der: &'a PrivateKeyDer<'a>) -> Result<KeyDer<'a>, String> {
    match der {
        PrivateKeyDer::Pkcs1(k) => Ok(KeyDer::Rsa {
            pkcs1: k.secret_pkcs1_der(),
            der: der.clone_key(),
        }),
        PrivateKeyDer::Pkcs8(k) => {
            let info = PrivateKeyInfo::try_from(k.secret_pkcs8_der())
                .map_err(|e| format!("not a PKCS#8 private key: {e}"))?;
            let oid = info.algorithm.oid;
            if oid == rsa::pkcs1::ALGORITHM_OID {
                Ok(KeyDer::Rsa {
                    pkcs1: info.private_key,
                    der: der.clone_key(),
                })
            } else if oid == ED25519_OID {
                Ok(KeyDer::Ed25519(k.secret_pkcs8_der()))
            } else {
                let kind = match oid.to_string().as_str() {
                    "1.2.840.10045.2.1" => "an EC",
                    "1.3.101.113" => "an Ed448",
                    "1.2.840.113549.1.1.10" => "an RSA-PSS",
                    _ => "another",
                };
                Err(format!(
                    "{kind} key (algorithm {oid}); DKIM signs with RSA (rsa-sha256) or Ed25519 \
                     (ed25519-sha256) keys"
                ))
            }
        }
        PrivateKeyDer::Sec1(_) => {
            Err("an EC (SEC1) key; DKIM signs with RSA (rsa-sha256) or Ed25519 (ed25519-sha256) keys".into())
        }
        _ => Err("a private key of an unknown type".into()),
    }
}

/// The size of an RSA key's modulus in bits, read from its PKCS#1 `RSAPrivateKey`.
fn rsa_modulus_bits(pkcs1: &[u8]) -> Result<usize, String> {
    let key =
        rsa::pkcs1::RsaPrivateKey::try_from(pkcs1).map_err(|e| format!("not an RSA private key: {e}"))?;
    let bytes = key.modulus.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("an RSA key with an empty modulus".into());
    };
    Ok((bytes.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}

/// A borrowed key that mail-auth's signer can use: its builder takes the key by value, and one loaded key
/// signs many messages.
pub(crate) struct KeyRef<'a>(pub(crate) &'a SecretKey);

impl SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self.0 {
            SecretKey::Rsa(k) => k.sign(input),
            SecretKey::Ed25519(k) => k.sign(input),
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self.0 {
            SecretKey::Rsa(_) => Algorithm::RsaSha256,
            SecretKey::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }
}
