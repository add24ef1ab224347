//! The control plane end to end: the real `ternctl` binary against the real `tern all` over a real
//! redis-server, with real smtp-sinks (one of them answering 4xx) found through a real dnsmasq. Every ternctl
//! command runs against real queue states: deferred mail, a suspended domain, admin actions, the event stream,
//! and the errors an operator meets (unknown id, bad filter, wrong key, unreachable server).
//!
//! `ternctl` is another package's binary: `cargo test --workspace` builds it; with `-p tern`, run
//! `cargo build -p ternctl` first.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tern_testkit::{ChildGuard, Dnsmasq, SmtpSink, free_port};

/// Asserts a table for people: a header and rows, every row's cells starting in the header's columns (the
/// header's column starts are the words after two or more spaces).
fn assert_aligned(table: &str) {
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.len() >= 2, "a header and at least one row:\n{table}");
    let header = lines[0].as_bytes();
    let starts: Vec<usize> = (2..header.len())
        .filter(|&i| header[i] != b' ' && header[i - 1] == b' ' && header[i - 2] == b' ')
        .collect();
    assert!(!starts.is_empty(), "a header of several columns:\n{table}");
    for row in &lines[1..] {
        let r = row.as_bytes();
        assert!(
            r.first().is_some_and(|&b| b != b' '),
            "row {row:?} starts with a cell:\n{table}"
        );
        for &p in &starts {
            assert!(
                r.len() > p && r[p - 2] == b' ' && r[p - 1] == b' ' && r[p] != b' ',
                "row {row:?} has no cell at column {p} of the header:\n{table}"
            );
        }
    }
}

/// Asserts ternctl failed with exit code 1 and exactly one line on stderr, `ternctl: error: ...`; returns it.
fn assert_one_line_error(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit code\nstdout: {}\nstderr: {err}",
        text(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: nothing on stdout, got {:?}",
        text(&out.stdout)
    );
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "{what}: one line on stderr, got:\n{err}");
    assert!(line.starts_with("ternctl: error: "), "{what}: {line}");
    line.to_string()
}

fn job_ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["message_id"].as_str().unwrap().to_string())
        .collect()
}

