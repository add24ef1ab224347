//! `tern`: one binary for every server role of a tern cluster, plus the small tools an operator needs to set
//! one up.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod queue;
mod roles;
mod signals;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes joined, so scripts and people see the whole reason at once.
            eprintln!("tern: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
