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
//!
//! On a session carrying one message after another, the previous message's data and terminating dot can
//! lead the group too (RFC 2920 §3.1 lets the next transaction's commands follow the end of data without
//! waiting for its reply): one write and one read per message instead of two of each. The reply to that
//! end of data is then the first one read.

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

/// A transaction's command group, and what its sending has to know.
#[derive(Clone, Copy)]
pub(crate) struct CommandGroup<'a> {
    /// RSET leads the group (pipelined only; sent on its own before a lock-step group).
    pub(crate) reset: bool,
    /// The session carried mail before: it may turn out to be over ([`GroupFailure::Stale`]).
    pub(crate) stale_check: bool,
    /// The previous message's end of data is held on the wire ([`Wire::hold_data`]), to go first
    /// (pipelined only).
    pub(crate) held_end: bool,
    /// MAIL FROM.
    pub(crate) mail: &'a Command,
    /// One RCPT TO per recipient.
    pub(crate) rcpts: &'a [Command],
    /// DATA ends the group (not when BDAT follows).
    pub(crate) with_data: bool,
}

/// The replies of a pipelined group, and the reply to the end of data held back before it (when one was).
pub(crate) struct Pipelined {
    /// The reply to the previous message's end of data, which went out in the group's write
    /// ([`Wire::hold_data`]) and is answered first; `None` when nothing was held.
    pub(crate) held_end: Option<Result<Reply, WireError>>,
    /// The group's own replies.
    pub(crate) exchange: Result<Exchange, GroupFailure>,
}

/// RSET (when `reset`), MAIL, every RCPT and DATA (unless `with_data` is false: BDAT follows) in one write;
/// then the replies, matched by count (RFC 2920). With `stale_check` (a session that carried mail before),
/// a session found over before MAIL was accepted is [`GroupFailure::Stale`]. With `held_end`, the previous
/// message's data went out first in the same write, and its reply comes before the group's: a failure
/// there (no reply, a 421) leaves the group [`GroupFailure::Stale`], since none of it was taken.
pub(crate) async fn pipelined(wire: &mut Wire, group: &CommandGroup<'_>, t: &Timeouts) -> Pipelined {
    let CommandGroup {
        reset,
        stale_check,
        held_end,
        mail,
        rcpts,
        with_data,
    } = *group;
    let stale_check = stale_check || reset || held_end;
    let rset = reset.then_some(&Command::Rset);
    let data = with_data.then_some(&Command::Data);
    let group: Vec<&Command> = rset
        .into_iter()
        .chain(std::iter::once(mail))
        .chain(rcpts)
        .chain(data)
        .collect();
    let first = if reset { "RSET" } else { "MAIL" };
    let sent = wire.send_group(&group, t.mail, first).await;
    let held_end = match (&sent, held_end) {
        (_, false) => None,
        (Err(e), true) => Some(Err(e.during("end of data"))),
        (Ok(()), true) => Some(wire.read_reply(t.data_done, "end of data").await),
    };
    let exchange = match sent {
        Err(e) if !stale_check => Err(e.into()),
        Err(_) => Err(GroupFailure::Stale),
        // The held end of data failed, or its reply closed the session: the group was not taken.
        Ok(()) if !wire.is_usable() => Err(GroupFailure::Stale),
        Ok(()) => group_replies(wire, reset, stale_check, rcpts.len(), with_data, t).await,
    };
    Pipelined { held_end, exchange }
}

/// The replies to a pipelined group already sent: RSET's (when `reset`), MAIL's, one per RCPT, and DATA's.
async fn group_replies(
    wire: &mut Wire,
    reset: bool,
    stale_check: bool,
    rcpts: usize,
    with_data: bool,
    t: &Timeouts,
) -> Result<Exchange, GroupFailure> {
    if reset {
        match wire.read_reply(t.command, "RSET").await {
            Ok(r) if r.is_positive() => {}
            _ => return Err(GroupFailure::Stale),
        }
    }
    let mail_reply = mail_reply(wire, stale_check, t).await?;
    let mut replies = Vec::with_capacity(rcpts);
    for _ in 0..rcpts {
        replies.push(wire.read_reply(t.rcpt, "RCPT").await?);
    }
    if !with_data {
        return Ok((mail_reply, replies, None));
    }
    let data = wire.read_reply(t.data, "DATA").await?;
    Ok((mail_reply, replies, Some(data)))
}

/// One command at a time, stopping at the first failure that makes the rest pointless; DATA last unless
/// `with_data` is false. `stale_check` as for [`pipelined`] (an RSET was sent before, on its own); `reset`
/// and `held_end` do not apply (nothing is held without pipelining).
pub(crate) async fn lockstep(
    wire: &mut Wire,
    group: &CommandGroup<'_>,
    t: &Timeouts,
) -> Result<Exchange, GroupFailure> {
    let CommandGroup {
        stale_check,
        mail,
        rcpts,
        with_data,
        ..
    } = *group;
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
