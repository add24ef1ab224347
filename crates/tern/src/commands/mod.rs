//! One module per subcommand.

mod apikey;
mod check_config;
mod dkim;
mod passwd;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::roles::{self, Role};

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { roles } => check_config::run(cli.config.as_deref(), &roles),
        Command::Ingest => roles::run(cli.config.as_deref(), &[Role::Ingest]),
        Command::Worker => roles::run(cli.config.as_deref(), &[Role::Worker]),
        Command::Control => roles::run(cli.config.as_deref(), &[Role::Control]),
        Command::All => roles::run(
            cli.config.as_deref(),
            &[Role::Ingest, Role::Worker, Role::Control],
        ),
        Command::Passwd => passwd::run(),
        Command::Apikey { name, domains } => apikey::run(&name, &domains),
        Command::Dkim { command } => dkim::run(command),
        Command::Version { verbose } => {
            println!("tern {}", env!("CARGO_PKG_VERSION"));
            if verbose {
                println!("allocator: {}", crate::ALLOCATOR_NAME);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the configuration named on the command line, or the defaults with environment overrides.
pub fn load_config(path: Option<&std::path::Path>) -> Result<tern_config::Config, tern_config::ConfigError> {
    match path {
        Some(p) => tern_config::Config::load(p),
        None => tern_config::Config::from_toml_str("", "<defaults>", std::env::vars()),
    }
}
