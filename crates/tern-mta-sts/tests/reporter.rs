//! The daily TLS report run with real peers: Redis (redis-server) as both the counters' store and the
//! queue the report mails go into, dnsmasq serving the `_smtp._tls` TXT records, the collector's address
//! and the reporting domain's DKIM key, and an HTTPS collector (tokio-rustls with a CA made in the test)
//! that keeps what it is posted. DKIM signatures are checked by mail-auth looking the key up in dnsmasq.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::io::Read;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::read::GzDecoder;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use mail_parser::{MessageParser, MimeHeaders};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tern_config::sections::{DkimAlgorithm, DkimConfig};
use tern_core::time::now_ms;
use tern_dkim::SharedSigners;
use tern_dkim::keygen::GeneratedKey;
use tern_mta_sts::reporter::schedule::{self, DAY_MS};
use tern_mta_sts::{DomainStatus, HickoryDns, ReporterOptions, TlsReporter};
use tern_queue::tls_report::utc_day;
use tern_queue::{Queue, RedisQueue, RedisQueueOptions, TlsReportStore, TlsSessionKey};
use tern_testkit::tls::{ServerCert, TestCa};
use tern_testkit::{Dnsmasq, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const DOMAIN: &str = "example.test";
/// A domain with counters that publishes no TLS-RPT record.
const SILENT: &str = "silent.test";
const COLLECTOR: &str = "collector.test";
const MAILTO: &str = "reports@collector.test";
const FROM: &str = "tls-reports@reporter.test";
/// The DKIM selector of the reporting domain's key.
const SELECTOR: &str = "ed1";
const POLICY: [&str; 4] = [
    "version: STSv1",
    "mode: testing",
    "mx: mx.example.test",
    "max_age: 86400",
];

/// One request the collector received.
#[derive(Clone, Debug)]
struct Posted {
    sni: Option<String>,
    head: String,
    body: Vec<u8>,
    /// The status answered.
    status: u16,
}

/// An HTTPS server for `collector.test` that answers `503 Service Unavailable` to its first `failing`
/// requests, `202 Accepted` to the others, and keeps every request.
struct Collector {
    port: u16,
    posted: Arc<Mutex<Vec<Posted>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start(ca: &TestCa, cert: &ServerCert, failing: usize) -> Collector {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.chain_pem(ca).as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let keep = posted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, keep) = (acceptor.clone(), keep.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let Some((head, body)) = read_request(&mut tls).await else {
                        return;
                    };
                    let status = {
                        let mut kept = keep.lock().unwrap();
                        let status = if kept.len() < failing { 503 } else { 202 };
                        kept.push(Posted {
                            sni,
                            head,
                            body,
                            status,
                        });
                        status
                    };
                    let answer = if status == 202 {
                        "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    } else {
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    };
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Collector { port, posted, task }
    }

    fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body: its head (lower-cased) and its body.
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf[end..end + length].to_vec()))
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

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
    out
}

fn key(mx: &str, result: Option<&str>) -> TlsSessionKey {
    TlsSessionKey {
        policy_type: "sts".into(),
        policy_string: POLICY.iter().map(|l| (*l).to_owned()).collect(),
        mx_host: mx.into(),
        result_type: result.map(str::to_owned),
        sending_mta_ip: "127.0.0.1".into(),
        receiving_ip: "127.0.0.2".into(),
        receiving_mx_helo: None,
        failure_reason_code: None,
    }
}

struct World {
    _redis: RedisServer,
    dns: Dnsmasq,
    _dir: tempfile::TempDir,
    store: Arc<RedisQueue>,
    collector: Collector,
    reporter: TlsReporter,
}

/// How a test's world differs.
#[derive(Default)]
struct Setup {
    /// How many POSTs the collector refuses (503) before it takes one.
    failing: usize,
    /// Whether the reporter signs its mails with an Ed25519 key of the reporting domain (published in
    /// dnsmasq).
    dkim: bool,
}

