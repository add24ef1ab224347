//! Field checks of a `SendRequest`. Each failure names the field path (`composed.to[1]`) so that the
//! client learns exactly what to fix; the service turns it into `INVALID_ARGUMENT` and enqueues nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tern_core::{Mailbox, Notify, Ret, ReversePath};
use tern_proto::v1 as pb;
use tern_smtp::{parse_forward_path, parse_reverse_path};

use crate::enqueue::INTERNAL_KEY_PREFIX;

/// The most messages one `SendBatch` may carry.
pub const MAX_BATCH: usize = 1000;
/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// The most tags on one message.
pub const MAX_TAGS: usize = 64;
/// The longest tag name, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 128;
/// The longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 1024;
/// The longest ENVID (RFC 3461 section 4.4 allows 100 characters).
pub const MAX_ENVID_LEN: usize = 100;
/// Tag names a client may not set, compared without regard to ASCII case. `tlsrpt` marks TLS-RPT report
/// mail (RFC 8460 section 3), which the TLS-RPT reporter queues itself and which delivery workers send
/// without MTA-STS (`tern-delivery`'s `TLS_REPORT_TAG`): a client setting it would send its message past an
/// enforced MTA-STS policy. `auth_user` names the SMTP user that submitted a message: a client setting it
/// would pass its mail off as that user's in events and history.
pub const RESERVED_TAGS: &[&str] = &["tlsrpt", "auth_user"];

/// A bad field: where, and what is wrong. Displays as `path: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `composed.to[1]` or `envelope.mail_from`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error for `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// The CR/LF check of every value that ends up in a header: a line break would let the caller write
/// header fields of its choosing (header injection).
pub fn no_line_breaks(path: &str, value: &str) -> Result<(), FieldError> {
    if value.contains(['\r', '\n']) {
        return Err(FieldError::new(
            path,
            "CR or LF is not allowed in a header value (header injection)",
        ));
    }
    if value.contains('\0') {
        return Err(FieldError::new(path, "NUL is not allowed in a header value"));
    }
    Ok(())
}

/// A header field name: printable ASCII without `:` (RFC 5322 section 3.6.8), at most 76 characters.
pub fn header_name(path: &str, name: &str) -> Result<(), FieldError> {
    let ok =
        !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(path, format!("invalid header name {name:?}")))
    }
}

/// An address as written in a header field: `user@example.com`, `<user@example.com>` or
/// `Display Name <user@example.com>` (the name may be quoted). Returns the display name and the mailbox.
pub fn header_address(path: &str, text: &str) -> Result<(Option<String>, Mailbox), FieldError> {
    no_line_breaks(path, text)?;
    let invalid = || FieldError::new(path, format!("invalid address {text:?}"));
    let t = text.trim();
    let (name, addr) = match (t.rfind('<'), t.strip_suffix('>')) {
        (Some(lt), Some(_)) => {
            let name = t[..lt].trim();
            let name = name
                .strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .unwrap_or(name)
                .trim();
            let name = (!name.is_empty()).then(|| name.to_owned());
            (name, &t[lt + 1..t.len() - 1])
        }
        (None, None) => (None, t),
        _ => return Err(invalid()),
    };
    let mailbox = Mailbox::parse(addr.trim(), true).map_err(|_| invalid())?;
    Ok((name, mailbox))
}

/// An envelope recipient: a bare address or `<address>`.
pub fn envelope_recipient(path: &str, text: &str) -> Result<Mailbox, FieldError> {
    let t = text.trim();
    let parsed = if t.starts_with('<') {
        parse_forward_path(t, true)
    } else {
        Mailbox::parse(t, true)
    };
    parsed.map_err(|_| FieldError::new(path, format!("invalid address {text:?}")))
}

/// The envelope sender: a bare address, `<address>`, or empty (or `<>`) for the null sender.
pub fn envelope_sender(path: &str, text: &str) -> Result<ReversePath, FieldError> {
    let t = text.trim();
    let parsed = if t.is_empty() {
        Ok(ReversePath::Null)
    } else if t.starts_with('<') {
        parse_reverse_path(t, true)
    } else {
        Mailbox::parse(t, true).map(ReversePath::Mailbox)
    };
    parsed.map_err(|_| FieldError::new(path, format!("invalid address {text:?}")))
}

