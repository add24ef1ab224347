//! Integration-test harness for tern: real peers on loopback, never mocks.
//!
//! Every peer is a real program started on a free port on 127.0.0.0/8 and stopped by its pid when its guard is
//! dropped, also when the test panics. Every wait has a deadline, and a failure says what was awaited and shows
//! the peer's output.
//!
//! | peer | type | program (Debian package) |
//! | --- | --- | --- |
//! | Redis | [`RedisServer`], [`RedisCluster`] | `redis-server`, `redis-cli` (redis-server, redis-tools) |
//! | fake MX | [`SmtpSink`] | `smtp-sink` (postfix, in /usr/sbin) |
//! | load | [`run_smtp_source`] | `smtp-source` (postfix, in /usr/sbin) |
//! | DNS | [`Dnsmasq`] | `dnsmasq` (dnsmasq-base) |
//! | TLS | [`TestCa`] | none: made in process with `rcgen` |
//! | connection counter | [`CountingProxy`] | none: a TCP relay on std threads |
//! | Python peers | [`python_with_packages`] | `python3`, `python3-venv`, packages from PyPI |
//!
//! The harness is synchronous (std threads and processes), so it works from plain `#[test]`s and from
//! `#[tokio::test]`s alike; calls that wait block the calling thread for at most their deadline.

#![forbid(unsafe_code)]

pub mod bin;
pub mod dns;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod python;
pub mod redis;
pub mod smtp_sink;
pub mod smtp_source;
pub mod tls;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub use bin::cargo_bin;
pub use dns::{DnsReply, Dnsmasq, DnsmasqBuilder};
pub use ports::{free_port, free_udp_tcp_port, wait_for_tcp};
pub use process::{ChildGuard, run_with_timeout};
pub use proxy::CountingProxy;
pub use python::python_with_packages;
pub use redis::{RedisCluster, RedisServer};
pub use smtp_sink::{SinkCounters, SmtpSink, SmtpSinkBuilder};
pub use smtp_source::{SmtpSource, run_smtp_source};
pub use tls::{CertPaths, ServerCert, TestCa};

/// Directories searched after `PATH`: Postfix puts `smtp-sink` and `smtp-source` in /usr/sbin, which is often not
/// on a non-root `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// The Debian package that provides `tool`, for error messages.
fn debian_package(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "redis-server" => "redis-server",
        "redis-cli" => "redis-tools",
        "smtp-sink" | "smtp-source" => "postfix",
        "dnsmasq" => "dnsmasq-base",
        "swaks" => "swaks",
        "openssl" => "openssl",
        "python3" => "python3",
        "kill" => "procps",
        _ => return None,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the program `name` on `PATH`, then in /usr/sbin, /sbin, /usr/local/sbin, /usr/bin and /bin.
///
/// The error names the Debian package to install when it is a known peer.
pub fn require_tool(name: &str) -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path_dirs)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate));
    match (found, debian_package(name)) {
        (Some(path), _) => Ok(path),
        (None, Some(pkg)) => {
            bail!("{name} not found on PATH or in {EXTRA_DIRS:?}; install it: apt-get install {pkg}")
        }
        (None, None) => bail!("{name} not found on PATH or in {EXTRA_DIRS:?}"),
    }
}

/// Whether this process runs as root (effective uid 0, read from `/proc/self/status`).
///
/// Several peers need a `-u`/`--user` option exactly when started by root.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_tool_finds_sbin_programs_and_names_packages() {
        assert!(require_tool("sh").unwrap().ends_with("sh"));
        let err = require_tool("redis-cli-that-does-not-exist").unwrap_err();
        assert!(err.to_string().contains("not found"));
        assert_eq!(debian_package("smtp-sink"), Some("postfix"));
    }
}
