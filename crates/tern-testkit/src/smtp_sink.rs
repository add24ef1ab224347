//! `smtp-sink` (from Postfix): a fast fake mail exchanger with per-command faults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::ports::{is_listening, wait_until};
use crate::process::ChildGuard;
use crate::{require_tool, running_as_root};

/// How long `smtp-sink` may take to listen after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for an [`SmtpSink`]; made by [`SmtpSink::builder`].
///
/// Faults apply to a whole SMTP command (`"RCPT"`, `"MAIL"`, `"DATA"`, `"EHLO"`, ...) in every session.
#[derive(Debug, Clone)]
#[must_use]
pub struct SmtpSinkBuilder {
    ip: Ipv4Addr,
    port: u16,
    args: Vec<String>,
    dump: Option<DumpTo>,
    backlog: u32,
}

#[derive(Debug, Clone)]
enum DumpTo {
    Dir(PathBuf),
    Temp,
}

impl SmtpSinkBuilder {
    fn flag(mut self, flag: &str, value: &str) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_owned());
        self
    }

    /// `-f CMD`: answer `CMD` with the hard reply (default `500 5.3.0 Error: command failed`).
    pub fn hard_reject(self, command: &str) -> Self {
        self.flag("-f", command)
    }

    /// `-r CMD`: answer `CMD` with the soft reply (default `450 4.3.0 Error: command failed`).
    pub fn soft_reject(self, command: &str) -> Self {
        self.flag("-r", command)
    }

    /// `-Q CMD`: answer `CMD` with `421` and hang up.
    pub fn disconnect_421(self, command: &str) -> Self {
        self.flag("-Q", command)
    }

    /// `-q CMD`: drop the connection on `CMD` without a reply.
    pub fn drop_connection(self, command: &str) -> Self {
        self.flag("-q", command)
    }

    /// `-B TEXT`: the hard reply, for example `"550 5.1.1 User unknown"`.
    pub fn hard_reply(self, reply: &str) -> Self {
        self.flag("-B", reply)
    }

    /// `-b TEXT`: the soft reply, for example `"450 4.2.1 Try later"`.
    pub fn soft_reply(self, reply: &str) -> Self {
        self.flag("-b", reply)
    }

    /// `-w SECONDS`: wait before answering DATA (a slow receiver).
    pub fn delay_data(self, seconds: u32) -> Self {
        self.flag("-w", &seconds.to_string())
    }

    /// `-d DIR/%M.`: dump each transaction to its own file in `dir` (created if missing), with `X-Mail-Args:` and
    /// `X-Rcpt-Args:` lines before the message. The sink then runs with `-u root` so it can write there.
    pub fn dump_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dump = Some(DumpTo::Dir(dir.into()));
        self
    }

    /// Like [`SmtpSinkBuilder::dump_dir`] with a temporary directory owned (and removed) by the sink.
    pub fn dump_to_tempdir(mut self) -> Self {
        self.dump = Some(DumpTo::Temp);
        self
    }

    /// Any other `smtp-sink` argument, placed before the address (for example `"-e"` to disable ESMTP).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// The listen backlog (the last `smtp-sink` argument); 256 unless set.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Starts `smtp-sink -c [-u USER] ... IP:PORT BACKLOG` and waits until it listens (10 s at most).
    pub fn start(self) -> Result<SmtpSink> {
        let program = require_tool("smtp-sink")?;
        let addr = SocketAddr::from((self.ip, self.port));
        let (dump_dir, dump_tmp) = match &self.dump {
            None => (None, None),
            Some(DumpTo::Dir(dir)) => (Some(dir.clone()), None),
            Some(DumpTo::Temp) => {
                let tmp = tempfile::Builder::new()
                    .prefix("tern-testkit-sink-dump-")
                    .tempdir()
                    .context("creating a dump dir")?;
                (Some(tmp.path().to_owned()), Some(tmp))
            }
        };
        let mut cmd = Command::new(program);
        if running_as_root() {
            // Required as root; root when dumping, because the dump dir usually belongs to root.
            cmd.arg("-u")
                .arg(if dump_dir.is_some() { "root" } else { "nobody" });
        }
        cmd.arg("-c");
        if let Some(dir) = &dump_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating dump dir {}", dir.display()))?;
            let mut template = dir.as_os_str().to_owned();
            template.push("/%M.");
            cmd.arg("-d").arg(template);
        }
        cmd.args(&self.args)
            .arg(addr.to_string())
            .arg(self.backlog.to_string());
        let mut child = ChildGuard::spawn("smtp-sink", cmd)?;
        let ready = wait_until(
            &format!("smtp-sink to listen on {addr}"),
            READY_TIMEOUT,
            Duration::from_millis(10),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("smtp-sink exited early with {status}");
                }
                is_listening(addr)
            },
        );
        if let Err(err) = ready {
            return Err(anyhow::anyhow!("{err:#}\n{}", child.logs()));
        }
        Ok(SmtpSink {
            child,
            addr,
            dump_dir,
            _dump_tmp: dump_tmp,
        })
    }
}

