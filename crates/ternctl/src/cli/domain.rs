//! `ternctl domain ...`: suspensions and routes of destination domains.

use std::time::Duration;

use clap::Subcommand;
use clap_complete::ArgValueCompleter;

use super::values;
use crate::complete;

/// `ternctl domain ...`.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Stop deliveries to a domain (until resumed, or for a time).
    Suspend {
        /// The domain.
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
        /// How long (`30m`, `1h`); without it, until resumed.
        #[arg(long = "for", value_name = "DURATION", value_parser = values::duration)]
        duration: Option<Duration>,
        /// Why (shown in listings).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// End a domain's suspension.
    Resume {
        /// The domain.
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
    },
    /// Send a domain's mail to this host instead of its MX hosts, cluster-wide and without a restart (TLS
    /// as configured), until unrouted or for a time.
    Route {
        /// The domain.
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
        /// Where to: host, host:port or [v6]:port (a host name is looked up for A/AAAA, not MX).
        #[arg(value_name = "HOST[:PORT]", value_parser = values::route_target)]
        target: String,
        /// How long (`30m`, `2h`); without it, until unrouted.
        #[arg(long = "for", value_name = "DURATION", value_parser = values::duration)]
        duration: Option<Duration>,
        /// Why (shown in listings).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Remove a domain's route: its mail goes to its MX hosts again.
    Unroute {
        /// The domain.
        #[arg(add = ArgValueCompleter::new(complete::domains))]
        domain: String,
    },
    /// Every suspension and route in force.
    List,
}
