//! Which keys sign which message, and what the signature fields say; loading errors name the file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::time::Duration;

use common::{Kind, entry, make_key, message, signatures, tag};
use tern_config::sections::{DkimAlgorithm, DkimCanonicalization};
use tern_dkim::{DkimError, DkimSigners, OptionalKeys, SharedSigners};

const RSA: DkimAlgorithm = DkimAlgorithm::RsaSha256;
const ED: DkimAlgorithm = DkimAlgorithm::Ed25519Sha256;

#[test]
fn two_keys_of_a_domain_give_an_rsa_and_an_ed25519_signature() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = make_key(dir.path(), "rsa.pem", Kind::Rsa2048);
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let signers = DkimSigners::load(&[
        entry("Example.COM", "rsa1", &rsa, RSA),
        entry("example.com", "ed1", &ed, ED),
    ])
    .unwrap();
    assert_eq!(signers.len(), 2);

    let msg = message("alice@example.com");
    let signed = signers.sign(&msg).unwrap().expect("signed");
    assert_eq!(signed.domain, "example.com");
    assert_eq!(signed.selectors, ["rsa1", "ed1"]);
    assert!(signed.headers.ends_with(b"\r\n"));
    let sigs = signatures(&signed.headers);
    assert_eq!(sigs.len(), 2, "{}", String::from_utf8_lossy(&signed.headers));
    assert_eq!(tag(&sigs[0], "a"), Some("rsa-sha256"));
    assert_eq!(tag(&sigs[1], "a"), Some("ed25519-sha256"));
    for sig in &sigs {
        assert_eq!(tag(sig, "d"), Some("example.com"));
        assert_eq!(tag(sig, "c"), Some("relaxed/relaxed"));
        assert_eq!(tag(sig, "i"), None, "no i= is set");
        assert_eq!(tag(sig, "x"), None, "no expiry unless configured");
    }
    let whole = signed.prepend_to(&msg);
    assert!(whole.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256;"));
    assert!(whole.ends_with(&msg));
}

#[test]
fn subdomain_mail_is_signed_by_the_nearest_parent_with_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let ed2 = make_key(dir.path(), "ed2.pem", Kind::Ed25519);
    let signers = DkimSigners::load(&[
        entry("example.com", "top", &ed, ED),
        entry("deep.sub.example.com.", "deep", &ed2, ED),
    ])
    .unwrap();
    let d = |from: &str| {
        signers
            .sign(&message(from))
            .unwrap()
            .map(|s| (s.domain, s.selectors))
    };
    assert_eq!(
        d("a@example.com"),
        Some(("example.com".into(), vec!["top".into()]))
    );
    assert_eq!(
        d("a@News.Example.com"),
        Some(("example.com".into(), vec!["top".into()]))
    );
    assert_eq!(
        d("a@sub.example.com"),
        Some(("example.com".into(), vec!["top".into()]))
    );
    assert_eq!(
        d("a@x.deep.sub.example.com"),
        Some(("deep.sub.example.com".into(), vec!["deep".into()]))
    );
    assert_eq!(d("a@notexample.com"), None, "a parent is whole labels");
    assert_eq!(d("a@example.org"), None);
    assert_eq!(signers.signing_domain("b.example.com."), Some("example.com"));
    assert_eq!(signers.signing_domain("com"), None);
}

#[test]
fn a_message_without_from_or_without_a_key_is_not_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let signers = DkimSigners::load(&[entry("example.com", "s", &ed, ED)]).unwrap();
    assert!(signers.sign(&message("bob@other.test")).unwrap().is_none());
    let no_from = b"To: a@example.com\r\nSubject: x\r\n\r\nbody\r\n";
    assert!(signers.sign(no_from).unwrap().is_none());
    let group = b"From: undisclosed:;\r\nSubject: x\r\n\r\nbody\r\n";
    assert!(signers.sign(group).unwrap().is_none());
    assert!(signers.sign(b"").unwrap().is_none());
    assert!(
        DkimSigners::default()
            .sign(&message("a@example.com"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn from_is_oversigned_and_absent_fields_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let default = DkimSigners::load(&[entry("example.com", "s", &ed, ED)]).unwrap();
    let signed = default.sign(&message("a@example.com")).unwrap().unwrap();
    let sig = &signatures(&signed.headers)[0];
    let h: Vec<String> = tag(sig, "h")
        .unwrap()
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect();
    assert_eq!(
        h.iter().filter(|n| *n == "from").count(),
        2,
        "From once more than present: {h:?}"
    );
    for present in [
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
    ] {
        assert_eq!(
            h.iter().filter(|n| *n == present).count(),
            1,
            "{present} in {h:?}"
        );
    }
    for absent in ["cc", "reply-to", "references", "list-unsubscribe"] {
        assert!(!h.contains(&absent.to_string()), "{absent} in {h:?}");
    }

    // A name listed twice is oversigned too, present or not.
    let mut e = entry("example.com", "s", &ed, ED);
    e.headers = ["From", "Subject", "subject", "Cc", "CC"]
        .map(String::from)
        .to_vec();
    let custom = DkimSigners::load(&[e]).unwrap();
    let signed = custom.sign(&message("a@example.com")).unwrap().unwrap();
    let h = tag(&signatures(&signed.headers)[0], "h")
        .unwrap()
        .to_ascii_lowercase();
    let count = |name: &str| h.split(':').filter(|n| *n == name).count();
    assert_eq!(
        (count("from"), count("subject"), count("cc"), count("to")),
        (2, 2, 1, 0),
        "{h}"
    );
}

#[test]
fn canonicalization_and_expiry_are_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let mut e = entry("example.com", "s", &ed, ED);
    e.canonicalization = DkimCanonicalization::SimpleRelaxed;
    e.expire = Some(Duration::from_secs(7 * 86400).into());
    let signed = DkimSigners::load(&[e])
        .unwrap()
        .sign(&message("a@example.com"))
        .unwrap()
        .unwrap();
    let sig = &signatures(&signed.headers)[0];
    assert_eq!(tag(sig, "c"), Some("simple/relaxed"));
    let t: u64 = tag(sig, "t").unwrap().parse().unwrap();
    let x: u64 = tag(sig, "x").unwrap().parse().unwrap();
    assert_eq!(x - t, 7 * 86400);
}

#[test]
fn optional_keys_are_left_out_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = make_key(dir.path(), "rsa.pem", Kind::Rsa2048Pkcs1);
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let mut optional_ed = entry("example.com", "ed", &ed, ED);
    optional_ed.optional = true;
    let mut optional_only = entry("other.test", "ed", &ed, ED);
    optional_only.optional = true;
    let signers =
        DkimSigners::load(&[entry("example.com", "rsa", &rsa, RSA), optional_ed, optional_only]).unwrap();
    let msg = message("a@example.com");
    assert_eq!(signers.sign(&msg).unwrap().unwrap().selectors, ["rsa", "ed"]);
    let skipped = signers.sign_with(&msg, OptionalKeys::Skip).unwrap().unwrap();
    assert_eq!(skipped.selectors, ["rsa"]);
    assert!(signers.signing_required("example.com"));

    let other = message("a@other.test");
    assert!(signers.sign_with(&other, OptionalKeys::Skip).unwrap().is_none());
    assert!(signers.sign(&other).unwrap().is_some());
    assert!(!signers.signing_required("other.test"));
    assert!(!signers.signing_required("nokeys.test"));
}

