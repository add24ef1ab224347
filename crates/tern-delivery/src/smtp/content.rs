//! What a message needs from the server, pure: the content checks against the EHLO capabilities (SIZE,
//! SMTPUTF8, 8BITMIME, CHUNKING and BINARYMIME) and the MAIL and RCPT parameters to send (DSN ones only
//! when offered).

use tern_core::{Envelope, Recipient};
use tern_smtp::{Body, Capabilities, MailParams, RcptParams, Reply};

/// The message content cannot go to this server; every recipient fails with this reply.
pub fn content_check(
    env: &Envelope,
    recipients: &[(u32, &Recipient)],
    body: &[u8],
    caps: &Capabilities,
) -> Option<Reply> {
    if let Some(max) = caps.size
        && max > 0
        && body.len() as u64 > max
    {
        return Some(Reply::new(
            552,
            "5.3.4",
            format!("message size {} exceeds the server's limit of {max}", body.len()),
        ));
    }
    if needs_smtputf8(env, recipients) && !caps.smtputf8 {
        return Some(Reply::new(
            553,
            "5.6.7",
            "the message needs SMTPUTF8, which the server does not offer",
        ));
    }
    if env.body == Some(Body::BinaryMime) {
        // RFC 3030 3: binary content cannot be converted here; it goes only by BDAT to a server that
        // takes BINARYMIME, and otherwise bounces.
        if caps.chunking && caps.binarymime {
            return None;
        }
        return Some(Reply::new(
            554,
            "5.6.3",
            "conversion required but not supported: the message is BINARYMIME and the server does not \
             offer CHUNKING and BINARYMIME",
        ));
    }
    if is_eight_bit(env, body) && !caps.eight_bit_mime {
        return Some(Reply::new(
            554,
            "5.6.3",
            "the message has 8-bit content and the server does not offer 8BITMIME",
        ));
    }
    None
}

fn needs_smtputf8(env: &Envelope, recipients: &[(u32, &Recipient)]) -> bool {
    env.smtputf8
        || env.sender.mailbox().is_some_and(|m| !m.is_ascii())
        || recipients.iter().any(|(_, r)| !r.address.is_ascii())
}

fn is_eight_bit(env: &Envelope, body: &[u8]) -> bool {
    matches!(env.body, Some(Body::EightBitMime | Body::BinaryMime)) || !body.is_ascii()
}

/// The MAIL parameters for this server.
pub fn mail_params(
    env: &Envelope,
    recipients: &[(u32, &Recipient)],
    body: &[u8],
    caps: &Capabilities,
) -> MailParams {
    MailParams {
        size: caps.size.map(|_| body.len() as u64),
        body: if env.body == Some(Body::BinaryMime) && caps.chunking && caps.binarymime {
            Some(Body::BinaryMime)
        } else {
            (is_eight_bit(env, body) && caps.eight_bit_mime).then_some(Body::EightBitMime)
        },
        smtputf8: needs_smtputf8(env, recipients) && caps.smtputf8,
        ret: if caps.dsn { env.ret } else { None },
        envid: if caps.dsn { env.envid.clone() } else { None },
        auth: None,
        requiretls: false,
    }
}

