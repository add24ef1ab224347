//! `ternctl sts ...`: the MTA-STS policy cache and TLS reports.

use clap::{Args, Subcommand};
use clap_complete::ArgValueCompleter;

use crate::complete;

/// `ternctl sts ...`.
#[derive(Debug, Subcommand)]
pub enum StsCommand {
    /// A domain's cached policy: state, mode, MX patterns, expiry, id and last fetch error.
    Show {
        /// The policy domain (A-label form).
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
    },
    /// Fetch a domain's policy now and show it.
    ///
    /// The control node looks up the domain's TXT record, fetches the policy over HTTPS and stores it for
    /// the whole cluster, whatever is cached. Fails (exit 1) when nothing was fetched; the error is kept in
    /// the cache entry, and a cached policy keeps applying until it expires.
    Refresh {
        /// The policy domain (A-label form).
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
    },
    /// Cached policies, in domain order.
    List(StsListArgs),
    /// Remove a domain's cached policy: the next delivery to it discovers its policy anew.
    Evict {
        /// The policy domain (A-label form).
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
    },
    /// A policy domain's TLS session counts (TLS-RPT, RFC 8460) of one UTC day: successes and failures
    /// by result type, MX host and addresses.
    Report {
        /// The policy domain (A-label form).
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
        /// The UTC day, YYYY-MM-DD (default: today).
        #[arg(long, value_name = "YYYY-MM-DD")]
        day: Option<String>,
    },
    /// Send the TLS reports of a day now, as the daily run does: each domain with counts that publishes
    /// a _smtp._tls record and was not sent its report yet.
    ///
    /// A completed day is marked sent, as the daily run marks it. Today (not over yet) gets partial
    /// reports of the counts so far, and is not marked sent: the regular report after midnight still
    /// covers the whole day. Prints per domain where the report went and what failed; exit 1 when a
    /// domain's report was not sent (no URI took it, its TXT lookup failed, it could not be made) or the
    /// run was cut short. A URI that failed for a reason that may pass is offered the report again at the
    /// day's next run on the same node.
    SendReports {
        /// The UTC day, YYYY-MM-DD, or `today` (partial: the regular report after midnight still covers
        /// the whole day). Default: yesterday.
        #[arg(long, value_name = "YYYY-MM-DD|today")]
        day: Option<String>,
    },
}

/// `ternctl sts list`.
#[derive(Debug, Args)]
pub struct StsListArgs {
    /// At most this many policies.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Every policy, however many.
    #[arg(long, conflicts_with_all = ["limit", "cursor"])]
    pub all: bool,
    /// Continue from the cursor a previous listing printed.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}
