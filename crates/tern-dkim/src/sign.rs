//! The loaded keys, found by domain, and the signing of one message with every key of its From domain.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_parser::{Header, HeaderName, MessageParser};
use tern_config::sections::DkimConfig;

use crate::DkimError;
use crate::key::{self, KeyRef, SecretKey};

/// Whether keys marked `optional = true` sign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptionalKeys {
    /// Every key of the domain signs (the default, and what SMTP submissions get).
    #[default]
    Use,
    /// Keys marked optional are left out: a gRPC Send that asked not to be signed. The domain's other keys
    /// still sign.
    Skip,
}

/// The DKIM-Signature fields made for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The signing domain (`d=`): the From domain or the nearest parent with keys.
    pub domain: String,
    /// The From header's domain (lower-case), which chose the keys.
    pub from_domain: String,
    /// The selectors that signed, in configuration order (one signature each).
    pub selectors: Vec<String>,
    /// The `DKIM-Signature:` header fields, CRLF-terminated and folded, to put before the message's first
    /// header field.
    pub headers: Vec<u8>,
}

impl Signed {
    /// The signed message: the signature fields followed by `message`.
    pub fn prepend_to(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.headers.len() + message.len());
        out.extend_from_slice(&self.headers);
        out.extend_from_slice(message);
        out
    }
}

/// One loaded `[[dkim]]` entry.
struct Key {
    domain: String,
    selector: String,
    key_file: PathBuf,
    secret: SecretKey,
    /// The distinct header names to sign, in configuration order, each with whether it is oversigned.
    headers: Vec<(String, bool)>,
    header_canonicalization: Canonicalization,
    body_canonicalization: Canonicalization,
    /// `x=` is the signing time plus this many seconds; 0: no `x=`.
    expire_secs: u64,
    optional: bool,
}

/// Every DKIM key of the configuration, by signing domain. Immutable: a reload makes a new one (see
/// [`SharedSigners`]).
#[derive(Default)]
pub struct DkimSigners {
    /// Lower-cased domain, without a trailing dot, to its keys in configuration order.
    by_domain: HashMap<String, Vec<Key>>,
}

impl std::fmt::Debug for DkimSigners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys themselves are never printed.
        let mut list = f.debug_list();
        for key in self.by_domain.values().flatten() {
            list.entry(&format_args!(
                "{}._domainkey.{} ({})",
                key.selector,
                key.domain,
                key.key_file.display()
            ));
        }
        list.finish()
    }
}

impl DkimSigners {
    /// Loads the key of every entry. The first entry that does not check (see
    /// [`tern_config::sections::dkim::validate_dkim`]) or whose key file is missing, unreadable, not a PEM
    /// private key, of another algorithm than configured, or an RSA key outside 2048 to 4096 bits, is an
    /// error naming the file.
    pub fn load(entries: &[DkimConfig]) -> Result<DkimSigners, DkimError> {
        tern_config::sections::dkim::validate_dkim(entries)
            .map_err(|(key, message)| DkimError::Config { key, message })?;
        let mut by_domain: HashMap<String, Vec<Key>> = HashMap::new();
        for entry in entries {
            let domain = entry.normalized_domain();
            let selector = entry.selector.to_ascii_lowercase();
            let name = format!("{selector}._domainkey.{domain}");
            let secret = key::load(&entry.key_file, entry.algorithm, &name)?;
            let canon = |relaxed: bool| {
                if relaxed {
                    Canonicalization::Relaxed
                } else {
                    Canonicalization::Simple
                }
            };
            let key = Key {
                selector,
                key_file: entry.key_file.clone(),
                secret,
                headers: header_plan(&entry.headers),
                header_canonicalization: canon(entry.canonicalization.header_relaxed()),
                body_canonicalization: canon(entry.canonicalization.body_relaxed()),
                expire_secs: entry.expire.map_or(0, |e| e.get().as_secs()),
                optional: entry.optional,
                domain: domain.clone(),
            };
            by_domain.entry(domain).or_default().push(key);
        }
        Ok(DkimSigners { by_domain })
    }

