//! The command group of a transaction, MAIL, RCPT... and DATA: sent in one write when the server offers
//! PIPELINING (RFC 2920), one at a time otherwise; then the pure matching of its replies. A pipelined group
//! may begin with RSET (RFC 2920 §3.1 lets it lead a group), which then costs no round trip of its own.
//!
//! Replies come back in the order the commands were sent, so they are matched by count. RFC 2920 3.1: the
//! client must check every reply; when no RCPT was accepted it must still look at the DATA reply, and if
//! DATA was accepted anyway (354) it sends the terminating dot alone, so that no content goes out and the
//! server ends the (empty, failing) transaction.
//!
//! A message that goes by BDAT (RFC 3030) has no DATA in the group: the chunks follow once a recipient
//! was accepted (`chunking.rs`).

use tern_smtp::{Command, Reply};

use super::client::Timeouts;
use super::wire::{Wire, WireError};

/// The replies of a group: MAIL's, one per RCPT, and DATA's (`None` when DATA was not sent).
pub(crate) type Exchange = (Reply, Vec<Reply>, Option<Reply>);

/// Why a group gave no replies to match.
#[derive(Debug)]
pub(crate) enum GroupFailure {
    /// The session turned out to be over before the transaction started (only asked for with `stale_check`,
    /// and always with a leading RSET): the RSET was refused or not answered, or MAIL was answered 421 or
    /// not at all. Nothing of the transaction was taken; a server that closed a kept session (its idle
    /// timer, its limit of messages per session) does this.
    Stale,
    /// The connection failed.
    Wire(WireError),
}

impl From<WireError> for GroupFailure {
    fn from(e: WireError) -> Self {
        GroupFailure::Wire(e)
    }
}

/// The reply to MAIL, or [`GroupFailure::Stale`] (with `stale_check`) when it says the session is over.
async fn mail_reply(wire: &mut Wire, stale_check: bool, t: &Timeouts) -> Result<Reply, GroupFailure> {
    match wire.read_reply(t.mail, "MAIL").await {
        Ok(r) if stale_check && r.code == 421 => Err(GroupFailure::Stale),
        Ok(r) => Ok(r),
        Err(_) if stale_check => Err(GroupFailure::Stale),
        Err(e) => Err(e.into()),
    }
}

/// RSET (when `reset`), MAIL, every RCPT and DATA (unless `with_data` is false: BDAT follows) in one write;
/// then the replies, matched by count (RFC 2920). With `stale_check` (a session that carried mail before),
/// a session found over before MAIL was accepted is [`GroupFailure::Stale`].
pub(crate) async fn pipelined(
    wire: &mut Wire,
    reset: bool,
    stale_check: bool,
    mail: &Command,
    rcpts: &[Command],
    with_data: bool,
    t: &Timeouts,
) -> Result<Exchange, GroupFailure> {
    let stale_check = stale_check || reset;
    let rset = reset.then_some(&Command::Rset);
    let data = with_data.then_some(&Command::Data);
    let group: Vec<&Command> = rset
        .into_iter()
        .chain(std::iter::once(mail))
        .chain(rcpts)
        .chain(data)
        .collect();
    let first = if reset { "RSET" } else { "MAIL" };
    if let Err(e) = wire.send_group(&group, t.mail, first).await {
        return Err(if stale_check {
            GroupFailure::Stale
        } else {
            e.into()
        });
    }
    if reset {
        match wire.read_reply(t.command, "RSET").await {
            Ok(r) if r.is_positive() => {}
            _ => return Err(GroupFailure::Stale),
        }
    }
    let mail_reply = mail_reply(wire, stale_check, t).await?;
    let mut replies = Vec::with_capacity(rcpts.len());
    for _ in rcpts {
        replies.push(wire.read_reply(t.rcpt, "RCPT").await?);
    }
    if !with_data {
        return Ok((mail_reply, replies, None));
    }
    let data = wire.read_reply(t.data, "DATA").await?;
    Ok((mail_reply, replies, Some(data)))
}

/// One command at a time, stopping at the first failure that makes the rest pointless; DATA last unless
/// `with_data` is false. `stale_check` as for [`pipelined`] (an RSET was sent before, on its own).
pub(crate) async fn lockstep(
    wire: &mut Wire,
    stale_check: bool,
    mail: &Command,
    rcpts: &[Command],
    with_data: bool,
    t: &Timeouts,
) -> Result<Exchange, GroupFailure> {
    if let Err(e) = wire.send(mail, t.mail).await {
        return Err(if stale_check {
            GroupFailure::Stale
        } else {
            e.into()
        });
    }
    let mail_reply = mail_reply(wire, stale_check, t).await?;
    if !mail_reply.is_positive() {
        let replies = rcpts.iter().map(|_| mail_reply.clone()).collect();
        return Ok((mail_reply, replies, None));
    }
    let mut replies = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        wire.send(r, t.rcpt).await?;
        let reply = wire.read_reply(t.rcpt, "RCPT").await?;
        let stop = reply.code == 452 || reply.code == 421;
        replies.push(reply);
        if stop {
            break;
        }
    }
    // Recipients not asked for after a 421 take the 421.
    if let Some(last) = replies.last().filter(|r| r.code == 421).cloned() {
        replies.resize(rcpts.len().max(replies.len()), last);
    }
    if !with_data || !replies.iter().any(Reply::is_positive) || replies.iter().any(|r| r.code == 421) {
        return Ok((mail_reply, replies, None));
    }
    wire.send(&Command::Data, t.data).await?;
    let data = wire.read_reply(t.data, "DATA").await?;
    Ok((mail_reply, replies, Some(data)))
}

