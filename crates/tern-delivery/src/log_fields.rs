//! The values of the fields every lifecycle log line of a message carries, as plain text: the sender, the
//! recipients (named while they are few), and times in RFC 3339. No Rust debug form reaches a log line:
//! an operator greps `sender=a@b.test`, not `Some(Mailbox(..))`.

use tern_core::ReversePath;

/// Up to this many recipients are named on a log line; more are given as their count.
pub(crate) const NAMED_RECIPIENTS: usize = 5;

/// The envelope sender as a log value: the address, or `<>` for the null sender.
pub(crate) fn sender(path: &ReversePath) -> String {
    match path {
        ReversePath::Null => "<>".to_string(),
        ReversePath::Mailbox(m) => m.to_string(),
    }
}

/// Recipients as a log value: comma-joined when there are at most [`NAMED_RECIPIENTS`], otherwise
/// `<n> recipients`.
pub(crate) fn recipients<I, S>(addresses: I) -> String
where
    I: IntoIterator<Item = S>,
    S: std::fmt::Display,
{
    let mut named = Vec::with_capacity(NAMED_RECIPIENTS);
    let mut count = 0usize;
    for a in addresses {
        count += 1;
        if count <= NAMED_RECIPIENTS {
            named.push(a.to_string());
        }
    }
    if count > NAMED_RECIPIENTS {
        return format!("{count} recipients");
    }
    named.join(",")
}

/// A Unix time in milliseconds as RFC 3339 in UTC, to the second: `2026-11-28T13:26:49Z`.
pub(crate) fn rfc3339(ms: u64) -> String {
    tern_core::time::rfc3339_utc(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_999), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_872_409_000), "2026-11-28T13:26:49Z");
    }

    #[test]
    fn few_recipients_are_named_and_many_counted() {
        assert_eq!(recipients(["a@b.test", "c@b.test"]), "a@b.test,c@b.test");
        let many: Vec<String> = (0..6).map(|i| format!("r{i}@b.test")).collect();
        assert_eq!(recipients(&many), "6 recipients");
        assert_eq!(recipients(Vec::<String>::new()), "");
    }

    #[test]
    fn the_null_sender_shows_as_brackets_and_a_mailbox_bare() {
        assert_eq!(sender(&ReversePath::Null), "<>");
        let m = ReversePath::Mailbox("s@a.test".parse().unwrap());
        assert_eq!(sender(&m), "s@a.test");
    }
}
