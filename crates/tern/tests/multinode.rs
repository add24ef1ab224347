//! A cluster on one machine: 2 `tern ingest`, 3 `tern worker` and 1 `tern control` processes on one
//! redis-server, mail exchangers on two smtp-sinks found through dnsmasq, spans to a real OTLP receiver.
//!
//! 20,000 messages go in through both ingest nodes, half over SMTP (Postfix's smtp-source) and half over
//! the gRPC Send API (SendBatch). While they flow, one worker is killed (SIGKILL) and a new one started,
//! and another gets SIGTERM. Every message must reach a sink; duplicates (at-least-once delivery allows a
//! few after the SIGKILL: what the killed worker delivered but had not recorded) are counted and printed.
//! One sampled message's trace must span an ingest process and a worker process.
//!
//! `TERN_MULTINODE_MESSAGES` sets another total (a multiple of 4), e.g. for a quicker run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::nodes::{Ports, Sections, config, raw_request, spawn};
use common::otlp::{OtlpReceiver, summary, traces_across_processes};
use tern_proto::v1::SendBatchRequest;
use tern_proto::v1::send_result::Result as SendOutcome;
use tern_proto::v1::submission_client::SubmissionClient;
use tern_testkit::{ChildGuard, Dnsmasq, RedisServer, SmtpSink, SmtpSource, free_port};

const DOMAINS: usize = 4;
const BATCH: usize = 500;
const GRACE: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(240);

fn total_messages() -> usize {
    std::env::var("TERN_MULTINODE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// The message's queue id in a dumped transaction: from tern's Received field (SMTP submissions) or the
/// Message-ID tern added (gRPC submissions carry none of their own).
fn message_key(dump: &str) -> Option<String> {
    if let Some(at) = dump.find("(tern) with ") {
        let rest = &dump[at..];
        let id = rest.split_whitespace().skip_while(|w| *w != "id").nth(1)?;
        return Some(id.trim_end_matches(';').to_string());
    }
    let line = dump
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))?;
    let id = line.split_once('<')?.1.split_once('@')?.0;
    Some(id.to_string())
}

/// Every dumped transaction's key, with how often it arrived.
fn arrivals(sinks: &[&SmtpSink]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for sink in sinks {
        for file in sink.dumped_messages().unwrap() {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            if let Some(key) = message_key(&text) {
                *seen.entry(key).or_default() += 1;
            }
        }
    }
    seen
}

fn delivered(sinks: &[&SmtpSink]) -> u64 {
    sinks.iter().map(|s| s.message_count()).sum()
}

/// Sends `count` messages to `domain` through the Send API at `url` in batches; their ids.
async fn grpc_load(url: String, domain: String, count: usize) -> Vec<String> {
    let mut client = SubmissionClient::connect(url.clone()).await.unwrap();
    let mut ids = Vec::with_capacity(count);
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let messages = (sent..sent + n)
            .map(|i| {
                raw_request(
                    "load@sender.test",
                    &format!("user{i}@{domain}"),
                    &format!("mn {domain} {i}"),
                )
            })
            .collect();
        let response = client
            .send_batch(SendBatchRequest { messages })
            .await
            .unwrap_or_else(|e| panic!("SendBatch to {url}: {e:?}"))
            .into_inner();
        for r in response.results {
            match r.result {
                Some(SendOutcome::Ok(ok)) => ids.push(ok.message_id),
                other => panic!("a message of the batch was refused: {other:?}"),
            }
        }
        sent += n;
    }
    ids
}

