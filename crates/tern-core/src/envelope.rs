//! The SMTP envelope: who a message is from, who it goes to, and the DSN parameters that came with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_smtp::{Body, Mailbox, Notify, OriginalRecipient, Ret, ReversePath};

/// Why an envelope is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A message must go somewhere.
    #[error("the envelope has no recipients")]
    NoRecipients,
    /// The same recipient twice would be delivered twice.
    #[error("recipient {0} is listed twice")]
    DuplicateRecipient(String),
}

/// One recipient with its RFC 3461 DSN parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path.
    pub address: Mailbox,
    /// NOTIFY: when the sender wants a DSN for this recipient. `None` means the default (failure and delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// ORCPT: the recipient as the sender first gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<OriginalRecipient>,
}

impl Recipient {
    /// A recipient with no DSN parameters.
    pub fn new(address: Mailbox) -> Self {
        Recipient {
            address,
            notify: None,
            orcpt: None,
        }
    }

    /// The domain that mail for this recipient is routed by (lower-cased).
    pub fn domain(&self) -> String {
        self.address.domain_for_routing()
    }

    /// Whether a DSN should be sent when delivery to this recipient fails (RFC 3461 4.1: the default, with
    /// no NOTIFY, is to report failures).
    pub fn wants_failure_notice(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }

    /// Whether a DSN should be sent when delivery to this recipient succeeds (only on NOTIFY=SUCCESS).
    pub fn wants_success_notice(&self) -> bool {
        self.notify.is_some_and(|n| n.success)
    }

    /// Whether a delay notice may be sent (the default, with no NOTIFY, allows it).
    pub fn wants_delay_notice(&self) -> bool {
        self.notify.is_none_or(|n| n.delay)
    }
}

/// The envelope of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse-path; `<>` for bounces, which must never themselves be bounced.
    pub sender: ReversePath,
    /// Every recipient, in the order given.
    pub recipients: Vec<Recipient>,
    /// ENVID: the sender's id for this transaction, echoed in DSNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// RET: how much of the message a DSN should return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// BODY: the declared body type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// SMTPUTF8 was given: addresses or headers may be UTF-8.
    #[serde(default)]
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689) was given.
    #[serde(default)]
    pub requiretls: bool,
}

impl Envelope {
    /// An envelope from `sender` to `recipients`, with no DSN parameters.
    pub fn new(sender: ReversePath, recipients: Vec<Recipient>) -> Self {
        Envelope {
            sender,
            recipients,
            envid: None,
            ret: None,
            body: None,
            smtputf8: false,
            requiretls: false,
        }
    }

    /// Checks that the envelope can be queued: at least one recipient, none twice.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.recipients.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.recipients {
            if !seen.insert(r.address.to_string().to_ascii_lowercase()) {
                return Err(EnvelopeError::DuplicateRecipient(r.address.to_string()));
            }
        }
        Ok(())
    }

    /// Whether the sender is the null reverse-path (the message is itself a DSN).
    pub fn is_bounce(&self) -> bool {
        matches!(self.sender, ReversePath::Null)
    }

    /// The recipients grouped by destination domain, domains in sorted order and recipients in the order
    /// given. Each group becomes one queue job.
    pub fn by_domain(&self) -> Vec<(String, Vec<Recipient>)> {
        let mut groups: BTreeMap<String, Vec<Recipient>> = BTreeMap::new();
        for r in &self.recipients {
            groups.entry(r.domain()).or_default().push(r.clone());
        }
        groups.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(s: &str) -> Recipient {
        Recipient::new(s.parse().unwrap())
    }

    #[test]
    fn recipients_group_by_lowercased_domain() {
        let env = Envelope::new(
            ReversePath::Null,
            vec![
                rcpt("a@B.test"),
                rcpt("c@a.test"),
                rcpt("d@b.test"),
                rcpt("e@[192.0.2.1]"),
            ],
        );
        let groups = env.by_domain();
        let names: Vec<_> = groups.iter().map(|(d, r)| (d.as_str(), r.len())).collect();
        assert_eq!(names, vec![("[192.0.2.1]", 1), ("a.test", 1), ("b.test", 2)]);
        assert_eq!(groups[2].1[0].address.to_string(), "a@B.test");
    }

    #[test]
    fn empty_and_duplicate_recipients_are_refused() {
        let env = Envelope::new(ReversePath::Null, vec![]);
        assert_eq!(env.validate(), Err(EnvelopeError::NoRecipients));
        let env = Envelope::new(ReversePath::Null, vec![rcpt("a@b.test"), rcpt("A@B.test")]);
        assert!(matches!(
            env.validate(),
            Err(EnvelopeError::DuplicateRecipient(_))
        ));
        let env = Envelope::new(ReversePath::Null, vec![rcpt("a@b.test")]);
        assert_eq!(env.validate(), Ok(()));
        assert!(env.is_bounce());
    }

    #[test]
    fn notify_defaults_follow_rfc3461() {
        let mut r = rcpt("a@b.test");
        assert!(r.wants_failure_notice() && r.wants_delay_notice() && !r.wants_success_notice());
        r.notify = Some(Notify::NEVER);
        assert!(!r.wants_failure_notice() && !r.wants_delay_notice() && !r.wants_success_notice());
        r.notify = Some(Notify {
            success: true,
            failure: false,
            delay: false,
        });
        assert!(r.wants_success_notice() && !r.wants_failure_notice());
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let mut env = Envelope::new(
            ReversePath::Mailbox("s@a.test".parse().unwrap()),
            vec![rcpt("x@b.test")],
        );
        env.envid = Some("abc+123".into());
        env.ret = Some(Ret::Hdrs);
        env.recipients[0].notify = Some(Notify {
            success: true,
            failure: true,
            delay: false,
        });
        let json = serde_json::to_string(&env).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
    }
}
