//! TLS-RPT (RFC 8460) end to end (issue #17, its last Tests case): a real `tern all` with
//! `[delivery.tls_rpt] enabled = true` delivers under three MTA-STS policies, counts the sessions, and a
//! report run forced with `ternctl sts send-reports --day today` sends each policy domain its report, by
//! mail through tern's own queue to a `mailto:` sink and by HTTPS POST to a collector.
//!
//! The peers are all real: redis-server (tern's queue and the counters), dnsmasq (MX, A, the `_mta-sts` and
//! `_smtp._tls` TXT records, and the reporting domain's DKIM key), one Python HTTPS server with a
//! certificate from a test CA that serves the three policies (by Host) and keeps every report POSTed to it,
//! and one Python SMTP receiver listening on four loopback addresses:
//!
//! | domain | policy | its MX | what happens |
//! |---|---|---|---|
//! | `enforce.test` | enforce | no STARTTLS | deferred 4.7.5, a `starttls-not-supported` failure |
//! | `testing.test` | testing | STARTTLS, another name's certificate | delivered, a `certificate-host-mismatch` failure |
//! | `good.test` | enforce | STARTTLS, a certificate for its name | delivered over verified TLS, a success |
//! | `collector.test` | none | plain | receives the report mails (the `mailto:` sink) |
//!
//! Each policy domain publishes
//! `v=TLSRPTv1; rua=mailto:tlsrpt@collector.test,https://collector.test:PORT/tlsrpt`. The receiver and
//! the collector decode what they get (MIME, gzip) and save it as JSON for the test; the report mails' DKIM
//! signatures (`[[dkim]]` for the reporting domain, `reporter.test`) are checked by dkimpy looking the key
//! up in dnsmasq. Needs dnsmasq, redis-server, python3 (with venv and PyPI on first run, for dkimpy):
//! without them the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Node, smtp_submit, text};
use serde_json::{Value, json};
use tern_dkim::keygen::GeneratedKey;
use tern_queue::tls_report::utc_day;
use tern_testkit::ports::wait_until;
use tern_testkit::{
    ChildGuard, Dnsmasq, TestCa, free_port, python_with_packages, require_tool, run_with_timeout,
    wait_for_tcp,
};

const ENFORCE: &str = "enforce.test";
const TESTING: &str = "testing.test";
const GOOD: &str = "good.test";
const COLLECTOR: &str = "collector.test";
/// The `mailto:` address of every domain's `rua`.
const RUA_MAIL: &str = "tlsrpt@collector.test";
/// The reporting address (`report_from`) and its DKIM selector.
const REPORT_FROM: &str = "tls-reports@reporter.test";
const SELECTOR: &str = "tlsrpt1";

/// The HTTPS server: the policy hosts and the collector.
const HTTPS_IP: [u8; 4] = [127, 0, 0, 160];
/// The receiver's listeners, by label: address, and the name its STARTTLS certificate is for (none: no
/// STARTTLS).
const LISTENERS: [(&str, [u8; 4], Option<&str>); 4] = [
    ("enforce", [127, 0, 0, 161], None),
    ("testing", [127, 0, 0, 162], Some("other.testing.test")),
    ("good", [127, 0, 0, 163], Some("mx.good.test")),
    ("sink", [127, 0, 0, 164], None),
];

/// The policies served, by domain: mode, and the MX pattern.
const POLICIES: [(&str, &str, &str); 3] = [
    (ENFORCE, "enforce", "mx.enforce.test"),
    (TESTING, "testing", "mx.testing.test"),
    (GOOD, "enforce", "mx.good.test"),
];

/// How long a delivery, a count or a report may take to show.
const SOON: Duration = Duration::from_secs(40);

/// The SMTP receiver: `python3 - OUT_DIR LABEL=IP:PORT[:CHAIN:KEY] ...`. Offers STARTTLS where a
/// certificate is given. Every message that reaches the end of its data is answered 250 and saved as
/// OUT_DIR/<n>.eml, with OUT_DIR/<n>.json: the listener, the envelope, whether TLS was on, the top-level
/// content type and report-type, the TLS-Report-Domain header, and every `application/tlsrpt+gzip` part
/// (its file name, whether it is gzip, and the report it holds). Prints "listening" once bound.
const RECEIVER: &str = r#"
import asyncio, email, email.policy, gzip, itertools, json, os, ssl, sys

out_dir = sys.argv[1]
numbers = itertools.count(1)

