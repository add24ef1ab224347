//! Signatures checked by a verifier no one here wrote: dkimpy, with the public keys (derived by OpenSSL, or
//! as `keygen` publishes them) served to it as TXT records. Needs python3 with venv and PyPI on first run;
//! without them the tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Kind, entry, make_key, message, txt_record};
use tern_config::sections::{DkimAlgorithm, DkimCanonicalization};
use tern_dkim::DkimSigners;
use tern_dkim::keygen::GeneratedKey;

const RSA: DkimAlgorithm = DkimAlgorithm::RsaSha256;
const ED: DkimAlgorithm = DkimAlgorithm::Ed25519Sha256;

/// Verifies every DKIM-Signature of the message in argv[1], in order, looking keys up in the JSON object
/// of argv[2] (`{"sel._domainkey.domain": "v=DKIM1; ..."}`) instead of DNS; prints a JSON list of booleans.
const VERIFY: &str = r#"
import json, logging, re, sys
import dkim
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
message = open(sys.argv[1], "rb").read()
records = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    value = records.get(name.rstrip(".").lower())
    return value.encode() if value else None
count = len(re.findall(rb"^DKIM-Signature:", message, re.M | re.I))
results = []
for i in range(count):
    d = dkim.DKIM(message, logger=logging.getLogger("dkim"))
    try:
        results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
    except dkim.DKIMException as e:  # what dkim.verify() does: a failed check is a False
        logging.error("signature %d: %s", i, e)
        results.append(False)
print(json.dumps(results))
"#;

fn python() -> PathBuf {
    tern_testkit::python::python_with_packages(Path::new(env!("CARGO_TARGET_TMPDIR")), &["dkimpy", "pynacl"])
        .expect("a python with dkimpy and pynacl (python3, python3-venv and PyPI are needed)")
}

/// dkimpy's verdict on each signature of `message`, in order.
fn dkimpy_verify(dir: &Path, message: &[u8], records: &BTreeMap<String, String>) -> Vec<bool> {
    let msg = dir.join("message.eml");
    let rec = dir.join("records.json");
    let script = dir.join("verify.py");
    std::fs::write(&msg, message).unwrap();
    let json = records
        .iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(&rec, format!("{{{json}}}")).unwrap();
    std::fs::write(&script, VERIFY).unwrap();
    let out = Command::new(python())
        .arg(&script)
        .arg(&msg)
        .arg(&rec)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dkimpy failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdicts: Vec<bool> = stdout
        .trim()
        .trim_matches(['[', ']'])
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim() == "true")
        .collect();
    if verdicts.iter().any(|ok| !ok) {
        eprintln!("dkimpy said {stdout}: {stderr}");
    }
    verdicts
}

fn records(list: &[(&str, String)]) -> BTreeMap<String, String> {
    list.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn rsa_and_ed25519_signatures_verify_with_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = make_key(dir.path(), "rsa.pem", Kind::Rsa2048);
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let dns = records(&[
        ("rsa1._domainkey.example.com", txt_record(&rsa, RSA)),
        ("ed1._domainkey.example.com", txt_record(&ed, ED)),
    ]);
    let signers = DkimSigners::load(&[
        entry("example.com", "rsa1", &rsa, RSA),
        entry("example.com", "ed1", &ed, ED),
    ])
    .unwrap();

    let msg = message("alice@example.com");
    let signed = signers.sign(&msg).unwrap().unwrap().prepend_to(&msg);
    assert_eq!(dkimpy_verify(dir.path(), &signed, &dns), [true, true]);

    // Mail from a subdomain, signed by the parent's keys.
    let msg = message("news@mail.example.com");
    let signed = signers.sign(&msg).unwrap().unwrap().prepend_to(&msg);
    assert_eq!(dkimpy_verify(dir.path(), &signed, &dns), [true, true]);

    // What the signatures protect: the body, and (oversigned) the absence of a second From.
    let mut changed = signed.clone();
    let at = changed.len() - 10;
    changed[at] = b'X';
    assert_eq!(dkimpy_verify(dir.path(), &changed, &dns), [false, false]);
    let mut added = b"X-Added: an unsigned field\r\n".to_vec();
    added.extend_from_slice(&signed);
    assert_eq!(
        dkimpy_verify(dir.path(), &added, &dns),
        [true, true],
        "only signed fields count"
    );
    let mut added_from = b"From: Mallory <m@example.com>\r\n".to_vec();
    added_from.extend_from_slice(&signed);
    // dkimpy reads the DKIM-Signature fields wherever they are; the added From sits above them.
    assert_eq!(dkimpy_verify(dir.path(), &added_from, &dns), [false, false]);
}