/// What became of one RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Accepted: the final reply after the data decides.
    Accepted,
    /// Refused (or the transaction failed for it): this is its reply.
    Final(Reply),
    /// 452 (too many recipients): try it again in a new transaction.
    Retry(Reply),
}

/// What the client does after reading the group's replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// DATA got 354 and recipients were accepted: send the message.
    SendBody,
    /// DATA got 354 but no recipient was accepted: send `.` alone, and ignore its reply.
    SendDotOnly,
    /// Nothing to send; the transaction is over.
    Done,
}

/// Matches the MAIL reply, one reply per RCPT, and the DATA reply (`None` when DATA was not sent, as in
/// a group sent without pipelining that stopped before DATA).
pub fn match_replies(mail: &Reply, rcpts: &[Reply], data: Option<&Reply>) -> (Vec<RcptVerdict>, Next) {
    let data_open = data.is_some_and(|d| d.code == 354);
    if !mail.is_positive() {
        let v = rcpts.iter().map(|_| RcptVerdict::Final(mail.clone())).collect();
        return (v, if data_open { Next::SendDotOnly } else { Next::Done });
    }
    let mut verdicts: Vec<RcptVerdict> = rcpts
        .iter()
        .map(|r| {
            if r.is_positive() {
                RcptVerdict::Accepted
            } else if r.code == 452 {
                RcptVerdict::Retry(r.clone())
            } else {
                RcptVerdict::Final(r.clone())
            }
        })
        .collect();
    let any_accepted = verdicts.contains(&RcptVerdict::Accepted);
    if !any_accepted {
        return (verdicts, if data_open { Next::SendDotOnly } else { Next::Done });
    }
    if data_open {
        return (verdicts, Next::SendBody);
    }
    if let Some(d) = data {
        for v in &mut verdicts {
            if *v == RcptVerdict::Accepted {
                *v = RcptVerdict::Final(d.clone());
            }
        }
    }
    (verdicts, Next::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16) -> Reply {
        Reply::new(code, None, "x")
    }

    #[test]
    fn all_accepted_sends_the_body() {
        let (v, n) = match_replies(&r(250), &[r(250), r(251)], Some(&r(354)));
        assert_eq!(v, vec![RcptVerdict::Accepted, RcptVerdict::Accepted]);
        assert_eq!(n, Next::SendBody);
    }

    #[test]
    fn each_rcpt_gets_its_own_reply() {
        let (v, n) = match_replies(&r(250), &[r(250), r(550), r(450), r(452)], Some(&r(354)));
        assert_eq!(
            v,
            vec![
                RcptVerdict::Accepted,
                RcptVerdict::Final(r(550)),
                RcptVerdict::Final(r(450)),
                RcptVerdict::Retry(r(452)),
            ]
        );
        assert_eq!(n, Next::SendBody);
    }

    #[test]
    fn no_rcpt_accepted_but_data_354_sends_the_dot_alone() {
        let (v, n) = match_replies(&r(250), &[r(550), r(550)], Some(&r(354)));
        assert_eq!(v, vec![RcptVerdict::Final(r(550)), RcptVerdict::Final(r(550))]);
        assert_eq!(n, Next::SendDotOnly);
        let (_, n) = match_replies(&r(250), &[r(550)], Some(&r(554)));
        assert_eq!(n, Next::Done);
    }

    #[test]
    fn mail_refused_applies_to_every_recipient() {
        let (v, n) = match_replies(&r(451), &[r(250), r(503)], Some(&r(503)));
        assert_eq!(v, vec![RcptVerdict::Final(r(451)), RcptVerdict::Final(r(451))]);
        assert_eq!(n, Next::Done);
    }

    #[test]
    fn data_refused_applies_to_accepted_recipients() {
        let (v, n) = match_replies(&r(250), &[r(250), r(550)], Some(&r(451)));
        assert_eq!(v, vec![RcptVerdict::Final(r(451)), RcptVerdict::Final(r(550))]);
        assert_eq!(n, Next::Done);
    }
}
