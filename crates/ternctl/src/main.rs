//! `ternctl`: the admin CLI for a tern cluster.
//!
//! Exit codes: 0 on success; 1 on a failure, with a one-line reason on stderr (unreachable server, refused
//! key, invalid message); 2 on a usage error (an unknown flag, a bad value, no command), with the reason
//! and the usage on stderr.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod complete;
mod grpc;
mod timefmt;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

/// A mistake in how ternctl was called that only shows once the flags are read together (a flag that the
/// command does not take from there, a bad environment variable): exit 2, like clap's usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn main() -> ExitCode {
    // `COMPLETE=bash ternctl ...`: the shell asks for completions; answered here, and the process exits.
    clap_complete::CompleteEnv::with_factory(cli::Cli::command).complete();
    // Nothing at all is a usage error too, told briefly (clap would print the whole help).
    if std::env::args_os().len() <= 1 {
        cli::Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "no command given (commands: send, queue, msg, domain, sts, events, trace, completions)",
            )
            .exit();
    }
    // Usage errors (a missing command included) exit 2 with the usage on stderr; --help and --version exit
    // 0.
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternctl: error: {}", one_line(&format!("{e:#}")));
            if e.is::<Usage>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Error chains may hold newlines (a server's message, a transport error); the contract is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