/// A domain whose MX answers RCPT with 450: mail stays deferred (`retry_schedule = ["1h"]`); every `queue`
/// and `msg` command on it, an admin bounce whose DSN reaches the sender's MX, and a bulk delete.
#[test]
fn deferred_mail_status_shape_list_show_retry_bounce_delete() {
    let mx_port = free_port().unwrap();
    let slow = SmtpSink::builder(Ipv4Addr::new(127, 0, 0, 71), mx_port)
        .soft_reject("RCPT")
        .soft_reply("450 4.2.1 Try later")
        .start()
        .unwrap();
    let senders = SmtpSink::builder(Ipv4Addr::new(127, 0, 0, 72), mx_port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let dns = Dnsmasq::builder()
        .mx("slow.test", "mx.slow.test", 10)
        .host("mx.slow.test", [127, 0, 0, 71])
        .mx("sender.test", "mx.sender.test", 10)
        .host("mx.sender.test", [127, 0, 0, 72])
        .start()
        .unwrap();
    let node = Node::start(dns, mx_port, r#"retry_schedule = ["1h"]"#, "");

    let mut ids: Vec<String> = (1..=2)
        .map(|i| node.send("app@sender.test", &format!("user{i}@slow.test")))
        .collect();
    ids.push(node.send_tagged("app@sender.test", "user3@slow.test", &["campaign=spring"]));
    node.wait("three deferred jobs", SOON, || {
        let t = &node.status()["totals"];
        t["deferred"] == 3 && t["in_flight"] == 0
    });

    // queue status: totals, the domain, its last error.
    let status = node.status();
    let t = &status["totals"];
    assert_eq!(t["total"], 3, "{status}");
    assert_eq!(t["deferred"], 3, "{status}");
    assert_eq!(t["queued"], 0, "{status}");
    assert_eq!(t["scheduled"], 3, "{status}");
    assert_eq!(t["due_now"], 0, "a 1h retry is not due: {status}");
    assert_eq!(t["suspended"], 0, "{status}");
    assert!(status["oldest_age_ms"].as_u64().is_some(), "{status}");
    let domains = status["domains"].as_array().unwrap();
    let d = domains
        .iter()
        .find(|d| d["domain"] == "slow.test")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(d["depth"], 3, "{status}");
    assert!(d["suspension"].is_null(), "{status}");
    assert!(
        d["last_error"].as_str().is_some_and(|e| e.contains("450")),
        "the 4xx reply as last error: {status}"
    );
    let recent = status["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3, "{status}");
    assert_eq!(recent[0]["window_seconds"], 60, "{status}");
    assert!(recent[0]["deferred"].as_u64().unwrap() >= 3, "{status}");

    let table = node.ok(&["queue", "status"]);
    let blocks: Vec<&str> = table.split("\n\n").collect();
    for head in ["STATE", "LAST", "DOMAIN"] {
        let block = blocks
            .iter()
            .find(|b| b.starts_with(head))
            .unwrap_or_else(|| panic!("no {head} table in:\n{table}"));
        assert_aligned(block);
    }
    assert!(table.contains("slow.test"), "{table}");
    assert!(table.contains("Oldest message: "), "{table}");

    // queue shape: all three in the youngest bucket.
    let shape = node.json(&["queue", "shape"]);
    let buckets = shape["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 8, "{shape}");
    assert_eq!(buckets[0], "0-5m", "{shape}");
    assert_eq!(shape["complete"], true, "{shape}");
    assert_eq!(shape["total"]["total"], 3, "{shape}");
    let row = shape["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == "slow.test")
        .unwrap_or_else(|| panic!("{shape}"));
    assert_eq!(row["total"], 3, "{shape}");
    assert_eq!(row["counts"][0], 3, "{shape}");
    let table = node.ok(&["queue", "shape"]);
    assert_aligned(&table);
    assert!(table.contains("slow.test"), "{table}");

    // queue top, one refresh.
    let top = node.json_lines(&["queue", "top", "--iterations", "1"]);
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0]["totals"]["deferred"], 3, "{top:?}");

    // queue list: by state and domain, and filters that match nothing.
    let list = node.json(&["queue", "list", "--state", "deferred", "--domain", "slow.test"]);
    let mut listed = job_ids(&list);
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want, "{list}");
    for j in list["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "deferred", "{list}");
        assert_eq!(j["domain"], "slow.test", "{list}");
        assert_eq!(
            j["sender"], "app@sender.test",
            "like the recipients, no brackets: {list}"
        );
        assert!(j["attempts"].as_u64().unwrap() >= 1, "{list}");
        assert!(j["last_error"].as_str().unwrap().contains("450"), "{list}");
        assert!(
            j["job_id"]
                .as_str()
                .unwrap()
                .starts_with(j["message_id"].as_str().unwrap()),
            "{list}"
        );
    }
    assert!(list["next_cursor"].is_null(), "{list}");
    let page = node.json(&["queue", "list", "--domain", "slow.test", "--limit", "2"]);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2, "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("a cursor: {page}"));
    let rest = node.json(&[
        "queue",
        "list",
        "--domain",
        "slow.test",
        "--limit",
        "2",
        "--cursor",
        cursor,
    ]);
    let mut paged = job_ids(&page);
    paged.extend(job_ids(&rest));
    paged.sort();
    assert_eq!(paged, want, "two pages cover the three jobs: {page} {rest}");
    for sender in ["app@sender.test", "<APP@sender.test>"] {
        let l = node.json(&["queue", "list", "--sender", sender]);
        assert_eq!(l["jobs"].as_array().unwrap().len(), 3, "--sender {sender}: {l}");
    }
    let one = node.json(&["queue", "list", "--rcpt", "USER2@slow.test"]);
    assert_eq!(job_ids(&one), vec![ids[1].clone()], "{one}");
    for tag in ["campaign=spring", "campaign"] {
        let l = node.json(&["queue", "list", "--tag", tag]);
        assert_eq!(job_ids(&l), vec![ids[2].clone()], "--tag {tag}: {l}");
        assert_eq!(
            l["jobs"][0]["tags"],
            serde_json::json!({ "campaign": "spring" }),
            "{l}"
        );
    }
    let l = node.json(&["queue", "list", "--tag", "campaign=autumn"]);
    assert_eq!(l["jobs"], serde_json::json!([]), "{l}");
    let l = node.json(&["queue", "list", "--min-attempts", "1"]);
    assert_eq!(l["jobs"].as_array().unwrap().len(), 3, "{l}");
    for none in [
        vec!["queue", "list", "--state", "queued"],
        vec!["queue", "list", "--domain", "other.test"],
        vec!["queue", "list", "--older-than", "1h"],
        vec!["queue", "list", "--min-attempts", "5"],
    ] {
        let l = node.json(&none);
        assert_eq!(l["jobs"], serde_json::json!([]), "{none:?}: {l}");
    }
    let table = node.ok(&["queue", "list", "--state", "deferred", "--domain", "slow.test"]);
    assert_aligned(&table);
    assert_eq!(table.lines().count(), 4, "a header and three jobs:\n{table}");
    for id in &ids {
        assert!(table.contains(id.as_str()), "{table}");
    }

    // msg show: the attempt history has the 4xx reply and the MX.
    let show = node.json(&["msg", "show", &ids[0]]);
    assert_eq!(show["message_id"], ids[0].as_str(), "{show}");
    assert_eq!(show["sender"], "app@sender.test", "{show}");
    assert!(show["size"].as_u64().unwrap() > 0, "{show}");
    let jobs = show["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{show}");
    assert_eq!(jobs[0]["state"], "deferred", "{show}");
    assert_eq!(jobs[0]["domain"], "slow.test", "{show}");
    assert_eq!(jobs[0]["recipients"][0]["address"], "user1@slow.test", "{show}");
    assert_eq!(jobs[0]["recipients"][0]["status"], "pending", "{show}");
    let attempts = show["attempts"].as_array().unwrap();
    let deferred = attempts
        .iter()
        .find(|a| a["kind"] == "deferred")
        .unwrap_or_else(|| panic!("a deferred attempt in the history: {show}"));
    assert!(
        deferred["reply"].as_str().unwrap().contains("450 4.2.1"),
        "{show}"
    );
    assert!(
        deferred["remote_mx"].as_str().unwrap().contains("mx.slow.test"),
        "{show}"
    );
    assert_eq!(deferred["remote_ip"], "127.0.0.71", "{show}");
    let kinds: Vec<&str> = attempts.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    let queued_at = kinds.iter().position(|k| *k == "queued");
    let deferred_at = kinds.iter().position(|k| *k == "deferred");
    assert!(
        queued_at < deferred_at && queued_at.is_some(),
        "queued, then deferred: {kinds:?}"
    );
    assert_eq!(show["content_available"], true, "{show}");
    assert!(
        show["headers"].as_str().unwrap().contains("control e2e"),
        "{show}"
    );
    let with_body = node.json(&["msg", "show", &ids[0], "--body"]);
    assert!(
        with_body.to_string().contains("hello"),
        "the body is shown on request: {with_body}"
    );
    let by_job = node.json(&["msg", "show", &format!("{}.0", ids[0])]);
    assert_eq!(
        by_job["message_id"],
        ids[0].as_str(),
        "a job id shows its message: {by_job}"
    );
    let table = node.ok(&["msg", "show", &ids[0]]);
    assert!(
        table.contains(ids[0].as_str()) && table.contains("450 4.2.1"),
        "{table}"
    );

    // msg retry: due now, attempted again, deferred again.
    let retry = node.json(&["msg", "retry", &ids[0]]);
    assert_eq!(retry, serde_json::json!({ "action": "retry", "count": 1 }));
    node.wait("the retried message to be attempted again", SOON, || {
        let s = node.json(&["msg", "show", &ids[0]]);
        s["jobs"][0]["attempts"].as_u64().unwrap_or(0) >= 2 && s["jobs"][0]["state"] == "deferred"
    });
    let show = node.json(&["msg", "show", &ids[0]]);
    let kinds: Vec<&str> = show["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"retried"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "deferred").count(), 2, "{kinds:?}");

    // msg bounce: the job fails and a DSN goes to the sender's MX.
    assert_eq!(senders.message_count(), 0);
    let bounce = node.json(&["msg", "bounce", &ids[1]]);
    assert_eq!(bounce, serde_json::json!({ "action": "bounce", "count": 1 }));
    senders
        .wait_for_messages(1, SOON)
        .unwrap_or_else(|e| panic!("no DSN at the sender's MX: {e:#}\n{}", node.tern.logs()));
    let dsn = senders
        .dumped_messages()
        .unwrap()
        .iter()
        .map(|p| text(&std::fs::read(p).unwrap()))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        dsn.contains("user2@slow.test"),
        "the DSN names the failed recipient:\n{dsn}"
    );
    assert!(
        dsn.to_ascii_lowercase().contains("delivery-status"),
        "a DSN:\n{dsn}"
    );
    // The bounced message leaves the queue and stays readable from its history.
    node.wait("the bounced message to leave the queue", SOON, || {
        node.json(&["msg", "show", &ids[1]])["finished"] == true
    });
    let show = node.json(&["msg", "show", &ids[1]]);
    assert_eq!(show["outcome"], "bounced", "{show}");
    assert_eq!(
        show["dsn_ids"].as_array().map(Vec::len),
        Some(1),
        "the DSN's id: {show}"
    );

    // msg retry by domain: both remaining jobs are attempted again.
    let retry = node.json(&["msg", "retry", "--domain", "slow.test", "--yes"]);
    assert_eq!(retry, serde_json::json!({ "action": "retry", "count": 2 }));
    node.wait("both retried jobs to be deferred again", SOON, || {
        let l = node.json(&["queue", "list", "--domain", "slow.test", "--state", "deferred"]);
        let attempts: Vec<u64> = l["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["attempts"].as_u64().unwrap())
            .collect();
        attempts == [3, 2]
    });

    // The events of one tag: only the tagged message's.
    let tagged = node.json_lines(&["events", "--tag", "campaign=spring"]);
    assert!(!tagged.is_empty(), "no events for the tag");
    assert!(
        tagged.iter().all(|e| e["message_id"] == ids[2].as_str()),
        "{tagged:?}"
    );
    assert_eq!(
        kinds_of(&tagged, &ids[2]),
        ["queued", "deferred", "retried", "deferred"],
        "{tagged:?}"
    );

    // msg delete by job id, then by domain: refused without --yes and a terminal, then done with --yes.
    let delete = node.json(&["msg", "delete", &format!("{}.0", ids[2])]);
    assert_eq!(delete, serde_json::json!({ "action": "delete", "count": 1 }));
    assert_eq!(
        node.ok(&["msg", "delete", "--domain", "other.test", "--yes"])
            .trim(),
        "deleted 0 jobs"
    );
    let out = node.ternctl(&["msg", "delete", "--domain", "slow.test"]);
    let line = assert_one_line_error(&out, "delete --domain without --yes");
    assert!(line.contains("--yes"), "{line}");
    let left = node.json(&["queue", "list", "--domain", "slow.test"]);
    assert_eq!(
        job_ids(&left),
        vec![ids[0].clone()],
        "nothing more was deleted: {left}"
    );
    let delete = node.json(&["msg", "delete", "--domain", "slow.test", "--yes"]);
    assert_eq!(delete, serde_json::json!({ "action": "delete", "count": 1 }));
    node.wait("an empty queue", SOON, || node.status()["totals"]["total"] == 0);
    let list = node.json(&["queue", "list"]);
    assert_eq!(list["jobs"], serde_json::json!([]), "{list}");
    let again = node.json(&["msg", "delete", "--domain", "slow.test", "--yes"]);
    assert_eq!(again["count"], 0, "{again}");
    assert_eq!(slow.message_count(), 0, "the 4xx sink accepted nothing");
    assert_eq!(senders.message_count(), 1, "exactly one DSN");
}

/// A suspended domain's mail stays queued until the domain is resumed, then it is delivered.
#[test]
fn suspended_domain_holds_mail_until_resumed() {
    let mx_port = free_port().unwrap();
    let sink = SmtpSink::start(Ipv4Addr::new(127, 0, 0, 73), mx_port).unwrap();
    let dns = Dnsmasq::builder()
        .mx("later.test", "mx.later.test", 10)
        .mx("brief.test", "mx.later.test", 10)
        .host("mx.later.test", [127, 0, 0, 73])
        .start()
        .unwrap();
    let node = Node::start(dns, mx_port, "", "");

    let s = node.json(&[
        "domain",
        "suspend",
        "later.test",
        "--for",
        "1h",
        "--reason",
        "maint",
    ]);
    assert_eq!(s["domain"], "later.test", "{s}");
    assert_eq!(s["reason"], "maint", "{s}");
    let (since, until) = (s["since_ms"].as_u64().unwrap(), s["until_ms"].as_u64().unwrap());
    assert!(
        (3_590_000..=3_610_000).contains(&(until - since)),
        "suspended for an hour: {s}"
    );

    let id = node.send("app@sender.test", "someone@later.test");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        sink.message_count(),
        0,
        "delivered while suspended\n{}",
        node.tern.logs()
    );
    let show = node.json(&["msg", "show", &id]);
    assert_eq!(
        show["jobs"][0]["state"], "suspended",
        "waiting on its suspended domain, never attempted: {show}"
    );
    assert_eq!(show["jobs"][0]["attempts"], 0, "{show}");
    let status = node.status();
    assert_eq!(status["totals"]["total"], 1, "{status}");
    assert_eq!(status["totals"]["suspended"], 1, "{status}");
    assert_eq!(status["totals"]["suspended_domains"], 1, "{status}");
    let d = &status["domains"][0];
    assert_eq!(d["domain"], "later.test", "{status}");
    assert_eq!(d["suspension"]["reason"], "maint", "{status}");

    let list = node.json(&["domain", "list"]);
    let sus = list["suspensions"].as_array().unwrap();
    assert_eq!(sus.len(), 1, "{list}");
    assert_eq!(sus[0]["domain"], "later.test", "{list}");
    assert_eq!(sus[0]["reason"], "maint", "{list}");
    assert_eq!(sus[0]["until_ms"], until, "{list}");
    let table = node.ok(&["domain", "list"]);
    assert_aligned(&table);
    assert!(table.contains("later.test") && table.contains("maint"), "{table}");
    let table = node.ok(&["queue", "status"]);
    assert!(table.contains("1 (1 domain)"), "{table}");

    let r = node.json(&["domain", "resume", "later.test"]);
    assert_eq!(
        r,
        serde_json::json!({ "domain": "later.test", "was_suspended": true })
    );
    sink.wait_for_messages(1, SOON)
        .unwrap_or_else(|e| panic!("not delivered after resume: {e:#}\n{}", node.tern.logs()));
    node.wait("an empty queue", SOON, || node.status()["totals"]["total"] == 0);
    assert_eq!(
        node.json(&["domain", "list"]),
        serde_json::json!({ "suspensions": [], "routes": [] })
    );
    let r = node.json(&["domain", "resume", "later.test"]);
    assert_eq!(r["was_suspended"], false, "{r}");
    assert_eq!(
        node.ok(&["domain", "resume", "later.test"]).trim(),
        "later.test was not suspended"
    );
    assert_eq!(sink.message_count(), 1);

    // A suspension for a time ends by itself, and the mail held goes out.
    let s = node.json(&["domain", "suspend", "brief.test", "--for", "2s"]);
    // The end is 2 s after the request; `since` is when the queue recorded it, a moment later.
    let span = s["until_ms"].as_u64().unwrap() - s["since_ms"].as_u64().unwrap();
    assert!((1_950..=2_000).contains(&span), "{s}");
    node.send("app@sender.test", "someone@brief.test");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.message_count(),
        1,
        "delivered while suspended\n{}",
        node.tern.logs()
    );
    sink.wait_for_messages(2, SOON).unwrap_or_else(|e| {
        panic!(
            "not delivered when the suspension ended: {e:#}\n{}",
            node.tern.logs()
        )
    });
    assert_eq!(
        node.json(&["domain", "list"]),
        serde_json::json!({ "suspensions": [], "routes": [] })
    );
}

/// The kinds of the events of message `id` in `events`, in stream order.
fn kinds_of(events: &[Value], id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["message_id"] == id)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// A message's whole life on the event stream, in order: retained (`events`) and live (`events --follow`).
#[test]
fn events_show_a_message_life_in_order() {
    let mx_port = free_port().unwrap();
    let sink = SmtpSink::start(Ipv4Addr::new(127, 0, 0, 74), mx_port).unwrap();
    let dns = Dnsmasq::builder()
        .mx("fast.test", "mx.fast.test", 10)
        .host("mx.fast.test", [127, 0, 0, 74])
        .start()
        .unwrap();
    let node = Node::start(dns, mx_port, "", "");

    // Follow from now; an event of our own proves the stream is live before anything is submitted.
    let mut cmd = Command::new(ternctl_path());
    cmd.args(["--server", &node.control, "--json", "events", "--follow"]);
    scrub_env(&mut cmd);
    let mut follow = ChildGuard::spawn("ternctl-events", cmd).unwrap();
    let followed = |follow: &ChildGuard| parse_lines(&follow.stdout());
    node.wait("the followed stream to show a suspension", SOON, || {
        node.ok(&["domain", "suspend", "warmup.test", "--reason", "probe"]);
        node.ok(&["domain", "resume", "warmup.test"]);
        followed(&follow).iter().any(|e| e["domain"] == "warmup.test")
    });

    let id = node.send("app@sender.test", "someone@fast.test");
    sink.wait_for_messages(1, SOON)
        .unwrap_or_else(|e| panic!("not delivered: {e:#}\n{}", node.tern.logs()));
    node.wait("the followed stream to show the delivery", SOON, || {
        kinds_of(&followed(&follow), &id).contains(&"delivered".to_string())
    });
    assert!(follow.is_running(), "--follow keeps running\n{}", follow.logs());
    follow.kill_hard().unwrap();
    let live = followed(&follow);
    assert_eq!(kinds_of(&live, &id), ["queued", "delivered"], "{live:?}");

    // The retained events, without --follow: the command ends by itself.
    let all = node.json_lines(&["events"]);
    assert_eq!(kinds_of(&all, &id), ["queued", "delivered"], "{all:?}");
    let mine: Vec<&Value> = all.iter().filter(|e| e["message_id"] == id.as_str()).collect();
    let (queued, delivered) = (mine[0], mine[1]);
    assert!(
        queued["time_ms"].as_u64() <= delivered["time_ms"].as_u64(),
        "{mine:?}"
    );
    assert_eq!(queued["domain"], "fast.test", "{queued}");
    assert_eq!(
        queued["recipients"],
        serde_json::json!(["someone@fast.test"]),
        "{queued}"
    );
    assert_eq!(delivered["job_id"], queued["job_id"], "{mine:?}");
    assert!(
        delivered["job_id"].as_str().unwrap().starts_with(id.as_str()),
        "{delivered}"
    );
    assert!(
        delivered["reply"].as_str().unwrap().starts_with("250"),
        "{delivered}"
    );
    assert!(
        delivered["remote_mx"].as_str().unwrap().contains("mx.fast.test"),
        "{delivered}"
    );
    assert_eq!(delivered["remote_ip"], "127.0.0.74", "{delivered}");
    assert_ne!(queued["id"], delivered["id"], "{mine:?}");
    for e in &all {
        assert!(e["position"].as_str().is_some_and(|p| !p.is_empty()), "{e}");
    }
    // The live stream saw the same events, with the same ids.
    let live_ids: Vec<&Value> = live
        .iter()
        .filter(|e| e["message_id"] == id.as_str())
        .map(|e| &e["id"])
        .collect();
    assert_eq!(live_ids, vec![&queued["id"], &delivered["id"]]);

    // Filters and resuming from a position.
    let only = node.json_lines(&["events", "--type", "delivered"]);
    assert!(
        !only.is_empty() && only.iter().all(|e| e["kind"] == "delivered"),
        "{only:?}"
    );
    assert_eq!(kinds_of(&only, &id), ["delivered"]);
    let dom = node.json_lines(&["events", "--domain", "fast.test"]);
    assert!(dom.iter().all(|e| e["domain"] == "fast.test"), "{dom:?}");
    assert_eq!(kinds_of(&dom, &id), ["queued", "delivered"]);
    let position = queued["position"].as_str().unwrap();
    let after = node.json_lines(&["events", "--from", position]);
    assert_eq!(
        kinds_of(&after, &id),
        ["delivered"],
        "after the queued event: {after:?}"
    );
}

/// The errors an operator meets are one line on stderr with exit code 1 (2 for usage errors).
#[test]
fn errors_are_one_line() {
    let make_key = |name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["apikey", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let mut lines = stdout.lines();
        (
            lines.next().unwrap().to_string(),
            lines.next().unwrap().to_string(),
        )
    };
    let (key, line) = make_key("ops");
    let (other_key, _) = make_key("ops");
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("admin.keys");
    std::fs::write(&keys, format!("{line}\n")).unwrap();
    let dns = Dnsmasq::builder().start().unwrap();
    let mut node = Node::start(
        dns,
        free_port().unwrap(),
        "",
        &format!("api_keys_file = \"{}\"", keys.display()),
    );

    // The right key works.
    node.token = Some(key.clone());
    assert_eq!(node.status()["totals"]["total"], 0);

    // An unknown id.
    let out = node.ternctl(&["msg", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    let line = assert_one_line_error(&out, "unknown id");
    assert!(line.contains("not found"), "{line}");
    let out = node.ternctl(&["--json", "msg", "retry", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    let line = assert_one_line_error(&out, "retry of an unknown id");
    assert!(line.contains("not found"), "{line}");
    let out = node.ternctl(&["msg", "show", "not-an-id"]);
    assert_one_line_error(&out, "a malformed id");

    // Bad values are usage errors (exit 2, nothing on stdout), naming the flag.
    for (args, flag) in [
        (vec!["queue", "list", "--older-than", "soon"], "--older-than"),
        (vec!["queue", "list", "--state", "bogus"], "--state"),
        (vec!["domain", "suspend", "x.test", "--for", "soon"], "--for"),
    ] {
        let out = node.ternctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            text(&out.stderr).contains(flag),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Usage errors are clap's: exit code 2, nothing on stdout.
    for args in [vec!["queue", "list", "--limit", "many"], vec!["msg", "retry"]] {
        let out = node.ternctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty() && !out.stderr.is_empty(), "{args:?}");
    }

    // A wrong key, and no key, for every kind of call.
    for token in [Some(other_key.clone()), None] {
        node.token = token;
        for args in [
            vec!["queue", "status"],
            vec!["--json", "queue", "list"],
            vec!["msg", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
            vec!["domain", "list"],
            vec!["events"],
        ] {
            let out = node.ternctl(&args);
            let line = assert_one_line_error(&out, &format!("{args:?} with key {:?}", node.token));
            assert!(
                line.contains("--token") && line.contains("TERN_ADMIN_TOKEN"),
                "the error names where the admin key goes: {line}"
            );
            assert!(
                !line.contains(&key) && !line.contains(&other_key),
                "no key in errors: {line}"
            );
        }
    }
    node.token = Some(key);
    assert_eq!(
        node.json(&["domain", "list"]),
        serde_json::json!({ "suspensions": [], "routes": [] })
    );

    // An unreachable server: refused at once, not hung.
    let dead = format!("http://127.0.0.1:{}", free_port().unwrap());
    let started = std::time::Instant::now();
    let out = ternctl_at(&dead, node.token.as_deref(), &["queue", "status"]);
    let line = assert_one_line_error(&out, "an unreachable server");
    assert!(line.contains("cannot reach") && line.contains(&dead), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let out = ternctl_at("not a url", None, &["queue", "status"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed server address is a usage error"
    );

    // Completions need no server.
    let out = node.ternctl(&["completions", "bash"]);
    assert!(out.status.success() && text(&out.stdout).contains("ternctl"));
}