    /// Whether there are no keys (nothing is ever signed).
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.by_domain.values().map(Vec::len).sum()
    }

    /// The signing domain for mail from `from_domain`: that domain or its nearest parent with keys. `None`:
    /// no key applies and the mail goes unsigned.
    pub fn signing_domain(&self, from_domain: &str) -> Option<&str> {
        let mut domain = from_domain.trim_end_matches('.').to_ascii_lowercase();
        loop {
            if let Some((d, _)) = self.by_domain.get_key_value(&domain) {
                return Some(d);
            }
            let (_, parent) = domain.split_once('.')?;
            domain = parent.to_string();
        }
    }

    /// Whether mail from `from_domain` is signed even when it asks not to be ([`OptionalKeys::Skip`]): a key
    /// not marked optional applies to it.
    pub fn signing_required(&self, from_domain: &str) -> bool {
        self.signing_domain(from_domain)
            .and_then(|d| self.by_domain.get(d))
            .is_some_and(|keys| keys.iter().any(|k| !k.optional))
    }

    /// Signs `message` (a whole RFC 5322 message, CRLF line ends, as it will be queued) with every key of
    /// its From domain: see [`sign_with`](Self::sign_with).
    pub fn sign(&self, message: &[u8]) -> Result<Option<Signed>, DkimError> {
        self.sign_with(message, OptionalKeys::Use)
    }

    /// Signs `message` with every key of the domain of its From header's (first) address, or of that
    /// domain's nearest parent with keys, leaving out optional keys when `optional` says so. One
    /// DKIM-Signature per key, RSA and Ed25519 side by side; `i=` is not set.
    ///
    /// `Ok(None)`: the message has no From address, no key applies, or every key that applies is optional
    /// and skipped; the message goes unsigned. An error means a key failed to sign (the message should be
    /// refused with a temporary error rather than sent unsigned).
    pub fn sign_with(&self, message: &[u8], optional: OptionalKeys) -> Result<Option<Signed>, DkimError> {
        if self.by_domain.is_empty() {
            return Ok(None);
        }
        // Only the header section is parsed here; mail-auth reads the message again to sign it.
        let Some(parsed) = MessageParser::new().parse_headers(message) else {
            return Ok(None);
        };
        let headers = parsed.parts.first().map_or(&[][..], |p| p.headers.as_slice());
        let Some(from_domain) = from_domain(headers) else {
            return Ok(None);
        };
        let Some((domain, keys)) = self
            .signing_domain(&from_domain)
            .and_then(|d| self.by_domain.get_key_value(d))
        else {
            return Ok(None);
        };
        let mut signed = Signed {
            domain: domain.clone(),
            from_domain: from_domain.to_ascii_lowercase(),
            selectors: Vec::new(),
            headers: Vec::new(),
        };
        for key in keys {
            if key.optional && optional == OptionalKeys::Skip {
                continue;
            }
            let names = names_to_sign(&key.headers, headers);
            let signer = DkimSigner::from_key(KeyRef(&key.secret))
                .domain(key.domain.clone())
                .selector(key.selector.clone())
                .headers(names)
                .header_canonicalization(key.header_canonicalization)
                .body_canonicalization(key.body_canonicalization)
                .expiration(key.expire_secs);
            let signature = signer.sign(message).map_err(|e| DkimError::Sign {
                name: format!("{}._domainkey.{}", key.selector, key.domain),
                reason: e.to_string(),
            })?;
            signature.write_header(&mut signed.headers);
            signed.selectors.push(key.selector.clone());
        }
        Ok((!signed.selectors.is_empty()).then_some(signed))
    }
}

/// The domain of the first address of the first From field, lower-cased.
fn from_domain(headers: &[Header<'_>]) -> Option<String> {
    let from = headers.iter().find(|h| h.name == HeaderName::From)?;
    let address = from.value().as_address()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.to_ascii_lowercase())
}

/// The configured names, each once (case-insensitively, in first-seen order), marked oversigned when it is
/// `From` or listed more than once.
fn header_plan(names: &[String]) -> Vec<(String, bool)> {
    let mut plan: Vec<(String, bool)> = Vec::new();
    for name in names {
        match plan.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, oversign)) => *oversign = true,
            None => plan.push((name.clone(), name.eq_ignore_ascii_case("from"))),
        }
    }
    plan
}

