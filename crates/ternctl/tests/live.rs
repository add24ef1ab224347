//! Reroutes, the live SMTP trace and `events --follow` across a control-plane restart, against a control
//! plane over a real store (redis-server, and the embedded store).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::process::Stdio;
use std::time::Duration;

mod common;

use common::{Control, Store, enqueue, json, ok, ternctl_at as ternctl};
use serde_json::Value;
use tern_queue::TraceRecord;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

#[tokio::test]
async fn routes_are_set_listed_and_removed_on_redis() {
    routes_are_set_listed_and_removed(Store::Redis).await;
}

#[tokio::test]
async fn routes_are_set_listed_and_removed_on_the_embedded_store() {
    routes_are_set_listed_and_removed(Store::Embedded).await;
}

async fn routes_are_set_listed_and_removed(store: Store) {
    let c = Control::start(store, None).await;
    let out = ok(&ternctl(
        &c.url,
        &[
            "domain",
            "route",
            "r.example",
            "relay.example:2525",
            "--for",
            "2h",
            "--reason",
            "mx down",
        ],
    )
    .await);
    assert!(
        out.starts_with("routed r.example to relay.example:2525 until "),
        "{out}"
    );
    assert!(
        (out.contains(" UTC (in 1h59m") || out.contains(" UTC (in 2h)"))
            && out.trim_end().ends_with("(mx down)"),
        "{out}"
    );
    let routes = c.routes.routes().await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].target(), "relay.example:2525");
    let doc = json(&ternctl(&c.url, &["--json", "domain", "route", "s.example", "[::1]:25"]).await);
    assert_eq!(doc["target"], "[::1]:25");
    assert!(doc["until_ms"].is_null(), "{doc}");
    ok(&ternctl(&c.url, &["domain", "suspend", "t.example"]).await);

    // The list: routes beside suspensions.
    let out = ok(&ternctl(&c.url, &["domain", "list"]).await);
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("DOMAIN") && rows[0].contains("TO"), "{out}");
    assert_eq!(rows.len(), 4, "{out}");
    assert!(
        rows[1].starts_with("r.example")
            && rows[1].contains("routed")
            && rows[1].contains("relay.example:2525")
    );
    assert!(
        rows[2].starts_with("s.example") && rows[2].contains("until unrouted"),
        "{out}"
    );
    assert!(
        rows[3].starts_with("t.example")
            && rows[3].contains("suspended")
            && rows[3].contains("until resumed")
    );
    let doc = json(&ternctl(&c.url, &["--json", "domain", "list"]).await);
    assert_eq!(doc["routes"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(doc["routes"][0]["domain"], "r.example");
    assert_eq!(doc["suspensions"][0]["domain"], "t.example");

    let out = ok(&ternctl(&c.url, &["domain", "unroute", "r.example"]).await);
    assert!(out.starts_with("unrouted r.example"), "{out}");
    let out = ok(&ternctl(&c.url, &["domain", "unroute", "r.example"]).await);
    assert_eq!(out.trim(), "r.example had no route");
    let doc = json(&ternctl(&c.url, &["--json", "domain", "unroute", "s.example"]).await);
    assert_eq!(doc["was_routed"], true);
    assert!(c.routes.routes().await.unwrap().is_empty());
}

/// A ternctl that keeps running, its stdout read line by line.
struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn spawn(url: &str, args: &[&str]) -> Running {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
            .arg("--server")
            .arg(url)
            .args(args)
            .env_remove("TERN_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running { child, lines }
    }

    /// The next line within `secs`.
    async fn line(&mut self, secs: u64) -> String {
        tokio::time::timeout(Duration::from_secs(secs), self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("the process is still running")
    }

    /// Stops it; returns what it printed on stderr.
    async fn stop(mut self) -> String {
        self.child.kill().await.unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).await.unwrap();
        }
        err
    }
}

/// Waits until a trace is open somewhere (the bus lists a filter).
async fn trace_open(c: &Control) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while c.traces.trace_filters().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the trace registered");
}

/// Publishes `r` until the trace prints a line (a trace that reconnects, or a bus that still lists an
/// earlier trace's filter, may not be listening yet); returns the line.
async fn publish_until_a_line(c: &Control, trace: &mut Running, r: TraceRecord) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            c.traces.publish_trace(std::slice::from_ref(&r)).await.unwrap();
            if let Ok(line) = tokio::time::timeout(Duration::from_millis(300), trace.lines.next_line()).await
            {
                return line.unwrap().expect("the process is still running");
            }
        }
    })
    .await
    .expect("a trace line in time")
}