/// The RCPT parameters for this server (NOTIFY and ORCPT only when it offers DSN).
pub fn rcpt_params(r: &Recipient, caps: &Capabilities) -> RcptParams {
    if caps.dsn {
        RcptParams {
            notify: r.notify,
            orcpt: r.orcpt.clone(),
        }
    } else {
        RcptParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::ReversePath;

    fn env(body: Option<Body>) -> Envelope {
        let mut e = Envelope::new(
            ReversePath::Mailbox("s@a.test".parse().unwrap()),
            vec![Recipient::new("r@b.test".parse().unwrap())],
        );
        e.body = body;
        e
    }

    #[test]
    fn size_over_the_advertised_limit_bounces_5_3_4() {
        let e = env(None);
        let rs: Vec<(u32, &Recipient)> = vec![(0, &e.recipients[0])];
        let caps = Capabilities {
            size: Some(10),
            eight_bit_mime: true,
            ..Default::default()
        };
        let r = content_check(&e, &rs, b"0123456789ABC", &caps).unwrap();
        assert_eq!((r.code, r.enhanced.unwrap().to_string()), (552, "5.3.4".into()));
        assert!(content_check(&e, &rs, b"0123", &caps).is_none());
        let unlimited = Capabilities {
            size: Some(0),
            ..Default::default()
        };
        assert!(content_check(&e, &rs, b"0123456789ABC", &unlimited).is_none());
    }

    #[test]
    fn eight_bit_without_8bitmime_bounces_5_6_3() {
        let e = env(None);
        let rs: Vec<(u32, &Recipient)> = vec![(0, &e.recipients[0])];
        let r = content_check(&e, &rs, "caf\u{e9}".as_bytes(), &Capabilities::default()).unwrap();
        assert_eq!(r.enhanced.unwrap().to_string(), "5.6.3");
        let caps = Capabilities {
            eight_bit_mime: true,
            ..Default::default()
        };
        assert!(content_check(&e, &rs, "caf\u{e9}".as_bytes(), &caps).is_none());
        assert_eq!(
            mail_params(&e, &rs, "caf\u{e9}".as_bytes(), &caps).body,
            Some(Body::EightBitMime)
        );
    }

    #[test]
    fn binarymime_needs_chunking_and_binarymime_or_bounces_5_6_3() {
        let e = env(Some(Body::BinaryMime));
        let rs: Vec<(u32, &Recipient)> = vec![(0, &e.recipients[0])];
        let eight = Capabilities {
            eight_bit_mime: true,
            ..Default::default()
        };
        let chunking_only = Capabilities {
            chunking: true,
            ..eight.clone()
        };
        for caps in [&eight, &chunking_only] {
            let r = content_check(&e, &rs, b"x\0y", caps).unwrap();
            assert_eq!((r.code, r.enhanced.unwrap().to_string()), (554, "5.6.3".into()));
        }
        let both = Capabilities {
            chunking: true,
            binarymime: true,
            ..Default::default()
        };
        assert!(content_check(&e, &rs, b"x\0y", &both).is_none());
        assert_eq!(mail_params(&e, &rs, b"x\0y", &both).body, Some(Body::BinaryMime));
        // An 8-bit message to a server with BINARYMIME still says 8BITMIME.
        let e8 = env(Some(Body::EightBitMime));
        let all = Capabilities {
            eight_bit_mime: true,
            ..both
        };
        assert_eq!(mail_params(&e8, &rs, b"x", &all).body, Some(Body::EightBitMime));
    }

    #[test]
    fn smtputf8_needed_but_not_offered_bounces_5_6_7() {
        let mut e = env(None);
        e.smtputf8 = true;
        let rs: Vec<(u32, &Recipient)> = vec![(0, &e.recipients[0])];
        let caps = Capabilities {
            eight_bit_mime: true,
            ..Default::default()
        };
        let r = content_check(&e, &rs, b"x", &caps).unwrap();
        assert_eq!(r.enhanced.unwrap().to_string(), "5.6.7");
    }

    #[test]
    fn dsn_parameters_only_when_offered() {
        let mut e = env(None);
        e.envid = Some("ID1".into());
        e.ret = Some(tern_core::Ret::Hdrs);
        e.recipients[0].notify = Some(tern_core::Notify::NEVER);
        let rs: Vec<(u32, &Recipient)> = vec![(0, &e.recipients[0])];
        let plain = Capabilities::default();
        assert!(mail_params(&e, &rs, b"x", &plain).is_empty());
        assert!(rcpt_params(&e.recipients[0], &plain).is_empty());
        let dsn = Capabilities {
            dsn: true,
            ..Default::default()
        };
        assert_eq!(mail_params(&e, &rs, b"x", &dsn).to_string(), "RET=HDRS ENVID=ID1");
        assert_eq!(rcpt_params(&e.recipients[0], &dsn).to_string(), "NOTIFY=NEVER");
    }
}