/// The running counters `smtp-sink -c` prints (after each session end, QUIT, and end of DATA).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounters {
    /// `sess=`: sessions ended.
    pub sessions: u64,
    /// `quit=`: QUIT commands.
    pub quits: u64,
    /// `mesg=`: messages accepted (end of DATA answered 250).
    pub messages: u64,
}

/// A running `smtp-sink`, killed when dropped.
#[derive(Debug)]
pub struct SmtpSink {
    child: ChildGuard,
    addr: SocketAddr,
    dump_dir: Option<PathBuf>,
    _dump_tmp: Option<TempDir>,
}

impl SmtpSink {
    /// Options for a sink on `ip:port`, for example `127.0.0.22` and the shared MX port of a test.
    pub fn builder(ip: Ipv4Addr, port: u16) -> SmtpSinkBuilder {
        SmtpSinkBuilder {
            ip,
            port,
            args: Vec::new(),
            dump: None,
            backlog: 256,
        }
    }

    /// A sink with no faults on `ip:port`.
    pub fn start(ip: Ipv4Addr, port: u16) -> Result<Self> {
        Self::builder(ip, port).start()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The latest counters printed on stdout (split on `\r`, last line with `mesg=`); zeros before the first.
    pub fn counters(&self) -> SinkCounters {
        let out = self.child.stdout();
        let Some(last) = out.rsplit(['\r', '\n']).find(|s| s.contains("mesg=")) else {
            return SinkCounters::default();
        };
        let field = |key: &str| -> u64 {
            last.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        SinkCounters {
            sessions: field("sess="),
            quits: field("quit="),
            messages: field("mesg="),
        }
    }

    /// Messages accepted so far (the last `mesg=` counter).
    pub fn message_count(&self) -> u64 {
        self.counters().messages
    }

    /// Waits until at least `n` messages were accepted; returns the count then.
    pub fn wait_for_messages(&self, n: u64, timeout: Duration) -> Result<u64> {
        wait_until(
            &format!("smtp-sink on {} to accept {n} messages", self.addr),
            timeout,
            Duration::from_millis(20),
            || Ok(self.message_count() >= n),
        )
        .with_context(|| format!("counters now {:?}", self.counters()))?;
        Ok(self.message_count())
    }

    /// The dump directory, when dumping was asked for.
    pub fn dump_dir(&self) -> Option<&Path> {
        self.dump_dir.as_deref()
    }

    /// The dumped transaction files, oldest first (empty when not dumping).
    pub fn dumped_messages(&self) -> Result<Vec<PathBuf>> {
        let Some(dir) = &self.dump_dir else {
            return Ok(Vec::new());
        };
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort_by(|(ta, a), (tb, b)| ta.cmp(tb).then_with(|| a.cmp(b)));
        Ok(files.into_iter().map(|(_, p)| p).collect())
    }

    /// Stops the sink (SIGTERM, then SIGKILL after 5 s); used to swap a faulty sink for a clean one.
    pub fn stop(&mut self) -> Result<()> {
        self.child.terminate(Duration::from_secs(5)).map(drop)
    }

    /// The process guard (pid, [`ChildGuard::kill_hard`], raw output).
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// The sink's stdout (counters) and stderr.
    pub fn logs(&self) -> String {
        self.child.logs()
    }
}

fn collect_files(dir: &Path, out: &mut Vec<(std::time::SystemTime, PathBuf)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if meta.is_file() {
            out.push((meta.modified()?, entry.path()));
        }
    }
    Ok(())
}
