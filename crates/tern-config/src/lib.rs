//! tern's configuration.
//!
//! One TOML file, given with `--config FILE`, with one table per role: `[queue]`, `[ingest]`, `[delivery]`,
//! `[control]` and `[telemetry]`, and one `[[dkim]]` entry per DKIM signing key. Every key can be overridden
//! by an environment variable (see [`mod@env`] for the exact rule). Unknown keys and bad values are errors
//! that name the key and the file, so that a typo never silently falls back to a default.
//!
//! `docs/configuration.md` lists every key; keep it in step with the section modules.
#![forbid(unsafe_code)]

pub mod env;
mod error;
mod load;
pub mod redact;
pub mod sections;

pub use error::ConfigError;
pub use sections::{
    ControlConfig, DeliveryConfig, DkimConfig, IngestConfig, IngestOauthConfig, QueueBackend, QueueConfig,
    TelemetryConfig,
};

use serde::{Deserialize, Serialize};

/// The whole configuration: one field per section of the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[queue]`: where the queue lives and how it is laid out.
    pub queue: QueueConfig,
    /// `[ingest]`: SMTP submission and the gRPC Send API.
    pub ingest: IngestConfig,
    /// `[delivery]`: the delivery workers.
    pub delivery: DeliveryConfig,
    /// `[control]`: the control-plane API.
    pub control: ControlConfig,
    /// `[telemetry]`: logs, metrics and traces.
    pub telemetry: TelemetryConfig,
    /// `[[dkim]]`: the DKIM signing keys, one entry per key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<DkimConfig>,
}

impl Config {
    /// Loads `path` and applies the `TERN_<SECTION>__<KEY>` variables of the process environment.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        load::load_file(path, std::env::vars())
    }

    /// Loads `path` with the given environment instead of the process's (for tests and tools).
    pub fn load_with_env(
        path: &std::path::Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        load::load_file(path, vars)
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        load::load_str(text, origin, vars)
    }

    /// Checks the rules that serde's types cannot express (ranges, consistency between keys).
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.queue
            .validate()
            .map_err(|(k, m)| (format!("queue.{k}"), m))?;
        self.ingest
            .validate()
            .map_err(|(k, m)| (format!("ingest.{k}"), m))?;
        self.delivery
            .validate()
            .map_err(|(k, m)| (format!("delivery.{k}"), m))?;
        self.telemetry
            .validate()
            .map_err(|(k, m)| (format!("telemetry.{k}"), m))?;
        self.control
            .validate()
            .map_err(|(k, m)| (format!("control.{k}"), m))?;
        sections::dkim::validate_dkim(&self.dkim)?;
        Ok(())
    }
}