/// The idempotency key: empty means none. Keys starting with `tern:` are ingest's own (see
/// [`crate::enqueue`]) and refused.
pub fn idempotency_key(path: &str, key: &str) -> Result<Option<String>, FieldError> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.starts_with(INTERNAL_KEY_PREFIX) {
        return Err(FieldError::new(
            path,
            format!("the prefix {INTERNAL_KEY_PREFIX:?} is reserved for tern's own keys"),
        ));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(FieldError::new(
            path,
            format!("longer than {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(FieldError::new(path, "control characters are not allowed"));
    }
    Ok(Some(key.to_owned()))
}

/// The tags: at most [`MAX_TAGS`], names non-empty, at most [`MAX_TAG_KEY_LEN`] bytes and none of
/// [`RESERVED_TAGS`], values at most [`MAX_TAG_VALUE_LEN`] bytes.
pub fn tags(
    path: &str,
    tags: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, FieldError> {
    if tags.len() > MAX_TAGS {
        return Err(FieldError::new(path, format!("more than {MAX_TAGS} tags")));
    }
    let mut out = BTreeMap::new();
    for (k, v) in tags {
        let p = format!("{path}[{k:?}]");
        if k.is_empty() || k.len() > MAX_TAG_KEY_LEN {
            return Err(FieldError::new(
                p,
                format!("tag names must be 1 to {MAX_TAG_KEY_LEN} bytes"),
            ));
        }
        // Any case: the worker matches the name exactly today, but a reserved name is refused in every
        // spelling so that no later normalisation of tag names can reopen the bypass.
        if let Some(reserved) = RESERVED_TAGS.iter().find(|r| k.eq_ignore_ascii_case(r)) {
            return Err(FieldError::new(
                p,
                format!("the tag name {reserved:?} is reserved for tern's own use"),
            ));
        }
        if v.len() > MAX_TAG_VALUE_LEN {
            return Err(FieldError::new(
                p,
                format!("tag values must be at most {MAX_TAG_VALUE_LEN} bytes"),
            ));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// The time a client gives a call, from its `grpc-timeout` metadata (`<up to 8 digits><unit>`, the unit
/// one of `H`, `M`, `S`, `m`, `u`, `n`); `None` when absent or malformed.
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The DSN options as the envelope holds them: ENVID, RET and the NOTIFY applied to every recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DsnOptions {
    /// ENVID.
    pub envid: Option<String>,
    /// RET.
    pub ret: Option<Ret>,
    /// NOTIFY for every recipient.
    pub notify: Option<Notify>,
}

/// Checks the DSN fields of a request: `envid`, `ret` and `notify` (paths as given).
pub fn dsn(envid: &str, ret: i32, notify: &[i32]) -> Result<DsnOptions, FieldError> {
    let mut out = DsnOptions::default();
    if !envid.is_empty() {
        if envid.len() > MAX_ENVID_LEN {
            return Err(FieldError::new(
                "envid",
                format!("longer than {MAX_ENVID_LEN} characters"),
            ));
        }
        if !envid.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(FieldError::new("envid", "must be printable ASCII"));
        }
        out.envid = Some(envid.to_owned());
    }
    out.ret = match pb::Ret::try_from(ret) {
        Ok(pb::Ret::Unspecified) => None,
        Ok(pb::Ret::Full) => Some(Ret::Full),
        Ok(pb::Ret::Hdrs) => Some(Ret::Hdrs),
        Err(_) => return Err(FieldError::new("ret", format!("unknown value {ret}"))),
    };
    let mut flags: Option<Notify> = None;
    let mut never = false;
    for (i, n) in notify.iter().enumerate() {
        let f = flags.get_or_insert(Notify::NEVER);
        match pb::Notify::try_from(*n) {
            Ok(pb::Notify::Unspecified) => {}
            Ok(pb::Notify::Success) => f.success = true,
            Ok(pb::Notify::Failure) => f.failure = true,
            Ok(pb::Notify::Delay) => f.delay = true,
            Ok(pb::Notify::Never) => never = true,
            Err(_) => {
                return Err(FieldError::new(
                    format!("notify[{i}]"),
                    format!("unknown value {n}"),
                ));
            }
        }
    }
    if never && flags.is_some_and(|n| !n.is_never()) {
        return Err(FieldError::new("notify", "NEVER must appear alone"));
    }
    // Only UNSPECIFIED entries: the default.
    if !never && flags.is_some_and(|n| n.is_never()) {
        flags = None;
    }
    out.notify = flags;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_addresses_take_the_usual_forms() {
        let (n, m) = header_address("p", "a@b.test").unwrap();
        assert_eq!((n, m.to_string()), (None, "a@b.test".into()));
        let (n, m) = header_address("p", " \"Ann Lee\" <ann@b.test> ").unwrap();
        assert_eq!(
            (n.as_deref(), m.to_string().as_str()),
            (Some("Ann Lee"), "ann@b.test")
        );
        let (n, _) = header_address("p", "<x@b.test>").unwrap();
        assert_eq!(n, None);
        for bad in ["x", "Ann <x>", "a@b.test>", "", "a@@b"] {
            let e = header_address("composed.to[1]", bad).unwrap_err();
            assert_eq!(e.to_string(), format!("composed.to[1]: invalid address {bad:?}"));
        }
        let e = header_address("composed.from", "a@b.test\r\nBcc: x@y").unwrap_err();
        assert!(e.message.contains("header injection"), "{e}");
    }

    #[test]
    fn envelope_addresses_allow_brackets_and_the_null_sender() {
        assert_eq!(envelope_sender("f", "").unwrap(), ReversePath::Null);
        assert_eq!(envelope_sender("f", "<>").unwrap(), ReversePath::Null);
        assert!(envelope_sender("f", "<a@b.test>").unwrap().mailbox().is_some());
        assert!(envelope_sender("f", "nope").is_err());
        assert_eq!(
            envelope_recipient("r", "<a@b.test>").unwrap().to_string(),
            "a@b.test"
        );
        assert!(envelope_recipient("r", "<>").is_err());
    }

    #[test]
    fn header_names_and_values() {
        assert!(header_name("h", "X-Campaign").is_ok());
        assert!(header_name("h", "Bad Name").is_err());
        assert!(header_name("h", "a:b").is_err());
        assert!(no_line_breaks("h", "fine").is_ok());
        assert!(no_line_breaks("h", "a\nb").is_err());
    }

    #[test]
    fn idempotency_keys_with_the_internal_prefix_are_refused() {
        assert_eq!(idempotency_key("k", "").unwrap(), None);
        assert_eq!(
            idempotency_key("k", "order-1").unwrap().as_deref(),
            Some("order-1")
        );
        assert_eq!(
            idempotency_key("k", "my-tern:1").unwrap().as_deref(),
            Some("my-tern:1")
        );
        let e = idempotency_key("idempotency_key", "tern:01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap_err();
        assert_eq!(e.path, "idempotency_key");
        assert!(e.message.contains("reserved"), "{e}");
    }

    #[test]
    fn the_tls_report_tag_is_reserved_in_any_case() {
        for name in ["tlsrpt", "TLSRPT", "TlsRpt"] {
            let tags = [(name.to_owned(), "victim.test".to_owned())].into();
            let e = super::tags("tags", &tags).unwrap_err();
            assert_eq!(e.path, format!("tags[{name:?}]"));
            assert!(e.message.contains("\"tlsrpt\" is reserved"), "{e}");
        }
        let fine = [
            ("tlsrpt-campaign".to_owned(), "x".to_owned()),
            ("tenant".to_owned(), "tlsrpt".to_owned()),
        ]
        .into();
        assert_eq!(super::tags("tags", &fine).unwrap().len(), 2);
    }

    #[test]
    fn the_smtp_user_tag_is_reserved() {
        let tags = [("Auth_User".to_owned(), "someone-else".to_owned())].into();
        let e = super::tags("tags", &tags).unwrap_err();
        assert!(e.message.contains("\"auth_user\" is reserved"), "{e}");
    }

    #[test]
    fn grpc_timeouts_parse_every_unit() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "5 S", "é"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dsn_options() {
        assert_eq!(dsn("", 0, &[]).unwrap(), DsnOptions::default());
        let o = dsn(
            "abc",
            pb::Ret::Hdrs as i32,
            &[pb::Notify::Success as i32, pb::Notify::Failure as i32],
        )
        .unwrap();
        assert_eq!(o.envid.as_deref(), Some("abc"));
        assert_eq!(o.ret, Some(Ret::Hdrs));
        assert_eq!(
            o.notify,
            Some(Notify {
                success: true,
                failure: true,
                delay: false
            })
        );
        assert_eq!(
            dsn("", 0, &[pb::Notify::Never as i32]).unwrap().notify,
            Some(Notify::NEVER)
        );
        assert_eq!(
            dsn("", 0, &[pb::Notify::Unspecified as i32]).unwrap().notify,
            None
        );
        let mixed = [pb::Notify::Never as i32, pb::Notify::Delay as i32];
        assert_eq!(dsn("", 0, &mixed).unwrap_err().path, "notify");
        assert_eq!(dsn("", 0, &[1, 9]).unwrap_err().path, "notify[1]");
        assert_eq!(dsn("", 9, &[]).unwrap_err().path, "ret");
        assert_eq!(dsn("é", 0, &[]).unwrap_err().path, "envid");
    }
}
