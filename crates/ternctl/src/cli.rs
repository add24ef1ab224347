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
