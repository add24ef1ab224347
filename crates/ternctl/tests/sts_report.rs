//! `ternctl sts report` and `ternctl sts send-reports` against an in-process control plane whose TLS
//! reporter counts in a real redis-server (counters filled directly through `TlsReportStore`), looks up
//! `_smtp._tls` records in dnsmasq and queues report mails into the same Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::Arc;

use common::{stderr, stdout};
use serde_json::Value;
use tern_config::ControlConfig;
use tern_control::{CancellationToken, ControlServer, StsServices};
use tern_core::time::now_ms;
use tern_mta_sts::{HickoryDns, ReporterOptions, TlsReporter};
use tern_queue::tls_report::utc_day;
use tern_queue::{Queue, RedisQueue, RedisQueueOptions, TlsReportStore, TlsSessionKey};
use tern_testkit::{Dnsmasq, RedisServer};

/// Publishes a TLS-RPT record asking for mail.
const REPORTED: &str = "a.test";
/// Has counts but no record.
const SILENT: &str = "b.test";
const RUA: &str = "tlsrpt@collector.test";

/// A control plane with (or without) TLS reporting; dropping it stops the server.
struct Plane {
    _redis: RedisServer,
    _dns: Dnsmasq,
    store: Arc<RedisQueue>,
    url: String,
    stop: CancellationToken,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn plane(reporting: bool) -> Plane {
    let redis = RedisServer::start().unwrap();
    let store = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            shards: 2,
            ..RedisQueueOptions::default()
        })
        .await
        .unwrap(),
    );
    let dns = Dnsmasq::builder()
        .txt(
            &format!("_smtp._tls.{REPORTED}"),
            &format!("v=TLSRPTv1; rua=mailto:{RUA}"),
        )
        .start()
        .expect("dnsmasq");
    let queue: Arc<dyn Queue> = store.clone();
    let reporter = reporting.then(|| {
        TlsReporter::with_dns(
            store.clone(),
            queue.clone(),
            HickoryDns::from_servers(&[dns.addr()]).unwrap(),
            ReporterOptions::new(
                "Test Org",
                "postmaster@reporter.test",
                "tls-reports@reporter.test",
                "ternctl-test",
            ),
        )
        .unwrap()
    });
    let config = ControlConfig {
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ControlConfig::default()
    };
    let services = StsServices {
        cache: None,
        reporter,
    };
    let server = ControlServer::bind_with_services(&config, queue, services)
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Plane {
        _redis: redis,
        _dns: dns,
        store,
        url,
        stop,
    }
}

fn key(mx: &str, result: Option<&str>) -> TlsSessionKey {
    TlsSessionKey {
        policy_type: "sts".into(),
        policy_string: vec!["version: STSv1".into(), "mode: enforce".into()],
        mx_host: mx.into(),
        result_type: result.map(str::to_owned),
        sending_mta_ip: "192.0.2.1".into(),
        receiving_ip: "192.0.2.25".into(),
        ..Default::default()
    }
}

/// Today's counts: 12 successes and 3 failures of two kinds for [`REPORTED`], 1 success for [`SILENT`].
async fn fill(store: &dyn TlsReportStore, day: &str) {
    store
        .tls_report_add(day, REPORTED, &key("mx.a.test", None), 12)
        .await
        .unwrap();
    let expired = key("mx.a.test", Some("certificate-expired"));
    store.tls_report_add(day, REPORTED, &expired, 2).await.unwrap();
    let no_tls = key("mx2.a.test", Some("starttls-not-supported"));
    store.tls_report_add(day, REPORTED, &no_tls, 1).await.unwrap();
    store
        .tls_report_add(day, SILENT, &key("mx.b.test", None), 1)
        .await
        .unwrap();
}

async fn ternctl(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .arg("--server")
        .arg(url)
        .args(args)
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_SERVER")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    stdout(o)
}

fn json(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", stdout(o)))
}

/// Exit 1 with exactly one line on stderr and nothing on stdout; returns the line.
fn fails_one_line(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {} stderr: {}",
        stdout(o),
        stderr(o)
    );
    assert_eq!(stdout(o), "");
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ternctl: error: "), "{err}");
    err
}

