//! The command line: subcommands and their flags. Each subcommand exists only once it works.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// tern: a cluster-scale outbound email delivery engine.
#[derive(Debug, Parser)]
#[command(
    name = "tern",
    version,
    about,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// The configuration file (TOML). Without it, the built-in defaults apply, still overridable by
    /// TERN_<SECTION>__<KEY> environment variables.
    #[arg(long, short = 'c', global = true, env = "TERN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A role `check-config` checks the configuration for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckedRole {
    /// `tern ingest`.
    Ingest,
    /// `tern worker`.
    Worker,
    /// `tern control`.
    Control,
    /// Every role, as `tern all` needs.
    All,
}

/// tern's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration and print it, with secrets redacted. Exits 1 with the reason when it is
    /// invalid, or when a role checked would refuse to start with it.
    CheckConfig {
        /// Check only what starting these roles needs (comma-separated or repeated): a worker-only host
        /// need not have ingest's TLS or users files. Default: all.
        #[arg(long = "role", value_name = "ROLE", value_delimiter = ',', value_enum)]
        roles: Vec<CheckedRole>,
    },
    /// Run every role in one process (ingest, worker and control), until SIGTERM: a whole single-node tern.
    All,
    /// Run the control plane: the admin gRPC API that `ternctl` talks to, until SIGTERM.
    Control,
    /// Run the ingest role: SMTP submission and the gRPC Send API, into the queue, until SIGTERM.
    Ingest,
    /// Run a delivery worker: claim due mail from the queue and deliver it to the recipients' MX hosts, until
    /// SIGTERM.
    Worker,
    /// Read a password from standard input and print its argon2id hash, for the SMTP users file.
    Passwd,
    /// Make an API key for the gRPC Send API. Prints two lines: the key (32 random bytes, unpadded
    /// base64url; shown only now) and the line to add to the API keys file (`NAME:<sha256 hex of the key>`).
    Apikey {
        /// The key's name (letters, digits, '.', '_', '-'), shown in logs.
        name: String,
        /// Limit the key to these sender domains (comma-separated or repeated).
        #[arg(long, value_name = "DOMAIN")]
        domains: Vec<String>,
    },
    /// DKIM signing keys.
    Dkim {
        /// What to do.
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Print the version.
    Version {
        /// Also print how the binary was built (its memory allocator: `jemalloc` or `system`).
        #[arg(long)]
        verbose: bool,
    },
}

/// `tern dkim` subcommands.
#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Make a DKIM signing key: writes the private key (PEM, mode 0600) and prints the DNS TXT record that
    /// publishes the public key and the `[[dkim]]` lines for the configuration.
    Keygen {
        /// The signing domain (d=), e.g. example.com.
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// The selector (s=): the record goes at <SELECTOR>._domainkey.<DOMAIN>.
        #[arg(long, value_name = "SELECTOR")]
        selector: String,
        /// The key type. Ed25519 keys are not checked by every receiver yet: use one beside an RSA key.
        #[arg(long, value_enum, default_value_t = DkimKeyAlgorithm::Rsa)]
        algorithm: DkimKeyAlgorithm,
        /// The RSA key size in bits, 2048 to 4096 (RSA only). Default: 2048.
        #[arg(long, value_name = "BITS")]
        bits: Option<usize>,
        /// Where to write the private key. Default: <SELECTOR>._domainkey.<DOMAIN>.pem in the current
        /// directory.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Overwrite FILE when it exists.
        #[arg(long)]
        force: bool,
    },
}

/// The key types `tern dkim keygen` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DkimKeyAlgorithm {
    /// RSA (rsa-sha256).
    #[value(alias = "rsa-sha256")]
    Rsa,
    /// Ed25519 (ed25519-sha256, RFC 8463).
    #[value(alias = "ed25519-sha256")]
    Ed25519,
}