async fn world(setup: Setup) -> World {
    let redis = RedisServer::start().expect("redis-server");
    let store = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            key_prefix: format!("tlsrpt-{}", std::process::id()),
            shards: 2,
            ..RedisQueueOptions::default()
        })
        .await
        .expect("connect to redis"),
    );
    let ca = TestCa::new().unwrap();
    let cert = ca.issue(&[COLLECTOR]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_to(dir.path()).unwrap();
    let collector = Collector::start(&ca, &cert, setup.failing).await;
    let record = format!(
        "v=TLSRPTv1; rua=mailto:{MAILTO},https://{COLLECTOR}:{}/tlsrpt",
        collector.port
    );
    let mut dns = Dnsmasq::builder()
        .arg(&txt_rr(&format!("_smtp._tls.{DOMAIN}"), &record))
        .host(COLLECTOR, Ipv4Addr::LOCALHOST);
    let mut dkim = None;
    if setup.dkim {
        let key = GeneratedKey::ed25519().unwrap();
        let key_file = dir.path().join("ed1.pem");
        std::fs::write(&key_file, &key.private_key_pem).unwrap();
        dns = dns.txt(&format!("{SELECTOR}._domainkey.reporter.test"), &key.txt_value());
        let entry = DkimConfig {
            algorithm: DkimAlgorithm::Ed25519Sha256,
            ..DkimConfig::new("reporter.test", SELECTOR, key_file)
        };
        dkim = Some(Arc::new(SharedSigners::load(&[entry]).unwrap()));
    }
    let dns = dns.start().expect("dnsmasq");
    let options = ReporterOptions {
        post_timeout: Duration::from_secs(10),
        attempts: 1,
        extra_ca_file: Some(ca_file),
        ..ReporterOptions::new("Reporter Org", "postmaster@reporter.test", FROM, "node-a")
    };
    let queue: Arc<dyn Queue> = store.clone();
    let mut reporter = TlsReporter::with_dns(
        store.clone(),
        queue,
        HickoryDns::from_servers(&[dns.addr()]).unwrap(),
        options,
    )
    .unwrap();
    if let Some(keys) = dkim {
        reporter = reporter.with_dkim(keys);
    }
    World {
        _redis: redis,
        dns,
        _dir: dir,
        store,
        collector,
        reporter,
    }
}

/// Yesterday (UTC): a day that is over, whose reports are whole and marked sent.
fn yesterday() -> String {
    utc_day(now_ms() - DAY_MS)
}

/// The counters [`check_report`] expects for [`DOMAIN`] (7 successes, 2 + 3 failures), and some for
/// [`SILENT`].
async fn fill(store: &dyn TlsReportStore, day: &str) {
    // Successes over two MX hosts, and failures of two result types (in two adds: counters add up).
    store
        .tls_report_add(day, DOMAIN, &key("mx.example.test", None), 4)
        .await
        .unwrap();
    store
        .tls_report_add(day, "Example.TEST", &key("mx.example.test", None), 3)
        .await
        .unwrap();
    let mismatch = key("mx.example.test", Some("certificate-host-mismatch"));
    store.tls_report_add(day, DOMAIN, &mismatch, 1).await.unwrap();
    store.tls_report_add(day, DOMAIN, &mismatch, 1).await.unwrap();
    let no_starttls = key("mx2.example.test", Some("starttls-not-supported"));
    store.tls_report_add(day, DOMAIN, &no_starttls, 3).await.unwrap();
    store
        .tls_report_add(day, SILENT, &key("mx.silent.test", None), 9)
        .await
        .unwrap();
}

/// Claims the report mails in the queue (all due, for the collector's domain): their bodies.
async fn claim_mails(queue: &dyn Queue) -> Vec<Vec<u8>> {
    let Some(claim) = queue
        .claim("test-worker", 10, Duration::from_secs(60))
        .await
        .unwrap()
    else {
        return Vec::new();
    };
    assert_eq!(claim.domain, COLLECTOR);
    claim.jobs.iter().map(|j| j.body.to_vec()).collect()
}

/// The report attached to a report mail, gunzipped.
fn attached_report(mail: &[u8]) -> Value {
    let mail = MessageParser::default().parse(mail).expect("a mail");
    let attachment = mail.attachments().next().expect("an attachment");
    serde_json::from_slice(&gunzip(attachment.contents())).expect("the report is JSON")
}

/// Checks the report's RFC 8460 fields and the counts added in the test.
fn check_report(json: &[u8], day: &str) {
    let r: Value = serde_json::from_slice(json).expect("the report is JSON");
    assert_eq!(r["organization-name"], "Reporter Org");
    assert_eq!(r["contact-info"], "postmaster@reporter.test");
    assert_eq!(r["report-id"], format!("{day}_{DOMAIN}@reporter.test"));
    assert_eq!(r["date-range"]["start-datetime"], format!("{day}T00:00:00Z"));
    assert_eq!(r["date-range"]["end-datetime"], format!("{day}T23:59:59Z"));
    let policies = r["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{r}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], DOMAIN);
    assert_eq!(p["policy"]["policy-string"], serde_json::json!(POLICY));
    assert_eq!(p["policy"]["mx-host"], serde_json::json!(["mx.example.test"]));
    assert_eq!(p["summary"]["total-successful-session-count"], 7);
    assert_eq!(p["summary"]["total-failure-session-count"], 5);
    let mut failures: Vec<(String, String, u64)> = p["failure-details"]
        .as_array()
        .expect("failure-details")
        .iter()
        .map(|f| {
            assert_eq!(f["sending-mta-ip"], "127.0.0.1");
            assert_eq!(f["receiving-ip"], "127.0.0.2");
            (
                f["result-type"].as_str().unwrap().to_owned(),
                f["receiving-mx-hostname"].as_str().unwrap().to_owned(),
                f["failed-session-count"].as_u64().unwrap(),
            )
        })
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            (
                "certificate-host-mismatch".to_owned(),
                "mx.example.test".to_owned(),
                2
            ),
            (
                "starttls-not-supported".to_owned(),
                "mx2.example.test".to_owned(),
                3
            ),
        ]
    );
}

