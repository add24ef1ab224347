//! One module per command.

mod send;

use crate::cli::{Command, Global};

/// Runs `command` on a fresh runtime.
pub fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            Command::Send(args) => send::run(global, args).await,
        }
    })
}
