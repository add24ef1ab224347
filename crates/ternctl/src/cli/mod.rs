//! The command line: the flags before the command, the commands, and the connection each one takes.
//!
//! The admin commands (`queue`, `msg`, `domain`, `sts`, `events`, `trace`) talk to the control plane:
//! `--server` (`TERN_SERVER`) and an admin key, `--token` (`TERN_ADMIN_TOKEN`). `send` talks to an ingest
//! node: `--ingest` (`TERN_INGEST`) and an ingest API key, `--token` (`TERN_TOKEN`). Each command lists only
//! the flags it uses; `--server`, `--token` and `--json` may also come before the command, as in
//! `ternctl --server host:port queue status`.

mod domain;
mod msg;
mod queue;
mod sts;
pub mod values;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::ArgValueCompleter;

pub use domain::DomainCommand;
pub use msg::{ActionArgs, FindArgs, MsgCommand};
pub use queue::{BulkArgs, FilterArgs, ListArgs, QueueCommand};
pub use sts::{StsCommand, StsListArgs};

use crate::complete;

/// ternctl: send mail through tern and inspect and repair its queue.
#[derive(Debug, Parser)]
#[command(name = "ternctl", version, about, subcommand_required = true)]
pub struct Cli {
    /// Flags given before the command.
    #[command(flatten)]
    pub top: TopFlags,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--server`, `--token` and `--json` before the command (each command also takes the ones it uses after
/// its name).
#[derive(Debug, Args)]
pub struct TopFlags {
    /// The control plane's address for the admin commands: host:port or http(s)://host:port [env:
    /// TERN_SERVER] [default: 127.0.0.1:7070]. `send` uses --ingest instead.
    #[arg(long, value_name = "ADDR", value_parser = values::server_url)]
    pub server: Option<String>,

    /// The API key: an admin key for the admin commands [env: TERN_ADMIN_TOKEN], an ingest key for `send`
    /// [env: TERN_TOKEN].
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub token: Option<String>,

    /// Print JSON (one document, or JSON lines for streams) instead of text for people.
    #[arg(long)]
    pub json: bool,
}

/// How an admin command reaches the control plane (listed apart in the help, after the command's own
/// flags).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Connection and output")]
pub struct Conn {
    /// The control plane's address: host:port or http(s)://host:port [env: TERN_SERVER] [default:
    /// 127.0.0.1:7070].
    #[arg(long, global = true, value_name = "ADDR", value_parser = values::server_url)]
    pub server: Option<String>,

    /// The admin key, sent as `authorization: Bearer <key>` [env: TERN_ADMIN_TOKEN].
    #[arg(long, global = true, value_name = "KEY", allow_hyphen_values = true)]
    pub token: Option<String>,

    /// Print JSON (one document, or JSON lines for streams) instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What the control-plane commands run with: the flags and variables resolved.
#[derive(Debug, Clone)]
pub struct Global {
    /// The control plane's URL.
    pub server: String,
    /// The admin key, if any.
    pub token: Option<String>,
    /// JSON output.
    pub json: bool,
}

/// ternctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message through the gRPC Send API of an ingest node; prints its message id.
    Send(SendArgs),
    /// Look at the queue (totals, shape by age, listings, a live view) and act on jobs by filter.
    Queue {
        /// The connection.
        #[command(flatten)]
        conn: Conn,
        /// What to do.
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Messages: show one (queued or finished), find them, hold, release, retry, bounce or delete them.
    Msg {
        /// The connection.
        #[command(flatten)]
        conn: Conn,
        /// What to do.
        #[command(subcommand)]
        command: MsgCommand,
    },
    /// Suspend and resume deliveries to a domain, or route its mail to another host, cluster-wide.
    Domain {
        /// The connection.
        #[command(flatten)]
        conn: Conn,
        /// What to do.
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// MTA-STS policies cached by the cluster (show, refresh now, list, evict) and TLS reports (counts,
    /// send now).
    Sts {
        /// The connection.
        #[command(flatten)]
        conn: Conn,
        /// What to do.
        #[command(subcommand)]
        command: StsCommand,
    },
    /// Print the queue's events, one line each (JSON lines with --json).
    Events(EventsArgs),
    /// Watch the SMTP conversations of deliveries live, from every worker of the cluster. Ctrl-C to stop.
    Trace(TraceArgs),
    /// Print a shell completion script.
    ///
    /// The script asks ternctl for completions as you type: commands, flags, states and event kinds, and
    /// the domains and message ids of the control plane at TERN_SERVER (with TERN_ADMIN_TOKEN). Load it
    /// with e.g. `source <(ternctl completions bash)`; `COMPLETE=bash ternctl` prints the same.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        /// A static script instead: commands, flags and fixed values only, without calling ternctl.
        #[arg(long = "static")]
        static_script: bool,
    },
}

/// `ternctl events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The connection.
    #[command(flatten)]
    pub conn: Conn,
    /// Keep waiting for new events (without it: print the retained events and stop). Reconnects and
    /// resumes where it was when the control plane restarts.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only this event kind; repeat for more.
    #[arg(long = "type", visible_alias = "kind", value_name = "KIND", value_parser = values::kinds())]
    pub types: Vec<String>,
    /// Only this domain.
    #[arg(long, value_name = "D", add = ArgValueCompleter::new(complete::domains))]
    pub domain: Option<String>,
    /// Only this tag, `key=value` or `key`.
    #[arg(long, value_name = "TAG", value_parser = values::tag_filter)]
    pub tag: Option<String>,
    /// Start here: `start` (the oldest retained), `now`, or the `position` of an event (printed with
    /// --json). Default: `start`, or `now` with --follow.
    #[arg(long, value_name = "POS")]
    pub from: Option<String>,
}

