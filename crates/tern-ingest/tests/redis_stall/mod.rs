//! Stalling a real redis-server the way a stuck host does: SIGSTOP, then SIGCONT. Its sockets stay open, so
//! writes sent meanwhile wait in the kernel and are applied when it resumes, after the caller timed out.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tern_testkit::RedisServer;

/// The server's process id, from `INFO server`.
pub fn redis_pid(redis: &RedisServer) -> u32 {
    let info = redis.cli(&["INFO", "server"]).expect("INFO server");
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
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// A stopped redis-server; resumed when dropped (also when the test fails).
pub struct Stall {
    pid: u32,
    resumed: bool,
}

impl Stall {
    /// Stops the server (SIGSTOP).
    pub fn start(redis: &RedisServer) -> Stall {
        let pid = redis_pid(redis);
        signal(pid, "STOP");
        Stall { pid, resumed: false }
    }

    /// Resumes it (SIGCONT).
    pub fn resume(&mut self) {
        if !self.resumed {
            signal(self.pid, "CONT");
            self.resumed = true;
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.resume();
    }
}
