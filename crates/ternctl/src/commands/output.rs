//! Shared by the control-plane commands: clients, aligned tables, times for people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_core::HumanDuration;
use tern_proto::v1::mta_sts_client::MtaStsClient;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tonic::transport::Channel;

use crate::cli::Global;
use crate::grpc::{self, KeyHint};

/// A QueueAdmin client for `--server`.
pub async fn admin(global: &Global) -> anyhow::Result<QueueAdminClient<Channel>> {
    Ok(QueueAdminClient::new(grpc::connect(&global.server).await?))
}

/// A channel to `--server` for a stream that runs until stopped.
pub async fn stream_channel(global: &Global) -> anyhow::Result<Channel> {
    grpc::connect_stream(&global.server).await
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

/// The key the control plane wants, for error messages.
fn admin_key(global: &Global) -> KeyHint {
    KeyHint {
        server: "the control plane",
        key: "an admin key",
        var: "TERN_ADMIN_TOKEN",
        sent: global.token.is_some(),
    }
}

/// A gRPC status from `--server` as a one-line error.
pub fn failed(global: &Global) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| {
        let e = grpc::status_error(&global.server, &s, admin_key(global));
        if s.code() == tonic::Code::Unauthenticated
            && global.token.is_none()
            && super::env("TERN_TOKEN").is_some()
        {
            // One variable used to serve both keys: say that it no longer does.
            return anyhow::anyhow!(
                "{e}; TERN_TOKEN is set, but it is send's ingest key: the admin commands read TERN_ADMIN_TOKEN"
            );
        }
        e
    }
}

/// `n` and the word, plural unless `n` is 1: `1 job`, `3 jobs`.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The end of a suspension or route: `until 15:04 UTC (in 1h)`, or `open` when it has none.
pub fn until(until_ms: u64, now: u64, open: &str) -> String {
    if until_ms == 0 {
        open.to_string()
    } else {
        format!("until {}", crate::timefmt::at(until_ms, now))
    }
}

/// `s`, or `-` when empty.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// When a waiting job is next tried, for people: held and suspended jobs are not tried at all.
pub fn next_attempt(state: &str, next_attempt_ms: u64, now: u64) -> String {
    match state {
        "held" => "when released".into(),
        "suspended" => "when resumed".into(),
        "inflight" => "-".into(),
        _ => when(next_attempt_ms, now),
    }
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

/// A duration flag's value in whole seconds, at least 1 (0 means "none" to the server).
pub fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
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
        assert_eq!(plural(1, "domain"), "1 domain");
        assert_eq!(plural(0, "job"), "0 jobs");
        assert_eq!(until(0, 5, "until resumed"), "until resumed");
        assert_eq!(next_attempt("held", 10_000, 70_000), "when released");
        assert_eq!(next_attempt("deferred", 10_000, 70_000), "1m ago");
    }
}
