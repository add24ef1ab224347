//! `[[dkim]]`: DKIM signing keys (RFC 6376, RFC 8463). Each entry is one key of one signing domain; ingest
//! signs a message with every key of the From header's domain, or of its nearest parent domain that has keys.
//!
//! This module only checks the keys' shape; `tern-dkim` reads the key files (and names the file when one
//! is missing, unreadable, of the wrong type or too small).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tern_core::HumanDuration;

/// The header fields signed by default. `From` is also oversigned (see [`DkimConfig::headers`]).
pub const DEFAULT_SIGNED_HEADERS: [&str; 14] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// The most header names one entry may list (mail-auth and verifiers handle more, but a longer `h=` is a
/// configuration mistake rather than a need).
const MAX_HEADERS: usize = 64;

/// The signing algorithm of a key (the signature's `a=` tag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    /// RSA with SHA-256 (RFC 6376): keys of 2048 to 4096 bits. Every verifier knows it.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463). Short keys and signatures, but not every verifier checks it yet:
    /// sign with an RSA key beside it.
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The name as written in the configuration and in the `a=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// How the header and the body are canonicalized before hashing (the signature's `c=` tag, RFC 6376 3.4):
/// `header/body`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkimCanonicalization {
    /// Relaxed header and body: survives the whitespace changes and header refolding of relays.
    #[default]
    #[serde(rename = "relaxed/relaxed")]
    RelaxedRelaxed,
    /// Relaxed header, simple body.
    #[serde(rename = "relaxed/simple")]
    RelaxedSimple,
    /// Simple header, relaxed body.
    #[serde(rename = "simple/relaxed")]
    SimpleRelaxed,
    /// Simple header and body: any change breaks the signature.
    #[serde(rename = "simple/simple")]
    SimpleSimple,
}

impl DkimCanonicalization {
    /// Whether the header canonicalization is `relaxed` (else `simple`).
    pub fn header_relaxed(self) -> bool {
        matches!(self, Self::RelaxedRelaxed | Self::RelaxedSimple)
    }

    /// Whether the body canonicalization is `relaxed` (else `simple`).
    pub fn body_relaxed(self) -> bool {
        matches!(self, Self::RelaxedRelaxed | Self::SimpleRelaxed)
    }
}

/// One `[[dkim]]` entry: a signing key of one domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`). Mail whose From domain is this domain or a subdomain without keys of its
    /// own is signed with this key. ASCII (an internationalized domain in its `xn--` form), case-insensitive.
    pub domain: String,
    /// The selector (`s=`): the public key is published as a TXT record at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key, PEM: PKCS#8 (`BEGIN PRIVATE KEY`) for RSA or Ed25519, or PKCS#1 (`BEGIN RSA PRIVATE
    /// KEY`) for RSA. Made by `tern dkim keygen`, or by `openssl genpkey`.
    pub key_file: PathBuf,
    /// `rsa-sha256` or `ed25519-sha256`; must match the key in `key_file`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// The header fields to sign, case-insensitive; must include `From`. A field listed is signed as often
    /// as it occurs in the message (not at all when absent). `From`, and any name listed twice, is
    /// *oversigned*: signed once more than it occurs, so that no further such field can be added to the
    /// signed message without breaking the signature.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// `relaxed/relaxed`, `relaxed/simple`, `simple/relaxed` or `simple/simple` (header/body).
    #[serde(default)]
    pub canonicalization: DkimCanonicalization,
    /// How long the signature is valid: sets `x=` to the signing time plus this. Unset: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<HumanDuration>,
    /// Whether a gRPC Send may ask not to sign with this key (`sign = false`). A key not marked optional is
    /// always used; a message is left unsigned only when every key that applies to it is optional.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

fn default_headers() -> Vec<String> {
    DEFAULT_SIGNED_HEADERS.iter().map(|h| h.to_string()).collect()
}

impl DkimConfig {
    /// An entry with the defaults for everything but the domain, the selector and the key file.
    pub fn new(domain: &str, selector: &str, key_file: impl Into<PathBuf>) -> Self {
        DkimConfig {
            domain: domain.to_string(),
            selector: selector.to_string(),
            key_file: key_file.into(),
            algorithm: DkimAlgorithm::default(),
            headers: default_headers(),
            canonicalization: DkimCanonicalization::default(),
            expire: None,
            optional: false,
        }
    }

    /// The domain lower-cased, without a trailing dot: the form keys are looked up by.
    pub fn normalized_domain(&self) -> String {
        self.domain.trim_end_matches('.').to_ascii_lowercase()
    }