def describe(data):
    record = {}
    try:
        msg = email.message_from_bytes(bytes(data), policy=email.policy.default)
        record["content_type"] = msg.get_content_type()
        record["report_type"] = msg.get_param("report-type")
        record["tls_report_domain"] = str(msg.get("TLS-Report-Domain", "")).strip()
        record["from"] = str(msg.get("From", ""))
        reports = []
        for part in msg.walk():
            if part.get_content_type() == "application/tlsrpt+gzip":
                raw = part.get_payload(decode=True)
                reports.append({
                    "filename": part.get_filename(),
                    "gzip": raw[:2] == b"\x1f\x8b",
                    "report": json.loads(gzip.decompress(raw)),
                })
        record["reports"] = reports
    except Exception as e:  # the test fails on it, with the reason
        record["error"] = repr(e)
    return record

def save(record, data):
    n = next(numbers)
    with open(os.path.join(out_dir, f"{n}.eml"), "wb") as f:
        f.write(data)
    tmp = os.path.join(out_dir, f"{n}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.rename(tmp, os.path.join(out_dir, f"{n}.json"))

def serve(label, context):
    async def session(reader, writer):
        tls, mail_from, rcpts = False, None, []
        async def reply(*lines):
            for i, line in enumerate(lines):
                sep = "-" if i < len(lines) - 1 else " "
                writer.write(f"{line[:3]}{sep}{line[4:]}\r\n".encode())
            await writer.drain()
        await reply(f"220 mx.{label}.test ESMTP")
        while True:
            line = await reader.readline()
            if not line:
                break
            command = line.decode("latin-1").rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                lines = [f"250 mx.{label}.test", "250 PIPELINING", "250 8BITMIME"]
                if context and not tls:
                    lines.append("250 STARTTLS")
                await reply(*lines)
            elif verb == "STARTTLS" and context and not tls:
                await reply("220 2.0.0 ready")
                await writer.start_tls(context)
                tls, mail_from, rcpts = True, None, []
            elif verb == "MAIL":
                mail_from, rcpts = command[10:].strip(), []
                await reply("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(command[8:].strip())
                await reply("250 2.1.5 ok")
            elif verb == "DATA":
                await reply("354 go ahead")
                data = bytearray()
                while True:
                    chunk = await reader.readline()
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        break
                    data += chunk[1:] if chunk.startswith(b".") else chunk
                record = {"listener": label, "mail_from": mail_from, "rcpts": rcpts, "tls": tls}
                record.update(describe(data))
                save(record, bytes(data))
                await reply("250 2.0.0 kept")
            elif verb in ("RSET", "NOOP"):
                await reply("250 2.0.0 ok")
            elif verb == "QUIT":
                await reply("221 2.0.0 bye")
                break
            else:
                await reply("502 5.5.2 not here")
        writer.close()
    return session

async def main():
    servers = []
    for spec in sys.argv[2:]:
        label, rest = spec.split("=", 1)
        parts = rest.split(":")
        context = None
        if len(parts) == 4:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(parts[2], parts[3])
        servers.append(await asyncio.start_server(serve(label, context), parts[0], int(parts[1])))
    print("listening", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))

asyncio.run(main())
"#;

/// The HTTPS server: `python3 - ADDR PORT CHAIN KEY OUT_DIR POLICIES_JSON`. Serves each policy host's policy
/// (by Host) as text/plain at the well-known path; keeps every POST as OUT_DIR/post-<n>.json (path, Host,
/// content type, whether the body is gzip, and the JSON report inside) and answers 200.
const HTTPS: &str = r#"
import gzip, http.server, itertools, json, os, ssl, sys

addr, port, chain, key, out_dir, policies_file = sys.argv[1:7]
policies = json.load(open(policies_file))
numbers = itertools.count(1)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body=b"", content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        policy = policies.get(host) if self.path == "/.well-known/mta-sts.txt" else None
        print("GET", self.path, host, flush=True)
        if policy is None:
            self.answer(404, b"not found\n")
        else:
            self.answer(200, policy.encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {
            "path": self.path,
            "host": self.headers.get("Host"),
            "content_type": self.headers.get("Content-Type"),
            "gzip": body[:2] == b"\x1f\x8b",
        }
        try:
            record["report"] = json.loads(gzip.decompress(body))
        except Exception as e:  # the test fails on it, with the reason
            record["error"] = repr(e)
        n = next(numbers)
        tmp = os.path.join(out_dir, f"post-{n}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out_dir, f"post-{n}.json"))
        print("POST", self.path, flush=True)
        self.answer(200)

    def log_message(self, format, *args):
        pass

server = http.server.ThreadingHTTPServer((addr, int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_2
context.load_cert_chain(chain, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
"#;

/// dkimpy's verdict on every DKIM-Signature of each file (tests/dkim_signing/verify.py).
const VERIFY_PY: &str = include_str!("dkim_signing/verify.py");

fn python() -> PathBuf {
    require_tool("python3").unwrap()
}

/// `--dns-rr` for one TXT string: dnsmasq's `--txt-record` would split the text at the comma between the
/// two URIs, so the record's data is given raw (a length byte, then the text), in hex.
fn txt_rr(name: &str, text: &str) -> String {
    let mut data = format!("{:02x}", text.len());
    for b in text.bytes() {
        data.push_str(&format!("{b:02x}"));
    }
    format!("--dns-rr={name},16,{data}")
}

/// The policy file of `domain`.
fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n")
}

/// Starts the SMTP receiver on every listener at `port`, with certificates from `ca`.
fn start_receiver(dir: &Path, out: &Path, ca: &TestCa, port: u16) -> ChildGuard {
    let script = dir.join("receiver.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(out);
    for (label, ip, name) in LISTENERS {
        let mut spec = format!("{label}={}:{port}", Ipv4Addr::from(ip));
        if let Some(name) = name {
            let cert = ca.issue(&[name]).unwrap();
            let chain = dir.join(format!("{label}-chain.pem"));
            std::fs::write(&chain, cert.chain_pem(ca)).unwrap();
            let key = cert.write_to(dir, label).unwrap().key;
            spec.push_str(&format!(":{}:{}", chain.display(), key.display()));
        }
        cmd.arg(spec);
    }
    let receiver = ChildGuard::spawn_logging_to("receiver", cmd, dir).unwrap();
    for (_, ip, _) in LISTENERS {
        wait_for_tcp(SocketAddr::from((ip, port)), SOON)
            .unwrap_or_else(|e| panic!("{e}\n{}", receiver.logs()));
    }
    receiver
}

/// Starts the HTTPS server (the policy hosts and the collector) at `port`.
fn start_https(dir: &Path, out: &Path, ca: &TestCa, port: u16) -> ChildGuard {
    let mut names: Vec<String> = POLICIES.iter().map(|(d, _, _)| format!("mta-sts.{d}")).collect();
    names.push(COLLECTOR.to_string());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let cert = ca.issue(&names).unwrap();
    let chain = dir.join("https-chain.pem");
    std::fs::write(&chain, cert.chain_pem(ca)).unwrap();
    let key = cert.write_to(dir, "https").unwrap().key;
    let policies: serde_json::Map<String, Value> = POLICIES
        .iter()
        .map(|(d, mode, mx)| (format!("mta-sts.{d}"), json!(policy(mode, mx))))
        .collect();
    let policies_file = dir.join("policies.json");
    std::fs::write(&policies_file, Value::Object(policies).to_string()).unwrap();
    let script = dir.join("https.py");
    std::fs::write(&script, HTTPS).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .arg(Ipv4Addr::from(HTTPS_IP).to_string())
        .arg(port.to_string())
        .arg(&chain)
        .arg(&key)
        .arg(out)
        .arg(&policies_file);
    let server = ChildGuard::spawn_logging_to("https", cmd, dir).unwrap();
    wait_for_tcp(SocketAddr::from((HTTPS_IP, port)), SOON)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    server
}

/// The JSON files named `<prefix><n>.json` in `dir`, in order of `n`, with `n`.
fn saved(dir: &Path, prefix: &str) -> Vec<(u32, Value)> {
    let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            let n = name.strip_prefix(prefix)?.strip_suffix(".json")?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    numbered.sort();
    numbered
        .into_iter()
        .map(|(n, path)| {
            let doc = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            (n, doc)
        })
        .collect()
}

/// The messages the receiver kept: (record, the .eml file).
fn received(dir: &Path) -> Vec<(Value, PathBuf)> {
    saved(dir, "")
        .into_iter()
        .map(|(n, record)| (record, dir.join(format!("{n}.eml"))))
        .collect()
}

/// `ternctl --json sts report D`: the day's (successful, failed) totals.
fn totals(node: &Node, domain: &str) -> (u64, u64) {
    let doc = node.json(&["sts", "report", domain]);
    (
        doc["total_successful"].as_u64().unwrap_or(0),
        doc["total_failure"].as_u64().unwrap_or(0),
    )
}

#[test]
fn a_forced_report_run_sends_rfc_8460_reports_by_mail_and_https_with_the_right_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (mail_out, post_out) = (dir.path().join("mail"), dir.path().join("posts"));
    std::fs::create_dir_all(&mail_out).unwrap();
    std::fs::create_dir_all(&post_out).unwrap();
    let (mx_port, https_port) = (free_port().unwrap(), free_port().unwrap());
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();
    let https = start_https(dir.path(), &post_out, &ca, https_port);
    let receiver = start_receiver(dir.path(), &mail_out, &ca, mx_port);
    let collector_url = format!("https://{COLLECTOR}:{https_port}/tlsrpt");

    // The reporting domain's DKIM key.
    let key = GeneratedKey::ed25519().unwrap();
    let key_file = dir.path().join("tlsrpt1.pem");
    std::fs::write(&key_file, &key.private_key_pem).unwrap();

    // DNS: each domain's MX, the policy hosts and the collector, the `_mta-sts` and `_smtp._tls`
    // records, and the DKIM key.
    let record = format!("v=TLSRPTv1; rua=mailto:{RUA_MAIL},{collector_url}");
    let mut dns = Dnsmasq::builder()
        .host(COLLECTOR, HTTPS_IP)
        .txt(&format!("{SELECTOR}._domainkey.reporter.test"), &key.txt_value());
    for (label, ip, _) in LISTENERS {
        let domain = format!("{label}.test");
        let domain = if label == "sink" {
            COLLECTOR.to_string()
        } else {
            domain
        };
        let mx = format!("mx.{domain}");
        dns = dns.mx(&domain, &mx, 10).host(&mx, ip);
    }
    for (domain, _, _) in POLICIES {
        dns = dns
            .host(&format!("mta-sts.{domain}"), HTTPS_IP)
            .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=20260101;")
            .arg(&txt_rr(&format!("_smtp._tls.{domain}"), &record));
    }
    let dns = dns.start().unwrap();
    let dns_port = dns.port();

    let node = Node::start(
        dns,
        mx_port,
        &format!(
            r#"extra_ca_file = "{ca}"
retry_schedule = ["1h"]
[delivery.mta_sts]
https_port = {https_port}
[delivery.tls_rpt]
enabled = true
organization_name = "Tern Test Org"
contact_info = "mailto:tls-contact@reporter.test"
report_from = "{REPORT_FROM}"
"#,
            ca = ca_file.display()
        ),
        &format!(
            r#"
[[dkim]]
domain = "reporter.test"
selector = "{SELECTOR}"
key_file = "{key}"
algorithm = "ed25519-sha256"
"#,
            key = key_file.display()
        ),
    );
    let logs = || format!("{}\n{}\n{}", node.tern.logs(), receiver.logs(), https.logs());

    // One message to each policy domain.
    for domain in [ENFORCE, TESTING, GOOD] {
        let rcpt = format!("rcpt@{domain}");
        let data = format!("From: s@sender.test\r\nTo: {rcpt}\r\nSubject: to {domain}\r\n\r\nHello.\r\n");
        let reply = smtp_submit(node.smtp, "s@sender.test", &rcpt, &data);
        assert!(reply.starts_with("250"), "{reply}\n{}", logs());
    }

    // testing.test and good.test are delivered; enforce.test is deferred with 4.7.5 and never reaches its MX.
    wait_until("both deliveries", SOON, Duration::from_millis(200), || {
        let got: Vec<String> = received(&mail_out)
            .iter()
            .map(|(r, _)| r["listener"].as_str().unwrap_or("").to_owned())
            .collect();
        Ok(got.contains(&"testing".to_owned()) && got.contains(&"good".to_owned()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    let mut deferred = None;
    wait_until("enforce.test deferred", SOON, Duration::from_millis(200), || {
        deferred = node
            .json_lines(&["events"])
            .into_iter()
            .find(|e| e["kind"] == "deferred" && e["domain"] == ENFORCE);
        Ok(deferred.is_some())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    let deferred = deferred.unwrap();
    let reply = deferred["reply"].as_str().unwrap_or("");
    assert!(reply.contains("4.7.5") && reply.contains("MTA-STS"), "{deferred}");
    let kept = received(&mail_out);
    assert!(kept.iter().all(|(r, _)| r["listener"] != "enforce"), "{kept:?}");
    let testing = kept.iter().find(|(r, _)| r["listener"] == "testing").unwrap();
    assert_eq!(testing.0["tls"], true, "testing mode still uses the TLS it gets");

    // The counts, as `ternctl sts report` shows them (they are added in the background).
    let want = [(ENFORCE, (0, 1)), (TESTING, (0, 1)), (GOOD, (1, 0))];
    wait_until("the TLS-RPT counts", SOON, Duration::from_millis(200), || {
        Ok(want.iter().all(|(d, t)| totals(&node, d) == *t))
    })
    .unwrap_or_else(|e| {
        let now: Vec<_> = want.iter().map(|(d, _)| (d, totals(&node, d))).collect();
        panic!("{e:#}\ncounts: {now:?}\n{}", logs())
    });

    // A forced run for today: partial reports, every domain sent to both URIs.
    let today = utc_day(tern_core::time::now_ms());
    let run = node.json(&["sts", "send-reports", "--day", "today"]);
    assert_eq!(run["day"], today.as_str(), "{run}");
    assert_eq!(run["partial"], true, "{run}");
    assert_eq!(run["incomplete"], false, "{run}");
    let domains = run["domains"].as_array().unwrap();
    let names: Vec<&str> = domains.iter().map(|d| d["domain"].as_str().unwrap()).collect();
    assert_eq!(names, [ENFORCE, GOOD, TESTING], "{run}");
    for d in domains {
        assert_eq!(d["status"], "sent", "{run}");
        assert_eq!(
            d["sent_to"],
            json!([format!("mailto:{RUA_MAIL}"), collector_url]),
            "{run}"
        );
        assert_eq!(d["errors"], json!([]), "{run}");
    }

    // The HTTPS collector: one POST per domain, gzipped JSON as application/tlsrpt+gzip.
    let mut posts = Vec::new();
    wait_until("three POSTs", SOON, Duration::from_millis(200), || {
        posts = saved(&post_out, "post-").into_iter().map(|(_, p)| p).collect();
        Ok(posts.len() >= 3)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(posts.len(), 3, "{posts:?}");
    let mut by_domain = std::collections::BTreeMap::new();
    for post in &posts {
        assert_eq!(post["path"], "/tlsrpt", "{post}");
        assert_eq!(post["content_type"], "application/tlsrpt+gzip", "{post}");
        assert_eq!(post["gzip"], true, "{post}");
        assert!(post.get("error").is_none(), "{post}");
        let report = &post["report"];
        let domain = report["policies"][0]["policy"]["policy-domain"]
            .as_str()
            .unwrap()
            .to_owned();
        by_domain.insert(domain, report.clone());
    }
    assert_eq!(
        by_domain.keys().map(String::as_str).collect::<Vec<_>>(),
        [ENFORCE, GOOD, TESTING]
    );
    for (domain, report) in &by_domain {
        check_report(domain, report, &today);
    }

    // The mailto: sink: one report mail per domain, the same reports, DKIM-signed by reporter.test.
    let mut mails = Vec::new();
    wait_until(
        "three report mails at the sink",
        SOON,
        Duration::from_millis(200),
        || {
            mails = received(&mail_out)
                .into_iter()
                .filter(|(r, _)| r["listener"] == "sink")
                .collect();
            Ok(mails.len() >= 3)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(mails.len(), 3, "{mails:?}");
    for (mail, _) in &mails {
        assert!(mail.get("error").is_none(), "{mail}");
        assert_eq!(mail["rcpts"], json!([format!("<{RUA_MAIL}>")]), "{mail}");
        assert_eq!(mail["mail_from"], format!("<{REPORT_FROM}>"), "{mail}");
        assert_eq!(mail["content_type"], "multipart/report", "{mail}");
        assert_eq!(mail["report_type"], "tlsrpt", "{mail}");
        let reports = mail["reports"].as_array().unwrap();
        assert_eq!(reports.len(), 1, "one application/tlsrpt+gzip part: {mail}");
        assert_eq!(reports[0]["gzip"], true, "{mail}");
        let domain = mail["tls_report_domain"].as_str().unwrap();
        let filename = reports[0]["filename"].as_str().unwrap();
        assert!(
            filename.starts_with(&format!("reporter.test!{domain}!")) && filename.ends_with(".json.gz"),
            "{mail}"
        );
        assert_eq!(
            reports[0]["report"], by_domain[domain],
            "the mail and the POST carry one report"
        );
    }

    // dkimpy verifies each report mail's signature (d=reporter.test) against the key in dnsmasq.
    let dkimpy = python_with_packages(Path::new(env!("CARGO_TARGET_TMPDIR")), &["dkimpy", "pynacl"])
        .expect("a python with dkimpy and pynacl (python3, python3-venv and PyPI are needed)");
    let script = dir.path().join("verify.py");
    std::fs::write(&script, VERIFY_PY).unwrap();
    let mut cmd = Command::new(dkimpy);
    cmd.arg(&script).arg(dns_port.to_string());
    for (_, file) in &mails {
        cmd.arg(file);
    }
    let out = run_with_timeout("dkimpy verify", cmd, SOON).unwrap();
    assert!(out.status.success(), "verify.py: {}", text(&out.stderr));
    let verdicts: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (_, file) in &mails {
        let sigs = verdicts[file.to_str().unwrap()].as_array().unwrap();
        assert_eq!(
            sigs.len(),
            1,
            "one DKIM-Signature on {}: {verdicts}",
            file.display()
        );
        assert_eq!(sigs[0]["d"], "reporter.test", "{verdicts}");
        assert_eq!(sigs[0]["s"], SELECTOR, "{verdicts}");
        assert_eq!(sigs[0]["ok"], true, "dkimpy: {}", sigs[0]["log"]);
        // The signature covers the headers collectors route on (h= lists them).
        let raw = String::from_utf8_lossy(&std::fs::read(file).unwrap()).to_ascii_lowercase();
        let start = raw.find("dkim-signature:").unwrap();
        let mut field = String::new();
        for (i, line) in raw[start..].split("\r\n").enumerate() {
            if i > 0 && !line.starts_with([' ', '\t']) {
                break;
            }
            field.push_str(line);
        }
        let signed: String = field.chars().filter(|c| !c.is_whitespace()).collect();
        for name in ["tls-report-domain", "tls-report-submitter"] {
            assert!(signed.contains(name), "{name} not signed: {field}");
        }
    }

    // The day is not marked sent: a second forced run sends partial reports again.
    std::thread::sleep(Duration::from_millis(1100));
    let again = node.json(&["sts", "send-reports", "--day", "today"]);
    assert!(
        again["domains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "sent"),
        "{again}"
    );
}

/// The RFC 8460 fields of `domain`'s partial report of `today`, with the counts of the test.
fn check_report(domain: &str, r: &Value, today: &str) {
    assert_eq!(r["organization-name"], "Tern Test Org", "{r}");
    assert_eq!(r["contact-info"], "mailto:tls-contact@reporter.test", "{r}");
    let id = r["report-id"].as_str().unwrap();
    assert!(
        id.starts_with(&format!("{today}T")) && id.ends_with(&format!("Z_{domain}@reporter.test")),
        "a partial report's id: {r}"
    );
    assert_eq!(
        r["date-range"]["start-datetime"],
        format!("{today}T00:00:00Z"),
        "{r}"
    );
    let end = r["date-range"]["end-datetime"].as_str().unwrap();
    assert!(end.starts_with(&format!("{today}T")) && end.ends_with('Z'), "{r}");
    let policies = r["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{r}");
    let p = &policies[0];
    let (_, mode, mx) = POLICIES.iter().find(|(d, _, _)| *d == domain).unwrap();
    assert_eq!(p["policy"]["policy-type"], "sts", "{r}");
    assert_eq!(p["policy"]["policy-domain"], domain, "{r}");
    assert_eq!(p["policy"]["mx-host"], json!([mx]), "{r}");
    let lines = p["policy"]["policy-string"].as_array().unwrap();
    assert!(lines.contains(&json!(format!("mode: {mode}"))), "{r}");
    let (ok, failed) = match domain {
        GOOD => (1, 0),
        _ => (0, 1),
    };
    assert_eq!(p["summary"]["total-successful-session-count"], ok, "{r}");
    assert_eq!(p["summary"]["total-failure-session-count"], failed, "{r}");
    let details = p["failure-details"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if failed == 0 {
        assert!(details.is_empty(), "{r}");
        return;
    }
    assert_eq!(details.len(), 1, "{r}");
    let f = &details[0];
    let (result_type, ip) = match domain {
        ENFORCE => ("starttls-not-supported", LISTENERS[0].1),
        _ => ("certificate-host-mismatch", LISTENERS[1].1),
    };
    assert_eq!(f["result-type"], result_type, "{r}");
    assert_eq!(f["receiving-mx-hostname"], *mx, "{r}");
    assert_eq!(f["receiving-ip"], Ipv4Addr::from(ip).to_string(), "{r}");
    assert_eq!(f["failed-session-count"], 1, "{r}");
    assert_eq!(f["sending-mta-ip"], "127.0.0.1", "{r}");
}
