//! Test keys made by OpenSSL (not by the code under test), their DNS records, and test messages.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use tern_config::DkimConfig;
use tern_config::sections::DkimAlgorithm;

/// Runs `openssl args`; the test fails when it is missing or fails.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let openssl = tern_testkit::require_tool("openssl").expect("openssl is needed to make test keys");
    let out = Command::new(openssl).args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The kinds of key file the tests use.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// RSA 2048, PKCS#8 (`BEGIN PRIVATE KEY`).
    Rsa2048,
    /// RSA 2048, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    Rsa2048Pkcs1,
    /// RSA 1024: too small.
    Rsa1024,
    /// Ed25519, PKCS#8 v1 as OpenSSL writes it.
    Ed25519,
    /// EC P-256: not a DKIM key type.
    EcP256,
}

/// Writes a new key of `kind` to `dir/name` and returns its path.
pub fn make_key(dir: &Path, name: &str, kind: Kind) -> PathBuf {
    let path = dir.join(name);
    let p = path.to_str().expect("utf-8 temp path");
    match kind {
        Kind::Rsa2048 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]),
        Kind::Rsa2048Pkcs1 => openssl(&["genrsa", "-traditional", "-out", p, "2048"]),
        Kind::Rsa1024 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            p,
        ]),
        Kind::Ed25519 => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
        Kind::EcP256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
    };
    path
}

/// The TXT record value publishing the public half of the key in `path`, derived by OpenSSL: the
/// SubjectPublicKeyInfo for RSA, its last 32 octets (the raw key) for Ed25519.
pub fn txt_record(path: &Path, algorithm: DkimAlgorithm) -> String {
    let p = path.to_str().expect("utf-8 temp path");
    let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    let b64 = base64::engine::general_purpose::STANDARD;
    match algorithm {
        DkimAlgorithm::RsaSha256 => format!("v=DKIM1; k=rsa; p={}", b64.encode(&spki)),
        DkimAlgorithm::Ed25519Sha256 => {
            format!("v=DKIM1; k=ed25519; p={}", b64.encode(&spki[spki.len() - 32..]))
        }
    }
}

/// A `[[dkim]]` entry with the defaults.
pub fn entry(domain: &str, selector: &str, key_file: &Path, algorithm: DkimAlgorithm) -> DkimConfig {
    DkimConfig {
        algorithm,
        ..DkimConfig::new(domain, selector, key_file)
    }
}

/// A plain message from `from`, CRLF line ends, as queued.
pub fn message(from: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\n\
         To: rcpt@example.net\r\n\
         Subject: A  test   message\r\n\
         Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <t1@{host}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello,  world.\r\n\
         \r\n\
         A second paragraph.   \r\n\
         \r\n\
         \r\n",
        host = from.rsplit('@').next().unwrap_or("x")
    )
    .into_bytes()
}

/// The tags of every DKIM-Signature field in `headers`, unfolded: `[("a", "rsa-sha256"), ...]` per field.
pub fn signatures(headers: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8(headers.to_vec()).expect("ascii signature fields");
    let unfolded = text.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .lines()
        .filter_map(|l| l.strip_prefix("DKIM-Signature:"))
        .map(|value| {
            value
                .split(';')
                .filter_map(|tag| tag.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().collect::<String>()))
                .collect()
        })
        .collect()
}

/// The value of `tag` in one signature's tags.
pub fn tag<'a>(sig: &'a [(String, String)], tag: &str) -> Option<&'a str> {
    sig.iter().find(|(k, _)| k == tag).map(|(_, v)| v.as_str())
}
