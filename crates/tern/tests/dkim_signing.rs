//! DKIM signing at ingest, end to end, as a new user sets it up (issue #20): two keys made by
//! `tern dkim keygen` (RSA and Ed25519) for example.test, their TXT records served by dnsmasq, the printed
//! `[[dkim]]` lines in the configuration of a `tern all` on the embedded store, and mail submitted by SMTP
//! (Python's smtplib) and by the gRPC Send API (`ternctl send`). Every message the mail exchanger receives
//! is checked by a verifier no one here wrote: dkimpy, looking the keys up in dnsmasq through dnspython.
//!
//! The mail exchanger is a recording Python peer (tests/dkim_signing/mx.py) on two loopback addresses: one
//! offers DATA only, the other CHUNKING, so each message is checked after delivery by DATA (dot-stuffed) and
//! by BDAT. Every message goes to a recipient at each. Two messages submitted together check the signatures
//! after delivery over a reused connection; one is answered 451 after its data on the first attempt and
//! checked after the retry. Needs dnsmasq, python3 with venv and PyPI on first run (dkimpy, pynacl): without
//! them the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{scrub_env, ternctl_path, text};
use serde_json::Value;
use tern_testkit::dns::TYPE_TXT;
use tern_testkit::ports::wait_until;
use tern_testkit::{ChildGuard, Dnsmasq, free_port, python_with_packages, run_with_timeout, wait_for_tcp};

const MX_PY: &str = include_str!("dkim_signing/mx.py");
const VERIFY_PY: &str = include_str!("dkim_signing/verify.py");
const SUBMIT_PY: &str = include_str!("dkim_signing/submit.py");

/// The recording MX that offers DATA only (`plain.test`).
const PLAIN_MX: [u8; 4] = [127, 0, 0, 171];
/// The recording MX that offers CHUNKING (`chunking.test`).
const CHUNKING_MX: [u8; 4] = [127, 0, 0, 172];
/// The MX listeners, by the label the peer records and the recipient domain they serve.
const LISTENERS: [(&str, &str); 2] = [("plain", "plain.test"), ("chunking", "chunking.test")];

/// How long RSA key generation (a debug build) or any one helper program may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);
/// How long every message may take to reach the MX, the retried one included.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(40);

/// The subjects of the messages submitted, each to one recipient at each MX.
const SMTP: &str = "dkim smtp";
const GRPC: &str = "dkim grpc";
const REUSE_1: &str = "dkim reuse 1";
const REUSE_2: &str = "dkim reuse 2";
const RETRY: &str = "dkim retry";
/// From a domain with no key: delivered unsigned.
const UNSIGNED: &str = "dkim unsigned";

/// The signatures every signed message carries: (d=, s=, a=).
const EXPECTED_SIGNATURES: [(&str, &str, &str); 2] = [
    ("example.test", "ed1", "ed25519-sha256"),
    ("example.test", "rsa1", "rsa-sha256"),
];

fn python() -> PathBuf {
    python_with_packages(Path::new(env!("CARGO_TARGET_TMPDIR")), &["dkimpy", "pynacl"])
        .expect("a python with dkimpy and pynacl (python3, python3-venv and PyPI are needed)")
}

/// What `tern dkim keygen` printed: the TXT record and the `[[dkim]]` lines.
struct GeneratedKey {
    /// The record's owner name, without the final dot.
    name: String,
    /// The record's character strings, as printed.
    strings: Vec<String>,
    /// The `[[dkim]]` entry for the configuration.
    config: String,
}

