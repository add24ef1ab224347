//! `smtp-source` (from Postfix): a fast SMTP load generator.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Result;

use crate::process::run_with_timeout;
use crate::require_tool;

/// How long [`run_smtp_source`] lets `smtp-source` run before killing it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One `smtp-source` run; [`SmtpSource::run`] executes it.
#[derive(Debug, Clone)]
pub struct SmtpSource {
    /// Where to connect.
    pub target: SocketAddr,
    /// `-s`: parallel sessions.
    pub sessions: u32,
    /// `-m`: messages in total.
    pub messages: u32,
    /// `-l`: message size in bytes.
    pub size: usize,
    /// `-f`: envelope sender.
    pub from: String,
    /// `-t`: envelope recipient.
    pub to: String,
    /// `-d`: keep each connection open across messages instead of one message per connection.
    pub reuse: bool,
    /// Killed (and reported as an error) when running longer than this.
    pub timeout: Duration,
    /// Other arguments placed before the target (for example `["-r", "5"]` for 5 recipients per message).
    pub extra_args: Vec<String>,
}

impl SmtpSource {
    /// Runs `smtp-source -s N -m M -l SIZE -f FROM -t TO [-d] HOST:PORT`.
    ///
    /// Returns its status and output whatever the exit status (`smtp-source` exits non-zero on a fatal error, for
    /// example a rejected command); check `output.status.success()`. Errors only when it cannot be started or
    /// overruns [`SmtpSource::timeout`].
    pub fn run(&self) -> Result<Output> {
        let mut cmd = Command::new(require_tool("smtp-source")?);
        cmd.arg("-s")
            .arg(self.sessions.to_string())
            .arg("-m")
            .arg(self.messages.to_string())
            .arg("-l")
            .arg(self.size.to_string())
            .arg("-f")
            .arg(&self.from)
            .arg("-t")
            .arg(&self.to);
        if self.reuse {
            cmd.arg("-d");
        }
        cmd.args(&self.extra_args).arg(self.target.to_string());
        run_with_timeout("smtp-source", cmd, self.timeout)
    }
}

/// Runs `smtp-source` once with [`DEFAULT_TIMEOUT`]; see [`SmtpSource::run`].
pub fn run_smtp_source(
    target: SocketAddr,
    sessions: u32,
    messages: u32,
    size: usize,
    from: &str,
    to: &str,
    reuse: bool,
) -> Result<Output> {
    SmtpSource {
        target,
        sessions,
        messages,
        size,
        from: from.to_owned(),
        to: to.to_owned(),
        reuse,
        timeout: DEFAULT_TIMEOUT,
        extra_args: Vec::new(),
    }
    .run()
}
