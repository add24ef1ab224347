//! `[telemetry]`: how tern reports on itself: logs, metrics and traces, and the health endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_core::HumanDuration;

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
    /// Log filter in the `RUST_LOG` syntax: a level (`info`), a target (`tern_queue`: all its events), or
    /// comma-separated directives (`info,tern_queue=debug`, `tern_ingest[smtp_session]=debug`).
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// The HTTP listener for `/metrics` (Prometheus text), `/healthz` and `/readyz`. Port 0 picks a free
    /// port (logged at startup).
    pub metrics_listen: SocketAddr,
    /// The OpenTelemetry collector's OTLP/gRPC endpoint for traces and metrics: `http://host:4317`
    /// (plaintext), or `https://host:4317` (TLS, the server verified against the Mozilla roots). Empty:
    /// nothing is exported (metrics are still served at `/metrics`).
    pub otlp_endpoint: String,
    /// How often metrics are pushed to `otlp_endpoint` (at least 1s).
    pub otlp_metrics_interval: HumanDuration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            otlp_endpoint: String::new(),
            otlp_metrics_interval: HumanDuration::from_secs(30),
        }
    }
}

/// The shortest `otlp_metrics_interval`: shorter pushes only load the collector.
const MIN_METRICS_INTERVAL: Duration = Duration::from_secs(1);

impl TelemetryConfig {
    /// Checks that `log_level` is a list of `RUST_LOG` directives, that `otlp_endpoint` is an `http://`
    /// or `https://` URL (or empty), and that `otlp_metrics_interval` is at least 1s.
    pub fn validate(&self) -> Result<(), (String, String)> {
        // Parsed by the filter startup installs, so that what passes here starts. Whitespace is refused
        // first: the filter fails on some (`info, tern_queue=debug`) and silently reads the rest as part of
        // a target that then matches nothing (`info ,tern_queue=debug`).
        if self.log_level.contains(char::is_whitespace) {
            return Err((
                "log_level".into(),
                format!(
                    "{:?} holds a space; write directives as `info,tern_queue=debug`",
                    self.log_level
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            (
                "log_level".to_string(),
                format!("{:?} is not a RUST_LOG filter: {e}", self.log_level),
            )
        })?;
        let endpoint = self.otlp_endpoint.trim();
        if !endpoint.is_empty() {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .ok_or_else(|| {
                    (
                        "otlp_endpoint".to_string(),
                        format!("{endpoint:?} must be an http:// or https:// URL of an OTLP/gRPC collector (e.g. http://otel-collector:4317)"),
                    )
                })?;
            if rest.is_empty() || rest.starts_with('/') {
                return Err(("otlp_endpoint".into(), format!("{endpoint:?} names no host")));
            }
        }
        if self.otlp_metrics_interval.get() < MIN_METRICS_INTERVAL {
            return Err((
                "otlp_metrics_interval".into(),
                format!("{} is shorter than 1s", self.otlp_metrics_interval),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_list(list: &str) -> Result<(), (String, String)> {
        TelemetryConfig {
            log_level: list.into(),
            ..TelemetryConfig::default()
        }
        .validate()
    }

    /// What tracing-subscriber's `EnvFilter::try_new` accepts...
    #[test]
    fn rust_log_directives_are_accepted_as_env_filter_accepts_them() {
        for ok in [
            "info",
            "INFO",
            "3",
            "info,tern_queue=debug",
            "tern_ingest::smtp=trace",
            "tern_ingest[smtp_session]=debug",
            "tern_ingest[smtp_session{peer=127.0.0.1}]=debug",
            "tern_ingest[{peer=127.0.0.1}]",
            "[smtp_session]",
            "[smtp_session]=warn",
            "warn,tern_delivery=off",
            // Bare targets: all of their events.
            "tern_queue",
            "info,tern_ingest",
            "debgu",
            "tern_queue=",
            ",info,,tern_queue",
            "",
        ] {
            check_list(ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
    }

    /// ...and these it refuses (the last two it accepts, but reads as a target with a space in it, which
    /// matches nothing, so they are refused here for the space).
    #[test]
    fn what_env_filter_refuses_is_refused() {
        for bad in [
            "tern_queue=verbose",
            "info,x=loud",
            "x=6",
            "x=info=debug",
            "=info",
            "*",
            "x[",
            "x[y]z",
            "x[y]=info]",
            "x[{}]",
            "x[s{a,b}]",
            "warn, tern_delivery=off",
            " tern_delivery=off",
            "x=info ",
            "warn ,x=info",
            "tern queue",
        ] {
            let (key, _) = check_list(bad).expect_err(bad);
            assert_eq!(key, "log_level", "{bad}");
        }
    }

    #[test]
    fn otlp_endpoint_must_be_an_http_or_https_url() {
        let mut cfg = TelemetryConfig::default();
        assert!(cfg.validate().is_ok());
        for ok in ["http://otel-collector:4317", "https://otel.example.com:4317"] {
            cfg.otlp_endpoint = ok.into();
            assert!(cfg.validate().is_ok(), "{ok}");
        }
        for bad in [
            "otel-collector:4317",
            "grpc://x:4317",
            "http://",
            "https://",
            "https:///x",
        ] {
            cfg.otlp_endpoint = bad.into();
            let (key, _) = cfg.validate().unwrap_err();
            assert_eq!(key, "otlp_endpoint", "{bad}");
        }
    }

    #[test]
    fn the_metrics_interval_is_at_least_a_second() {
        let mut cfg = TelemetryConfig::default();
        assert_eq!(cfg.otlp_metrics_interval, HumanDuration::from_secs(30));
        cfg.otlp_metrics_interval = HumanDuration::from_secs(1);
        assert!(cfg.validate().is_ok());
        cfg.otlp_metrics_interval = HumanDuration(Duration::from_millis(500));
        let (key, _) = cfg.validate().unwrap_err();
        assert_eq!(key, "otlp_metrics_interval");
    }
}
