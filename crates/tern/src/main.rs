//! `tern`: one binary for every server role of a tern cluster, plus the small tools an operator needs to set
//! one up.
#![forbid(unsafe_code)]

mod banner;
mod cli;
mod commands;
mod mta_sts;
mod queue;
mod roles;
mod signals;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

/// With the `jemalloc` feature, jemalloc allocates for every role (see `Cargo.toml` for why it is optional).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator this binary was built with, as `tern version --verbose` names it.
pub(crate) const ALLOCATOR_NAME: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else {
    "system"
};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The chain of causes on one line, so scripts and people see the whole reason at once. A cause whose text
/// the line already holds is left out: many errors print their source in their own message, and the OS error
/// would otherwise appear twice ("Address already in use (os error 98): Address already in use (os error 98)").
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its source in its own message, as `IngestError::Bind` does.
    #[derive(Debug)]
    struct BindError {
        source: std::io::Error,
    }

    impl std::fmt::Display for BindError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot listen on 127.0.0.1:25: {}", self.source)
        }
    }

    impl std::error::Error for BindError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "Address already in use (os error 98)",
        );
        let error = anyhow::Error::new(BindError { source: io }).context("ingest");
        assert_eq!(
            one_line(&error),
            "ingest: cannot listen on 127.0.0.1:25: Address already in use (os error 98)"
        );
    }

    #[test]
    fn distinct_causes_are_all_printed() {
        let error = anyhow::anyhow!("root cause").context("middle").context("top");
        assert_eq!(one_line(&error), "top: middle: root cause");
    }
}
