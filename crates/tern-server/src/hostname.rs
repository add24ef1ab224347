//! The host name a server greets with (SMTP banner and EHLO), puts into Message-IDs and lease owner ids, when
//! the configuration names none.
//!
//! One rule for every role: the name must be a DNS host name (RFC 1123 section 2.1, RFC 5321 section 4.1.2's
//! `Domain`), so that it can go into an EHLO command or a 220 greeting as it is:
//!
//! * at most 253 octets (a trailing dot, as in `mx.example.com.`, is dropped first);
//! * dot-separated labels of 1 to 63 octets each, of ASCII letters, digits and `-`, neither starting nor
//!   ending with `-`;
//! * the last label not all digits, so that an IPv4 address (which EHLO must send as an address literal
//!   `[192.0.2.1]`) is not taken for a name.
//!
//! The candidates are the kernel's name (`/proc/sys/kernel/hostname`), then `/etc/hostname`; the first valid
//! one wins. When neither is (no `/proc`, a container with an empty or odd name such as `my_box`), the
//! result is [`FALLBACK`], `localhost`, and a warning says to set `ingest.hostname` / `delivery.helo_name`:
//! a peer may frown at `EHLO localhost`, but it is syntactically valid, unlike the raw name.

/// The name used when the system offers no valid host name.
pub const FALLBACK: &str = "localhost";

/// Where the system's host name is read, in order.
const SOURCES: [&str; 2] = ["/proc/sys/kernel/hostname", "/etc/hostname"];

/// The longest host name, in octets, without a trailing dot.
const MAX_NAME: usize = 253;

/// The longest label, in octets.
const MAX_LABEL: usize = 63;

/// The system's host name if it is a valid DNS host name (see the module docs), else [`FALLBACK`] with a
/// warning. Reads two small files; call it once at start-up.
pub fn system_hostname() -> String {
    let candidates = SOURCES
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok());
    match first_valid(candidates) {
        Some(name) => name,
        None => {
            tracing::warn!(
                fallback = FALLBACK,
                "the system host name is missing or not a valid DNS host name; set ingest.hostname and \
                 delivery.helo_name"
            );
            FALLBACK.to_owned()
        }
    }
}

/// The first candidate that, once trimmed of white space and of one trailing dot, is a valid host name.
fn first_valid(candidates: impl IntoIterator<Item = String>) -> Option<String> {
    candidates
        .into_iter()
        .map(|raw| {
            let trimmed = raw.trim();
            trimmed.strip_suffix('.').unwrap_or(trimmed).to_owned()
        })
        .find(|name| is_valid_hostname(name))
}

/// Whether `name` is a DNS host name usable in EHLO and a greeting as it is (see the module docs). A
/// trailing dot is not accepted here: strip it first.
pub fn is_valid_hostname(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let last_is_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_is_numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_valid() {
        for name in [
            "localhost",
            "mx1",
            "mail.example.com",
            "MX-1.Example.COM",
            "worker-7f9c4d-2xk8p",
            "a.b.c.d.e",
            "1mail.example.com",
            "host.123a",
        ] {
            assert!(is_valid_hostname(name), "{name}");
        }
    }

    #[test]
    fn malformed_names_are_invalid() {
        let long_label = "a".repeat(64);
        let long_name = ["a"; 127].join(".") + ".bc"; // 256 octets
        for name in [
            "",
            "my_box",
            "has space",
            "-leading.example",
            "trailing-.example",
            "double..dot",
            ".leading.dot",
            "trailing.dot.",
            "192.0.2.1",
            "host.123",
            "[192.0.2.1]",
            "ünïcode.example",
            "colon:host",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!is_valid_hostname(name), "{name:?}");
        }
    }

    #[test]
    fn length_limits_are_inclusive() {
        let label63 = "a".repeat(63);
        assert!(is_valid_hostname(&label63));
        let name253 = ["a"; 126].join(".") + ".b"; // 126 * 2 - 1 + 2 = 253
        assert_eq!(name253.len(), 253);
        assert!(is_valid_hostname(&name253));
    }

    #[test]
    fn first_valid_candidate_wins_after_trimming() {
        let pick = |c: &[&str]| first_valid(c.iter().map(|s| (*s).to_owned()));
        assert_eq!(pick(&["mx.example.com\n"]), Some("mx.example.com".into()));
        assert_eq!(pick(&["  mx.example.com.\n"]), Some("mx.example.com".into()));
        assert_eq!(pick(&["my_box\n", "box.example\n"]), Some("box.example".into()));
        assert_eq!(pick(&["\n", "etc-name\n"]), Some("etc-name".into()));
        assert_eq!(pick(&["10.0.0.1", "bad name"]), None);
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn system_hostname_is_always_valid() {
        assert!(is_valid_hostname(&system_hostname()));
    }
}
