//! Flag values checked while parsing, so that a bad one is a usage error (exit 2) that names its flag, and
//! the lists of values shells complete.

use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser};
use tern_core::HumanDuration;
use tonic::codegen::http::Uri;

/// The control plane's address when neither `--server` nor `TERN_SERVER` gives one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";
/// The port of an address given without one.
const DEFAULT_PORT: u16 = 7070;

/// A server address: a URL (`http://host:port`, `https://host`) or `host:port` (`http://` is added), or a
/// bare host (port 7070).
pub fn server_url(text: &str) -> Result<String, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty address: expected host:port or http://host:port".into());
    }
    let url = if s.contains("://") {
        s.to_string()
    } else if has_port(s) {
        format!("http://{s}")
    } else if s.contains(':') && !s.starts_with('[') {
        // A bare IPv6 address.
        format!("http://[{s}]:{DEFAULT_PORT}")
    } else {
        format!("http://{s}:{DEFAULT_PORT}")
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{text:?} is not an address like host:port or http://host:port ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{text:?}: the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    Ok(url)
}

/// Whether `s` (no scheme) ends with `:<port>`: `host:7070`, `[::1]:7070`, but not `::1`.
fn has_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    (bracketed || !host.contains(':')) && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
}

/// A duration: `90s`, `30m`, `1h`, `1h30m`, `2d`.
pub fn duration(text: &str) -> Result<Duration, String> {
    text.parse::<HumanDuration>()
        .map(|d| d.0)
        .map_err(|e| format!("not a duration like 90s, 30m or 1h ({e})"))
}

/// `--since`: a duration back from now, or a point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// This long ago.
    Ago(Duration),
    /// This time (Unix ms).
    At(u64),
}

impl Since {
    /// The time it names, in Unix ms.
    pub fn to_ms(self, now_ms: u64) -> u64 {
        match self {
            Since::Ago(d) => now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Since::At(ms) => ms,
        }
    }
}

/// A duration (`2h`: two hours ago) or a time (`2026-12-02`, `2026-12-02T14:00Z`, `2026-12-02 14:00`).
pub fn since(text: &str) -> Result<Since, String> {
    if let Ok(d) = text.parse::<HumanDuration>() {
        return Ok(Since::Ago(d.0));
    }
    crate::timefmt::parse(text).map(Since::At).map_err(|_| {
        "not a duration like 2h or 3d, nor a time like 2026-12-02 or 2026-12-02T14:00Z".to_string()
    })
}

/// A tag to match: `key=value` (that value) or `key` (any value).
pub fn tag_filter(text: &str) -> Result<String, String> {
    let key = text.split_once('=').map_or(text, |(k, _)| k);
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err("expected key=value or key (a key without spaces)".into());
    }
    Ok(text.to_string())
}

/// A tag to set: `key=value`.
pub fn tag_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected key=value".into()),
    }
}

/// A route's target: `host`, `host:port` or `[v6]:port` (a bare IPv6 address too).
pub fn route_target(text: &str) -> Result<String, String> {
    let s = text.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address in brackets needs its closing ]")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("expected [v6]:port")?)),
        }
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').unwrap_or((s, ""));
        (h, Some(p))
    } else {
        (s, None)
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err("expected host, host:port or [v6]:port".into());
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("{p:?} is not a port (1-65535)"));
    }
    Ok(s.to_string())
}

/// The states a job can be in, as filters take them.
pub fn states() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("queued").help("waiting, never attempted"),
        PossibleValue::new("deferred").help("waiting, attempted before"),
        PossibleValue::new("inflight").help("claimed by a delivery worker"),
        PossibleValue::new("held").help("held by an operator: never claimed until released"),
        PossibleValue::new("suspended").help("waiting on a suspended domain"),
    ])
}

/// The queue's event kinds.
pub const EVENT_KINDS: [&str; 14] = [
    "queued",
    "delivered",
    "deferred",
    "failed",
    "expired",
    "deleted",
    "lease-expired",
    "released",
    "retried",
    "bounced",
    "held",
    "unheld",
    "suspended",
    "resumed",
];

/// The event kinds as flag values.
pub fn kinds() -> PossibleValuesParser {
    PossibleValuesParser::new(EVENT_KINDS)
}

/// What a shape row is.
pub fn shape_by() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("domain").help("the destination domain"),
        PossibleValue::new("sender").help("the envelope sender"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_take_host_port_or_a_url() {
        assert_eq!(
            server_url("127.0.0.1:17070").as_deref(),
            Ok("http://127.0.0.1:17070")
        );
        assert_eq!(
            server_url("ctl.example").as_deref(),
            Ok("http://ctl.example:7070")
        );
        assert_eq!(server_url("[::1]:7070").as_deref(), Ok("http://[::1]:7070"));
        assert_eq!(server_url("::1").as_deref(), Ok("http://[::1]:7070"));
        assert_eq!(
            server_url("https://ctl.example").as_deref(),
            Ok("https://ctl.example")
        );
        assert!(server_url("ftp://x").is_err());
        assert!(server_url("").is_err());
        assert!(server_url("http://").is_err());
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(duration("1x").is_err());
        assert_eq!(since("2h").unwrap().to_ms(10_000_000), 2_800_000);
        assert_eq!(since("2026-11-28T13:26:49Z"), Ok(Since::At(1_795_872_409_000)));
        assert!(since("lately").is_err());
        assert!(tag_filter("k=v").is_ok() && tag_filter("k").is_ok());
        assert!(tag_filter("=v").is_err() && tag_filter("").is_err());
        assert!(tag_pair("k").is_err());
        for ok in [
            "relay.example",
            "relay.example:2525",
            "[::1]:25",
            "::1",
            "192.0.2.1",
        ] {
            assert!(route_target(ok).is_ok(), "{ok}");
        }
        for bad in ["", "relay:0", "relay:x", "[::1", "a b", "[::1]x"] {
            assert!(route_target(bad).is_err(), "{bad}");
        }
    }
}