#[test]
fn every_canonicalization_and_key_form_verifies_with_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let pkcs1 = make_key(dir.path(), "rsa1.pem", Kind::Rsa2048Pkcs1);
    let ed = make_key(dir.path(), "ed.pem", Kind::Ed25519);
    let mut dns = BTreeMap::new();
    let mut entries = Vec::new();
    for (i, c) in [
        DkimCanonicalization::RelaxedRelaxed,
        DkimCanonicalization::RelaxedSimple,
        DkimCanonicalization::SimpleRelaxed,
        DkimCanonicalization::SimpleSimple,
    ]
    .into_iter()
    .enumerate()
    {
        for (name, path, algorithm) in [("r", &pkcs1, RSA), ("e", &ed, ED)] {
            let selector = format!("{name}{i}");
            dns.insert(
                format!("{selector}._domainkey.example.org"),
                txt_record(path, algorithm),
            );
            let mut e = entry("example.org", &selector, path, algorithm);
            e.canonicalization = c;
            e.expire = Some(std::time::Duration::from_secs(3600).into());
            entries.push(e);
        }
    }
    let signers = DkimSigners::load(&entries).unwrap();
    // A folded header and whitespace that the canonicalizations treat differently.
    let msg =
        b"From: \"Folded, Name\"\r\n <bob@example.org>\r\nSubject:   spaced\t out  \r\nTo: a@b.test\r\n\
                \r\nline with trailing space  \r\n\r\n\r\n"
            .to_vec();
    let signed = signers.sign(&msg).unwrap().unwrap();
    assert_eq!(signed.selectors.len(), 8);
    let verdicts = dkimpy_verify(dir.path(), &signed.prepend_to(&msg), &dns);
    assert_eq!(
        verdicts,
        [true; 8],
        "{}",
        String::from_utf8_lossy(&signed.headers)
    );
}

#[test]
fn keygen_keys_verify_with_the_record_keygen_prints() {
    let dir = tempfile::tempdir().unwrap();
    let mut dns = BTreeMap::new();
    let mut entries = Vec::new();
    for (selector, key) in [
        ("gen-ed", GeneratedKey::ed25519().unwrap()),
        ("gen-rsa", GeneratedKey::rsa(2048).unwrap()),
    ] {
        let path = dir.path().join(format!("{selector}.pem"));
        std::fs::write(&path, &key.private_key_pem).unwrap();
        // The zone line's strings, joined as a resolver joins them.
        let line = key.dns_record("example.net", selector);
        let (name, strings) = line.split_once(" IN TXT ").unwrap();
        assert_eq!(name, format!("{selector}._domainkey.example.net."));
        let value: String = strings.split('"').skip(1).step_by(2).collect();
        assert_eq!(value, key.txt_value());
        dns.insert(name.trim_end_matches('.').to_string(), value);
        entries.push(entry("example.net", selector, &path, key.algorithm));
    }
    let signers = DkimSigners::load(&entries).unwrap();
    let msg = message("carol@example.net");
    let signed = signers.sign(&msg).unwrap().unwrap().prepend_to(&msg);
    assert_eq!(dkimpy_verify(dir.path(), &signed, &dns), [true, true]);
}
