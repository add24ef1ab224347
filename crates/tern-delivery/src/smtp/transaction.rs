//! One message over an open session: content checks against the EHLO capabilities, MAIL, RCPT..., DATA
//! (pipelined when offered), the data itself, and a new transaction for recipients refused with 452.

use tern_core::{Envelope, Recipient};
use tern_smtp::{Body, Capabilities, Command, MailParams, RcptParams, Reply};

use super::conn::WireError;
use super::connect::{Session, Timeouts};
use super::pipeline::{Next, RcptVerdict, match_replies};

/// Size of each write of message data (each bounded by the data block timeout).
const BLOCK: usize = 64 * 1024;

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
        body: (is_eight_bit(env, body) && caps.eight_bit_mime).then_some(Body::EightBitMime),
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

/// Why a message was not even started on this session (the RSET before it failed): the caller opens a new
/// session and tries again; nothing was sent for the message.
#[derive(Debug)]
pub struct NotStarted;

/// Sends one message to `recipients` (index in the job, recipient). Returns one reply per recipient, in
/// the order given. The session's `usable` flag says whether it can take another message.
pub async fn send_message(
    session: &mut Session,
    env: &Envelope,
    recipients: &[(u32, &Recipient)],
    body: &[u8],
    t: &Timeouts,
) -> Result<Vec<(u32, Reply)>, NotStarted> {
    if let Some(reply) = content_check(env, recipients, body, &session.caps) {
        return Ok(recipients.iter().map(|(i, _)| (*i, reply.clone())).collect());
    }
    let mut out: Vec<(u32, Reply)> = Vec::with_capacity(recipients.len());
    let mut todo: Vec<(u32, &Recipient)> = recipients.to_vec();
    let mut first = true;
    while !todo.is_empty() {
        if session.transactions > 0 && !session.rset(t.command).await {
            if first {
                return Err(NotStarted);
            }
            let r = Reply::new(451, "4.4.2", "connection lost before a new transaction");
            out.extend(todo.iter().map(|(i, _)| (*i, r.clone())));
            break;
        }
        first = false;
        session.transactions += 1;
        let (done, retry, accepted) = transaction(session, env, &todo, body, t).await;
        out.extend(done);
        if retry.is_empty() {
            break;
        }
        if accepted == 0 || !session.usable {
            // No progress: the 452s stand as deferrals.
            out.extend(retry.into_iter().map(|(i, _, r)| (i, r)));
            break;
        }
        todo = retry.into_iter().map(|(i, rc, _)| (i, rc)).collect();
    }
    // Keep the caller's order.
    out.sort_by_key(|(i, _)| recipients.iter().position(|(j, _)| j == i).unwrap_or(usize::MAX));
    Ok(out)
}

type Retry<'a> = Vec<(u32, &'a Recipient, Reply)>;

