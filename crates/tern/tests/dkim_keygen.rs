//! `tern dkim keygen`: the key file (private, not overwritten), the TXT record (checked against the key
//! with OpenSSL) and the `[[dkim]]` lines (they load).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;

fn tern(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERN_")) {
        cmd.env_remove(k);
    }
    cmd.output().expect("run tern")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The public key of the PEM file `key` as DER SubjectPublicKeyInfo, by OpenSSL.
fn openssl_spki(key: &Path) -> Vec<u8> {
    let openssl = tern_testkit::require_tool("openssl").expect("openssl checks the key");
    let out = Command::new(openssl)
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    out.stdout
}

/// Splits keygen's standard output into the TXT record's name, its joined value and strings, and the
/// configuration lines.
fn parse(stdout: &str) -> (String, String, Vec<String>, String) {
    let (record, config) = stdout.split_once("\n\n").expect("record, blank line, config");
    let (name, strings) = record.split_once(" IN TXT ").expect("a TXT record line");
    let strings: Vec<String> = strings.split('"').skip(1).step_by(2).map(String::from).collect();
    (name.to_string(), strings.concat(), strings, config.to_string())
}

#[test]
fn keygen_writes_a_private_key_and_prints_its_record_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = tern(
        dir.path(),
        &[
            "dkim",
            "keygen",
            "--domain",
            "Example.COM",
            "--selector",
            "ed1",
            "--algorithm",
            "ed25519",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = dir.path().join("ed1._domainkey.example.com.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (name, value, strings, config) = parse(&text(&out.stdout));
    assert_eq!(name, "ed1._domainkey.example.com.");
    assert_eq!(strings.len(), 1);
    let spki = openssl_spki(&key);
    let raw = base64::engine::general_purpose::STANDARD.encode(&spki[spki.len() - 32..]);
    assert_eq!(value, format!("v=DKIM1; k=ed25519; p={raw}"));
    // The printed entry is a valid configuration whose key loads.
    let c = tern_config::Config::from_toml_str(&config, "printed", Vec::new()).unwrap();
    assert_eq!(c.dkim[0].key_file, std::fs::canonicalize(&key).unwrap());
    tern_dkim::DkimSigners::load(&c.dkim).unwrap();

    // The key is not overwritten without --force; with it, it is, and stays private.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let again = tern(
        dir.path(),
        &[
            "dkim",
            "keygen",
            "--domain",
            "example.com",
            "--selector",
            "ed1",
            "--algorithm",
            "ed25519",
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("--force"), "{}", text(&again.stderr));
    let forced = tern(
        dir.path(),
        &[
            "dkim",
            "keygen",
            "--domain",
            "example.com",
            "--selector",
            "ed1",
            "--algorithm",
            "ed25519",
            "--force",
        ],
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_ne!(parse(&text(&forced.stdout)).1, value, "a new key");
}

#[test]
fn rsa_records_are_split_into_255_octet_strings() {
    let dir = tempfile::tempdir().unwrap();
    let out = tern(
        dir.path(),
        &[
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "rsa1",
            "--out",
            "k.pem",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (name, value, strings, config) = parse(&text(&out.stdout));
    assert_eq!(name, "rsa1._domainkey.example.org.");
    assert!(
        strings.len() >= 2 && strings.iter().all(|s| s.len() <= 255),
        "{strings:?}"
    );
    assert_eq!(strings[0].len(), 255);
    let spki = openssl_spki(&dir.path().join("k.pem"));
    let p = base64::engine::general_purpose::STANDARD.encode(&spki);
    assert_eq!(value, format!("v=DKIM1; k=rsa; p={p}"));
    assert_eq!(spki.len(), 294, "a 2048-bit key's SubjectPublicKeyInfo");
    assert!(config.contains("algorithm = \"rsa-sha256\""), "{config}");
}

#[test]
fn keygen_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["dkim", "keygen", "--domain", "bad domain", "--selector", "s"][..],
        &["dkim", "keygen", "--domain", "a.test", "--selector", "s_1"],
        &[
            "dkim",
            "keygen",
            "--domain",
            "a.test",
            "--selector",
            "s",
            "--bits",
            "1024",
        ],
        &[
            "dkim",
            "keygen",
            "--domain",
            "a.test",
            "--selector",
            "s",
            "--algorithm",
            "ed25519",
            "--bits",
            "2048",
        ],
        &[
            "dkim",
            "keygen",
            "--domain",
            "a.test",
            "--selector",
            "s",
            "--algorithm",
            "dsa",
        ],
        &["dkim", "keygen", "--domain", "a.test"],
    ] {
        let out = tern(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file written"
    );
}
