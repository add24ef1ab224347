//! `ternctl queue ...`: looking at the queue, and acting on jobs by filter.

use std::time::Duration;

use clap::{Args, Subcommand};
use clap_complete::ArgValueCompleter;

use super::values;
use crate::complete;

/// `ternctl queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Totals by state (held and suspended jobs apart), the oldest message's age, the deepest domains and
    /// recent rates.
    Status {
        /// How many domains to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: u32,
    },
    /// Jobs by domain (or sender) and age, like qshape: 0-5m ... 320m+ and a total row.
    Shape {
        /// How many rows to show, deepest first.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: u32,
        /// What a row is.
        #[arg(long, default_value = "domain", value_name = "WHAT", value_parser = values::shape_by())]
        by: String,
    },
    /// Jobs matching the filters, one per message and destination domain.
    List(ListArgs),
    /// A live view refreshed every second: rates, depth, top domains. Ctrl-C to stop.
    Top {
        /// How many domains to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: u32,
        /// Stop after this many refreshes (0: never).
        #[arg(long, default_value_t = 0, value_name = "N", hide = true)]
        iterations: u64,
    },
    /// Hold the matching waiting jobs (postsuper -h): never delivered until released.
    Hold(BulkArgs),
    /// Release the matching held jobs (postsuper -H): due at once.
    Release(BulkArgs),
    /// Make the matching waiting jobs due now.
    Retry(BulkArgs),
    /// Fail the matching jobs with a DSN to the sender (with --reason and the last remote reply).
    Bounce {
        /// Which jobs.
        #[command(flatten)]
        bulk: BulkArgs,
        /// The reason written into the DSN (with the job's last remote reply).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Delete the matching jobs without a DSN.
    Delete(BulkArgs),
}

/// Which jobs: every filter given must match (AND).
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Destination domain.
    #[arg(long, value_name = "D", add = ArgValueCompleter::new(complete::domains))]
    pub domain: Option<String>,
    /// Envelope sender (`<>` for the null sender).
    #[arg(long, value_name = "ADDRESS")]
    pub sender: Option<String>,
    /// A recipient.
    #[arg(long, value_name = "ADDRESS")]
    pub rcpt: Option<String>,
    /// The job's state.
    #[arg(long, value_name = "STATE", value_parser = values::states())]
    pub state: Option<String>,
    /// Only jobs first queued at least this long ago (`90s`, `30m`, `1h`).
    #[arg(long, value_name = "AGE", value_parser = values::duration)]
    pub older_than: Option<Duration>,
    /// Only jobs with at least this many attempts.
    #[arg(long, value_name = "N")]
    pub min_attempts: Option<u32>,
    /// A tag, `key=value` or `key`.
    #[arg(long, value_name = "TAG", value_parser = values::tag_filter)]
    pub tag: Option<String>,
}

/// `ternctl queue list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The filters.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// At most this many jobs.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
    /// Continue from the cursor a previous listing printed.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

/// `ternctl queue hold|release|retry|bounce|delete`: a filter (at least one flag), confirmation or a dry run.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("which")
        .required(true)
        .multiple(true)
        .args(["domain", "sender", "rcpt", "state", "older_than", "min_attempts", "tag"])
))]
pub struct BulkArgs {
    /// The filters (combined with AND; the whole queue is never a target).
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print how many jobs match and the first ids, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}