/// One MAIL..DATA transaction. Returns the final replies, the recipients to retry (452) and how many were
/// accepted.
async fn transaction<'a>(
    session: &mut Session,
    env: &Envelope,
    todo: &[(u32, &'a Recipient)],
    body: &[u8],
    t: &Timeouts,
) -> (Vec<(u32, Reply)>, Retry<'a>, usize) {
    let mail = Command::Mail {
        from: env.sender.clone(),
        params: mail_params(env, todo, body, &session.caps),
    };
    let rcpts: Vec<Command> = todo
        .iter()
        .map(|(_, r)| Command::Rcpt {
            to: r.address.clone(),
            params: rcpt_params(r, &session.caps),
        })
        .collect();

    let exchange = if session.caps.pipelining {
        pipelined(session, &mail, &rcpts, t).await
    } else {
        lockstep(session, &mail, &rcpts, t).await
    };
    let (mail_reply, rcpt_replies, data_reply) = match exchange {
        Ok(x) => x,
        Err(e) => {
            session.usable = false;
            let r = e.as_reply();
            return (todo.iter().map(|(i, _)| (*i, r.clone())).collect(), Vec::new(), 0);
        }
    };
    // Commands not sent (a lock-step exchange stopped at a 452) are retried like the 452 itself.
    let mut replies = rcpt_replies;
    if let Some(last) = replies.last().cloned()
        && last.code == 452
    {
        while replies.len() < todo.len() {
            replies.push(last.clone());
        }
    }
    let (verdicts, next) = match_replies(&mail_reply, &replies, data_reply.as_ref());
    let mut done = Vec::new();
    let mut retry = Vec::new();
    let mut accepted = Vec::new();
    for ((i, rc), v) in todo.iter().zip(verdicts) {
        match v {
            RcptVerdict::Accepted => accepted.push(*i),
            RcptVerdict::Final(r) => done.push((*i, r)),
            RcptVerdict::Retry(r) => retry.push((*i, *rc, r)),
        }
    }
    for r in std::iter::once(&mail_reply)
        .chain(&replies)
        .chain(data_reply.as_ref())
    {
        if r.code == 421 {
            session.usable = false;
        }
    }
    let n_accepted = accepted.len();
    match next {
        Next::Done => {
            // Accepted recipients whose DATA was never sent (the exchange stopped at a 421): deferred.
            let stop = std::iter::once(&mail_reply)
                .chain(&replies)
                .find(|r| r.code == 421)
                .cloned()
                .unwrap_or_else(|| Reply::new(451, "4.4.2", "transaction ended before DATA"));
            done.extend(accepted.into_iter().map(|i| (i, stop.clone())));
        }
        Next::SendDotOnly => {
            if session.wire.write(b".\r\n", t.data_block, "DATA").await.is_err()
                || session.wire.read_reply(t.data_done, "end of data").await.is_err()
            {
                session.usable = false;
            }
        }
        Next::SendBody => {
            let final_reply = match send_body(session, body, t).await {
                Ok(r) => {
                    if r.code == 421 {
                        session.usable = false;
                    }
                    r
                }
                Err(e) => {
                    session.usable = false;
                    e.as_reply()
                }
            };
            done.extend(accepted.into_iter().map(|i| (i, final_reply.clone())));
        }
    }
    (done, retry, n_accepted)
}

type Exchange = (Reply, Vec<Reply>, Option<Reply>);

/// MAIL, every RCPT and DATA in one write; then the replies, matched by count (RFC 2920).
async fn pipelined(
    session: &mut Session,
    mail: &Command,
    rcpts: &[Command],
    t: &Timeouts,
) -> Result<Exchange, WireError> {
    let mut buf = mail.to_bytes();
    for r in rcpts {
        buf.extend_from_slice(&r.to_bytes());
    }
    buf.extend_from_slice(&Command::Data.to_bytes());
    session.wire.write(&buf, t.mail, "MAIL").await?;
    let mail_reply = session.wire.read_reply(t.mail, "MAIL").await?;
    let mut replies = Vec::with_capacity(rcpts.len());
    for _ in rcpts {
        replies.push(session.wire.read_reply(t.rcpt, "RCPT").await?);
    }
    let data = session.wire.read_reply(t.data, "DATA").await?;
    Ok((mail_reply, replies, Some(data)))
}

/// One command at a time, stopping at the first failure that makes the rest pointless.
async fn lockstep(
    session: &mut Session,
    mail: &Command,
    rcpts: &[Command],
    t: &Timeouts,
) -> Result<Exchange, WireError> {
    session.wire.send(mail, t.mail).await?;
    let mail_reply = session.wire.read_reply(t.mail, "MAIL").await?;
    if !mail_reply.is_positive() {
        let replies = rcpts.iter().map(|_| mail_reply.clone()).collect();
        return Ok((mail_reply, replies, None));
    }
    let mut replies = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        session.wire.send(r, t.rcpt).await?;
        let reply = session.wire.read_reply(t.rcpt, "RCPT").await?;
        let stop = reply.code == 452 || reply.code == 421;
        replies.push(reply);
        if stop {
            break;
        }
    }
    if replies.len() < rcpts.len() && replies.last().is_some_and(|r| r.code == 421) {
        let last = replies.last().cloned();
        while let Some(l) = &last {
            if replies.len() >= rcpts.len() {
                break;
            }
            replies.push(l.clone());
        }
    }
    if !replies.iter().any(Reply::is_positive) || replies.iter().any(|r| r.code == 421) {
        return Ok((mail_reply, replies, None));
    }
    session.wire.send(&Command::Data, t.data).await?;
    let data = session.wire.read_reply(t.data, "DATA").await?;
    Ok((mail_reply, replies, Some(data)))
}

/// Sends the dot-stuffed, CRLF-normalised message and its terminator; returns the final reply.
async fn send_body(session: &mut Session, body: &[u8], t: &Timeouts) -> Result<Reply, WireError> {
    let mut enc = tern_smtp::DataEncoder::new();
    let mut out = Vec::with_capacity(BLOCK + BLOCK / 16);
    for chunk in body.chunks(BLOCK) {
        out.clear();
        enc.encode(chunk, &mut out);
        session.wire.write(&out, t.data_block, "message data").await?;
    }
    out.clear();
    enc.finish(&mut out);
    session.wire.write(&out, t.data_block, "message data").await?;
    session.wire.read_reply(t.data_done, "end of data").await
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