fn load_error(kind: Option<Kind>, algorithm: DkimAlgorithm) -> (String, DkimError) {
    let dir = tempfile::tempdir().unwrap();
    let path = match kind {
        Some(kind) => make_key(dir.path(), "key.pem", kind),
        None => dir.path().join("missing.pem"),
    };
    let err = DkimSigners::load(&[entry("example.com", "s1", &path, algorithm)]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(path.to_str().unwrap()), "names the file: {text}");
    assert!(
        text.contains("s1._domainkey.example.com"),
        "names the key: {text}"
    );
    (text, err)
}

#[test]
fn bad_key_files_are_errors_naming_the_file() {
    let (text, err) = load_error(None, RSA);
    assert!(matches!(err, DkimError::Read { .. }), "{text}");

    let (text, err) = load_error(Some(Kind::Rsa1024), RSA);
    assert!(matches!(err, DkimError::RsaKeySize { bits: 1024, .. }), "{text}");
    assert!(text.contains("1024 bits") && text.contains("2048"), "{text}");

    let (text, err) = load_error(Some(Kind::Ed25519), RSA);
    assert!(matches!(err, DkimError::AlgorithmMismatch { .. }), "{text}");
    assert!(
        text.contains("ed25519-sha256") && text.contains("rsa-sha256"),
        "{text}"
    );
    let (_, err) = load_error(Some(Kind::Rsa2048Pkcs1), ED);
    assert!(matches!(
        err,
        DkimError::AlgorithmMismatch {
            found: "rsa-sha256",
            ..
        }
    ));

    let (text, err) = load_error(Some(Kind::EcP256), RSA);
    assert!(
        matches!(err, DkimError::Key { .. }) && text.contains("EC"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let err = DkimSigners::load(&[entry("example.com", "s1", &junk, RSA)]).unwrap_err();
    assert!(matches!(err, DkimError::Key { .. }), "{err}");
    assert!(err.to_string().contains("PEM"), "{err}");

    // An entry that does not check is refused before any file is read.
    let err = DkimSigners::load(&[entry("bad domain", "s1", &junk, RSA)]).unwrap_err();
    assert!(
        matches!(&err, DkimError::Config { key, .. } if key == "dkim[0].domain"),
        "{err}"
    );
}

#[test]
fn a_reload_with_a_bad_key_keeps_the_keys_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let shared = SharedSigners::load(&[entry("example.com", "s1", &ed, ED)]).unwrap();
    let before = shared.current();
    let missing = dir.path().join("gone.pem");
    assert!(
        shared
            .reload(&[entry("example.com", "s2", &missing, ED)])
            .is_err()
    );
    assert_eq!(shared.current().len(), 1);
    let msg = message("a@example.com");
    assert_eq!(shared.current().sign(&msg).unwrap().unwrap().selectors, ["s1"]);

    let rsa = make_key(dir.path(), "rsa.pem", Kind::Rsa2048);
    let loaded = shared
        .reload(&[
            entry("example.org", "r", &rsa, RSA),
            entry("example.org", "e", &ed, ED),
        ])
        .unwrap();
    assert_eq!(loaded, 2);
    assert!(shared.current().sign(&msg).unwrap().is_none());
    // A holder of the old keys still signs with them.
    assert_eq!(before.sign(&msg).unwrap().unwrap().selectors, ["s1"]);
}
