//! A stalled Redis under load, end to end (issue #14): `tern ingest` and `tern worker` over a real
//! redis-server that is SIGSTOPped for 20 s while clients keep submitting over SMTP, delivering to a real
//! smtp-sink found through a real dnsmasq. A write sent while Redis is stopped is applied when it resumes,
//! after ingest's call has timed out: every message answered 250 must be delivered exactly once, and none
//! answered "nothing was queued" may be delivered at all.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{scrub_env, smtp_reply};
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, SmtpSink, free_port, wait_for_tcp};

/// Client threads submitting at once.
const CLIENTS: usize = 6;
/// When the stall begins, after the clients started.
const STALL_AFTER: Duration = Duration::from_secs(3);
/// How long Redis stays stopped.
const STALL_FOR: Duration = Duration::from_secs(20);
/// How long the clients keep starting messages after the stall ended.
const LOAD_AFTER: Duration = Duration::from_secs(4);

/// The redis-server's pid, from `INFO server`.
fn redis_pid(redis: &RedisServer) -> u32 {
    let info = redis.cli(&["INFO", "server"]).unwrap();
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO server:\n{info}"))
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// How a submission ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// 250: queued.
    Queued,
    /// 4xx saying that nothing was queued (or not saying that the message may have been).
    NothingQueued(String),
    /// 4xx saying that the message may have been queued.
    MaybeQueued(String),
    /// No reply to the end of data (connection lost, timeout).
    NoReply(String),
}

/// Submits one message whose Subject is `marker`; how it ended.
fn submit(addr: SocketAddr, marker: &str, rcpt: &str) -> Answer {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Answer::NoReply("connect failed".into());
    };
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let greeting = smtp_reply(&mut reader);
    assert!(greeting.starts_with("220"), "{greeting}");
    let mut say = |line: &str| {
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        smtp_reply(&mut reader)
    };
    assert!(say("EHLO client.test").starts_with("250"));
    assert!(say("MAIL FROM:<app@sender.test>").starts_with("250"));
    assert!(say(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(say("DATA").starts_with("354"));
    let end = say(&format!("Subject: {marker}\r\n\r\nstall test\r\n."));
    let _ = say("QUIT");
    if end.starts_with("250") {
        Answer::Queued
    } else if end.is_empty() {
        Answer::NoReply(end)
    } else if end.contains("may have been queued") {
        Answer::MaybeQueued(end)
    } else {
        Answer::NothingQueued(end)
    }
}

/// How many delivered messages carry each marker (`Subject: <marker>`), from the sink's dump files.
fn deliveries(sink: &SmtpSink) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for path in sink.dumped_messages().unwrap() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            if let Some(marker) = line.strip_prefix("Subject: ") {
                *seen.entry(marker.trim().to_owned()).or_insert(0) += 1;
            }
        }
    }
    seen
}

