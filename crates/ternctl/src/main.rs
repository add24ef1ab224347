//! `ternctl`: the admin CLI for a tern cluster.
//!
//! It talks to the control plane's gRPC API. The global flags are fixed now so that scripts can rely on them;
//! the commands arrive with the control-plane capability, and until then `ternctl` prints its help.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

/// ternctl: inspect and repair a tern cluster's queue.
#[derive(Debug, Parser)]
#[command(name = "ternctl", version, about)]
struct Cli {
    /// The control-plane address.
    #[arg(
        long,
        global = true,
        env = "TERN_SERVER",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    server: String,

    /// The admin API key, sent as `authorization: Bearer <key>`.
    #[arg(
        long,
        global = true,
        env = "TERN_TOKEN",
        hide_env_values = true,
        value_name = "KEY"
    )]
    token: Option<String>,

    /// Print one JSON document (JSON lines for streams) instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    // No command has landed yet: show what there is, and succeed, since asking for help is not an error.
    let mut cmd = Cli::command();
    if let Err(e) = cmd.print_help() {
        eprintln!("ternctl: error: cannot print help: {e}");
        return ExitCode::FAILURE;
    }
    println!();
    ExitCode::SUCCESS
}
