//! Shared by the control-plane commands: clients, aligned tables, times for people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_core::HumanDuration;
use tern_proto::v1::events_client::EventsClient;
use tern_proto::v1::mta_sts_client::MtaStsClient;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tonic::transport::Channel;

use crate::cli::Global;
use crate::grpc;

/// A QueueAdmin client for `--server`.
pub async fn admin(global: &Global) -> anyhow::Result<QueueAdminClient<Channel>> {
    Ok(QueueAdminClient::new(grpc::connect(&global.server).await?))
}

/// An Events client for `--server`.
pub async fn events(global: &Global) -> anyhow::Result<EventsClient<Channel>> {
    Ok(EventsClient::new(grpc::connect(&global.server).await?))
}

/// An MtaSts client for `--server`; its calls may take `call_timeout` (a refresh fetches over the network).
pub async fn mta_sts(global: &Global, call_timeout: Duration) -> anyhow::Result<MtaStsClient<Channel>> {
    Ok(MtaStsClient::new(
        grpc::connect_with(&global.server, call_timeout).await?,
    ))
}

/// `message` as a request with the global `--token`.
pub fn req<T>(global: &Global, message: T) -> anyhow::Result<tonic::Request<T>> {
    grpc::request(message, global.token.as_deref())
}

/// A gRPC status from `--server` as a one-line error.
pub fn failed(global: &Global) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| grpc::status_error(&global.server, s)
}

/// The current time, Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration in ms for people, to the second: `0s`, `42s`, `3m12s`, `2h5m`.
pub fn span(ms: u64) -> String {
    let secs = ms / 1000;
    // Past an hour, seconds are noise.
    let secs = if secs >= 3600 { secs - secs % 60 } else { secs };
    HumanDuration(Duration::from_secs(secs)).to_string()
}

/// A point in time relative to now: `-` for none, `in 5m`, `3m ago`, `now`.
pub fn when(ms: u64, now: u64) -> String {
    if ms == 0 {
        "-".to_string()
    } else if ms > now + 999 {
        format!("in {}", span(ms - now))
    } else if now > ms + 999 {
        format!("{} ago", span(now - ms))
    } else {
        "now".to_string()
    }
}

/// Parses a duration flag (`90s`, `30m`, `1h`); the error names the flag.
pub fn duration_flag(flag: &str, text: &str) -> anyhow::Result<Duration> {
    text.parse::<HumanDuration>()
        .map(|d| d.0)
        .map_err(|e| anyhow::anyhow!("{flag}: {text:?} is not a duration like 90s, 30m or 1h ({e})"))
}

/// Rows under headers, each column as wide as its widest cell, two spaces apart; the last column is not
/// padded. Cells are cut to one line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count());
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER", "C"],
            &[
                vec!["xxxx".into(), "y".into(), "z z".into()],
                vec!["".into(), "multi\nline".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "A     LONGER      C\nxxxx  y           z z\n      multi line\n"
        );
    }

    #[test]
    fn times_for_people() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(192_000), "3m12s");
        assert_eq!(span(7_530_000), "2h5m");
        assert_eq!(when(0, 5), "-");
        assert_eq!(when(10_000, 70_000), "1m ago");
        assert_eq!(when(130_000, 70_000), "in 1m");
        assert!(duration_flag("--older-than", "soon").is_err());
        assert_eq!(duration_flag("--for", "1h").unwrap(), Duration::from_secs(3600));
    }
}
