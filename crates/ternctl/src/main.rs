//! `ternctl`: the admin CLI for a tern cluster.
//!
//! Exit codes: 0 on success; 1 on a failure, with a one-line reason on stderr (unreachable server, refused
//! key, invalid message); 2 on a usage error.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod grpc;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let Some(command) = cli.command else {
        // Asking for nothing is asking for help; it is not an error.
        let mut cmd = cli::Cli::command();
        if let Err(e) = cmd.print_help() {
            eprintln!("ternctl: error: cannot print help: {e}");
            return ExitCode::FAILURE;
        }
        println!();
        return ExitCode::SUCCESS;
    };
    match commands::run(&cli.global, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternctl: error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Error chains may hold newlines (a server's message, a transport error); the contract is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
