//! One module per command.

mod completions;
mod domain;
mod events;
mod msg;
mod output;
mod queue;
mod send;
mod sts;
mod tlsrpt;

use crate::cli::{Command, Global};

/// Runs `command` on a fresh runtime.
pub fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            Command::Send(args) => send::run(global, args).await,
            Command::Queue { command } => queue::run(global, command).await,
            Command::Msg { command } => msg::run(global, command).await,
            Command::Domain { command } => domain::run(global, command).await,
            Command::Sts { command } => sts::run(global, command).await,
            Command::Events(args) => events::run(global, args).await,
            Command::Completions { shell } => completions::run(shell),
        }
    })
}
