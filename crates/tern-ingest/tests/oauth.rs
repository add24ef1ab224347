//! AUTH XOAUTH2 and OAUTHBEARER (RFC 7628) against a real ingest listener, driven by Python's smtplib over
//! STARTTLS, with JWTs signed by keys made in the test and a JWKS from a file or from a loopback HTTP server
//! (Python's http.server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod oauth_keys;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Harness;
use oauth_keys::{AUDIENCE, ISSUER, TestKey, claims, jwks, now};
use serde_json::{Value, json};
use tern_config::IngestConfig;
use tern_queue::ListFilter;
use tern_testkit::{require_tool, run_with_timeout};

/// The smtplib client: one session per entry of `sessions`, each with STARTTLS, AUTH attempts (answering an
/// error challenge with ^A) and messages; prints what it saw as JSON.
const CLIENT: &str = r#"
import base64, json, smtplib, ssl, sys
cfg = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=cfg["ca"])
out = []
for sess in cfg["sessions"]:
    res = {"auth": [], "mail": []}
    with smtplib.SMTP("127.0.0.1", cfg["port"], local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        res["mechanisms_before_tls"] = s.esmtp_features.get("auth", "").strip()
        s.starttls(context=ctx)
        s.ehlo()
        res["mechanisms"] = s.esmtp_features.get("auth", "").strip()
        for a in sess.get("auth", []):
            b64 = base64.b64encode(a["msg"].encode()).decode()
            code, text = s.docmd("AUTH", a["mech"] + " " + b64)
            r = {"code": code, "text": text.decode()}
            if code == 334:
                r["challenge"] = json.loads(base64.b64decode(text))
                code, text = s.docmd("AQ==")
                r["final"] = code
                r["final_text"] = text.decode()
            res["auth"].append(r)
        for m in sess.get("mail", []):
            try:
                s.sendmail(m["from"], [m["to"]], "From: <%s>\r\nSubject: oauth\r\n\r\nhello\r\n" % m["from"])
                res["mail"].append(250)
            except smtplib.SMTPSenderRefused as e:
                res["mail"].append(e.smtp_code)
    out.append(res)
print(json.dumps(out))
"#;

fn xoauth2(user: &str, token: &str) -> Value {
    json!({"mech": "XOAUTH2", "msg": format!("user={user}\x01auth=Bearer {token}\x01\x01")})
}

fn oauthbearer(user: &str, token: &str) -> Value {
    json!({"mech": "OAUTHBEARER", "msg": format!("n,a={user},\x01host=mx.tern.test\x01port=587\x01auth=Bearer {token}\x01\x01")})
}

/// A harness with TLS, `users`, and `[ingest.oauth]` built from `oauth` (merged over issuer and audience).
fn start(users: &[common::User<'_>], oauth: Value) -> Harness {
    Harness::start(true, users, move |cfg: &mut IngestConfig| {
        let mut table = json!({"issuer": ISSUER, "audience": AUDIENCE, "scope": "https://mail.tern.test/"});
        for (k, v) in oauth.as_object().unwrap() {
            table[k] = v.clone();
        }
        cfg.oauth = serde_json::from_value(table).unwrap();
        // The failure cases run from one address: keep the lockout out of their way.
        cfg.auth_max_failures = 100;
    })
}

/// Writes the JWKS file of `keys` into the harness's directory and returns its path.
fn jwks_file(dir: &std::path::Path, keys: &[&TestKey]) -> String {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    path.display().to_string()
}

/// Runs the smtplib client for `sessions`; one JSON result per session.
fn run_client(h: &Harness, sessions: Value) -> Vec<Value> {
    let ca = h.path("ca.pem");
    std::fs::write(&ca, h.ca.cert_pem()).unwrap();
    let arg = json!({"ca": ca, "port": h.smtp.port(), "sessions": sessions}).to_string();
    let mut cmd = Command::new(require_tool("python3").unwrap());
    cmd.arg("-c").arg(CLIENT).arg(arg);
    let out = run_with_timeout("python3", cmd, Duration::from_secs(90)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// The queued messages' senders.
fn queued_senders(h: &Harness) -> Vec<(String, Option<String>)> {
    let page =
        h.rt.block_on(h.queue.list(&ListFilter::default(), None, 100))
            .unwrap();
    page.items
        .iter()
        .map(|i| (i.envelope.sender.to_string(), i.tags.get("auth_user").cloned()))
        .collect()
}

/// Asserts a refused exchange: the error challenge in the mechanism's form, then `535 5.7.8`.
fn assert_refused(r: &Value, mech: &str, what: &str) {
    assert_eq!(r["code"], 334, "{what}: {r}");
    assert_eq!(r["final"], 535, "{what}: {r}");
    assert!(
        r["final_text"].as_str().unwrap().starts_with("5.7.8"),
        "{what}: {r}"
    );
    let c = &r["challenge"];
    if mech == "XOAUTH2" {
        assert_eq!(c["status"], "401", "{what}: {r}");
        assert_eq!(c["schemes"], "Bearer", "{what}: {r}");
    } else {
        assert_eq!(c["status"], "invalid_token", "{what}: {r}");
        assert_eq!(
            c["openid-configuration"],
            format!("{ISSUER}/.well-known/openid-configuration"),
            "{what}: {r}"
        );
    }
    assert_eq!(c["scope"], "https://mail.tern.test/", "{what}: {r}");
}

#[test]
fn a_valid_xoauth2_token_authenticates_after_starttls_and_sends_from_the_users_domain_only() {
    let key = TestKey::ed25519("ed-1");
    let dir = tempfile::tempdir().unwrap();
    let file = jwks_file(dir.path(), &[&key]);
    let h = start(&[], json!({"jwks_file": file}));
    let token = key.sign(&claims("alice@example.com"));
    let res = run_client(
        &h,
        json!([{
            "auth": [xoauth2("alice@example.com", &token)],
            "mail": [
                {"from": "alice@elsewhere.test", "to": "bob@dest.test"},
                {"from": "alice@example.com", "to": "bob@dest.test"},
                {"from": "billing@EXAMPLE.com", "to": "bob@dest.test"},
            ],
        }]),
    );
    let s = &res[0];
    assert_eq!(s["mechanisms_before_tls"], "", "{s}");
    assert_eq!(s["mechanisms"], "XOAUTH2 OAUTHBEARER", "{s}");
    assert_eq!(s["auth"][0]["code"], 235, "{s}");
    assert_eq!(s["mail"], json!([553, 250, 250]), "{s}");
    let mut senders = queued_senders(&h);
    senders.sort();
    let alice = Some("alice@example.com".to_string());
    assert_eq!(
        senders,
        [
            ("<alice@example.com>".to_string(), alice.clone()),
            ("<billing@EXAMPLE.com>".to_string(), alice)
        ]
    );
}

#[test]
fn oauthbearer_takes_an_es256_token_and_refuses_an_authzid_that_is_not_the_tokens_user() {
    let ed = TestKey::ed25519("ed-1");
    let ec = TestKey::p256("ec-1");
    let dir = tempfile::tempdir().unwrap();
    let file = jwks_file(dir.path(), &[&ed, &ec]);
    let h = start(&[], json!({"jwks_file": file}));
    let token = ec.sign(&claims("carol@example.org"));
    let res = run_client(
        &h,
        json!([
            {"auth": [oauthbearer("carol@example.org", &token)],
             "mail": [{"from": "carol@example.org", "to": "bob@dest.test"}]},
            {"auth": [oauthbearer("mallory@example.org", &token)]},
        ]),
    );
    assert_eq!(res[0]["auth"][0]["code"], 235, "{}", res[0]);
    assert_eq!(res[0]["mail"], json!([250]), "{}", res[0]);
    assert_refused(&res[1]["auth"][0], "OAUTHBEARER", "authzid of another user");
    assert_eq!(queued_senders(&h).len(), 1);
}

#[test]
fn expired_misaddressed_forged_and_unknown_key_tokens_get_the_error_exchange_then_535() {
    let key = TestKey::ed25519("ed-1");
    let other = TestKey::ed25519("ed-1");
    let dir = tempfile::tempdir().unwrap();
    let file = jwks_file(dir.path(), &[&key]);
    let h = start(&[], json!({"jwks_file": file, "leeway": "30s"}));
    let user = "alice@example.com";
    let mut expired = claims(user);
    expired["exp"] = json!(now() - 120);
    let mut within_leeway = claims(user);
    within_leeway["exp"] = json!(now() - 10);
    let mut wrong_aud = claims(user);
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims(user);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_user = claims(user);
    no_user.as_object_mut().unwrap().remove("email");
    let cases = [
        ("expired", key.sign(&expired)),
        ("wrong audience", key.sign(&wrong_aud)),
        ("wrong issuer", key.sign(&wrong_iss)),
        ("bad signature", other.sign(&claims(user))),
        ("unknown kid", key.sign_as(Some("ed-2"), &claims(user))),
        ("no user claim", key.sign(&no_user)),
    ];
    // Two failures per session (the third closes it), alternating the mechanisms.
    let mut sessions = Vec::new();
    for (i, pair) in cases.chunks(2).enumerate() {
        let auth: Vec<Value> = pair
            .iter()
            .enumerate()
            .map(|(j, (_, t))| {
                if (i + j) % 2 == 0 {
                    xoauth2(user, t)
                } else {
                    oauthbearer(user, t)
                }
            })
            .collect();
        sessions.push(json!({"auth": auth}));
    }
    sessions.push(json!({"auth": [xoauth2(user, &key.sign(&within_leeway))],
                         "mail": [{"from": user, "to": "bob@dest.test"}]}));
    let res = run_client(&h, json!(sessions));
    for (n, (what, _)) in cases.iter().enumerate() {
        let (i, j) = (n / 2, n % 2);
        let mech = if (i + j) % 2 == 0 {
            "XOAUTH2"
        } else {
            "OAUTHBEARER"
        };
        assert_refused(&res[i]["auth"][j], mech, what);
    }
    let last = &res[cases.len() / 2];
    assert_eq!(last["auth"][0]["code"], 235, "within the leeway: {last}");
    assert_eq!(last["mail"], json!([250]), "{last}");
    assert_eq!(queued_senders(&h).len(), 1);
}

#[test]
fn the_users_file_sets_an_oauth_users_sender_domains_and_passwordless_users_offer_no_plain() {
    let key = TestKey::ed25519("ed-1");
    let dir = tempfile::tempdir().unwrap();
    let file = jwks_file(dir.path(), &[&key]);
    let users = dir.path().join("users");
    std::fs::write(&users, "alice@example.com:!:example.org\n").unwrap();
    let h = Harness::start(true, &[], {
        let users = users.clone();
        move |cfg: &mut IngestConfig| {
            cfg.users_file = Some(users);
            cfg.oauth =
                serde_json::from_value(json!({"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": file}))
                    .unwrap();
        }
    });
    let res = run_client(
        &h,
        json!([{
            "auth": [xoauth2("alice@example.com", &key.sign(&claims("alice@example.com")))],
            "mail": [
                {"from": "alice@example.com", "to": "bob@dest.test"},
                {"from": "alice@example.org", "to": "bob@dest.test"},
            ],
        }]),
    );
    let s = &res[0];
    assert_eq!(s["mechanisms"], "XOAUTH2 OAUTHBEARER", "{s}");
    assert_eq!(s["auth"][0]["code"], 235, "{s}");
    assert_eq!(s["mail"], json!([553, 250]), "{s}");
}

/// A loopback HTTP server (Python's http.server) serving `body` at `/jwks`, counting GETs in its stdout.
struct JwksServer {
    child: Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl JwksServer {
    fn start(dir: &std::path::Path, body: &str) -> JwksServer {
        let path = dir.join("served-jwks.json");
        std::fs::write(&path, body).unwrap();
        let script = r#"
import http.server, sys
body = open(sys.argv[1], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("GET " + self.path, flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut child = Command::new(require_tool("python3").unwrap())
            .arg("-c")
            .arg(script)
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        JwksServer {
            child,
            port,
            lines: rx,
        }
    }

    /// The GETs served so far.
    fn gets(&self) -> usize {
        self.lines
            .try_iter()
            .filter(|l| l.starts_with("GET /jwks"))
            .count()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_jwks_url_is_fetched_once_for_many_sessions_and_an_unknown_kid_does_not_refetch_within_a_minute() {
    let key = TestKey::ed25519("ed-1");
    let dir = tempfile::tempdir().unwrap();
    let server = JwksServer::start(dir.path(), &jwks(&[&key]));
    let url = format!("http://127.0.0.1:{}/jwks", server.port);
    let h = start(&[], json!({"jwks_url": url}));
    let user = "alice@example.com";
    let mut sessions: Vec<Value> = (0..6)
        .map(|i| {
            let t = key.sign(&claims(user));
            json!({"auth": [if i % 2 == 0 { xoauth2(user, &t) } else { oauthbearer(user, &t) }]})
        })
        .collect();
    sessions.push(json!({"auth": [xoauth2(user, &key.sign_as(Some("ed-rotated"), &claims(user)))]}));
    let res = run_client(&h, json!(sessions));
    for s in &res[..6] {
        assert_eq!(s["auth"][0]["code"], 235, "{s}");
    }
    assert_refused(&res[6]["auth"][0], "XOAUTH2", "unknown kid");
    assert_eq!(server.gets(), 1, "one fetch serves every session");
}
