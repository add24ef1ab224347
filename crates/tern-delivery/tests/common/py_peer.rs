//! Python peers run from this directory: the CHUNKING receiver (`bdat_peer.py`), the XOAUTH2 relay and the
//! OAuth token endpoint (`oauth_peers.py`). Each writes what it saw into its own directory; the guard kills
//! it when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tern_testkit::ChildGuard;

/// A running Python peer and the directory it writes to.
pub struct PyPeer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: ChildGuard,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/common")
        .join(name)
}

impl PyPeer {
    /// Starts `python3 <script> <args before the address> HOST PORT DIR <extra>` and waits (bounded) until
    /// it says it listens.
    pub fn start(name: &str, script_name: &str, lead: &[&str], addr: SocketAddr, extra: &[&str]) -> PyPeer {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(script(script_name))
            .args(lead)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(dir.path())
            .args(extra);
        let mut child = ChildGuard::spawn(name, cmd).expect("python3 must be installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.path().join("ready").exists() {
            assert!(child.is_running(), "{name} exited: {}", child.logs());
            assert!(
                Instant::now() < deadline,
                "{name} never got ready: {}",
                child.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PyPeer { addr, dir, child }
    }

    /// The CHUNKING receiver (see `bdat_peer.py` for `extra`).
    pub fn bdat(addr: SocketAddr, extra: &[&str]) -> PyPeer {
        PyPeer::start("bdat-peer", "bdat_peer.py", &[], addr, extra)
    }

    /// The messages received so far, in order: the octets and what the peer noted about them.
    pub fn messages(&self) -> Vec<(Vec<u8>, serde_json::Value)> {
        let mut out = Vec::new();
        for n in 1.. {
            let eml = self.dir.path().join(format!("{n}.eml"));
            let Ok(data) = std::fs::read(&eml) else { break };
            let meta = std::fs::read_to_string(self.dir.path().join(format!("{n}.json"))).unwrap();
            out.push((data, serde_json::from_str(&meta).unwrap()));
        }
        out
    }

    /// The lines of one of its logs (`commands.log`, `sessions.log`, `requests.log`...).
    pub fn log(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The peer's output, for failure messages.
    pub fn output(&self) -> String {
        self.child.logs()
    }
}
