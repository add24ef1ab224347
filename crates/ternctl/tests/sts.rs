//! `ternctl sts ...` against an in-process control plane whose MTA-STS policy cache lives in a real
//! redis-server (filled directly through `PolicyStore::sts_put`), with dnsmasq for the refresh.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{stderr, stdout};
use serde_json::Value;
use tern_config::ControlConfig;
use tern_control::{CancellationToken, ControlServer};
use tern_core::time::now_ms;
use tern_mta_sts::{CacheOptions, FetchOptions, HickoryDns, PolicyCache};
use tern_queue::{PolicyStore, Queue, RedisQueue, RedisQueueOptions, StsEntry};
use tern_testkit::{Dnsmasq, RedisServer};

const ENFORCE: &str =
    "version: STSv1\nmode: enforce\nmx: mx.a.example\nmx: *.backup.a.example\nmax_age: 604800\n";

/// A control plane over a policy cache on a real redis-server; dropping it stops the server.
struct Plane {
    _redis: RedisServer,
    store: Arc<RedisQueue>,
    url: String,
    stop: CancellationToken,
    _dns: Option<Dnsmasq>,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// With `sts`, the cache finds TXT records and the policy host through dnsmasq and fetches from a port
/// nobody listens on (every fetch fails); without, MTA-STS is off.
async fn plane(sts: bool) -> Plane {
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
    let mut dns = None;
    let cache = if sts {
        let server = Dnsmasq::builder()
            .txt("_mta-sts.example.test", "v=STSv1; id=20250101")
            .host("mta-sts.example.test", Ipv4Addr::LOCALHOST)
            .start()
            .expect("dnsmasq");
        let fetch = FetchOptions {
            timeout: Duration::from_secs(5),
            https_port: tern_testkit::ports::free_port().unwrap(),
            extra_ca_file: None,
        };
        let cache = PolicyCache::with_dns(
            store.clone(),
            HickoryDns::from_servers(&[server.addr()]).unwrap(),
            fetch,
            "ternctl-test".into(),
            CacheOptions::default(),
        )
        .unwrap();
        dns = Some(server);
        Some(cache)
    } else {
        None
    };
    let config = ControlConfig {
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ControlConfig::default()
    };
    let queue: Arc<dyn Queue> = store.clone();
    let server = ControlServer::bind_with(&config, queue, cache).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Plane {
        _redis: redis,
        store,
        url,
        stop,
        _dns: dns,
    }
}

/// A policy of `domain` fetched an hour ago, valid for a week.
fn entry(domain: &str) -> StsEntry {
    let now = now_ms();
    StsEntry {
        domain: domain.into(),
        policy: ENFORCE.into(),
        policy_id: "20240101".into(),
        fetched_at_ms: now - 3_600_000,
        expires_at_ms: now + 604_800_000 - 3_600_000,
        last_error: None,
        last_error_at_ms: None,
    }
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
async fn show_prints_the_cached_policy_for_people_and_as_json() {
    let p = plane(true).await;
    p.store.sts_put(&entry("a.example")).await.unwrap();

    let out = ok(&ternctl(&p.url, &["sts", "show", "A.Example"]).await);
    assert!(out.starts_with("DOMAIN      a.example\n"), "{out}");
    for want in [
        "state       valid",
        "mode        enforce",
        "mx          mx.a.example *.backup.a.example",
        "max age     1w",
        "id          20240101",
        "fetched     1h ago",
        "expires     in 6d2",
        "last error  -",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }

    let doc = json(&ternctl(&p.url, &["sts", "show", "a.example", "--json"]).await);
    assert_eq!(doc["domain"], "a.example");
    assert_eq!(doc["state"], "valid");
    assert_eq!(doc["mode"], "enforce");
    assert_eq!(doc["mx"][0], "mx.a.example");
    assert_eq!(doc["max_age_seconds"], 604_800);
    assert_eq!(doc["policy_id"], "20240101");
    assert!(doc["expires_at_ms"].is_u64() && doc["fetched_at_ms"].is_u64());
    assert!(doc["last_error"].is_null());
    assert_eq!(doc["policy"], ENFORCE);

    let err = fails_one_line(&ternctl(&p.url, &["sts", "show", "unknown.example"]).await);
    assert!(
        err.contains("not found") && err.contains("no MTA-STS policy cached for unknown.example"),
        "{err}"
    );
    let err = fails_one_line(&ternctl(&p.url, &["sts", "show", "a b"]).await);
    assert!(err.contains("invalid request"), "{err}");
    assert_eq!(ternctl(&p.url, &["sts", "show"]).await.status.code(), Some(2));
}

#[tokio::test]
async fn list_shows_one_line_per_policy_a_page_at_a_time_or_all() {
    let p = plane(true).await;
    let out = ok(&ternctl(&p.url, &["sts", "list"]).await);
    assert_eq!(out, "DOMAIN  MODE  STATE  EXPIRES  ID  MX\n");
    for i in 0..5 {
        p.store.sts_put(&entry(&format!("d{i}.example"))).await.unwrap();
    }

    let out = ok(&ternctl(&p.url, &["sts", "list"]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("DOMAIN"), "{out}");
    assert!(
        lines[1].starts_with("d0.example  enforce  valid  in 6d2"),
        "{out}"
    );
    assert!(
        lines[1].ends_with("20240101  mx.a.example,*.backup.a.example"),
        "{out}"
    );

    // --limit: one page, and where the next one starts.
    let first = ternctl(&p.url, &["sts", "list", "--limit", "2"]).await;
    assert_eq!(ok(&first).lines().count(), 3, "{}", stdout(&first));
    assert_eq!(
        stderr(&first).trim(),
        "more: ternctl sts list --cursor d1.example ..."
    );
    let doc = json(
        &ternctl(
            &p.url,
            &["--json", "sts", "list", "--limit", "2", "--cursor", "d1.example"],
        )
        .await,
    );
    let names: Vec<&str> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["domain"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d2.example", "d3.example"]);
    assert_eq!(doc["next_cursor"], "d3.example");
    let doc = json(&ternctl(&p.url, &["--json", "sts", "list", "--limit", "5"]).await);
    assert_eq!(doc["policies"].as_array().unwrap().len(), 5);
    assert!(doc["next_cursor"].is_null(), "{doc}");

    // --all: every page.
    let doc = json(&ternctl(&p.url, &["sts", "list", "--all", "--json"]).await);
    assert_eq!(doc["policies"].as_array().unwrap().len(), 5);
    assert_eq!(doc["policies"][4]["domain"], "d4.example");
    assert!(doc["next_cursor"].is_null());

    // Usage errors: exit 2.
    for args in [
        &["sts", "list", "--all", "--limit", "2"][..],
        &["sts", "list", "--limit", "0"],
        &["sts", "list", "--all", "--cursor", "d1.example"],
    ] {
        let o = ternctl(&p.url, args).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[tokio::test]
async fn evict_removes_the_policy_and_show_then_fails() {
    let p = plane(true).await;
    p.store.sts_put(&entry("a.example")).await.unwrap();
    p.store.sts_put(&entry("b.example")).await.unwrap();

    let out = ok(&ternctl(&p.url, &["sts", "evict", "a.example"]).await);
    assert_eq!(out.trim(), "evicted the MTA-STS policy of a.example");
    fails_one_line(&ternctl(&p.url, &["sts", "show", "a.example"]).await);
    let out = ok(&ternctl(&p.url, &["sts", "evict", "a.example"]).await);
    assert_eq!(out.trim(), "no MTA-STS policy was cached for a.example");
    let doc = json(&ternctl(&p.url, &["--json", "sts", "evict", "b.example"]).await);
    assert_eq!(doc, serde_json::json!({ "domain": "b.example", "evicted": true }));
    let doc = json(&ternctl(&p.url, &["--json", "sts", "list"]).await);
    assert_eq!(doc["policies"], serde_json::json!([]));
}

#[tokio::test]
async fn a_failed_refresh_exits_1_and_the_error_is_kept_in_the_entry() {
    let p = plane(true).await;
    // The policy host resolves to 127.0.0.1, where nothing listens on the HTTPS port.
    let err = fails_one_line(&ternctl(&p.url, &["sts", "refresh", "example.test"]).await);
    assert!(
        err.contains("fetching the MTA-STS policy of example.test failed"),
        "{err}"
    );
    let doc = json(&ternctl(&p.url, &["--json", "sts", "show", "example.test"]).await);
    assert_eq!(doc["state"], "no-policy");
    assert!(doc["mode"].is_null() && doc["policy_id"].is_null());
    assert!(
        doc["last_error"].is_string() && doc["last_error_at_ms"].is_u64(),
        "{doc}"
    );
    let out = ok(&ternctl(&p.url, &["sts", "show", "example.test"]).await);
    assert!(out.contains("state       no-policy"), "{out}");
    assert!(
        out.contains("last error  ") && !out.contains("last error  -"),
        "{out}"
    );

    // A domain that announces no policy.
    let err = fails_one_line(&ternctl(&p.url, &["sts", "refresh", "other.test"]).await);
    assert!(err.contains("other.test announces no MTA-STS policy"), "{err}");
}

#[tokio::test]
async fn with_mta_sts_off_every_command_says_so() {
    let p = plane(false).await;
    for args in [
        &["sts", "show", "a.example"][..],
        &["sts", "refresh", "a.example"],
        &["sts", "list"],
        &["sts", "evict", "a.example"],
    ] {
        let err = fails_one_line(&ternctl(&p.url, args).await);
        assert!(
            err.contains("MTA-STS is off (delivery.mta_sts.enabled = false)"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn completions_know_the_sts_commands() {
    let out = ok(&ternctl("http://127.0.0.1:1", &["completions", "bash", "--static"]).await);
    for want in [
        "ternctl__subcmd__sts__subcmd__show",
        "ternctl__subcmd__sts__subcmd__refresh",
        "ternctl__subcmd__sts__subcmd__list",
        "ternctl__subcmd__sts__subcmd__evict",
    ] {
        assert!(out.contains(want), "{want} missing");
    }
    assert!(out.contains("--all"), "--all missing");
}
