//! The embedded store under SIGKILL: a child process enqueues, claims and completes, printing every call
//! that was acknowledged; the test kills it mid-stream, opens the store again and finds every acknowledged
//! change there, and the jobs that were in flight at the kill claimable again. While the child runs, the
//! test is refused the store with the child's pid.
#![cfg(feature = "embedded")]
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_core::JobId;
use tern_core::time::now_ms;
use tern_queue::conformance::message;
use tern_queue::{Completion, EmbeddedQueue, EmbeddedQueueOptions, JobState, Outcome, Queue, QueueError};

/// The child's store directory, in its environment.
const CHILD_DIR: &str = "TERN_EMBEDDED_CRASH_DIR";

fn open(path: PathBuf) -> EmbeddedQueue {
    EmbeddedQueue::open(EmbeddedQueueOptions {
        path,
        ..Default::default()
    })
    .expect("open the embedded store")
}

/// Not a test by itself: `acknowledged_changes_survive_sigkill` runs it in a child process (hence
/// `ignore`). Writes until killed, printing each acknowledged call on its own line: `ACK <message> <jobs>`,
/// `DONE <job>` (completed, finished), `DEFER <job> <attempts>`, `HELD <job>` (claimed, never completed);
/// and `COMPLETING <job>` before a completion is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by acknowledged_changes_survive_sigkill in a child process"]
async fn child_writes_until_killed() {
    let dir = std::env::var(CHILD_DIR).expect("run by the crash test");
    let q: Arc<dyn Queue> = Arc::new(open(PathBuf::from(dir)));
    println!("OPEN");
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let m = if i % 3 == 0 {
                    message(&[&format!("a{writer}-{i}@x.test"), &format!("b{writer}-{i}@y.test")])
                } else {
                    message(&[&format!("a{writer}-{i}@d{}.test", i % 5)])
                };
                let r = q.enqueue(m).await.expect("enqueue");
                println!("ACK {} {}", r.message, r.jobs.len());
            }
        }));
    }
    let worker = Arc::clone(&q);
    tasks.push(tokio::spawn(async move {
        for round in 0u64.. {
            let Some(claim) = worker
                .claim("child", 5, Duration::from_secs(600))
                .await
                .expect("claim")
            else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            for (k, job) in claim.jobs.iter().enumerate() {
                let id = job.job.id;
                match (round + k as u64) % 3 {
                    0 => println!("HELD {id}"),
                    1 => {
                        // Said first: a completion may be stored and the process killed before it says DONE.
                        println!("COMPLETING {id}");
                        let done = worker.complete("child", &job.lease, Outcome::delivered()).await;
                        assert_eq!(done, Ok(Completion::Finished));
                        println!("DONE {id}");
                    }
                    _ => {
                        let later = Outcome::defer(now_ms() + 3_600_000, "451 4.3.0 later");
                        let done = worker.complete("child", &job.lease, later).await.expect("defer");
                        assert!(matches!(done, Completion::Deferred { .. }));
                        println!("DEFER {id} {}", job.job.attempts + 1);
                    }
                }
            }
        }
    }));
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "child_writes_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &store)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("child stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let started = Instant::now();
    let mut refused = false;
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the child keeps writing");
        // (libtest prints the test's name before its output, on the same line.)
        if line.ends_with("OPEN") {
            // The store is the child's: this process is refused, and told which process holds it.
            let err = EmbeddedQueue::open(EmbeddedQueueOptions {
                path: store.clone(),
                ..Default::default()
            })
            .expect_err("a second process");
            assert!(matches!(err, QueueError::Config(_)), "{err:?}");
            assert!(
                err.to_string().contains(&format!("process {}", child.id())),
                "{err}"
            );
            refused = true;
        }
        lines.push(line);
        let done = lines.iter().filter(|l| l.starts_with("DONE")).count();
        let acked = lines.iter().filter(|l| l.starts_with("ACK")).count();
        if (acked >= 400 && done >= 30) || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(refused, "the child opened the store");
    // Killed in the middle of its writes.
    std::thread::sleep(Duration::from_millis(50));
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader");
    lines.extend(lines_rx.try_iter());

    let mut acked: Vec<(tern_core::MessageId, usize)> = Vec::new();
    let (mut finished, mut deferred, mut held) = (HashSet::new(), HashMap::new(), HashSet::new());
    let mut completing = HashSet::new();
    for line in &lines {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ACK", id, jobs] => acked.push((id.parse().expect("id"), jobs.parse().expect("count"))),
            ["DONE", job] => {
                finished.insert(job.parse::<JobId>().expect("job"));
            }
            ["COMPLETING", job] => {
                completing.insert(job.parse::<JobId>().expect("job"));
            }
            ["DEFER", job, attempts] => {
                deferred.insert(
                    job.parse::<JobId>().expect("job"),
                    attempts.parse::<u32>().expect("n"),
                );
            }
            ["HELD", job] => {
                held.insert(job.parse::<JobId>().expect("job"));
            }
            _ => {}
        }
    }
    eprintln!(
        "{} enqueues, {} completions, {} deferrals, {} claims in flight acknowledged before the kill",
        acked.len(),
        finished.len(),
        deferred.len(),
        held.len()
    );
    assert!(acked.len() >= 100 && !finished.is_empty() && !held.is_empty());

    let q = open(store);
    let mut unanswered = 0;
    for (message, jobs) in &acked {
        let info = q.get_message(*message).await.expect("get");
        let left = info.as_ref().map_or(0, |i| i.jobs.len());
        assert!(left <= *jobs, "{message}: more jobs than enqueued");
        let present: HashSet<JobId> = info.iter().flat_map(|i| i.jobs.iter().map(|j| j.id)).collect();
        for job in (0..*jobs as u32).map(|n| JobId::new(*message, n)) {
            // Gone only when completed: acknowledged (DONE), or sent when the child was killed (the one
            // worker has one completion in flight at most).
            if !present.contains(&job) && !finished.contains(&job) {
                assert!(completing.contains(&job), "{job}: an acknowledged job lost");
                unanswered += 1;
            }
        }
        if left > 0 {
            assert!(
                q.read_body(*message).await.expect("body").is_some(),
                "{message}: body lost"
            );
        }
    }
    assert!(
        unanswered <= 1,
        "{unanswered} jobs gone without an acknowledged completion"
    );
    for job in &finished {
        let info = q.get_message(job.message).await.expect("get");
        assert!(
            info.is_none_or(|i| i.jobs.iter().all(|j| j.id != *job)),
            "{job} was completed, and is back"
        );
    }
    for (job, attempts) in &deferred {
        let info = q
            .get_message(job.message)
            .await
            .expect("get")
            .expect("deferred message");
        let j = info.jobs.iter().find(|j| j.id == *job).expect("deferred job");
        assert_eq!((j.state, j.attempts), (JobState::Deferred, *attempts), "{job}");
    }
    // The jobs in flight at the kill (never completed) are waiting again and due: the next worker gets them.
    let mut claimed = HashSet::new();
    while let Some(c) = q
        .claim("after", 100, Duration::from_secs(60))
        .await
        .expect("claim")
    {
        claimed.extend(c.jobs.iter().map(|j| j.job.id));
    }
    let missing: Vec<_> = held.difference(&claimed).collect();
    assert!(
        missing.is_empty(),
        "jobs in flight at the kill not claimable after it: {missing:?}"
    );
}