    /// Checks what serde cannot express; returns the offending key (within the entry) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_domain(&self.domain).map_err(|m| ("domain".to_string(), m))?;
        check_selector(&self.selector).map_err(|m| ("selector".to_string(), m))?;
        if self.key_file.as_os_str().is_empty() {
            return Err(("key_file".into(), "must not be empty".into()));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err((
                "headers".into(),
                format!("lists {} names; at most {MAX_HEADERS}", self.headers.len()),
            ));
        }
        for name in &self.headers {
            check_header_name(name).map_err(|m| ("headers".to_string(), m))?;
        }
        if !self.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err((
                "headers".into(),
                "must include From (RFC 6376 5.4: the From field is always signed)".into(),
            ));
        }
        if let Some(e) = self.expire
            && e.get().as_secs() == 0
        {
            return Err(("expire".into(), format!("{e} is shorter than 1s")));
        }
        Ok(())
    }
}

/// Checks every `[[dkim]]` entry and that no two share a domain and selector (one selector publishes one
/// key). The returned key is the full one, e.g. `dkim[1].selector`.
pub fn validate_dkim(entries: &[DkimConfig]) -> Result<(), (String, String)> {
    for (i, entry) in entries.iter().enumerate() {
        entry.validate().map_err(|(k, m)| (format!("dkim[{i}].{k}"), m))?;
        let selector = entry.selector.to_ascii_lowercase();
        let domain = entry.normalized_domain();
        if let Some(j) = entries[..i].iter().position(|other| {
            other.normalized_domain() == domain && other.selector.to_ascii_lowercase() == selector
        }) {
            return Err((
                format!("dkim[{i}].selector"),
                format!(
                    "selector {:?} of {domain} is already used by dkim[{j}]: each key needs its own selector",
                    entry.selector
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that `domain` is an ASCII domain name (letters, digits, hyphens; labels of 1 to 63 octets); one
/// trailing dot is allowed. Returns why not.
pub fn check_domain(domain: &str) -> Result<(), String> {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    if d.is_empty() {
        return Err("must not be empty".into());
    }
    if !d.is_ascii() {
        return Err(format!(
            "{domain:?} is not ASCII: write an internationalized domain in its xn-- form"
        ));
    }
    if d.len() > 253 || !d.split('.').all(is_ldh_label) {
        return Err(format!("{domain:?} is not a domain name"));
    }
    Ok(())
}

/// Checks that `selector` is one or more DNS labels (letters, digits, hyphens, separated by dots).
pub fn check_selector(selector: &str) -> Result<(), String> {
    if selector.is_empty() {
        return Err("must not be empty".into());
    }
    if selector.len() > 253 || !selector.split('.').all(is_ldh_label) {
        return Err(format!(
            "{selector:?} is not a selector (DNS labels of letters, digits and hyphens)"
        ));
    }
    Ok(())
}

fn is_ldh_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A header field name (RFC 5322 2.2: printable ASCII but the colon); `DKIM-Signature` cannot be signed
/// by the signature it is part of.
fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!("{name:?} is not a header field name"));
    }
    if name.eq_ignore_ascii_case("dkim-signature") {
        return Err("DKIM-Signature cannot be signed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_as_documented() {
        let c: DkimConfig =
            toml::from_str("domain = \"example.com\"\nselector = \"s1\"\nkey_file = \"/k.pem\"\n").unwrap();
        assert_eq!(c, DkimConfig::new("example.com", "s1", "/k.pem"));
        assert_eq!(c.algorithm, DkimAlgorithm::RsaSha256);
        assert_eq!(c.canonicalization, DkimCanonicalization::RelaxedRelaxed);
        assert_eq!(c.headers[0], "From");
        assert_eq!(c.headers.len(), 14);
        assert_eq!(c.expire, None);
        assert!(!c.optional);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn every_key_parses() {
        let c: DkimConfig = toml::from_str(
            r#"
            domain = "Example.COM."
            selector = "ed.2026"
            key_file = "/etc/tern/ed.pem"
            algorithm = "ed25519-sha256"
            headers = ["From", "Subject", "Subject"]
            canonicalization = "simple/relaxed"
            expire = "7d"
            optional = true
            "#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.normalized_domain(), "example.com");
        assert_eq!(c.algorithm, DkimAlgorithm::Ed25519Sha256);
        assert!(!c.canonicalization.header_relaxed() && c.canonicalization.body_relaxed());
        assert_eq!(c.expire, Some(HumanDuration::from_secs(7 * 86400)));
        assert!(c.optional);
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused() {
        let base = "domain = \"a.test\"\nselector = \"s\"\nkey_file = \"/k\"\n";
        assert!(toml::from_str::<DkimConfig>(&format!("{base}keyfile = \"x\"\n")).is_err());
        let e = toml::from_str::<DkimConfig>(&format!("{base}algorithm = \"rsa-sha1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rsa-sha1") && e.contains("ed25519-sha256"), "{e}");
        let e = toml::from_str::<DkimConfig>(&format!("{base}canonicalization = \"relaxed\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("relaxed/relaxed"), "{e}");
        assert!(toml::from_str::<DkimConfig>("domain = \"a.test\"\nselector = \"s\"\n").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let ok = DkimConfig::new("a.test", "s1", "/k.pem");
        let key = |c: DkimConfig| c.validate().unwrap_err().0;
        for d in ["", "a..test", "-a.test", "exämple.test", "a b.test"] {
            assert_eq!(
                key(DkimConfig {
                    domain: d.into(),
                    ..ok.clone()
                }),
                "domain",
                "{d:?}"
            );
        }
        for s in ["", "s_1", "s 1", "s1."] {
            assert_eq!(
                key(DkimConfig {
                    selector: s.into(),
                    ..ok.clone()
                }),
                "selector",
                "{s:?}"
            );
        }
        assert_eq!(
            key(DkimConfig {
                key_file: PathBuf::new(),
                ..ok.clone()
            }),
            "key_file"
        );
        for h in [
            vec!["Subject"],
            vec!["From", "Bad:Name"],
            vec!["From", "DKIM-Signature"],
        ] {
            let headers = h.into_iter().map(String::from).collect();
            assert_eq!(
                key(DkimConfig {
                    headers,
                    ..ok.clone()
                }),
                "headers"
            );
        }
        let expire = Some(HumanDuration::from(std::time::Duration::from_millis(500)));
        assert_eq!(key(DkimConfig { expire, ..ok }), "expire");
    }

    #[test]
    fn a_selector_is_used_once_per_domain() {
        let a = DkimConfig::new("a.test", "s1", "/1.pem");
        let b = DkimConfig {
            algorithm: DkimAlgorithm::Ed25519Sha256,
            ..DkimConfig::new("a.test", "s2", "/2.pem")
        };
        assert_eq!(validate_dkim(&[a.clone(), b.clone()]), Ok(()));
        let again = DkimConfig::new("A.test.", "S1", "/3.pem");
        let (k, m) = validate_dkim(&[a, b, again]).unwrap_err();
        assert_eq!(k, "dkim[2].selector");
        assert!(m.contains("dkim[0]"), "{m}");
        let bad = DkimConfig::new("a.test", "", "/1.pem");
        assert_eq!(validate_dkim(&[bad]).unwrap_err().0, "dkim[0].selector");
    }

    /// The whole file: `[[dkim]]` entries load, errors name `dkim[i].key` and the file, and the printed
    /// configuration reads back.
    #[test]
    fn dkim_entries_load_from_the_file_and_errors_name_the_entry() {
        let text = r#"
            [telemetry]
            log_level = "info"

            [[dkim]]
            domain = "example.com"
            selector = "rsa1"
            key_file = "/etc/tern/rsa1.pem"

            [[dkim]]
            domain = "example.com"
            selector = "ed1"
            key_file = "/etc/tern/ed1.pem"
            algorithm = "ed25519-sha256"
            optional = true
        "#;
        let c = crate::Config::from_toml_str(text, "tern.toml", Vec::new()).unwrap();
        assert_eq!(c.dkim.len(), 2);
        assert_eq!(c.dkim[1].algorithm, DkimAlgorithm::Ed25519Sha256);
        let printed = crate::redact::to_redacted_toml(&c).unwrap();
        assert!(printed.contains("[[dkim]]"), "{printed}");
        assert_eq!(
            crate::Config::from_toml_str(&printed, "printed", Vec::new()).unwrap(),
            c
        );
        let none = crate::redact::to_redacted_toml(&crate::Config::default()).unwrap();
        assert!(!none.contains("dkim"), "{none}");

        let err = |text: &str| {
            crate::Config::from_toml_str(text, "tern.toml", Vec::new())
                .unwrap_err()
                .to_string()
        };
        let entry = "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"/k\"\n";
        let e = err(&format!("{entry}algorithm = \"rsa\"\n"));
        assert!(e.contains("dkim[0].algorithm") && e.contains("tern.toml"), "{e}");
        let e = err(&format!("{entry}{entry}canonicalization = \"simple\"\n"));
        assert!(e.contains("dkim[1].canonicalization"), "{e}");
        let e = err(&format!("{entry}selectr = \"x\"\n"));
        assert!(e.contains("dkim[0].selectr") && e.contains("unknown key"), "{e}");
        let e = err(&format!("{entry}{entry}"));
        assert!(e.contains("dkim[1].selector"), "{e}");
    }
}
