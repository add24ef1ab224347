//! Helpers shared by the benchmarks: reading a process's CPU time and memory from `/proc`, percentiles, and
//! filler messages of a given size.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark set-up fails loudly

use std::time::Duration;

/// CPU time (user + system) a process has used, in milliseconds, from `/proc/<pid>/stat` (`pid` may be
/// `self`). Fields 14 and 15 (utime, stime) count clock ticks, 100 per second on Linux.
pub fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) * 10.0
}

/// A `kB` figure from `/proc/<pid>/status`, e.g. `VmRSS:` or `VmHWM:`; `None` once the process is gone.
pub fn status_kb(pid: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process id in a Redis `INFO server` reply.
pub fn redis_pid(info_server: &str) -> String {
    info_server
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_string()
}

/// The `p` quantile (0..=1) of `v`, which it sorts; zero for no samples.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A message of at least `size` bytes: `headers` (ending in the blank line), then 64-byte lines of filler.
pub fn filler_message(headers: &str, size: usize) -> Vec<u8> {
    let mut body = headers.as_bytes().to_vec();
    while body.len() < size {
        body.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n");
    }
    body
}
