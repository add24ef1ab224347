//! [`ChildGuard`]: a peer process that is killed when the guard is dropped, with its output kept in files.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// A running child process that is killed (SIGKILL) and reaped when dropped, also when a test panics.
///
/// Its stdout and stderr go to two files (`<name>.stdout`, `<name>.stderr`, opened for append so a restarted
/// peer keeps adding to the same files), so the output never blocks the child and is there to show when a test
/// fails: see [`ChildGuard::logs`].
pub struct ChildGuard {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _own_dir: Option<TempDir>,
}

impl fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("exited", &self.exited)
            .field("stdout", &self.stdout_path)
            .finish()
    }
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))
}

fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("<cannot read {}: {err}>", path.display()),
    }
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and its output in a temporary directory owned by the guard.
    ///
    /// `name` labels the log files and error messages (for example `"redis-server"`).
    pub fn spawn(name: &str, cmd: Command) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tern-testkit-{name}-"))
            .tempdir()
            .context("creating a log directory")?;
        let mut guard = Self::spawn_logging_to(name, cmd, dir.path())?;
        guard._own_dir = Some(dir);
        Ok(guard)
    }

    /// Spawns `cmd` with stdin closed and its output appended to `<log_dir>/<name>.stdout` and `.stderr`.
    pub fn spawn_logging_to(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(append(&stdout_path)?)
            .stderr(append(&stderr_path)?);
        let child = cmd.spawn().with_context(|| format!("spawning {name}: {cmd:?}"))?;
        tracing::debug!(name, pid = child.id(), "spawned peer");
        Ok(Self {
            name: name.to_owned(),
            child,
            exited: None,
            stdout_path,
            stderr_path,
            _own_dir: None,
        })
    }

    /// The label given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.exited {
            return Ok(Some(status));
        }
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("checking whether {} exited", self.name))?;
        self.exited = status;
        Ok(status)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for the child to exit; `None` if it is still running then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child with SIGKILL and reaps it: a crash, with no chance to flush or clean up.
    ///
    /// Returns the exit status; a child that had already exited is just reaped.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        match self.child.kill() {
            Ok(()) => {}
            // Exited between try_wait and kill.
            Err(err) if err.kind() == ErrorKind::InvalidInput => {}
            Err(err) => return Err(err).with_context(|| format!("SIGKILL to {}", self.name)),
        }
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {} after SIGKILL", self.name))?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM (through the `kill` program) and waits up to `grace` for a clean exit, then SIGKILLs.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let out = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .output()
            .context("running `kill -TERM` (procps)")?;
        if !out.status.success() && self.try_wait()?.is_none() {
            bail!(
                "`kill -TERM {}` failed for {}: {}",
                self.pid(),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => {
                tracing::warn!(name = %self.name, ?grace, "no exit after SIGTERM; sending SIGKILL");
                self.kill_hard()
            }
        }
    }

    /// Path of the file holding the child's stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Path of the file holding the child's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the child wrote to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Both outputs with headers, for error messages and failing tests.
    pub fn logs(&self) -> String {
        format!(
            "--- {} (pid {}) stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.pid(),
            self.stdout().trim_end(),
            self.name,
            self.stderr().trim_end()
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(err) = self.kill_hard() {
            tracing::warn!(name = %self.name, "could not kill peer on drop: {err:#}");
        }
    }
}

/// Runs `cmd` to completion with stdin closed, killing it (SIGKILL) if it runs longer than `timeout`.
///
/// Returns its exit status and output whatever the status; a time-out is an error that shows the output so far.
pub fn run_with_timeout(name: &str, cmd: Command, timeout: Duration) -> Result<Output> {
    let mut guard = ChildGuard::spawn(name, cmd)?;
    match guard.wait_timeout(timeout)? {
        Some(status) => Ok(Output {
            status,
            stdout: std::fs::read(&guard.stdout_path).unwrap_or_default(),
            stderr: std::fs::read(&guard.stderr_path).unwrap_or_default(),
        }),
        None => {
            guard.kill_hard()?;
            bail!(
                "{name} did not finish within {timeout:?}; killed it\n{}",
                guard.logs()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_kills_on_drop() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; echo oops >&2; exec sleep 30"]);
        let mut guard = ChildGuard::spawn("sh", cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !guard.stderr().contains("oops") && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(guard.stdout().contains("hello"));
        assert!(guard.logs().contains("oops"));
        assert!(guard.is_running());
        let pid = guard.pid();
        drop(guard);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived the drop"
        );
    }

    #[test]
    fn terminate_sends_sigterm() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut guard = ChildGuard::spawn("sleep", cmd).unwrap();
        let status = guard.terminate(Duration::from_secs(5)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
    }

    #[test]
    fn run_with_timeout_returns_output_or_kills() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; exit 3"]);
        let out = run_with_timeout("sh", cmd, Duration::from_secs(5)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let err = run_with_timeout("sleep", cmd, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }
}