/// Runs `tern dkim keygen ARGS` in `dir`, as a user would, and reads what it printed.
fn keygen(dir: &Path, args: &[&str]) -> GeneratedKey {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["dkim", "keygen"]).args(args).current_dir(dir);
    scrub_env(&mut cmd);
    let out = run_with_timeout("tern dkim keygen", cmd, TOOL_TIMEOUT).unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "tern dkim keygen {args:?}: {}\n{stdout}",
        text(&out.stderr)
    );
    let (record, config) = stdout
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("keygen printed no record, blank line, config:\n{stdout}"));
    let (name, strings) = record
        .split_once(" IN TXT ")
        .unwrap_or_else(|| panic!("keygen printed no TXT record:\n{stdout}"));
    let strings: Vec<String> = strings.split('"').skip(1).step_by(2).map(String::from).collect();
    assert!(
        !strings.is_empty() && strings.iter().all(|s| s.len() <= 255 && !s.contains(',')),
        "TXT strings that dnsmasq cannot serve: {strings:?}"
    );
    assert!(config.contains("[[dkim]]"), "{stdout}");
    GeneratedKey {
        name: name.trim_end_matches('.').to_string(),
        strings,
        config: config.to_string(),
    }
}

/// One transaction the MX recorded.
struct Received {
    file: PathBuf,
    /// mx.py's record: listener, session, transaction, mail, rcpts, via, outcome.
    record: Value,
    subject: String,
    bytes: Vec<u8>,
}

impl Received {
    fn listener(&self) -> &str {
        self.record["listener"].as_str().unwrap_or("")
    }

    fn accepted(&self) -> bool {
        self.record["outcome"] == "accepted"
    }

    fn describe(&self) -> String {
        format!("{} ({:?}, {})", self.file.display(), self.subject, self.record)
    }
}

/// The header fields of `message`, unfolded, in order: (name, value).
fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let message = String::from_utf8_lossy(message);
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_string(), value.to_string()));
        }
    }
    fields
}

/// The values of the fields named `name` (case-insensitive).
fn fields_named(message: &[u8], name: &str) -> Vec<String> {
    header_fields(message)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// Every complete transaction in the MX's output directory, in arrival order.
fn received(dir: &Path) -> Vec<Received> {
    let mut numbered = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let number = stem.parse::<u32>().ok();
        if let (Some(n), true) = (number, path.extension().is_some_and(|e| e == "eml")) {
            numbered.push((n, path));
        }
    }
    numbered.sort();
    numbered
        .into_iter()
        .map(|(_, file)| {
            let bytes = std::fs::read(&file).unwrap();
            let record: Value =
                serde_json::from_str(&std::fs::read_to_string(file.with_extension("json")).unwrap()).unwrap();
            let subject = fields_named(&bytes, "Subject")
                .first()
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            Received {
                file,
                record,
                subject,
                bytes,
            }
        })
        .collect()
}

/// Writes `message` (LF line ends made CRLF) to `dir/name`.
fn message_file(dir: &Path, name: &str, message: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, message.replace('\n', "\r\n")).unwrap();
    path
}

/// A message from `from` (the From header) to both MX domains.
fn message(from: &str, local: &str, subject: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "From: Alice <{from}>\nTo: {local}@plain.test, {local}@chunking.test\nSubject: {subject}\n\
         Date: Mon, 01 Dec 2025 10:00:00 +0000\nMessage-ID: <{local}.{}@example.test>\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n{extra_headers}\n{body}",
        subject.replace(' ', "-"),
    )
}

