//! The command line: global flags and subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// ternctl: send mail through tern and inspect and repair its queue.
#[derive(Debug, Parser)]
#[command(name = "ternctl", version, about)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: Global,

    /// What to do; without one, ternctl prints this help.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The control-plane address.
    #[arg(
        long,
        global = true,
        env = "TERN_SERVER",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    pub server: String,

    /// The API key, sent as `authorization: Bearer <key>` to whichever server the command talks to (an
    /// ingest API key for `send`, an admin key for the control plane).
    #[arg(
        long,
        global = true,
        env = "TERN_TOKEN",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub token: Option<String>,

    /// Print one JSON document (JSON lines for streams) instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

/// ternctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message through the gRPC Send API of an ingest node; prints its message id.
    Send(SendArgs),
    /// Look at the queue: totals, shape by age, listings, a live view.
    Queue {
        /// What to show.
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// One message: show it, retry it now, bounce it (with a DSN) or delete it (without).
    Msg {
        /// What to do.
        #[command(subcommand)]
        command: MsgCommand,
    },
    /// Suspend and resume deliveries to a domain, cluster-wide.
    Domain {
        /// What to do.
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// MTA-STS policies cached by the cluster (show, refresh now, list, evict) and TLS reports (counts,
    /// send now).
    Sts {
        /// What to do.
        #[command(subcommand)]
        command: StsCommand,
    },
    /// Print the queue's events as JSON lines.
    Events(EventsArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `ternctl queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Totals by state, the oldest message's age, the deepest domains and recent rates.
    Status {
        /// How many domains to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: u32,
    },
    /// Jobs by domain and age (like qshape): 0-5m ... 320m+ and a total row.
    Shape {
        /// How many domains to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: u32,
    },
    /// Jobs matching the filters, one per message and destination domain.
    List(ListArgs),
    /// A live view refreshed every second: rates, depth, top domains. Ctrl-C to stop.
    Top {
        /// How many domains to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: u32,
        /// Stop after this many refreshes (0: never).
        #[arg(long, default_value_t = 0, value_name = "N", hide = true)]
        iterations: u64,
    },
}

/// `ternctl queue list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Destination domain.
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// Envelope sender.
    #[arg(long, value_name = "S")]
    pub sender: Option<String>,
    /// A recipient.
    #[arg(long, value_name = "R")]
    pub rcpt: Option<String>,
    /// queued, deferred or inflight.
    #[arg(long, value_name = "S")]
    pub state: Option<String>,
    /// Only jobs first queued at least this long ago (`90s`, `30m`, `1h`).
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
    /// Only jobs with at least this many attempts.
    #[arg(long, value_name = "N")]
    pub min_attempts: Option<u32>,
    /// A tag, `key=value` or `key`.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
    /// Continue from the cursor a previous listing printed.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

/// `ternctl msg ...`.
#[derive(Debug, Subcommand)]
pub enum MsgCommand {
    /// Envelope, jobs, per-recipient state and attempt history of one message.
    Show {
        /// A message id (or a job id).
        id: String,
        /// Print the message content too.
        #[arg(long)]
        body: bool,
    },
    /// Make messages due now.
    Retry(ActionArgs),
    /// Fail messages with a DSN to the sender.
    Bounce(ActionArgs),
    /// Delete messages without a DSN.
    Delete(ActionArgs),
}

/// The messages an action applies to: ids, or every waiting message of a domain.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["ids", "domain"])))]
pub struct ActionArgs {
    /// Message ids (or job ids).
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Every message of this destination domain.
    #[arg(long, value_name = "D", conflicts_with = "ids")]
    pub domain: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `ternctl domain ...`.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Stop deliveries to a domain (until resumed, or for a time).
    Suspend {
        /// The domain.
        domain: String,
        /// How long (`30m`, `1h`); without it, until resumed.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why (shown in listings).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// End a domain's suspension.
    Resume {
        /// The domain.
        domain: String,
    },
    /// Every suspension in force.
    List,
}

/// `ternctl sts ...`.
#[derive(Debug, Subcommand)]
pub enum StsCommand {
    /// A domain's cached policy: state, mode, MX patterns, expiry, id and last fetch error.
    Show {
        /// The policy domain (A-label form).
        domain: String,
    },
    /// Fetch a domain's policy now and show it.
    ///
    /// The control node looks up the domain's TXT record, fetches the policy over HTTPS and stores it for
    /// the whole cluster, whatever is cached. Fails (exit 1) when nothing was fetched; the error is kept in
    /// the cache entry, and a cached policy keeps applying until it expires.
    Refresh {
        /// The policy domain (A-label form).
        domain: String,
    },
    /// Cached policies, in domain order.
    List(StsListArgs),
    /// Remove a domain's cached policy: the next delivery to it discovers its policy anew.
    Evict {
        /// The policy domain (A-label form).
        domain: String,
    },
    /// A policy domain's TLS session counts (TLS-RPT, RFC 8460) of one UTC day: successes and failures
    /// by result type, MX host and addresses.
    Report {
        /// The policy domain (A-label form).
        domain: String,
        /// The UTC day, YYYY-MM-DD (default: today).
        #[arg(long, value_name = "YYYY-MM-DD")]
        day: Option<String>,
    },
    /// Send the TLS reports of a day now, as the daily run does: each domain with counts that publishes
    /// a _smtp._tls record and was not sent its report yet.
    ///
    /// Prints per domain where the report went and what failed; exit 1 when a domain's report was not
    /// sent (no URI took it, its TXT lookup failed, it could not be made) or the run was cut short.
    SendReports {
        /// The UTC day, YYYY-MM-DD, or `today` (its counts are not complete yet). Default: yesterday.
        #[arg(long, value_name = "YYYY-MM-DD|today")]
        day: Option<String>,
    },
}

/// `ternctl sts list`.
#[derive(Debug, Args)]
pub struct StsListArgs {
    /// At most this many policies.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Every policy, however many.
    #[arg(long, conflicts_with_all = ["limit", "cursor"])]
    pub all: bool,
    /// Continue from the cursor a previous listing printed.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

/// `ternctl events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep waiting for new events (without it: print the retained events and stop).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only this event type (queued, delivered, deferred, failed, expired, deleted, bounced, ...); repeat
    /// for more.
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Only this domain.
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// Only this tag, `key=value` or `key`.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Start here: `start` (the oldest retained), `now`, or a `position` printed with an event. Default:
    /// `start`, or `now` with --follow.
    #[arg(long, value_name = "POS")]
    pub from: Option<String>,
}

/// `ternctl send`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("content").required(true).args(["text", "html_file", "raw_file"])))]
pub struct SendArgs {
    /// The ingest node's gRPC address.
    #[arg(
        long,
        env = "TERN_INGEST",
        default_value = "http://127.0.0.1:7071",
        value_name = "URL"
    )]
    pub ingest: String,

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
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tag: Vec<(String, String)>,

    /// A key that makes retries safe: the same key within 24 h returns the first message's id.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}