fn record(domain: &str, kind: &str, text: &str) -> TraceRecord {
    TraceRecord {
        time_ms: tern_core::time::now_ms(),
        worker: "worker-1".into(),
        session: "s1".into(),
        domain: domain.into(),
        mx: format!("mx.{domain}"),
        ip: "192.0.2.7".into(),
        kind: kind.into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn trace_streams_matching_conversations_and_reconnects_on_redis() {
    trace_streams_matching_conversations_and_reconnects(Store::Redis).await;
}

#[tokio::test]
async fn trace_streams_matching_conversations_and_reconnects_on_the_embedded_store() {
    trace_streams_matching_conversations_and_reconnects(Store::Embedded).await;
}

async fn trace_streams_matching_conversations_and_reconnects(store: Store) {
    let mut c = Control::start(store, None).await;
    let mut trace = Running::spawn(&c.url, &["trace", "--domain", "t.example"]);
    trace_open(&c).await;
    c.traces
        .publish_trace(&[
            record("other.example", "send", "EHLO tern"),
            record("t.example", "send", "MAIL FROM:<a@sender.example>"),
            record("t.example", "recv", "250 2.1.0 ok"),
        ])
        .await
        .unwrap();
    let line = trace.line(10).await;
    assert!(
        line.contains("  worker-1  s1  t.example  mx.t.example [192.0.2.7]  send ")
            && line.ends_with("MAIL FROM:<a@sender.example>"),
        "{line}"
    );
    assert!(trace.line(10).await.ends_with("recv    250 2.1.0 ok"));

    // The control plane restarts: the trace comes back by itself.
    c.restart().await;
    let line = publish_until_a_line(&c, &mut trace, record("t.example", "recv", "221 2.0.0 bye")).await;
    assert!(line.ends_with("221 2.0.0 bye"), "{line}");
    let err = trace.stop().await;
    assert!(
        err.contains("reconnecting") && err.contains("reconnected"),
        "{err}"
    );

    // JSON lines.
    let mut trace = Running::spawn(&c.url, &["trace", "--json", "--mx", "192.0.2.7"]);
    let line = publish_until_a_line(
        &c,
        &mut trace,
        record("u.example", "tls", "TLSv1.3 TLS_AES_128_GCM_SHA256"),
    )
    .await;
    let doc: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(doc["kind"], "tls");
    assert_eq!(doc["domain"], "u.example");
    assert_eq!(doc["ip"], "192.0.2.7");
    trace.stop().await;
}

#[tokio::test]
async fn events_follow_resumes_after_a_control_plane_restart_on_redis() {
    events_follow_resumes_after_a_control_plane_restart(Store::Redis).await;
}

#[tokio::test]
async fn events_follow_resumes_after_a_control_plane_restart_on_the_embedded_store() {
    events_follow_resumes_after_a_control_plane_restart(Store::Embedded).await;
}

async fn events_follow_resumes_after_a_control_plane_restart(store: Store) {
    let mut c = Control::start(store, None).await;
    let first = enqueue(&c.queue, "a@sender.example", &["x@f.example"]).await;
    let mut follow = Running::spawn(
        &c.url,
        &[
            "events", "--follow", "--json", "--from", "start", "--type", "queued",
        ],
    );
    let e: Value = serde_json::from_str(&follow.line(10).await).unwrap();
    assert_eq!(e["message_id"], first.as_str());

    c.restart().await;
    // Queued while the stream was down or just after: each shows up once, after the first one.
    let second = enqueue(&c.queue, "a@sender.example", &["y@f.example"]).await;
    let e: Value = serde_json::from_str(&follow.line(20).await).unwrap();
    assert_eq!(
        e["message_id"],
        second.as_str(),
        "resumed after the last event, no repeat: {e}"
    );
    let third = enqueue(&c.queue, "a@sender.example", &["z@f.example"]).await;
    let e: Value = serde_json::from_str(&follow.line(10).await).unwrap();
    assert_eq!(e["message_id"], third.as_str());
    let err = follow.stop().await;
    assert!(
        err.contains("reconnecting") && err.contains("reconnected"),
        "{err}"
    );

    // Text lines for people follow too.
    let mut follow = Running::spawn(&c.url, &["events", "-f", "--type", "queued"]);
    let mut sent = Vec::new();
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            sent.push(enqueue(&c.queue, "a@sender.example", &["later@f.example"]).await);
            if let Ok(line) = tokio::time::timeout(Duration::from_millis(500), follow.lines.next_line()).await
            {
                return line.unwrap().unwrap();
            }
        }
    })
    .await
    .expect("an event line in time");
    assert!(
        line.contains(" queued ") && line.contains("later@f.example"),
        "{line}"
    );
    assert!(sent.iter().any(|id| line.contains(id.as_str())), "{line}");
    follow.stop().await;
}

/// What the shell completion engine offers for `words` (the last one being completed), with the control
/// plane at `url`.
fn complete(url: &str, words: &[&str]) -> Vec<String> {
    let index = (words.len() - 1).to_string();
    let mut args = vec!["--"];
    args.extend_from_slice(words);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(args)
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", index)
        .env("_CLAP_IFS", "\n")
        .env("TERN_SERVER", url)
        .env_remove("TERN_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn completions_offer_the_control_planes_domains_and_message_ids() {
    let c = Control::start(Store::Redis, None).await;
    let id = enqueue(&c.queue, "a@sender.example", &["x@queued.example"]).await;
    ok(&ternctl(&c.url, &["domain", "suspend", "quiet.example"]).await);
    ok(&ternctl(&c.url, &["domain", "route", "rerouted.example", "relay.example"]).await);
    let url = c.url.clone();
    let domains = tokio::task::spawn_blocking(move || complete(&url, &["ternctl", "domain", "resume", "q"]))
        .await
        .unwrap();
    assert_eq!(domains, ["queued.example", "quiet.example"]);
    let url = c.url.clone();
    let domains =
        tokio::task::spawn_blocking(move || complete(&url, &["ternctl", "queue", "list", "--domain", "re"]))
            .await
            .unwrap();
    assert_eq!(domains, ["rerouted.example"]);
    let url = c.url.clone();
    let prefix = id[..10].to_string();
    let ids = tokio::task::spawn_blocking(move || complete(&url, &["ternctl", "msg", "show", &prefix]))
        .await
        .unwrap();
    assert_eq!(ids, std::slice::from_ref(&id));
    let url = c.url.clone();
    let prefix = format!("{id}.");
    let jobs = tokio::task::spawn_blocking(move || complete(&url, &["ternctl", "msg", "hold", &prefix]))
        .await
        .unwrap();
    assert_eq!(jobs, [format!("{id}.0")]);
}