fn worker(n: usize, dir: &Path, text: &dyn Fn(&Ports) -> String, env: &[(&str, &str)]) -> ChildGuard {
    let ports = Ports::free();
    spawn("worker", &format!("worker-{n}"), dir, &text(&ports), &ports, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_through_two_ingest_nodes_and_three_workers_all_arrive_despite_kills() {
    let total = total_messages();
    assert_eq!(
        total % DOMAINS,
        0,
        "TERN_MULTINODE_MESSAGES must be a multiple of {DOMAINS}"
    );
    let quarter = total / DOMAINS;
    let receiver = OtlpReceiver::start();
    let mx_port = free_port().unwrap();
    let ips = [Ipv4Addr::new(127, 0, 0, 161), Ipv4Addr::new(127, 0, 0, 162)];
    let mut dns = Dnsmasq::builder()
        .host("mx0.multi.test", ips[0])
        .host("mx1.multi.test", ips[1]);
    for d in 0..DOMAINS {
        dns = dns.mx(&format!("multi{d}.test"), &format!("mx{}.multi.test", d / 2), 10);
    }
    let dns = dns.start().unwrap();
    let sinks = [
        SmtpSink::builder(ips[0], mx_port)
            .dump_to_tempdir()
            .backlog(1024)
            .start()
            .unwrap(),
        SmtpSink::builder(ips[1], mx_port)
            .dump_to_tempdir()
            .backlog(1024)
            .start()
            .unwrap(),
    ];
    let sink_refs = [&sinks[0], &sinks[1]];
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = Sections {
        queue: "lease = \"10s\"".into(),
        delivery: format!(
            "max_connections = 32\nconnections_per_domain = 8\nmessages_per_connection = 100\nshutdown_grace = \"{}s\"",
            GRACE.as_secs()
        ),
        telemetry: format!("otlp_endpoint = \"{}\"", receiver.endpoint()),
        ..Sections::default()
    };
    let text = |ports: &Ports| config(&redis.url(), dns.addr(), mx_port, ports, &extra);
    // 2% of the messages are traced (a sampled message's delivery is traced too: the sampler follows the
    // stored parent), so that spans do not crowd out the mail on two cores.
    let env = [
        ("OTEL_BSP_SCHEDULE_DELAY", "500"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.02"),
    ];
    let control_ports = Ports::free();
    let _control = spawn(
        "control",
        "control",
        dir.path(),
        &text(&control_ports),
        &control_ports,
        &env,
    );
    let ingest_ports = [Ports::free(), Ports::free()];
    let ingests: Vec<ChildGuard> = ingest_ports
        .iter()
        .enumerate()
        .map(|(i, p)| spawn("ingest", &format!("ingest-{i}"), dir.path(), &text(p), p, &env))
        .collect();
    let mut workers: Vec<Option<ChildGuard>> = (1..=3)
        .map(|n| Some(worker(n, dir.path(), &text, &env)))
        .collect();
    let logs = |workers: &[Option<ChildGuard>]| {
        let mut all: Vec<String> = ingests.iter().map(ChildGuard::logs).collect();
        all.extend(workers.iter().flatten().map(|w| {
            let stderr = w.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            format!(
                "--- {} (tail) ---\n{}",
                w.name(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }));
        all.join("\n")
    };

    let started = Instant::now();
    let smtp_runs: Vec<_> = (0..2)
        .map(|i| {
            let source = SmtpSource {
                target: ingest_ports[i].smtp_addr(),
                sessions: 8,
                messages: u32::try_from(quarter).unwrap(),
                size: 300,
                from: "load@sender.test".into(),
                to: format!("user@multi{i}.test"),
                reuse: true,
                timeout: DEADLINE,
                extra_args: Vec::new(),
            };
            tokio::task::spawn_blocking(move || source.run())
        })
        .collect();
    let grpc_runs: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(grpc_load(
                ingest_ports[i].grpc_url(),
                format!("multi{}.test", i + 2),
                quarter,
            ))
        })
        .collect();

    // Faults while the mail flows: SIGKILL worker 1 (and start worker 4) at 15%, SIGTERM worker 2 at 40%.
    let mut killed = false;
    let mut drained = None;
    while delivered(&sink_refs) < total as u64 {
        assert!(
            started.elapsed() < DEADLINE,
            "{} of {total} delivered\n{}",
            delivered(&sink_refs),
            logs(&workers)
        );
        let now = delivered(&sink_refs);
        if !killed && now >= (total * 15 / 100) as u64 {
            killed = true;
            workers[0].as_mut().unwrap().kill_hard().unwrap();
            workers.push(Some(worker(4, dir.path(), &text, &env)));
            println!(
                "SIGKILL to worker 1 at {now} delivered, worker 4 started ({:?})",
                started.elapsed()
            );
        }
        if drained.is_none() && now >= (total * 40 / 100) as u64 {
            let mut w2 = workers[1].take().unwrap();
            println!("SIGTERM to worker 2 at {now} delivered ({:?})", started.elapsed());
            drained = Some(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let status = w2.terminate(GRACE + Duration::from_secs(15)).unwrap();
                (status, t.elapsed(), w2)
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for run in smtp_runs {
        let out = run.await.unwrap().unwrap();
        assert!(
            out.status.success(),
            "smtp-source: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut grpc_ids = Vec::new();
    for run in grpc_runs {
        grpc_ids.extend(run.await.unwrap());
    }
    let (status, took, w2) = drained.expect("worker 2 was stopped").await.unwrap();
    assert!(
        status.success(),
        "worker 2 after SIGTERM: {status:?}\n{}",
        w2.logs()
    );
    assert!(
        took <= GRACE + Duration::from_secs(2),
        "worker 2 took {took:?} to drain"
    );

    // Every message arrives; the killed worker's unrecorded deliveries come back after their lease.
    let mut seen = arrivals(&sink_refs);
    while seen.len() < total && started.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = arrivals(&sink_refs);
    }
    let elapsed = started.elapsed();
    let transactions: usize = seen.values().sum();
    let duplicates = transactions - seen.len();
    let twice: usize = seen.values().filter(|n| **n > 1).count();
    println!(
        "multi-node: {total} messages, {} distinct arrived, {transactions} transactions, {duplicates} duplicates \
         ({twice} messages more than once), in {elapsed:?}; worker 2 drained in {took:?}",
        seen.len()
    );
    assert_eq!(seen.len(), total, "messages lost\n{}", logs(&workers));
    let missing: Vec<&String> = grpc_ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "gRPC messages that never arrived: {missing:?}"
    );
    assert_eq!(grpc_ids.iter().collect::<HashSet<_>>().len(), total / 2);

    // One sampled message's trace spans an ingest process and a worker process.
    let ingest_pids: HashSet<i64> = ingests.iter().map(|i| i64::from(i.pid())).collect();
    receiver.wait_for(
        "a trace across ingest and worker",
        Duration::from_secs(20),
        |spans| {
            traces_across_processes(
                spans,
                &["message_receive", "enqueue", "delivery", "smtp_transaction"],
            )
            .iter()
            .any(|trace| {
                trace
                    .iter()
                    .any(|s| ingest_pids.contains(&s.pid) && s.name == "enqueue")
            })
        },
    );
    let spans = receiver.spans();
    let traces = traces_across_processes(
        &spans,
        &["message_receive", "enqueue", "delivery", "smtp_transaction"],
    );
    println!("traces across processes: {} ({})", traces.len(), summary(&spans));
}
