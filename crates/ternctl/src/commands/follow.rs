//! What `events --follow` and `trace` share: printing lines until the reader goes away, waiting longer
//! between reconnections, and telling a broken stream from a refusal.

use std::io::Write;
use std::time::Duration;

use crate::grpc;

/// The first wait before reconnecting, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Waits between reconnections: twice as long each time, up to a ceiling; back to the start once a stream
/// delivered something.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// Starting at the shortest wait.
    pub fn new() -> Self {
        Backoff { next: BACKOFF.0 }
    }

    /// Waits, and makes the next wait longer.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(BACKOFF.1);
    }

    /// The stream works again.
    pub fn reset(&mut self) {
        self.next = BACKOFF.0;
    }
}

/// Why a stream stopped.
#[derive(Debug)]
pub enum Stop {
    /// The server ended it, or the connection broke: worth opening again (the reason, for people).
    Broken(String),
    /// A refusal or a failure that would come back the same.
    Fatal(anyhow::Error),
    /// Whoever reads our output went away (`| head`): stop quietly.
    ReaderGone,
}

impl Stop {
    /// A failed call or stream read: broken if a retry may help, else fatal (as `error` words it).
    pub fn from_status(status: tonic::Status, error: impl FnOnce(tonic::Status) -> anyhow::Error) -> Self {
        if grpc::transient(&status) {
            Stop::Broken(format!("{:#}", error(status)))
        } else {
            Stop::Fatal(error(status))
        }
    }
}

/// Runs `work` until it ends, or until Ctrl-C (which ends the command quietly, exit 0), whatever it is
/// doing then: reading, or waiting to reconnect.
pub async fn until_interrupted(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Writes one line to stdout and flushes it, so that a pipe sees each line as it comes.
pub fn print_line(line: &str) -> Result<(), Stop> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|_| Stop::ReaderGone)
}

/// A text cell cut to one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
