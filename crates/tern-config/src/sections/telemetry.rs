//! `[telemetry]`: how tern reports on itself: logs, metrics and traces, and the health endpoints.

use std::net::SocketAddr;

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
    /// Log filter in the `RUST_LOG` syntax: a level (`info`) or comma-separated directives
    /// (`info,tern_queue=debug`, `tern_ingest[smtp_session]=debug`).
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// The HTTP listener for `/metrics` (Prometheus text), `/healthz` and `/readyz`. Port 0 picks a free
    /// port (logged at startup).
    pub metrics_listen: SocketAddr,
    /// The OpenTelemetry collector's OTLP/gRPC endpoint (`http://host:4317`) for traces and metrics. Empty:
    /// nothing is exported (metrics are still served at `/metrics`).
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            otlp_endpoint: String::new(),
        }
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl TelemetryConfig {
    /// Checks that `log_level` is a list of `RUST_LOG` directives and that `otlp_endpoint` is an
    /// `http://` URL (or empty).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for directive in self.log_level.split(',').map(str::trim) {
            check_directive(directive).map_err(|m| ("log_level".to_string(), m))?;
        }
        let endpoint = self.otlp_endpoint.trim();
        if !endpoint.is_empty() {
            let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
                (
                    "otlp_endpoint".to_string(),
                    format!("{endpoint:?} must be an http:// URL of an OTLP/gRPC collector (e.g. http://otel-collector:4317)"),
                )
            })?;
            if rest.is_empty() || rest.starts_with('/') {
                return Err(("otlp_endpoint".into(), format!("{endpoint:?} names no host")));
            }
        }
        Ok(())
    }
}

/// One `RUST_LOG` directive: `level`, `target=level`, `target[span{field=value}]=level`, or a target with a
/// span filter alone. A bare word must be a level: `debgu` is far more often a typo than a target name
/// (write `my_target=trace` for a target).
fn check_directive(directive: &str) -> Result<(), String> {
    if directive.is_empty() {
        return Ok(());
    }
    // The level follows the last `=` outside a span filter's brackets.
    let outside = directive.rfind(']').map_or(0, |i| i + 1);
    let level = match directive[outside..].rfind('=') {
        Some(i) => &directive[outside + i + 1..],
        None if outside > 0 && outside == directive.len() => return Ok(()),
        None => directive,
    };
    let numeric = level.len() == 1 && level.as_bytes()[0].is_ascii_digit() && level <= "5";
    if numeric || LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
        Ok(())
    } else {
        Err(format!(
            "{directive:?} is not a level; use one of {} or target=level",
            LEVELS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_directives_are_accepted_and_typos_refused() {
        for ok in [
            "info",
            "INFO",
            "info,tern_queue=debug",
            "tern_ingest::smtp=trace",
            "tern_ingest[smtp_session]=debug",
            "tern_ingest[smtp_session{peer=127.0.0.1}]=debug",
            "[smtp_session]",
            "warn, tern_delivery=off",
        ] {
            check_directive_list(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["loud", "debgu", "tern_queue=verbose", "info,x=loud"] {
            assert!(check_directive_list(bad).is_err(), "{bad}");
        }
    }

    fn check_directive_list(list: &str) -> Result<(), String> {
        list.split(',').map(str::trim).try_for_each(check_directive)
    }

    #[test]
    fn otlp_endpoint_must_be_an_http_url() {
        let mut cfg = TelemetryConfig::default();
        assert!(cfg.validate().is_ok());
        cfg.otlp_endpoint = "http://otel-collector:4317".into();
        assert!(cfg.validate().is_ok());
        for bad in [
            "otel-collector:4317",
            "grpc://x:4317",
            "http://",
            "https://x:4317",
        ] {
            cfg.otlp_endpoint = bad.into();
            let (key, _) = cfg.validate().unwrap_err();
            assert_eq!(key, "otlp_endpoint", "{bad}");
        }
    }
}
