//! Tests driven by the JSON vectors in the repository's `tests/vectors/`.

use serde::Deserialize;
use tern_smtp::{DataDecoder, DataStatus, ReversePath, Violations, parse_reverse_path};

const MAILBOX_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/mailbox.json");
const SMUGGLING_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/smuggling.json");

#[derive(Debug, Deserialize)]
struct MailboxVector {
    path: String,
    valid: bool,
    #[serde(default)]
    mailbox: Option<String>,
    #[serde(default)]
    smtputf8: bool,
}

#[derive(Debug, Deserialize)]
struct SmugglingVector {
    name: String,
    body: String,
    expect: String,
}

fn load<T: for<'de> Deserialize<'de>>(path: &str) -> Vec<T> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn reverse_path_string(p: &ReversePath) -> String {
    match p {
        ReversePath::Null => String::new(),
        ReversePath::Mailbox(m) => m.to_string(),
    }
}

#[test]
fn mailbox_vectors_parse_as_stated() {
    let vectors: Vec<MailboxVector> = load(MAILBOX_JSON);
    assert!(vectors.len() >= 10, "too few vectors");
    for v in &vectors {
        let got = parse_reverse_path(&v.path, v.smtputf8);
        if v.valid {
            let p = got.unwrap_or_else(|e| panic!("{:?} should be valid: {e}", v.path));
            let want = v.mailbox.as_deref().unwrap_or_default();
            assert_eq!(reverse_path_string(&p), want, "{:?}", v.path);
        } else {
            assert!(got.is_err(), "{:?} should be invalid, got {got:?}", v.path);
            // Invalid with SMTPUTF8 on as well: validity is not about UTF-8.
            assert!(parse_reverse_path(&v.path, true).is_err(), "{:?}", v.path);
        }
    }
}

#[test]
fn utf8_mailbox_vectors_are_rejected_without_smtputf8() {
    let vectors: Vec<MailboxVector> = load(MAILBOX_JSON);
    let utf8: Vec<_> = vectors.iter().filter(|v| v.valid && v.smtputf8).collect();
    assert!(!utf8.is_empty(), "no UTF-8 vector");
    for v in utf8 {
        assert_eq!(
            parse_reverse_path(&v.path, false),
            Err(tern_smtp::PathError::NonAscii),
            "{:?}",
            v.path
        );
    }
}

/// Feeds `input` split into the given pieces; returns the output, the
/// total bytes consumed up to the terminator (None if never done) and the
/// violations.
fn decode_pieces(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>, Violations) {
    let mut d = DataDecoder::new();
    let mut out = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        match d.feed(piece, &mut out) {
            DataStatus::NeedMore => offset += piece.len(),
            DataStatus::Done { consumed } => return (out, Some(offset + consumed), d.violations()),
        }
    }
    (out, None, d.violations())
}

/// Removes SMTP dot-stuffing line by line (test oracle).
fn unstuff(body: &str) -> String {
    body.split("\r\n")
        .map(|l| l.strip_prefix('.').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn smuggling_vectors_are_detected_and_do_not_end_data_early() {
    let vectors: Vec<SmugglingVector> = load(SMUGGLING_JSON);
    assert!(vectors.iter().any(|v| v.expect == "reject"));
    assert!(vectors.iter().any(|v| v.expect == "accept"));
    for v in &vectors {
        let data = format!("{}\r\n.\r\n", v.body);
        let mut input = data.clone().into_bytes();
        input.extend_from_slice(b"QUIT\r\n");
        let (out, consumed, violations) = decode_pieces(&[&input]);
        assert_eq!(
            consumed,
            Some(data.len()),
            "{}: data must end only at the real terminator",
            v.name
        );
        match v.expect.as_str() {
            "reject" => assert!(violations.any(), "{}: violation not detected", v.name),
            "accept" => {
                assert!(!violations.any(), "{}: spurious violation {violations:?}", v.name);
                let want = format!("{}\r\n", unstuff(&v.body));
                assert_eq!(String::from_utf8(out).unwrap(), want, "{}", v.name);
            }
            other => panic!("unknown expectation {other}"),
        }
    }
}

#[test]
fn smuggling_vectors_give_the_same_result_split_at_every_offset() {
    let vectors: Vec<SmugglingVector> = load(SMUGGLING_JSON);
    for v in &vectors {
        let mut input = format!("{}\r\n.\r\n", v.body).into_bytes();
        input.extend_from_slice(b"MAIL FROM:<x@y.test>\r\n");
        let whole = decode_pieces(&[&input]);
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(decode_pieces(&[a, b]), whole, "{} split at {i}", v.name);
        }
        // And one byte at a time.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_pieces(&bytes), whole, "{} byte by byte", v.name);
    }
}
