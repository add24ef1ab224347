//! `ternctl msg ...`: one message, or a few by id.

use clap::{Args, Subcommand};
use clap_complete::ArgValueCompleter;

use super::values::{self, Since};
use crate::complete;

/// `ternctl msg ...`.
#[derive(Debug, Subcommand)]
pub enum MsgCommand {
    /// One message, queued or finished: envelope, outcome, every recipient with how it ended, and every
    /// attempt (MX, IP, TLS, reply, DSN).
    Show {
        /// A message id (or a job id).
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
        /// Print the message content too.
        #[arg(long)]
        body: bool,
    },
    /// Find messages, queued or finished, by recipient, sender or tag; newest first.
    Find(FindArgs),
    /// Hold messages: their waiting jobs are never delivered until released (postsuper -h).
    Hold(IdsArgs),
    /// Release held messages: due at once (postsuper -H).
    Release(IdsArgs),
    /// Make messages due now.
    Retry(ActionArgs),
    /// Fail messages with a DSN to the sender.
    Bounce {
        /// Which messages.
        #[command(flatten)]
        action: ActionArgs,
        /// The reason written into the DSN (with the job's last remote reply).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Delete messages without a DSN.
    Delete(ActionArgs),
}

/// Message ids for hold and release.
#[derive(Debug, Args)]
pub struct IdsArgs {
    /// Message ids (or job ids).
    #[arg(value_name = "ID", required = true, add = ArgValueCompleter::new(complete::ids))]
    pub ids: Vec<String>,
    /// Print how many jobs would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The messages an action applies to: ids, or every waiting message of a domain (`ternctl queue retry|
/// bounce|delete` take more filters).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["ids", "domain"])))]
pub struct ActionArgs {
    /// Message ids (or job ids).
    #[arg(value_name = "ID", add = ArgValueCompleter::new(complete::ids))]
    pub ids: Vec<String>,
    /// Every message of this destination domain.
    #[arg(long, value_name = "D", conflicts_with = "ids", add = ArgValueCompleter::new(complete::domains))]
    pub domain: Option<String>,
    /// Print how many jobs would change and the first ids, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `ternctl msg find`.
#[derive(Debug, Args)]
pub struct FindArgs {
    /// A recipient address.
    #[arg(long, value_name = "ADDRESS")]
    pub to: Option<String>,
    /// The envelope sender (`<>` for the null sender).
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// A tag, `key=value` or `key`.
    #[arg(long, value_name = "TAG", value_parser = values::tag_filter)]
    pub tag: Option<String>,
    /// Only messages accepted since: a duration back from now (`2h`, `3d`) or a time (`2026-12-02`,
    /// `2026-12-02T14:00Z`, `2026-12-02 14:00` in UTC). Default: all kept (`queue.history`, 7 days).
    #[arg(long, value_name = "WHEN", value_parser = values::since)]
    pub since: Option<Since>,
    /// At most this many messages.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}
