//! Logging for the long-running roles, set up from `[telemetry]`.

use anyhow::Context;
use tern_config::{TelemetryConfig, sections::LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: `log_level` as the filter, `log_format` text or JSON, to stderr.
pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("telemetry.log_level {:?} is not a valid filter", cfg.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match cfg.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
