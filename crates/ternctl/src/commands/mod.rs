//! One module per command.

mod actions;
mod completions;
mod domain;
mod events;
mod follow;
mod msg;
mod msg_find;
mod msg_show;
pub mod output;
mod queue;
mod queue_status;
mod send;
mod sts;
mod tlsrpt;
mod trace;

use crate::Usage;
use crate::cli::values::{DEFAULT_SERVER, server_url};
use crate::cli::{Cli, Command, Conn, Global, TopFlags};

/// Runs the command on a fresh runtime.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { top, command } = cli;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            Command::Send(args) => send::run(&top, args).await,
            Command::Queue { conn, command } => queue::run(&admin(&top, &conn)?, command).await,
            Command::Msg { conn, command } => msg::run(&admin(&top, &conn)?, command).await,
            Command::Domain { conn, command } => domain::run(&admin(&top, &conn)?, command).await,
            Command::Sts { conn, command } => sts::run(&admin(&top, &conn)?, command).await,
            Command::Events(args) => events::run(&admin(&top, &args.conn)?, args).await,
            Command::Trace(args) => trace::run(&admin(&top, &args.conn)?, args).await,
            Command::Completions { shell, static_script } => completions::run(shell, static_script),
        }
    })
}

/// The value of an environment variable, unless unset or empty.
pub fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// An admin command's connection: its flags, else those before the command, else the environment
/// (`TERN_SERVER`, `TERN_ADMIN_TOKEN`), else the default address and no key.
fn admin(top: &TopFlags, conn: &Conn) -> anyhow::Result<Global> {
    let server = match conn.server.clone().or_else(|| top.server.clone()) {
        Some(s) => s,
        None => match env("TERN_SERVER") {
            Some(s) => server_url(&s).map_err(|e| Usage(format!("TERN_SERVER: {e}")))?,
            None => DEFAULT_SERVER.to_string(),
        },
    };
    Ok(Global {
        server,
        token: conn
            .token
            .clone()
            .or_else(|| top.token.clone())
            .or_else(|| env("TERN_ADMIN_TOKEN")),
        json: conn.json || top.json,
    })
}