#[tokio::test]
async fn a_run_posts_the_report_and_queues_its_mail_then_a_second_run_sends_nothing() {
    let w = world(Setup::default()).await;
    let day = yesterday();
    let store: &dyn TlsReportStore = w.store.as_ref();
    fill(store, &day).await;

    let summary = w.reporter.run_once(&day).await.unwrap();
    assert_eq!(summary.day, day);
    assert!(!summary.partial, "{summary:?}");
    assert_eq!(summary.held_by, None);
    assert_eq!(summary.domains.len(), 2, "{summary:?}");
    let sent = &summary.domains[0];
    assert_eq!(sent.domain, DOMAIN);
    assert_eq!(sent.status, DomainStatus::Sent, "{sent:?}");
    let url = format!("https://{COLLECTOR}:{}/tlsrpt", w.collector.port);
    assert_eq!(sent.sent_to, [format!("mailto:{MAILTO}"), url]);
    assert!(sent.errors.is_empty(), "{sent:?}");
    assert!(sent.retry_later.is_empty(), "{sent:?}");
    assert!(!schedule::unfinished(&summary));
    assert_eq!(summary.domains[1].domain, SILENT);
    assert_eq!(summary.domains[1].status, DomainStatus::NoRecord);
    assert_eq!(summary.sent(), 1);

    // The HTTPS collector: one POST of the gzipped report, verified TLS to the name in the URL.
    let posted = w.collector.posted();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let post = &posted[0];
    assert_eq!(post.status, 202);
    assert_eq!(post.sni.as_deref(), Some(COLLECTOR));
    assert!(
        post.head.starts_with("post /tlsrpt http/1.1\r\n"),
        "{}",
        post.head
    );
    assert!(
        post.head
            .contains("\r\ncontent-type: application/tlsrpt+gzip\r\n"),
        "{}",
        post.head
    );
    check_report(&gunzip(&post.body), &day);

    // The mail: one message in tern's queue, to the rua address, from the reporting address, with the
    // same gzipped report attached.
    let queue: &dyn Queue = w.store.as_ref();
    assert_eq!(queue.counts().await.unwrap().total, 1);
    let claim = queue
        .claim("test-worker", 10, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the report mail is due");
    assert_eq!(claim.domain, COLLECTOR);
    assert_eq!(claim.jobs.len(), 1);
    let job = &claim.jobs[0];
    assert_eq!(job.job.envelope.sender.to_string(), format!("<{FROM}>"));
    let rcpts: Vec<String> = job
        .job
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(rcpts, [MAILTO]);
    assert_eq!(job.job.tags.get("tlsrpt").map(String::as_str), Some(DOMAIN));
    let body = queue
        .read_body(job.job.id.message)
        .await
        .unwrap()
        .expect("the body");
    assert_eq!(body, job.body);
    let mail = MessageParser::default().parse(&body[..]).expect("a mail");
    assert_eq!(
        mail.from().and_then(|a| a.first()).and_then(|a| a.address()),
        Some(FROM)
    );
    assert_eq!(
        mail.to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some(MAILTO)
    );
    assert_eq!(mail.header_raw("TLS-Report-Domain").map(str::trim), Some(DOMAIN));
    let attachments: Vec<_> = mail.attachments().collect();
    assert_eq!(attachments.len(), 1);
    let ct = attachments[0].content_type().expect("a content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("application", Some("tlsrpt+gzip")));
    assert_eq!(
        attachments[0].attachment_name(),
        Some(
            format!(
                "reporter.test!{DOMAIN}!{}!{}.json.gz",
                day_secs(&day),
                day_secs(&day) + 86_399
            )
            .as_str()
        )
    );
    assert_eq!(attachments[0].contents(), post.body.as_slice(), "the same report");
    check_report(&gunzip(attachments[0].contents()), &day);
    // No keys, no signature.
    assert!(mail.header_raw("DKIM-Signature").is_none());

    // Again: the domain is marked sent, so nothing goes anywhere.
    let again = w.reporter.run_once(&day).await.unwrap();
    assert_eq!(again.domains[0].status, DomainStatus::AlreadySent, "{again:?}");
    assert!(again.domains[0].sent_to.is_empty());
    assert_eq!(again.sent(), 0);
    assert_eq!(w.collector.posted().len(), 1);
    assert_eq!(queue.counts().await.unwrap().total, 1);
}

fn day_secs(day: &str) -> u64 {
    tern_queue::tls_report::day_start_ms(day).unwrap() / 1000
}

#[tokio::test]
async fn another_nodes_lock_keeps_a_run_from_sending() {
    let w = world(Setup::default()).await;
    let day = utc_day(now_ms());
    let store: &dyn TlsReportStore = w.store.as_ref();
    store
        .tls_report_add(&day, DOMAIN, &key("mx.example.test", None), 1)
        .await
        .unwrap();
    store
        .tls_report_try_lock(&day, "node-b", Duration::from_secs(60))
        .await
        .unwrap();
    let summary = w.reporter.run_once(&day).await.unwrap();
    assert_eq!(summary.held_by.as_deref(), Some("node-b"));
    assert!(summary.domains.is_empty());
    assert!(w.collector.posted().is_empty());
    let queue: &dyn Queue = w.store.as_ref();
    assert_eq!(queue.counts().await.unwrap().total, 0);
    // Not marked: the holder still sends it.
    assert!(store.tls_report_sent(&day, DOMAIN).await.unwrap());
    assert!(w.reporter.run_once("2024-02-30").await.is_err());
}

/// A run forced for today (the day is not over) sends a partial report, cut at the run, with an id of its
/// own, and marks nothing: a second forced run sends again, and the whole day's report (the regular run
/// after midnight) is still to come.
#[tokio::test]
async fn a_run_for_today_sends_a_partial_report_and_leaves_the_day_unmarked() {
    let w = world(Setup::default()).await;
    let today = utc_day(now_ms());
    let store: &dyn TlsReportStore = w.store.as_ref();
    fill(store, &today).await;
    let url = format!("https://{COLLECTOR}:{}/tlsrpt", w.collector.port);

    let before = now_ms() / 1000;
    let first = w.reporter.run_once(&today).await.unwrap();
    assert!(first.partial, "{first:?}");
    assert_eq!(first.domains[0].status, DomainStatus::Sent, "{first:?}");
    assert_eq!(
        first.domains[0].sent_to,
        [format!("mailto:{MAILTO}"), url.clone()]
    );
    assert!(first.domains[0].retry_later.is_empty());
    assert!(!schedule::unfinished(&first));
    let posted = w.collector.posted();
    assert_eq!(posted.len(), 1);
    let report: Value = serde_json::from_slice(&gunzip(&posted[0].body)).unwrap();
    let id = report["report-id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with(&format!("{today}T")) && id.ends_with(&format!("Z_{DOMAIN}@reporter.test")),
        "{id}"
    );
    assert_eq!(
        report["date-range"]["start-datetime"],
        format!("{today}T00:00:00Z")
    );
    let end = report["date-range"]["end-datetime"].as_str().unwrap();
    assert_ne!(
        end,
        format!("{today}T23:59:59Z"),
        "a partial day ends when it was cut"
    );
    assert!(end.starts_with(&format!("{today}T")), "{end}");
    let cut = tern_core::time::rfc3339_utc(before * 1000);
    assert!(end >= cut.as_str(), "{end} is before the run ({cut})");
    // The counts so far.
    assert_eq!(
        report["policies"][0]["summary"]["total-successful-session-count"],
        7
    );
    assert_eq!(report["policies"][0]["summary"]["total-failure-session-count"], 5);

    // Again, a second later (another cut, another id): sent again, not "already sent".
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = w.reporter.run_once(&today).await.unwrap();
    assert!(second.partial);
    assert_eq!(second.domains[0].status, DomainStatus::Sent, "{second:?}");
    let posted = w.collector.posted();
    assert_eq!(posted.len(), 2);
    let again: Value = serde_json::from_slice(&gunzip(&posted[1].body)).unwrap();
    assert_ne!(again["report-id"].as_str().unwrap(), id);

    // Two mails, each with its partial report; the queue did not take the second for a repeat.
    let queue: &dyn Queue = w.store.as_ref();
    let mails = claim_mails(queue).await;
    assert_eq!(mails.len(), 2);
    let mut ids: Vec<String> = mails
        .iter()
        .map(|m| attached_report(m)["report-id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);

    // The day is not marked: the regular run after midnight sends its whole report (the first mark is
    // still to be made).
    assert!(store.tls_report_sent(&today, DOMAIN).await.unwrap());
}

/// A URI that fails is remembered: the domain is marked sent (no other run or node sends it again), and
/// the next run of the day on this node offers the same report to that URI again, and only to it.
#[tokio::test]
async fn a_collector_that_failed_is_offered_the_report_again_at_the_next_run() {
    let w = world(Setup {
        failing: 1,
        ..Setup::default()
    })
    .await;
    let day = yesterday();
    let store: &dyn TlsReportStore = w.store.as_ref();
    fill(store, &day).await;
    let url = format!("https://{COLLECTOR}:{}/tlsrpt", w.collector.port);

    let first = w.reporter.run_once(&day).await.unwrap();
    let d = &first.domains[0];
    assert_eq!(d.status, DomainStatus::Sent, "{first:?}");
    assert_eq!(d.sent_to, [format!("mailto:{MAILTO}")]);
    assert_eq!(d.retry_later, std::slice::from_ref(&url));
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert!(
        d.errors[0].starts_with(&format!("{url}: ")) && d.errors[0].contains("503"),
        "{d:?}"
    );
    assert!(schedule::unfinished(&first), "the daily task tries the day again");
    assert_eq!(w.collector.posted().len(), 1);
    // Marked: another node would not send it.
    assert!(!store.tls_report_sent(&day, DOMAIN).await.unwrap());

    let second = w.reporter.run_once(&day).await.unwrap();
    let d = &second.domains[0];
    assert_eq!(d.status, DomainStatus::Sent, "{second:?}");
    assert_eq!(d.sent_to, std::slice::from_ref(&url), "only the URI that failed");
    assert!(d.errors.is_empty() && d.retry_later.is_empty(), "{d:?}");
    assert!(!schedule::unfinished(&second));
    let posted = w.collector.posted();
    assert_eq!(posted.iter().map(|p| p.status).collect::<Vec<_>>(), [503, 202]);
    assert_eq!(posted[0].body, posted[1].body, "the same report");
    check_report(&gunzip(&posted[1].body), &day);
    let queue: &dyn Queue = w.store.as_ref();
    assert_eq!(
        queue.counts().await.unwrap().total,
        1,
        "the mail was not queued again"
    );

    let third = w.reporter.run_once(&day).await.unwrap();
    assert_eq!(third.domains[0].status, DomainStatus::AlreadySent);
    assert_eq!(w.collector.posted().len(), 2);
}

/// With `[[dkim]]` keys for the reporting domain, the report mail carries a DKIM-Signature (d= that
/// domain) that verifies against the key published in DNS; the report is intact under it.
#[tokio::test]
async fn a_report_mail_is_dkim_signed_with_the_reporting_domains_key() {
    let w = world(Setup {
        dkim: true,
        ..Setup::default()
    })
    .await;
    let day = yesterday();
    fill(w.store.as_ref(), &day).await;
    let summary = w.reporter.run_once(&day).await.unwrap();
    assert_eq!(summary.domains[0].status, DomainStatus::Sent, "{summary:?}");

    let queue: &dyn Queue = w.store.as_ref();
    let mails = claim_mails(queue).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(
        mail.starts_with(b"DKIM-Signature: "),
        "{}",
        String::from_utf8_lossy(mail)
    );
    check_report(&serde_json::to_vec(&attached_report(mail)).unwrap(), &day);

    let mut ns = NameServerConfig::udp_and_tcp(w.dns.addr().ip());
    for conn in &mut ns.connections {
        conn.port = w.dns.addr().port();
    }
    let verifier = MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        ResolverOpts::default(),
    )
    .unwrap();
    let message = AuthenticatedMessage::parse(mail).expect("a message");
    let results = verifier.verify_dkim(&message).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].result(), &DkimResult::Pass, "{results:?}");
    let signature = results[0].signature().expect("a signature");
    assert_eq!(signature.d, "reporter.test");
    assert_eq!(signature.s, SELECTOR);

    // A changed report no longer verifies: the signature covers the body.
    let tampered = String::from_utf8_lossy(mail).replacen("aggregate TLS report", "aggregate TLS rep0rt", 1);
    let message = AuthenticatedMessage::parse(tampered.as_bytes()).expect("a message");
    let results = verifier.verify_dkim(&message).await;
    assert_ne!(results[0].result(), &DkimResult::Pass);
}