/// Submits `(mail_from, local part, message file)` triples over one SMTP connection with smtplib; each to
/// `local@plain.test` and `local@chunking.test`. Every message must be accepted.
fn submit(
    python: &Path,
    dir: &Path,
    smtp_port: u16,
    messages: &[(&str, &str, &Path)],
    logs: &dyn Fn() -> String,
) {
    let script = dir.join("submit.py");
    std::fs::write(&script, SUBMIT_PY).unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg("127.0.0.1").arg(smtp_port.to_string());
    for (mail_from, local, file) in messages {
        cmd.arg(mail_from)
            .arg(format!("{local}@plain.test,{local}@chunking.test"))
            .arg(file);
    }
    let out = run_with_timeout("smtplib submission", cmd, TOOL_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "submission failed: {}\n{}\n{}",
        text(&out.stderr),
        text(&out.stdout),
        logs()
    );
    let replies: Vec<(u16, String)> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("submit.py printed no JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(replies.len(), messages.len(), "{replies:?}");
    for (code, reply) in &replies {
        assert_eq!(
            *code,
            250,
            "the data was not accepted: {code} {reply}\n{}",
            logs()
        );
    }
}

/// A `tern all` on the embedded store in `dir`, with `dkim` appended to its configuration.
struct Tern {
    process: ChildGuard,
    smtp_port: u16,
    grpc_url: String,
}

fn start_tern(dir: &Path, dns: &Dnsmasq, mx_port: u16, dkim: &str) -> Tern {
    let (smtp, grpc, control) = (free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
    let config = format!(
        r#"[queue]
url = "embedded://{store}"
[ingest]
smtp_listen = ["127.0.0.1:{smtp}"]
grpc_listen = "127.0.0.1:{grpc}"
hostname = "tern.test"
[delivery]
dns_servers = ["{dns}"]
smtp_port = {mx_port}
helo_name = "tern.test"
poll_interval = "100ms"
retry_schedule = ["1s"]
[control]
grpc_listen = "127.0.0.1:{control}"

{dkim}"#,
        store = dir.join("store").display(),
        dns = dns.addr(),
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, &config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["all", "--config", path.to_str().unwrap()])
        .current_dir(dir);
    scrub_env(&mut cmd);
    let process = ChildGuard::spawn_logging_to("tern-all", cmd, dir).unwrap();
    for port in [smtp, grpc, control] {
        wait_for_tcp((Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\nconfiguration:\n{config}\n{}", process.logs()));
    }
    Tern {
        process,
        smtp_port: smtp,
        grpc_url: format!("http://127.0.0.1:{grpc}"),
    }
}

/// Runs verify.py over `files`: file name -> the signatures dkimpy found, each with d, s, a, ok and log.
fn dkimpy_verify(python: &Path, dir: &Path, dns_port: u16, files: &[&Path]) -> BTreeMap<String, Vec<Value>> {
    let script = dir.join("verify.py");
    std::fs::write(&script, VERIFY_PY).unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(dns_port.to_string()).args(files);
    let out = run_with_timeout("dkimpy verify", cmd, TOOL_TIMEOUT).unwrap();
    assert!(out.status.success(), "verify.py failed: {}", text(&out.stderr));
    let all: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify.py printed no JSON ({e}): {}", text(&out.stdout)));
    all
}

#[test]
fn mail_signed_at_ingest_verifies_with_dkimpy_for_rsa_and_ed25519_after_smtp_grpc_reuse_and_retry() {
    let python = python();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // 1. The keys, made as the documentation says (RSA in a debug build takes seconds: both at once).
    let (rsa, ed) = std::thread::scope(|s| {
        let rsa = s.spawn(|| keygen(dir, &["--domain", "example.test", "--selector", "rsa1"]));
        let ed = s.spawn(|| {
            keygen(
                dir,
                &[
                    "--domain",
                    "example.test",
                    "--selector",
                    "ed1",
                    "--algorithm",
                    "ed25519",
                    "--out",
                    "ed1.pem",
                ],
            )
        });
        (rsa.join().unwrap(), ed.join().unwrap())
    });
    assert_eq!(rsa.name, "rsa1._domainkey.example.test");
    assert_eq!(ed.name, "ed1._domainkey.example.test");
    assert!(
        rsa.strings.len() >= 2,
        "an RSA key needs several strings: {:?}",
        rsa.strings
    );

    // 2. DNS: the MX records and both public keys (dnsmasq makes each comma-separated part one string).
    let mx_port = free_port().unwrap();
    let dns = Dnsmasq::builder()
        .mx("plain.test", "mx.plain.test", 10)
        .host("mx.plain.test", PLAIN_MX)
        .mx("chunking.test", "mx.chunking.test", 10)
        .host("mx.chunking.test", CHUNKING_MX)
        .arg(&format!("--txt-record={},{}", rsa.name, rsa.strings.join(",")))
        .arg(&format!("--txt-record={},{}", ed.name, ed.strings.join(",")))
        .start()
        .unwrap();
    for key in [&rsa, &ed] {
        let reply = dns.query(&key.name, TYPE_TXT).unwrap();
        assert_eq!(
            reply.txt(),
            [key.strings.concat()],
            "dnsmasq serves {} otherwise than keygen printed it",
            key.name
        );
    }

    // 3. The mail exchangers.
    let mx_dir = dir.join("mx");
    std::fs::create_dir(&mx_dir).unwrap();
    std::fs::write(dir.join("mx.py"), MX_PY).unwrap();
    let mut cmd = Command::new(&python);
    cmd.arg(dir.join("mx.py"))
        .arg(&mx_dir)
        .arg(format!("plain={}:{mx_port}", Ipv4Addr::from(PLAIN_MX)))
        .arg(format!(
            "chunking={}:{mx_port}:chunking",
            Ipv4Addr::from(CHUNKING_MX)
        ));
    let mut mx = ChildGuard::spawn_logging_to("mx", cmd, dir).unwrap();
    wait_until(
        "mx.py to listen",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            if let Some(status) = mx.try_wait()? {
                anyhow::bail!("mx.py exited with {status}");
            }
            Ok(mx.stdout().contains("listening"))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mx.logs()));

    // 4. tern, with the [[dkim]] lines keygen printed.
    let tern = start_tern(dir, &dns, mx_port, &format!("{}\n{}", rsa.config, ed.config));
    let logs = || format!("{}\n{}", tern.process.logs(), mx.logs());

    // 5. Submissions. By SMTP: a message with a folded field, a line starting with a dot (stuffed on both
    //    hops), trailing spaces and blank lines; on the same connection one From a domain without a key.
    let smtp_file = message_file(
        dir,
        "smtp.eml",
        &message(
            "a@example.test",
            "r1",
            SMTP,
            "X-Folded: a field folded\n  over two lines\n",
            "Hello over SMTP.\n.a line that starts with a dot\ntrailing spaces   \n\n\n",
        ),
    );
    let unsigned_file = message_file(
        dir,
        "unsigned.eml",
        &message("b@other.test", "r6", UNSIGNED, "", "No key for other.test.\n"),
    );
    submit(
        &python,
        dir,
        tern.smtp_port,
        &[
            ("a@example.test", "r1", &smtp_file),
            ("a@example.test", "r6", &unsigned_file),
        ],
        &logs,
    );

    // By the gRPC Send API, a multipart message that ingest composes.
    let attachment = dir.join("notes.txt");
    std::fs::write(&attachment, "An attachment, encoded by ingest.\n").unwrap();
    let mut send = Command::new(ternctl_path());
    send.args([
        "send",
        "--ingest",
        &tern.grpc_url,
        "--from",
        "a@example.test",
        "--to",
        "r2@plain.test",
        "--to",
        "r2@chunking.test",
        "--subject",
        GRPC,
        "--text",
        "Hello over gRPC.",
        "--attach",
    ])
    .arg(&attachment);
    scrub_env(&mut send);
    let out = run_with_timeout("ternctl send", send, TOOL_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "ternctl send: {}\n{}",
        text(&out.stderr),
        logs()
    );

    // Two more at once, to go over one reused connection to each MX. The second's envelope sender is in
    // another domain: the signing domain is the From header's.
    let reuse_1 = message_file(
        dir,
        "reuse1.eml",
        &message("a@example.test", "r3", REUSE_1, "", "First of two.\n"),
    );
    let reuse_2 = message_file(
        dir,
        "reuse2.eml",
        &message("a@example.test", "r4", REUSE_2, "", "Second of two.\n"),
    );
    submit(
        &python,
        dir,
        tern.smtp_port,
        &[
            ("a@example.test", "r3", &reuse_1),
            ("bounces@other.test", "r4", &reuse_2),
        ],
        &logs,
    );

    // One that each MX answers 451 after its data on the first attempt.
    let retry = message_file(
        dir,
        "retry.eml",
        &message(
            "a@example.test",
            "r5",
            RETRY,
            "X-Test-Case: retry\n",
            "Sent twice, signed once.\n",
        ),
    );
    submit(
        &python,
        dir,
        tern.smtp_port,
        &[("a@example.test", "r5", &retry)],
        &logs,
    );

    // gRPC Send may not ask to skip keys that are not optional.
    refused_without_signing(&tern.grpc_url, &logs);

    // 6. Wait for every message at each MX.
    let subjects: BTreeSet<&str> = [SMTP, GRPC, REUSE_1, REUSE_2, RETRY, UNSIGNED].into();
    let complete = |all: &[Received]| {
        LISTENERS.iter().all(|(label, _)| {
            let got: BTreeSet<&str> = all
                .iter()
                .filter(|r| r.listener() == *label && r.accepted())
                .map(|r| r.subject.as_str())
                .collect();
            got.is_superset(&subjects)
        })
    };
    wait_until(
        "every message accepted by both MX listeners",
        DELIVERY_TIMEOUT,
        Duration::from_millis(100),
        || Ok(complete(&received(&mx_dir))),
    )
    .unwrap_or_else(|e| {
        let got: Vec<String> = received(&mx_dir).iter().map(Received::describe).collect();
        panic!("{e:#}\nreceived:\n{}\n{}", got.join("\n"), logs())
    });
    // Let a duplicate delivery, if any, arrive before counting.
    std::thread::sleep(Duration::from_millis(500));
    let all = received(&mx_dir);

    // 7. dkimpy on every copy received, the deferred ones included, and on a copy with its body changed:
    //    that one must fail, or the verifier is not checking anything.
    let first = all
        .iter()
        .find(|r| r.subject == SMTP)
        .expect("the SMTP message was received");
    let tampered = dir.join("tampered.eml");
    let changed = String::from_utf8_lossy(&first.bytes).replace("Hello over SMTP.", "Hello over SMTP!");
    assert_ne!(changed.as_bytes(), first.bytes, "the body to change is there");
    std::fs::write(&tampered, changed).unwrap();
    let mut files: Vec<&Path> = all.iter().map(|r| r.file.as_path()).collect();
    files.push(&tampered);
    let verdicts = dkimpy_verify(&python, dir, dns.port(), &files);
    let tampered_verdicts: Vec<&Value> = verdicts[&tampered.display().to_string()]
        .iter()
        .map(|s| &s["ok"])
        .collect();
    assert_eq!(
        tampered_verdicts,
        [false, false],
        "dkimpy accepted a changed body: {:?}",
        verdicts[&tampered.display().to_string()]
    );
    let mut failures = Vec::new();
    for r in &all {
        let sigs = &verdicts[&r.file.display().to_string()];
        let headers = fields_named(&r.bytes, "DKIM-Signature");
        if r.subject == UNSIGNED {
            if !sigs.is_empty() || !headers.is_empty() {
                failures.push(format!(
                    "signed, with no key for its From domain: {}",
                    r.describe()
                ));
            }
            continue;
        }
        if headers.len() != 2 || sigs.len() != 2 {
            failures.push(format!(
                "{} DKIM-Signature fields (dkimpy saw {}), not 2: {}\n{}",
                headers.len(),
                sigs.len(),
                r.describe(),
                String::from_utf8_lossy(&r.bytes)
            ));
            continue;
        }
        let mut tags: Vec<(String, String, String)> = sigs
            .iter()
            .map(|s| {
                (
                    s["d"].as_str().unwrap_or("").to_string(),
                    s["s"].as_str().unwrap_or("").to_string(),
                    s["a"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        tags.sort();
        let expected: Vec<(String, String, String)> = EXPECTED_SIGNATURES
            .iter()
            .map(|(d, s, a)| (d.to_string(), s.to_string(), a.to_string()))
            .collect();
        if tags != expected {
            failures.push(format!("signatures {tags:?}, not {expected:?}: {}", r.describe()));
        }
        for s in sigs {
            if s["ok"] != true {
                failures.push(format!(
                    "dkimpy refused s={} a={} on {}:\n{}\n{}",
                    s["s"],
                    s["a"],
                    r.describe(),
                    s["log"].as_str().unwrap_or(""),
                    String::from_utf8_lossy(&r.bytes)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n{}",
        failures.len(),
        failures.join("\n\n"),
        logs()
    );

    // 8. The cases were what they claim to be, at each MX.
    for (label, domain) in LISTENERS {
        let here: Vec<&Received> = all.iter().filter(|r| r.listener() == label).collect();
        let accepted = |subject: &str| -> Vec<&Received> {
            here.iter()
                .copied()
                .filter(|r| r.accepted() && r.subject == subject)
                .collect()
        };
        for subject in &subjects {
            let copies = accepted(subject);
            assert_eq!(
                copies.len(),
                1,
                "{subject:?} accepted {} times at {label}",
                copies.len()
            );
            let rcpts = copies[0].record["rcpts"].to_string();
            assert!(rcpts.contains(&format!("@{domain}>")), "{}", copies[0].describe());
        }
        let via = if label == "chunking" { "BDAT" } else { "DATA" };
        for r in &here {
            assert_eq!(r.record["via"], via, "{}", r.describe());
        }
        // The gRPC message's From is the sender's.
        let grpc = accepted(GRPC)[0];
        assert!(
            fields_named(&grpc.bytes, "From")
                .iter()
                .any(|f| f.contains("a@example.test")),
            "{}",
            grpc.describe()
        );
        // The second of the pair kept its envelope sender in another domain.
        let second = accepted(REUSE_2)[0];
        assert!(
            second.record["mail"]
                .as_str()
                .unwrap_or("")
                .contains("<bounces@other.test>"),
            "{}",
            second.describe()
        );
        // At least one of the pair came over a connection that had carried a message before.
        let pair = [accepted(REUSE_1)[0], second];
        assert!(
            pair.iter()
                .any(|r| r.record["transaction"].as_u64().unwrap_or(0) >= 2),
            "neither of the pair was sent over a reused connection at {label}: {} / {}\n{}",
            pair[0].describe(),
            pair[1].describe(),
            logs()
        );
        // The retried message: deferred once, then accepted, with the very signatures of the first attempt.
        let deferred: Vec<&&Received> = here.iter().filter(|r| !r.accepted()).collect();
        assert_eq!(deferred.len(), 1, "one deferred transaction at {label}");
        assert_eq!(deferred[0].subject, RETRY, "{}", deferred[0].describe());
        let retried = accepted(RETRY)[0];
        assert_eq!(
            fields_named(&deferred[0].bytes, "DKIM-Signature"),
            fields_named(&retried.bytes, "DKIM-Signature"),
            "signed again for the retry at {label}: {} / {}",
            deferred[0].describe(),
            retried.describe()
        );
    }
    drop(tern);
    drop(mx);
}

/// A gRPC Send with `sign = false` for a From domain whose keys are not optional is refused with
/// FAILED_PRECONDITION: nothing is queued unsigned against the configuration.
fn refused_without_signing(grpc_url: &str, logs: &dyn Fn() -> String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(async {
        let mut client = tern_proto::v1::submission_client::SubmissionClient::connect(grpc_url.to_string())
            .await
            .unwrap();
        let request = tern_proto::v1::SendRequest {
            sign: Some(false),
            ..common::nodes::raw_request("a@example.test", "r7@plain.test", "dkim unsigned by request")
        };
        client.send(request).await
    });
    match result {
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::FailedPrecondition,
            "{status:?}\n{}",
            logs()
        ),
        Ok(reply) => panic!(
            "sign = false was accepted for keys that are not optional: {:?}\n{}",
            reply.into_inner(),
            logs()
        ),
    }
}