#[test]
fn a_redis_stall_under_load_delivers_each_acknowledged_message_once_and_nothing_refused() {
    let redis = RedisServer::start().unwrap();
    let mx_port = free_port().unwrap();
    let mx_ip = Ipv4Addr::new(127, 0, 0, 81);
    let dns = Dnsmasq::builder()
        .mx("stall.test", "mx.stall.test", 10)
        .host("mx.stall.test", mx_ip)
        .start()
        .unwrap();
    let sink = SmtpSink::builder(mx_ip, mx_port)
        .dump_to_tempdir()
        .start()
        .unwrap();
    let (smtp_port, grpc_port) = (free_port().unwrap(), free_port().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
url = "{redis}"
key_prefix = "stall"
# A claim sent just before the stall is applied when Redis resumes, but its reply is lost: the worker never
# learns of those jobs, and they come back when their lease runs out (at-least-once). A short lease brings
# them back within the test's wait; the default, 5 minutes, would not.
lease = "15s"
[ingest]
smtp_listen = ["127.0.0.1:{smtp_port}"]
grpc_listen = "127.0.0.1:{grpc_port}"
relay_networks = ["127.0.0.1/32"]
hostname = "ingest.stall.test"
[delivery]
dns_servers = ["{dns}"]
smtp_port = {mx_port}
helo_name = "worker.stall.test"
poll_interval = "100ms"
"#,
            redis = redis.url(),
            dns = dns.addr(),
        ),
    )
    .unwrap();
    let spawn = |role: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args([role, "--config", config.to_str().unwrap()]);
        scrub_env(&mut cmd);
        ChildGuard::spawn(&format!("tern-{role}"), cmd).unwrap()
    };
    let ingest = spawn("ingest");
    let worker = spawn("worker");
    let smtp = SocketAddr::from((Ipv4Addr::LOCALHOST, smtp_port));
    wait_for_tcp(smtp, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", ingest.logs()));
    let logs = || format!("{}\n{}\n{}", ingest.logs(), worker.logs(), redis.logs());

    let pid = redis_pid(&redis);
    let loading = AtomicBool::new(true);
    let started = Instant::now();
    let mut stall_window = (Duration::ZERO, Duration::ZERO);
    let answers: Vec<(String, Answer, Duration, Duration)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let loading = &loading;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut n = 0;
                    while loading.load(Ordering::Relaxed) {
                        let marker = format!("stall-{c}-{n}");
                        let from = started.elapsed();
                        let answer = submit(smtp, &marker, &format!("user{c}@stall.test"));
                        out.push((marker, answer, from, started.elapsed()));
                        n += 1;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(STALL_AFTER);
        signal(pid, "STOP");
        let stopped_at = started.elapsed();
        std::thread::sleep(STALL_FOR);
        signal(pid, "CONT");
        stall_window = (stopped_at, started.elapsed());
        std::thread::sleep(LOAD_AFTER);
        loading.store(false, Ordering::Relaxed);
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });

    let queued: Vec<&String> = answers
        .iter()
        .filter(|(_, a, _, _)| *a == Answer::Queued)
        .map(|(m, ..)| m)
        .collect();
    // Messages whose submission overlapped the stall: those are the ones it could have duplicated.
    let (stop, cont) = stall_window;
    let overlapping = answers
        .iter()
        .filter(|(_, _, from, to)| *from < cont && *to > stop)
        .count();
    assert!(
        overlapping >= CLIENTS,
        "only {overlapping} submissions overlapped the stall: {answers:?}"
    );
    let waited = Instant::now();
    loop {
        let seen = deliveries(&sink);
        if queued.iter().all(|m| seen.contains_key(*m)) {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "acknowledged messages not delivered: {:?}\n{}",
            queued
                .iter()
                .filter(|m| !seen.contains_key(**m))
                .collect::<Vec<_>>(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Late copies (a retried write that queued the message again) would arrive within a few poll intervals.
    std::thread::sleep(Duration::from_secs(5));
    let seen = deliveries(&sink);

    let mut problems = Vec::new();
    for (marker, answer, from, to) in &answers {
        let copies = seen.get(marker).copied().unwrap_or(0);
        let ok = match answer {
            Answer::Queued => copies == 1,
            Answer::NothingQueued(_) => copies == 0,
            Answer::MaybeQueued(_) | Answer::NoReply(_) => copies <= 1,
        };
        if !ok {
            problems.push(format!(
                "{marker} ({from:?}..{to:?}): {answer:?}, delivered {copies} times"
            ));
        }
    }
    let unknown: Vec<_> = seen
        .keys()
        .filter(|m| !answers.iter().any(|(a, ..)| a == *m))
        .collect();
    assert!(unknown.is_empty(), "delivered but never submitted: {unknown:?}");
    assert!(
        problems.is_empty(),
        "stall {stall_window:?}:\n{}\n\nall answers: {answers:?}\n{}",
        problems.join("\n"),
        logs()
    );
    let refused = answers.iter().filter(|(_, a, _, _)| *a != Answer::Queued).count();
    // A 20 s stall is within the 60 s retry window: every client gets its 250.
    assert_eq!(refused, 0, "answers other than 250: {answers:?}");
    assert!(queued.len() > overlapping, "{} queued", queued.len());
}
