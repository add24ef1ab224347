//! Real `redis-server` instances on loopback: a single server ([`RedisServer`]) and a cluster ([`RedisCluster`]).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::ports::{free_port, free_port_pair, wait_until};
use crate::process::{ChildGuard, run_with_timeout};
use crate::require_tool;

/// How long a server may take to answer PING after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster may take to reach `cluster_state:ok` on every node.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `redis-cli` invocation may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Redis Cluster's bus listens on the client port plus this.
const CLUSTER_BUS_OFFSET: u16 = 10000;

/// One `redis-server` on `127.0.0.1` with a free port and its own temporary data directory.
///
/// The process is killed when this value is dropped; the directory is removed with it.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    root: TempDir,
    data: PathBuf,
    args: Vec<String>,
    child: Option<ChildGuard>,
}

/// How many ports [`RedisServer::start`] tries before it gives up.
const PORT_ATTEMPTS: u32 = 5;
/// What redis-server logs when its port is taken.
const PORT_TAKEN: &str = "Address already in use";

impl RedisServer {
    /// Starts a throw-away server: no RDB snapshots, no AOF (`--save "" --appendonly no`).
    pub fn start() -> Result<Self> {
        Self::launch_on_a_free_port(free_port, &["--appendonly", "no"])
    }

    /// Starts a server that fsyncs every write to its AOF (`--appendonly yes --appendfsync always`), so a write
    /// that was acknowledged survives [`RedisServer::kill_hard`] and is there again after [`RedisServer::restart`].
    pub fn start_durable() -> Result<Self> {
        Self::launch_on_a_free_port(free_port, &["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// Starts a server on `port` with extra `redis-server` arguments (after the defaults, so they win).
    pub fn start_with_args(port: u16, extra: &[&str]) -> Result<Self> {
        Self::launch(port, extra)
    }

    /// Launches on a port from `pick`, and on another one when the server could not bind it: a port free when
    /// it was picked can be taken by another test process before the server binds it (seen in CI: `bind:
    /// Address already in use`, the test failing before it began).
    fn launch_on_a_free_port(mut pick: impl FnMut() -> Result<u16>, extra: &[&str]) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::launch(pick()?, extra) {
                Err(e) if attempt < PORT_ATTEMPTS && format!("{e:#}").contains(PORT_TAKEN) => attempt += 1,
                launched => return launched,
            }
        }
    }

    fn launch(port: u16, extra: &[&str]) -> Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("tern-testkit-redis-")
            .tempdir()
            .context("creating a redis temp dir")?;
        let data = root.path().join("data");
        std::fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        let mut server = Self {
            port,
            root,
            data,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        server.spawn_and_wait()?;
        Ok(server)
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let program = require_tool("redis-server")?;
        let mut cmd = Command::new(program);
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.data)
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(["--logfile", ""])
            .args(&self.args);
        let mut child = ChildGuard::spawn_logging_to("redis-server", cmd, self.root.path())?;
        let addr = self.addr();
        let ready = wait_until(
            &format!("redis-server on {addr} to answer PING"),
            READY_TIMEOUT,
            Duration::from_millis(20),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("redis-server exited early with {status}");
                }
                Ok(resp_call(addr, &["PING"]).is_ok_and(|r| r == "PONG"))
            },
        );
        if let Err(err) = ready {
            return Err(anyhow::anyhow!("{err:#}\n{}", child.logs()));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The data directory (`--dir`): the AOF directory and `nodes.conf` live here.
    pub fn dir(&self) -> &Path {
        &self.data
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Simulates a crash: SIGKILL, no shutdown save. The data directory is kept for [`RedisServer::restart`].
    pub fn kill_hard(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child.kill_hard()?;
        }
        Ok(())
    }

    /// Stops the server cleanly (SIGTERM, up to 10 s, then SIGKILL). The data directory is kept.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same directory, so it reloads its AOF, and waits until
    /// it answers PING (which it does only once loading is done). A running server is stopped first.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        // Dropping the old guard only reaps; the process is already gone.
        self.child = None;
        self.spawn_and_wait()
            .with_context(|| format!("restarting redis-server on port {}", self.port))
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` and returns its stdout with the final newline removed.
    ///
    /// Fails if `redis-cli` exits non-zero. Note that `redis-cli` exits 0 on a Redis error reply when it is not
    /// given `-e`; the reply text (`ERR ...`) is then in the returned string.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        redis_cli(self.port, args)
    }

    /// The server's stdout and stderr over all its runs (it logs to stdout).
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.root.path().join(name)).unwrap_or_default();
        format!(
            "--- redis-server :{} ---\n{}{}",
            self.port,
            read("redis-server.stdout"),
            read("redis-server.stderr")
        )
    }
}

fn redis_cli(port: u16, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(require_tool("redis-cli")?);
    cmd.args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args);
    let out = run_with_timeout("redis-cli", cmd, CLI_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "redis-cli -p {port} {} exited with {}: {}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_owned())
}

/// Sends one command over RESP and returns a simple-string, integer or bulk-string reply as text.
///
/// An error reply (`-ERR ...`, `-LOADING ...`) is an `Err`. Arrays are not supported. This exists so readiness
/// checks need neither `redis-cli` processes nor an async runtime.
pub fn resp_call(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("*{}\r\n", args.len());
    for arg in args {
        req.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| anyhow!("empty RESP reply from {addr}"))?;
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => bail!("redis error from {addr}: {rest}"),
        "$" => {
            let len: i64 = rest
                .parse()
                .with_context(|| format!("bad bulk length {rest:?}"))?;
            let Ok(len) = usize::try_from(len) else {
                bail!("nil reply from {addr}");
            };
            let mut buf = vec![0u8; len + 2];
            std::io::Read::read_exact(&mut reader, &mut buf)?;
            buf.truncate(len);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => bail!("unsupported RESP reply from {addr}: {line:?}"),
    }
}

/// A Redis Cluster of `masters` masters and no replicas, each a [`RedisServer`] with its own port and directory.
///
/// Each node's port `p` is picked so that its cluster bus port `p + 10000` is free as well.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) cluster-enabled servers, joins them with
    /// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, and waits (30 s at most) until every
    /// node reports `cluster_state:ok` and knows all the others.
    pub fn start(masters: usize) -> Result<Self> {
        if masters < 3 {
            bail!("redis-cli --cluster create needs at least 3 masters, got {masters}");
        }
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let port = free_port_pair(CLUSTER_BUS_OFFSET)?;
            nodes.push(RedisServer::launch(
                port,
                &[
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    // Relative to --dir, so each node has its own.
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )?);
        }
        let cluster = Self { nodes };
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(cluster.nodes.iter().map(|n| n.addr().to_string()));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(str::to_owned));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let first = cluster.nodes[0].port;
        let created = redis_cli(first, &args).context("creating the cluster")?;
        if !created.contains("[OK] All 16384 slots covered") {
            bail!("redis-cli --cluster create did not cover all slots:\n{created}");
        }
        cluster.wait_ok(CLUSTER_READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// Waits until every node says `cluster_state:ok` and `cluster_known_nodes:<node count>`.
    pub fn wait_ok(&self, timeout: Duration) -> Result<()> {
        let want_known = format!("cluster_known_nodes:{}", self.nodes.len());
        let mut last = String::new();
        let res = wait_until(
            "cluster_state:ok on every node",
            timeout,
            Duration::from_millis(100),
            || {
                for node in &self.nodes {
                    match resp_call(node.addr(), &["CLUSTER", "INFO"]) {
                        Ok(info) if info.contains("cluster_state:ok") && info.contains(&want_known) => {}
                        Ok(info) => {
                            last = format!("node {}:\n{info}", node.addr());
                            return Ok(false);
                        }
                        Err(err) => {
                            last = format!("node {}: {err:#}", node.addr());
                            return Ok(false);
                        }
                    }
                }
                Ok(true)
            },
        );
        res.map_err(|err| {
            let logs: Vec<String> = self.nodes.iter().map(RedisServer::logs).collect();
            anyhow!("{err:#}\nlast CLUSTER INFO {last}\n{}", logs.join("\n"))
        })
    }

    /// The nodes, in the order they were created; kill or restart one to test failover handling.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes (for [`RedisServer::kill_hard`] and [`RedisServer::restart`]).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// One `redis://127.0.0.1:P/` URL per node, usable as cluster seeds.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The seed URLs joined with commas (the form a config value or environment variable takes).
    pub fn urls_comma(&self) -> String {
        self.seed_urls().join(",")
    }

    /// Runs `redis-cli -c -p <first node> ARGS...` (`-c` follows MOVED/ASK redirections).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        redis_cli(self.nodes[0].port, &all)
    }
}

/// The tern queue's shard of a destination domain: 32-bit FNV-1a of the lower-cased domain, modulo `shards`.
/// Written out here again, apart from `tern-queue`'s `keys.rs`, so that tests that place domains on shards
/// check the queue's layout rather than repeat it.
pub fn queue_shard_of(domain: &str, shards: u32) -> u32 {
    let hash = domain.to_ascii_lowercase().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_before_the_server_binds_it_is_exchanged_for_another() -> Result<()> {
        // The first port picked is held by this listener, as another test process could hold it.
        let holder = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let taken = holder.local_addr()?.port();
        let mut picks = vec![free_port()?, taken];
        let server = RedisServer::launch_on_a_free_port(
            || picks.pop().context("no port left to pick"),
            &["--appendonly", "no"],
        )?;
        assert_ne!(server.port(), taken);
        assert_eq!(resp_call(server.addr(), &["PING"])?, "PONG");
        Ok(())
    }
}
