//! New key pairs for `tern dkim keygen`: the private key as PEM and the public key as the DNS TXT record
//! that publishes it (RFC 6376 3.6.1, RFC 8463 4.2).

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use rsa::pkcs8::der::SecretDocument;
use rsa::pkcs8::{AlgorithmIdentifierRef, EncodePrivateKey, EncodePublicKey, LineEnding, PrivateKeyInfo};
use rsa::rand_core::{OsRng, RngCore};
use tern_config::sections::DkimAlgorithm;

use crate::DkimError;
use crate::key::{ED25519_OID, RSA_MAX_BITS, RSA_MIN_BITS};

/// The longest character-string of a TXT record (RFC 1035 3.3): longer values are split into several,
/// which verifiers join.
pub const TXT_STRING_MAX: usize = 255;

/// A new key pair.
pub struct GeneratedKey {
    /// The algorithm the key signs with.
    pub algorithm: DkimAlgorithm,
    /// The private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), for `key_file`.
    pub private_key_pem: String,
    /// The public key as published in `p=`: the DER SubjectPublicKeyInfo for RSA (what `openssl rsa
    /// -pubout` writes), the raw 32 octets for Ed25519 (RFC 8463 4.2).
    pub public_key: Vec<u8>,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl GeneratedKey {
    /// Makes an RSA key of `bits` bits (2048 to 4096) from the operating system's random generator.
    pub fn rsa(bits: usize) -> Result<GeneratedKey, DkimError> {
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(DkimError::Generate(format!(
                "RSA keys are {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, not {bits}"
            )));
        }
        let generate = |e: &dyn std::fmt::Display| DkimError::Generate(e.to_string());
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).map_err(|e| generate(&e))?;
        let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| generate(&e))?;
        let public = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| generate(&e))?;
        Ok(GeneratedKey {
            algorithm: DkimAlgorithm::RsaSha256,
            private_key_pem: pem.to_string(),
            public_key: public.as_bytes().to_vec(),
        })
    }

    /// Makes an Ed25519 key from the operating system's random generator.
    ///
    /// The file is PKCS#8 v1 (RFC 8410: the 32-octet seed only), which OpenSSL and every other tool
    /// read; ring's own generator writes a v2 form that OpenSSL 3 refuses.
    pub fn ed25519() -> Result<GeneratedKey, DkimError> {
        let generate = |e: &dyn std::fmt::Display| DkimError::Generate(e.to_string());
        let mut private_key = vec![0x04, 0x20]; // CurvePrivateKey ::= OCTET STRING, 32 octets
        let mut seed = [0u8; 32];
        OsRng.try_fill_bytes(&mut seed).map_err(|e| generate(&e))?;
        private_key.extend_from_slice(&seed);
        seed.fill(0);
        let info = PrivateKeyInfo::new(
            AlgorithmIdentifierRef {
                oid: ED25519_OID,
                parameters: None,
            },
            &private_key,
        );
        let doc = SecretDocument::encode_msg(&info).map_err(|e| generate(&e));
        private_key.fill(0);
        let doc = doc?;
        let public = Ed25519Key::from_pkcs8_maybe_unchecked_der(doc.as_bytes())
            .map_err(|e| generate(&e))?
            .public_key();
        let pem = doc
            .to_pem("PRIVATE KEY", LineEnding::LF)
            .map_err(|e| generate(&e))?;
        Ok(GeneratedKey {
            algorithm: DkimAlgorithm::Ed25519Sha256,
            private_key_pem: pem.to_string(),
            public_key: public,
        })
    }

    /// The TXT record's value: `v=DKIM1; k=rsa; p=<base64>` (`k=ed25519` for Ed25519).
    pub fn txt_value(&self) -> String {
        let k = match self.algorithm {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        };
        let p = base64::engine::general_purpose::STANDARD.encode(&self.public_key);
        format!("v=DKIM1; k={k}; p={p}")
    }

    /// The zone file line publishing the key: `<selector>._domainkey.<domain>. IN TXT "..." "..."`, the
    /// value split into strings of at most 255 octets.
    pub fn dns_record(&self, domain: &str, selector: &str) -> String {
        let strings = txt_strings(&self.txt_value())
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{selector}._domainkey.{}. IN TXT {strings}",
            domain.trim_end_matches('.')
        )
    }
}

/// `value` cut into character-strings of at most [`TXT_STRING_MAX`] octets (the value is ASCII, so any
/// cut is between characters).
pub fn txt_strings(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while rest.len() > TXT_STRING_MAX {
        let (head, tail) = rest.split_at(TXT_STRING_MAX);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_into_255_octet_strings() {
        let value = "x".repeat(600);
        let parts = txt_strings(&value);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [255, 255, 90]);
        assert_eq!(txt_strings("short"), ["short"]);
    }

    #[test]
    fn ed25519_keys_publish_their_32_octets() {
        let key = GeneratedKey::ed25519().unwrap();
        assert_eq!(key.public_key.len(), 32);
        assert!(key.private_key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let record = key.dns_record("Example.com.", "ed1");
        assert!(
            record.starts_with("ed1._domainkey.Example.com. IN TXT \"v=DKIM1; k=ed25519; p="),
            "{record}"
        );
        assert_eq!(record.matches('"').count(), 2, "one string: {record}");
    }

    #[test]
    fn rsa_sizes_outside_2048_to_4096_are_refused() {
        assert!(matches!(GeneratedKey::rsa(1024), Err(DkimError::Generate(_))));
        assert!(matches!(GeneratedKey::rsa(8192), Err(DkimError::Generate(_))));
    }
}