#[tokio::test]
async fn report_shows_a_domains_counts_of_today_for_people_and_as_json() {
    let p = plane(true).await;
    let today = utc_day(now_ms());
    fill(p.store.as_ref(), &today).await;

    let out = ok(&ternctl(&p.url, &["sts", "report", "A.Test"]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("a.test on {today}: 12 successful, 3 failed TLS sessions")
    );
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[1].starts_with("RESULT                  POLICY  MX          SENDING IP  RECEIVING IP  COUNT"),
        "{out}"
    );
    assert_eq!(
        lines[2],
        "success                 sts     mx.a.test   192.0.2.1   192.0.2.25    12"
    );
    assert_eq!(
        lines[3],
        "certificate-expired     sts     mx.a.test   192.0.2.1   192.0.2.25    2"
    );
    assert_eq!(
        lines[4],
        "starttls-not-supported  sts     mx2.a.test  192.0.2.1   192.0.2.25    1"
    );

    let doc = json(&ternctl(&p.url, &["--json", "sts", "report", "a.test", "--day", &today]).await);
    assert_eq!(doc["domain"], "a.test");
    assert_eq!(doc["day"], today.as_str());
    assert_eq!(doc["total_successful"], 12);
    assert_eq!(doc["total_failure"], 3);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows[0]["result_type"].is_null());
    assert_eq!(rows[0]["count"], 12);
    assert_eq!(rows[2]["result_type"], "starttls-not-supported");
    assert_eq!(rows[2]["mx_host"], "mx2.a.test");
    assert_eq!(rows[2]["policy_string"][1], "mode: enforce");

    // Another day, or a domain without counts: nothing counted, no error.
    let out = ok(&ternctl(&p.url, &["sts", "report", "a.test", "--day", "2020-01-01"]).await);
    assert_eq!(out, "a.test on 2020-01-01: no TLS sessions counted\n");
    let doc = json(&ternctl(&p.url, &["sts", "report", "c.test", "--json"]).await);
    assert_eq!(doc["rows"], serde_json::json!([]));
    assert_eq!(doc["total_successful"], 0);

    let err = fails_one_line(&ternctl(&p.url, &["sts", "report", "a.test", "--day", "2024-02-30"]).await);
    assert!(err.contains("invalid request") && err.contains("day: "), "{err}");
    let err = fails_one_line(&ternctl(&p.url, &["sts", "report", "a b"]).await);
    assert!(err.contains("invalid request"), "{err}");
}

/// Yesterday (UTC): a completed day, which a run marks sent.
fn yesterday() -> String {
    utc_day(now_ms() - 24 * 3600 * 1000)
}

