//! The values of the fields a message's log lines carry, as plain text (never a Rust debug form): the
//! sender, the recipients (named while they are few) and their domains. The delivery side writes the same
//! fields, so that one message can be followed from its `queued` line to its last delivery line.

use tern_core::{Recipient, ReversePath};

/// Up to this many recipients (or domains) are named on a log line; more are given as their count.
const NAMED: usize = 5;

/// The envelope sender as a log value: the address, or `<>` for the null sender.
pub(crate) fn sender(path: &ReversePath) -> String {
    match path {
        ReversePath::Null => "<>".to_string(),
        ReversePath::Mailbox(m) => m.to_string(),
    }
}

/// Recipients as a log value: comma-joined while at most five, otherwise `<n> recipients`.
pub(crate) fn recipients(rcpts: &[Recipient]) -> String {
    if rcpts.len() > NAMED {
        return format!("{} recipients", rcpts.len());
    }
    rcpts
        .iter()
        .map(|r| r.address.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The recipients' destination domains as a log value: each once, comma-joined while at most five,
/// otherwise `<n> domains`.
pub(crate) fn domains(rcpts: &[Recipient]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for r in rcpts {
        let d = r.domain();
        if !seen.contains(&d) {
            seen.push(d);
        }
    }
    if seen.len() > NAMED {
        return format!("{} domains", seen.len());
    }
    seen.join(",")
}

/// Line-ending violations as a log value: `bare-cr,bare-lf,nul,long-line` (those seen).
pub(crate) fn violations(v: tern_smtp::Violations) -> String {
    let names = [
        (v.bare_cr, "bare-cr"),
        (v.bare_lf, "bare-lf"),
        (v.nul, "nul"),
        (v.long_line, "long-line"),
    ];
    names
        .iter()
        .filter(|(seen, _)| *seen)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(a: &str) -> Recipient {
        Recipient::new(a.parse().unwrap())
    }

    #[test]
    fn few_recipients_and_domains_are_named_and_many_counted() {
        let few = [rcpt("a@b.test"), rcpt("c@B.test"), rcpt("d@e.test")];
        assert_eq!(recipients(&few), "a@b.test,c@B.test,d@e.test");
        assert_eq!(domains(&few), "b.test,e.test");
        let many: Vec<Recipient> = (0..7).map(|i| rcpt(&format!("r@d{i}.test"))).collect();
        assert_eq!(recipients(&many), "7 recipients");
        assert_eq!(domains(&many), "7 domains");
    }

    #[test]
    fn the_null_sender_is_brackets_and_violations_are_named() {
        assert_eq!(sender(&ReversePath::Null), "<>");
        let v = tern_smtp::Violations {
            bare_lf: true,
            nul: true,
            ..Default::default()
        };
        assert_eq!(violations(v), "bare-lf,nul");
    }
}
