//! How many runtime threads a `tern` process runs its work on: one for a process of one role (scaled by
//! running more of it), one per CPU for `tern all`, and what `TOKIO_WORKER_THREADS` says for either. Read from
//! the process's own "starting" log line, which reports the runtime's worker count. The processes run on the
//! embedded queue store, so no Redis is needed: `tern control` may run alone on it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::scrub_env;
use tern_testkit::{ChildGuard, free_port, wait_for_tcp};

/// Starts `tern <role>` on an embedded store in `dir`, with `threads` as `TOKIO_WORKER_THREADS` when given,
/// waits for its listeners, and returns it.
fn start(dir: &Path, role: &str, threads: Option<&str>) -> ChildGuard {
    let control = free_port().unwrap();
    let smtp = free_port().unwrap();
    let grpc = free_port().unwrap();
    let config = format!(
        r#"[queue]
url = "embedded://{store}"
[ingest]
smtp_listen = ["127.0.0.1:{smtp}"]
grpc_listen = "127.0.0.1:{grpc}"
hostname = "tern.test"
[control]
grpc_listen = "127.0.0.1:{control}"
"#,
        store = dir.join("store").display(),
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args([role, "--config", path.to_str().unwrap()]);
    scrub_env(&mut cmd);
    cmd.env_remove("TOKIO_WORKER_THREADS");
    if let Some(threads) = threads {
        cmd.env("TOKIO_WORKER_THREADS", threads);
    }
    let tern = ChildGuard::spawn(role, cmd).unwrap();
    let mut ports = vec![control];
    if role == "all" {
        ports.extend([smtp, grpc]);
    }
    for port in ports {
        wait_for_tcp(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", tern.logs()));
    }
    tern
}

/// The `threads=` of the process's "starting" log line.
fn threads_reported(tern: &ChildGuard) -> usize {
    let logs = tern.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(" starting "))
        .unwrap_or_else(|| panic!("no starting line\n{logs}"));
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("threads="))
        .unwrap_or_else(|| panic!("no threads= in {line}"));
    value.parse().unwrap()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[test]
fn a_process_of_one_role_runs_on_one_thread() {
    let dir = tempfile::tempdir().unwrap();
    let tern = start(dir.path(), "control", None);
    assert_eq!(threads_reported(&tern), 1, "{}", tern.logs());
}

#[test]
fn tokio_worker_threads_sets_the_threads_of_a_process_of_one_role() {
    let dir = tempfile::tempdir().unwrap();
    let tern = start(dir.path(), "control", Some("3"));
    assert_eq!(threads_reported(&tern), 3, "{}", tern.logs());
}

#[test]
fn tern_all_runs_on_a_thread_per_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let tern = start(dir.path(), "all", None);
    assert_eq!(threads_reported(&tern), cpus(), "{}", tern.logs());
}

#[test]
fn tokio_worker_threads_sets_the_threads_of_tern_all() {
    let dir = tempfile::tempdir().unwrap();
    let tern = start(dir.path(), "all", Some("1"));
    assert_eq!(threads_reported(&tern), 1, "{}", tern.logs());
}
