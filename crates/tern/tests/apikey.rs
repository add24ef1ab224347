//! `tern apikey NAME`: the key is printed once, with the keys-file line whose hash matches it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn tern(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TERN_")) {
        cmd.env_remove(k);
    }
    cmd.output().expect("run tern")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn apikey_prints_the_key_once_and_the_matching_line() {
    let out = tern(&["apikey", "billing"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (key, line) = (lines[0], lines[1]);
    assert_eq!(key.len(), 43, "32 bytes as unpadded base64url: {key}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{key}"
    );
    let want = format!("billing:{}", hex::encode(Sha256::digest(key.as_bytes())));
    assert_eq!(line, want);
    assert_eq!(stdout.matches(key).count(), 1, "the key is printed once");
    assert!(
        !text(&out.stderr).contains(key),
        "the key is not repeated on stderr"
    );
    assert!(text(&out.stderr).contains("Bearer"), "{}", text(&out.stderr));

    // Every run makes a new key.
    let again = text(&tern(&["apikey", "billing"]).stdout);
    assert_ne!(again.lines().next(), Some(key));
}

#[test]
fn apikey_domains_and_bad_names() {
    let out = tern(&["apikey", "news", "--domains", "Example.com,b.test"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout.lines().nth(1).unwrap();
    assert!(
        line.starts_with("news:") && line.ends_with(":example.com,b.test"),
        "{line}"
    );
    assert_eq!(line.split(':').nth(1).unwrap().len(), 64);

    let bad = tern(&["apikey", "a:b"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("invalid key name"),
        "{}",
        text(&bad.stderr)
    );
    assert!(bad.stdout.is_empty());
    let missing = tern(&["apikey"]);
    assert!(!missing.status.success());
}