/// The `h=` request for mail-auth for one message: a name present in the message once (mail-auth signs
/// each of its occurrences), an oversigned name once more. mail-auth matches each occurrence to the first
/// entry of a name, and lists every entry never matched in `h=` as an empty field: the second entry of an
/// oversigned name, which is what oversigning is. Names that are absent and not oversigned are left out.
fn names_to_sign(plan: &[(String, bool)], headers: &[Header<'_>]) -> Vec<String> {
    let mut names = Vec::with_capacity(plan.len() + 2);
    for (name, oversign) in plan {
        let present = headers.iter().any(|h| h.name().eq_ignore_ascii_case(name));
        if present {
            names.push(name.clone());
        }
        if *oversign {
            names.push(name.clone());
        }
    }
    names
}

/// The keys in use, replaceable while messages are being signed: a reload (on SIGHUP) loads the new keys
/// first and swaps them in only when every one loaded, so a bad key file leaves the old keys signing.
#[derive(Debug, Default)]
pub struct SharedSigners {
    current: RwLock<Arc<DkimSigners>>,
}

impl SharedSigners {
    /// Holds `signers`.
    pub fn new(signers: DkimSigners) -> Self {
        SharedSigners {
            current: RwLock::new(Arc::new(signers)),
        }
    }

    /// Loads `entries` (see [`DkimSigners::load`]).
    pub fn load(entries: &[DkimConfig]) -> Result<Self, DkimError> {
        DkimSigners::load(entries).map(Self::new)
    }

    /// The keys now in use; a message signed with them is unaffected by a reload meanwhile.
    pub fn current(&self) -> Arc<DkimSigners> {
        // A poisoned lock only means a writer panicked between two whole values; the value is whole.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Loads `entries` and, when every key loaded, puts them in use; returns how many keys are now in use.
    /// On error the keys in use stay as they were.
    pub fn reload(&self, entries: &[DkimConfig]) -> Result<usize, DkimError> {
        let signers = DkimSigners::load(entries)?;
        let count = signers.len();
        self.replace(signers);
        Ok(count)
    }

    /// Puts `signers` in use.
    pub fn replace(&self, signers: DkimSigners) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(signers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(names: &[&str]) -> Vec<(String, bool)> {
        header_plan(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn signers_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<DkimSigners>();
        shared::<SharedSigners>();
    }

    #[test]
    fn from_and_names_listed_twice_are_oversigned() {
        assert_eq!(
            plan(&["From", "Subject", "to", "subject", "TO"]),
            vec![
                ("From".to_string(), true),
                ("Subject".to_string(), true),
                ("to".to_string(), true)
            ]
        );
        assert_eq!(plan(&["from"]), vec![("from".to_string(), true)]);
    }

    #[test]
    fn absent_names_are_left_out_unless_oversigned() {
        let p = plan(&["From", "Cc", "Subject", "Subject", "Date"]);
        let msg = b"from: a@b.test\r\nDATE: x\r\nX-Other: y\r\n\r\nCc: in the body\r\n";
        let parsed = MessageParser::new().parse_headers(msg).unwrap();
        assert_eq!(
            names_to_sign(&p, parsed.headers()),
            ["From", "From", "Subject", "Date"]
        );
    }

    #[test]
    fn the_from_domain_is_the_first_address_of_the_first_from() {
        let domain = |msg: &[u8]| {
            let parsed = MessageParser::new().parse_headers(msg).unwrap();
            from_domain(parsed.headers())
        };
        assert_eq!(
            domain(b"To: x@y.test\r\nFROM: \"A, B\" <a@Sub.Example.COM>, c@other.test\r\n\r\n"),
            Some("sub.example.com".into())
        );
        assert_eq!(
            domain(b"From: a@first.test\r\nFrom: b@second.test\r\n\r\n"),
            Some("first.test".into())
        );
        assert_eq!(domain(b"From: friends: a@g.test;\r\n\r\n"), Some("g.test".into()));
        assert_eq!(domain(b"From: undisclosed:;\r\n\r\n"), None);
        assert_eq!(domain(b"From: no address\r\n\r\n"), None);
        assert_eq!(domain(b"Subject: x\r\n\r\n"), None);
    }
}
