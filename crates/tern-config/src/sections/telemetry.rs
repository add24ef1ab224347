//! `[telemetry]`: how tern reports on itself.

use serde::{Deserialize, Serialize};

/// How log lines are written to standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

/// The `[telemetry]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log filter: a level (`info`) or comma-separated `target=level` directives (`info,tern_queue=debug`).
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl TelemetryConfig {
    /// Checks that `log_level` is a list of `level` or `target=level` directives.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for directive in self.log_level.split(',').map(str::trim) {
            let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
            if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
                return Err((
                    "log_level".into(),
                    format!(
                        "{directive:?} is not a level; use one of {} or target=level",
                        LEVELS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}