/// `ternctl trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The connection.
    #[command(flatten)]
    pub conn: Conn,
    /// Only deliveries to this domain.
    #[arg(long, value_name = "D", add = ArgValueCompleter::new(complete::domains))]
    pub domain: Option<String>,
    /// Only connections to this MX host name or IP address.
    #[arg(long, value_name = "HOST")]
    pub mx: Option<String>,
}

/// `ternctl send`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("content").required(true).args(["text", "html_file", "raw_file"])))]
pub struct SendArgs {
    /// The ingest node's gRPC address: host:port or http(s)://host:port.
    #[arg(
        long,
        env = "TERN_INGEST",
        default_value = "http://127.0.0.1:7071",
        value_name = "ADDR",
        value_parser = values::server_url
    )]
    pub ingest: String,

    /// The ingest API key, sent as `authorization: Bearer <key>` [env: TERN_TOKEN].
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub token: Option<String>,

    /// Print the response as JSON (message id, accepted, rejected, duplicate).
    #[arg(long)]
    pub json: bool,

    /// The sender (From header and envelope sender).
    #[arg(long, value_name = "ADDRESS", required_unless_present = "raw_file")]
    pub from: Option<String>,

    /// A recipient; repeat for more.
    #[arg(long, value_name = "ADDRESS", required_unless_present = "raw_file")]
    pub to: Vec<String>,

    /// The subject.
    #[arg(long, value_name = "TEXT")]
    pub subject: Option<String>,

    /// A plain-text body.
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,

    /// An HTML body, read from this file.
    #[arg(long, value_name = "FILE")]
    pub html_file: Option<PathBuf>,

    /// A whole RFC 5322 message, read from this file (`-` for standard input). With --from and --to, they
    /// form the envelope; without them, the envelope comes from the message's headers.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["subject", "attach"])]
    pub raw_file: Option<PathBuf>,

    /// Attach this file; repeat for more.
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,

    /// A tag `key=value` carried into the queue's events; repeat for more.
    #[arg(long, value_name = "KEY=VALUE", value_parser = values::tag_pair)]
    pub tag: Vec<(String, String)>,

    /// A key that makes retries safe: the same key within 24 h queues nothing new and returns the first
    /// message's id (said on stderr: "duplicate").
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub idempotency_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn send_lists_no_control_plane_flag() {
        let mut cmd = Cli::command();
        let send = cmd
            .find_subcommand_mut("send")
            .map(|c| c.render_long_help().to_string());
        let help = send.unwrap_or_default();
        assert!(help.contains("--ingest") && help.contains("TERN_TOKEN"), "{help}");
        assert!(
            !help.contains("--server") && !help.contains("TERN_ADMIN_TOKEN"),
            "{help}"
        );
    }
}
