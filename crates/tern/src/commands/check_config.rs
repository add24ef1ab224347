//! `tern check-config`: load and validate the configuration, run every check that starting each role would
//! run (files readable, keys files valid, a keyless gRPC listener on loopback, the queue URL,
//! `TOKIO_WORKER_THREADS`), and print the effective configuration. It binds nothing and does not contact
//! Redis, so it can gate a deployment. `--role` limits the role checks to the roles a host runs.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::CheckedRole;
use crate::roles::Role;

/// Prints the effective configuration as TOML, secrets redacted. An invalid configuration, or one that a
/// role of `roles` (none: every role) would refuse at startup, is an error, so the process exits 1 with the
/// reason.
pub fn run(path: Option<&Path>, roles: &[CheckedRole]) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    crate::roles::check(&config, &roles_of(roles))?;
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

/// The roles to check for: those named, in the order of [`Role`], each once; every role when none is named
/// or `all` is.
fn roles_of(named: &[CheckedRole]) -> Vec<Role> {
    let every = named.is_empty() || named.contains(&CheckedRole::All);
    [
        (CheckedRole::Ingest, Role::Ingest),
        (CheckedRole::Worker, Role::Worker),
        (CheckedRole::Control, Role::Control),
    ]
    .into_iter()
    .filter(|(name, _)| every || named.contains(name))
    .map(|(_, role)| role)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_or_all_checks_every_role_and_named_ones_are_checked_once() {
        let every = vec![Role::Ingest, Role::Worker, Role::Control];
        assert_eq!(roles_of(&[]), every);
        assert_eq!(roles_of(&[CheckedRole::Worker, CheckedRole::All]), every);
        assert_eq!(
            roles_of(&[CheckedRole::Control, CheckedRole::Worker, CheckedRole::Control]),
            vec![Role::Worker, Role::Control]
        );
    }
}