#[tokio::test]
async fn send_reports_queues_the_report_mail_once_and_says_what_each_domain_got() {
    let p = plane(true).await;
    let day = yesterday();
    fill(p.store.as_ref(), &day).await;

    // The default day is yesterday: what the daily run reports.
    let out = ok(&ternctl(&p.url, &["sts", "send-reports"]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("TLS reports of {day}: 1 of 2 domains sent now"));
    assert_eq!(lines[1], "DOMAIN  STATUS     SENT TO");
    assert_eq!(lines[2], format!("a.test  sent       mailto:{RUA}"));
    assert_eq!(lines[3], "b.test  no-record  -");
    assert_eq!(lines[4], "b.test: no TLS-RPT TXT record");
    assert_eq!(lines.len(), 5, "{out}");

    // The mail is in the queue, for the collector's domain.
    let queue: &dyn Queue = p.store.as_ref();
    assert_eq!(queue.domain_depth("collector.test").await.unwrap().due, 1);
    assert_eq!(queue.counts().await.unwrap().total, 1);

    // Again, as JSON: already sent (the day is marked), nothing more queued.
    let doc = json(&ternctl(&p.url, &["--json", "sts", "send-reports", "--day", &day]).await);
    assert_eq!(doc["day"], day.as_str());
    assert_eq!(doc["incomplete"], false);
    assert_eq!(doc["partial"], false);
    assert_eq!(doc["domains"][0]["domain"], "a.test");
    assert_eq!(doc["domains"][0]["status"], "already-sent");
    assert_eq!(doc["domains"][0]["sent_to"], serde_json::json!([]));
    assert_eq!(doc["domains"][0]["retry_later"], serde_json::json!([]));
    assert_eq!(doc["domains"][1]["status"], "no-record");
    assert_eq!(queue.counts().await.unwrap().total, 1);

    // A day without counts.
    let out = ok(&ternctl(&p.url, &["sts", "send-reports", "--day", "2020-01-01"]).await);
    assert_eq!(out, "no TLS sessions counted on 2020-01-01: no reports to send\n");
    let err = fails_one_line(&ternctl(&p.url, &["sts", "send-reports", "--day", "soon"]).await);
    assert!(err.contains("invalid request"), "{err}");
}

/// A run forced for today sends partial reports and does not mark the day: a second one sends again (a
/// new report id, so the queue does not take it for a repeat), and the regular run after midnight will
/// still find the day unmarked and send the whole day's report.
#[tokio::test]
async fn send_reports_for_today_is_partial_and_leaves_the_day_to_the_regular_run() {
    let p = plane(true).await;
    let today = utc_day(now_ms());
    fill(p.store.as_ref(), &today).await;

    let out = ok(&ternctl(&p.url, &["sts", "send-reports", "--day", "today"]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("TLS reports of {today}: 1 of 2 domains sent now")
    );
    assert_eq!(
        lines[1],
        "the day is not over: these reports are partial and the day is not marked sent; the regular \
         report after midnight still covers the whole day"
    );
    assert_eq!(lines[2], "DOMAIN  STATUS     SENT TO");
    assert_eq!(lines[3], format!("a.test  sent       mailto:{RUA}"));
    let queue: &dyn Queue = p.store.as_ref();
    assert_eq!(queue.counts().await.unwrap().total, 1);

    // A second later, by date: sent again, not "already-sent".
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let doc = json(&ternctl(&p.url, &["--json", "sts", "send-reports", "--day", &today]).await);
    assert_eq!(doc["partial"], true);
    assert_eq!(doc["incomplete"], false);
    assert_eq!(doc["domains"][0]["status"], "sent");
    assert_eq!(
        doc["domains"][0]["sent_to"],
        serde_json::json!([format!("mailto:{RUA}")])
    );
    assert_eq!(queue.counts().await.unwrap().total, 2);

    // Not marked: the first mark of the day is still to be made (by the regular run after midnight).
    let store: &dyn TlsReportStore = p.store.as_ref();
    assert!(store.tls_report_sent(&today, REPORTED).await.unwrap());
}

#[tokio::test]
async fn with_tls_reporting_off_both_commands_say_so() {
    let p = plane(false).await;
    for args in [
        &["sts", "report", "a.test"][..],
        &["sts", "send-reports", "--day", "today"],
    ] {
        let err = fails_one_line(&ternctl(&p.url, args).await);
        assert!(
            err.contains("TLS reporting is off (delivery.tls_rpt.enabled = false)"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn completions_know_the_report_commands() {
    let out = ok(&ternctl("http://127.0.0.1:1", &["completions", "bash", "--static"]).await);
    for want in [
        "ternctl__subcmd__sts__subcmd__report",
        "ternctl__subcmd__sts__subcmd__send__subcmd__reports",
    ] {
        assert!(out.contains(want), "{want} missing");
    }
}

#[tokio::test]
async fn send_reports_help_says_today_is_partial_and_the_whole_day_follows() {
    let out = ok(&ternctl("http://127.0.0.1:1", &["sts", "send-reports", "--help"]).await);
    let words = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Today (not over yet) gets partial reports",
        "the regular report after midnight still covers the whole day",
        "A completed day is marked sent",
    ] {
        assert!(words.contains(want), "{want:?} missing in:\n{out}");
    }
}
