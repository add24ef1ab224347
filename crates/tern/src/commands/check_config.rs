//! `tern check-config`: load and validate the configuration, run every check that starting each role would
//! run (files readable, keys files valid, a keyless gRPC listener on loopback, the queue URL), and print the
//! effective configuration. It binds nothing and does not contact Redis, so it can gate a deployment.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::roles::Role;

/// Prints the effective configuration as TOML, secrets redacted. An invalid configuration, or one that a role
/// would refuse at startup, is an error, so the process exits 1 with the reason.
pub fn run(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    crate::roles::check(&config, &[Role::Ingest, Role::Worker, Role::Control])?;
    let text = tern_config::redact::to_redacted_toml(&config).context("cannot print the configuration")?;
    match path {
        Some(p) => println!(
            "# effective configuration from {} (secrets redacted)",
            p.display()
        ),
        None => println!("# effective configuration: built-in defaults (secrets redacted)"),
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
