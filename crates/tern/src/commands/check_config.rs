//! `tern check-config`: load, validate and print the effective configuration.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

/// Prints the effective configuration as TOML, secrets redacted. An invalid configuration is an error, so
/// the process exits 1 with the reason.
pub fn run(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
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
