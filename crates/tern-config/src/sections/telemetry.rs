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

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl TelemetryConfig {
    /// Checks that `log_level` is a list of `RUST_LOG` directives, that `otlp_endpoint` is an `http://`
    /// or `https://` URL (or empty), and that `otlp_metrics_interval` is at least 1s.
    pub fn validate(&self) -> Result<(), (String, String)> {
        // Split as tracing's EnvFilter does: at every comma, empty directives skipped.
        for directive in self.log_level.split(',').filter(|d| !d.is_empty()) {
            check_directive(directive).map_err(|m| ("log_level".to_string(), m))?;
        }
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

/// One `RUST_LOG` directive, read as tracing's `EnvFilter` reads it: `level`, `target`, `target=level`,
/// `target[span{field=value}]=level` or a span filter alone (`[span]`, `[span]=level`); a target without a
/// level enables all its events (`trace`), and so does `target=`. Whatever `EnvFilter` refuses is refused
/// here too, with one exception we cannot check without its regex engine: a field value that is not a
/// valid regular expression (`tern check-config` and startup catch it). Whitespace is refused outright:
/// `EnvFilter` fails on some (`info, tern_queue=debug`) and silently reads the rest as part of a target
/// that then matches nothing (`info ,tern_queue=debug`).
fn check_directive(directive: &str) -> Result<(), String> {
    enum State {
        Start,
        LevelOrTarget,
        Span,
        Field { start: usize },
        Fields,
        Target,
        Level { start: usize },
    }
    let invalid = |why: &str| format!("{directive:?} is not a RUST_LOG directive: {why}");
    let mut state = State::Start;
    let mut in_braces = false;
    for (i, c) in directive.char_indices() {
        if c.is_whitespace() && !in_braces {
            return Err(invalid(
                "no spaces (write info,tern_queue=debug, not info, tern_queue=debug)",
            ));
        }
        state = match (state, c) {
            (State::Start, '[') => State::Span,
            (State::Start, c) if c.is_alphanumeric() || matches!(c, '-' | ':' | '_') => State::LevelOrTarget,
            (State::Start, c) => {
                return Err(invalid(&format!("a target cannot start with {c:?}")));
            }
            (State::LevelOrTarget, '=') => State::Level { start: i + 1 },
            (State::LevelOrTarget, '[') => State::Span,
            (state @ State::LevelOrTarget, _) => state,
            (State::Span, ']') => State::Target,
            (State::Span, '{') => {
                in_braces = true;
                State::Field { start: i + 1 }
            }
            (state @ State::Span, _) => state,
            (State::Field { start }, '}' | ',') => {
                if start == i {
                    return Err(invalid("an empty field name in {...}"));
                }
                if c == '}' {
                    in_braces = false;
                    State::Fields
                } else {
                    State::Field { start: i + 1 }
                }
            }
            (state @ State::Field { .. }, _) => state,
            (State::Fields, ']') => State::Target,
            (State::Target, '=') => State::Level { start: i + 1 },
            (state @ State::Level { .. }, _) => state,
            (State::Fields, c) => {
                return Err(invalid(&format!("{c:?} after the fields; expected ]")));
            }
            (State::Target, c) => {
                return Err(invalid(&format!("{c:?} after the span filter; expected =level")));
            }
        };
    }
    match state {
        // A bare word is a level when it names one, else a target at `trace`, as in `RUST_LOG`.
        State::LevelOrTarget | State::Target => Ok(()),
        State::Level { start } if is_level(&directive[start..]) => Ok(()),
        State::Level { start } => Err(invalid(&format!(
            "{:?} is not a level; use one of {} or 0-5",
            &directive[start..],
            LEVELS.join(", ")
        ))),
        State::Start => Ok(()),
        State::Span | State::Field { .. } | State::Fields => Err(invalid("an unclosed [ or {")),
    }
}

/// Whether `level`, after `=`, is a level: a name, a number 0-5, or nothing (`trace`).
fn is_level(level: &str) -> bool {
    let numeric = matches!(level.parse::<u8>(), Ok(0..=5));
    level.is_empty() || numeric || LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level))
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

    /// Every case was run through tracing-subscriber 0.3's `EnvFilter::try_new`: these it accepts...
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
