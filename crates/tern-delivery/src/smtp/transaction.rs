//! One message over an open session: the content checks, then MAIL..DATA transactions until every
//! recipient has a final reply; recipients refused with 452 go in the next transaction. RSET comes first
//! only when the server may still be inside a transaction, or the session sat idle (see
//! `SmtpClient::needs_reset`); with PIPELINING it leads the transaction's command group. A server that
//! offers CHUNKING gets the message by BDAT instead of DATA (`chunking.rs`); a `BODY=BINARYMIME` message
//! goes only that way. Each final reply says whether the server sent it or the client made it
//! ([`RecipientReply`]), so that a report never presents the client's own decision as the server's.

use tern_core::{Envelope, Recipient};
use tern_smtp::{Command, Reply};

use super::chunking::{CHUNK_SIZE, WINDOW, bdat_payload, send_chunks};
use super::client::SmtpClient;
use super::content::{content_check, mail_params, rcpt_params};
use super::pipeline::{CommandGroup, GroupFailure, Next, RcptVerdict, lockstep, match_replies, pipelined};
use super::wire::WireError;

/// Why a message was not even started (the RSET before it failed): nothing of it was taken, and the
/// session is no longer usable. The caller can open a new session and try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the session failed before the message was started")]
pub struct NotStarted;

/// A recipient's final reply to one message, and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientReply {
    /// The server's own reply (to MAIL, RCPT, DATA or the final dot, or a 421).
    Remote(Reply),
    /// Made by the client, for a failure the server never replied about: content the server cannot take
    /// (checked against its EHLO; nothing was sent), or a session that broke before the server answered (a
    /// dropped connection, a timeout). Its text is the client's explanation.
    Local(Reply),
}

impl RecipientReply {
    /// The reply, whoever gave it.
    pub fn reply(&self) -> &Reply {
        match self {
            RecipientReply::Remote(r) | RecipientReply::Local(r) => r,
        }
    }

    /// Whether the server sent it.
    pub fn is_remote(&self) -> bool {
        matches!(self, RecipientReply::Remote(_))
    }
}

/// The replies to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageReplies {
    /// One final reply per recipient, with the key it was given under, in the order given.
    pub replies: Vec<(u32, RecipientReply)>,
    /// MAIL transactions started for it: none when the content checks refused it, more than one when the
    /// server took only some recipients at a time (452).
    pub transactions: u32,
}

/// A message whose data went out with its end-of-data reply still to come ([`SmtpClient::send_message_after`]
/// with `hold_end`): its data and terminating dot wait on the wire to go out with the next message's
/// commands. It becomes the message's [`MessageReplies`] when passed to the next
/// [`SmtpClient::send_message_after`], or given to [`SmtpClient::settle`]; dropped, its outcome is unknown.
#[must_use = "its final reply is still to be read: pass it to the next message or settle it"]
#[derive(Debug)]
pub struct HeldMessage {
    /// The recipients' final replies so far (refused ones, and those of earlier transactions).
    replies: Vec<(u32, RecipientReply)>,
    /// The accepted recipients, whose final reply is the one to the end of data.
    accepted: Vec<u32>,
    /// The caller's order of the recipient keys.
    order: Vec<u32>,
    transactions: u32,
}

impl HeldMessage {
    /// The message's replies once the reply to its end of data (or why none came) is known.
    fn finish(mut self, end: Result<Reply, WireError>) -> MessageReplies {
        let reply = match end {
            Ok(r) => RecipientReply::Remote(r),
            Err(e) => RecipientReply::Local(e.as_reply()),
        };
        self.replies
            .extend(self.accepted.iter().map(|i| (*i, reply.clone())));
        in_callers_order(&mut self.replies, &self.order);
        MessageReplies {
            replies: self.replies,
            transactions: self.transactions,
        }
    }

    /// MAIL transactions started for it.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// The message's replies when its session is gone before the reply to its end of data was read (the
    /// data may have reached the server: a transient failure, tried again later).
    pub fn lost(self) -> MessageReplies {
        self.finish(Err(WireError::Dropped("end of data")))
    }
}

/// How [`SmtpClient::send_message_after`] left a message.
#[derive(Debug)]
pub enum Sent {
    /// Every recipient has its final reply.
    Done(MessageReplies),
    /// The data went out with its reply to come (asked for with `hold_end`).
    Held(HeldMessage),
}

impl Sent {
    /// MAIL transactions started for the message.
    pub fn transactions(&self) -> u32 {
        match self {
            Sent::Done(replies) => replies.transactions,
            Sent::Held(held) => held.transactions,
        }
    }
}

/// How a transaction is sent.
#[derive(Clone, Copy)]
struct Shape {
    /// RSET leads the group (pipelined only; otherwise it was sent on its own).
    reset: bool,
    /// The session carried mail before and may turn out to be over ([`NotStarted`]).
    stale_check: bool,
    /// Another message follows: this one's end of data is held when it can be.
    hold_end: bool,
}

/// The message sent before the one being sent: held until a command group carries its end of data, then
/// its replies.
struct Previous {
    held: Option<HeldMessage>,
    replies: Option<MessageReplies>,
}

/// What one transaction left: final replies, recipients to try again (452), how many were accepted.
struct TransactionEnd<'a> {
    done: Vec<(u32, RecipientReply)>,
    retry: Vec<(u32, &'a Recipient, Reply)>,
    accepted: usize,
    /// The accepted recipients of a transaction whose end of data is held ([`super::wire::Wire::hold_data`]).
    held: Option<Vec<u32>>,
}

/// Sorts `replies` into the caller's order of recipient keys.
fn in_callers_order(replies: &mut [(u32, RecipientReply)], order: &[u32]) {
    replies.sort_by_key(|(i, _)| order.iter().position(|j| j == i).unwrap_or(usize::MAX));
}

/// The caller's recipient keys, in the caller's order.
fn keys(recipients: &[(u32, &Recipient)]) -> Vec<u32> {
    recipients.iter().map(|(i, _)| *i).collect()
}

impl SmtpClient {
    /// Sends one message to `recipients` (each with a key of the caller's, such as its index in a job)
    /// and returns a final reply per recipient. A failure of the connection shows as a 451 for the
    /// recipients it left without an answer; [`SmtpClient::is_usable`] says afterwards whether another
    /// message can follow.
    pub async fn send_message(
        &mut self,
        envelope: &Envelope,
        recipients: &[(u32, &Recipient)],
        body: &[u8],
    ) -> Result<MessageReplies, NotStarted> {
        match self
            .send_message_after(None, envelope, recipients, body, false)
            .await
            .1?
        {
            Sent::Done(replies) => Ok(replies),
            Sent::Held(held) => Ok(self.settle(held).await),
        }
    }

    /// [`SmtpClient::send_message`] for a session carrying one message after another. `previous` is the
    /// message sent before, whose end of data is held: it goes out with this message's commands, and its
    /// replies come back first (`None` when there was none). With `hold_end` (another message is to
    /// follow), this message's own end of data is held in turn when it can be (pipelining without
    /// CHUNKING, every recipient settled in this transaction, at most one data block): [`Sent::Held`].
    /// Only a pipelined group carries a held end of data; before anything else its reply is read first.
    /// A session whose held message was dropped instead of passed on is unusable: its reply could only
    /// be taken for another's.
    pub async fn send_message_after(
        &mut self,
        previous: Option<HeldMessage>,
        envelope: &Envelope,
        recipients: &[(u32, &Recipient)],
        body: &[u8],
        hold_end: bool,
    ) -> (Option<MessageReplies>, Result<Sent, NotStarted>) {
        if self.reply_owed && previous.is_none() {
            self.wire.mark_broken();
            return (None, Err(NotStarted));
        }
        let mut previous = Previous {
            held: previous,
            replies: None,
        };
        let refusal = content_check(envelope, recipients, body, &self.caps);
        let carried = self.caps.pipelining && !self.caps.chunking && !self.needs_reset;
        if refusal.is_some() || !carried {
            self.settle_previous(&mut previous).await;
        }
        let sent = match refusal {
            Some(reply) => {
                let replies = recipients
                    .iter()
                    .map(|(i, _)| (*i, RecipientReply::Local(reply.clone())))
                    .collect();
                Ok(Sent::Done(MessageReplies {
                    replies,
                    transactions: 0,
                }))
            }
            None => {
                self.transactions(envelope, recipients, body, hold_end, &mut previous)
                    .await
            }
        };
        // Not carried by a group (the session broke before one was sent): its reply is read now.
        self.settle_previous(&mut previous).await;
        (previous.replies, sent)
    }

    /// The MAIL..DATA transactions of one message, until every recipient has a final reply or the message
    /// is held; recipients refused with 452 go in the next transaction. The first one carries the held end
    /// of data of `previous`, when there is one.
    async fn transactions(
        &mut self,
        envelope: &Envelope,
        recipients: &[(u32, &Recipient)],
        body: &[u8],
        hold_end: bool,
        previous: &mut Previous,
    ) -> Result<Sent, NotStarted> {
        let mut out: Vec<(u32, RecipientReply)> = Vec::with_capacity(recipients.len());
        let mut todo: Vec<(u32, &Recipient)> = recipients.to_vec();
        let mut transactions = 0u32;
        while !todo.is_empty() {
            let reset = self.needs_reset;
            // Until the transaction ends with the reply to its end of data.
            self.needs_reset = true;
            let reset_in_group = reset && self.caps.pipelining;
            let started = if reset && !reset_in_group {
                self.rset().await
            } else {
                true
            };
            // A message's first transaction on a session that carried mail before may find the session over
            // (the server closed it after the last message): not started, so the caller opens a new one.
            let stale_check = transactions == 0 && self.carried_mail;
            self.carried_mail = true;
            let end = if started {
                let shape = Shape {
                    reset: reset_in_group,
                    stale_check,
                    hold_end,
                };
                self.transaction(envelope, &todo, body, shape, previous).await
            } else {
                Err(NotStarted)
            };
            let end = match end {
                Ok(end) => end,
                Err(NotStarted) if transactions == 0 => return Err(NotStarted),
                Err(NotStarted) => {
                    let r = Reply::new(451, "4.4.2", "connection lost before a new transaction");
                    out.extend(todo.iter().map(|(i, _)| (*i, RecipientReply::Local(r.clone()))));
                    break;
                }
            };
            transactions += 1;
            out.extend(end.done);
            if let Some(accepted) = end.held {
                return Ok(Sent::Held(HeldMessage {
                    replies: out,
                    accepted,
                    order: keys(recipients),
                    transactions,
                }));
            }
            if end.retry.is_empty() {
                break;
            }
            if end.accepted == 0 || !self.is_usable() {
                // No progress: the 452s stand as deferrals.
                out.extend(
                    end.retry
                        .into_iter()
                        .map(|(i, _, r)| (i, RecipientReply::Remote(r))),
                );
                break;
            }
            todo = end.retry.into_iter().map(|(i, rc, _)| (i, rc)).collect();
        }
        in_callers_order(&mut out, &keys(recipients));
        Ok(Sent::Done(MessageReplies {
            replies: out,
            transactions,
        }))
    }

    /// Reads the reply to a held message's end of data (writing the data first, when nothing carried it
    /// yet), and returns the message's replies.
    pub async fn settle(&mut self, held: HeldMessage) -> MessageReplies {
        self.reply_owed = false;
        if !self.wire.is_usable() {
            // Waiting would only run into the deadline: no reply comes over a broken session.
            return held.lost();
        }
        let end = self.wire.read_reply(self.timeouts.data_done, "end of data").await;
        held.finish(end)
    }

    /// Settles the previous message, when it is still held.
    async fn settle_previous(&mut self, previous: &mut Previous) {
        if let Some(held) = previous.held.take() {
            previous.replies = Some(self.settle(held).await);
        }
    }

    /// One MAIL..DATA transaction for `todo`, led by RSET when `shape.reset` (pipelined only), and by the
    /// held end of data of `previous` when there is one (its replies are kept there). `Err` when that RSET
    /// failed, or (with `shape.stale_check`) the session was found over before MAIL was accepted: the
    /// session is unusable and nothing of the transaction was taken. With `shape.hold_end`, a transaction
    /// that settles every recipient holds its end of data ([`TransactionEnd::held`]).
    async fn transaction<'a>(
        &mut self,
        envelope: &Envelope,
        todo: &[(u32, &'a Recipient)],
        body: &[u8],
        shape: Shape,
        previous: &mut Previous,
    ) -> Result<TransactionEnd<'a>, NotStarted> {
        let mail = Command::Mail {
            from: envelope.sender.clone(),
            params: mail_params(envelope, todo, body, &self.caps),
        };
        let rcpts: Vec<Command> = todo
            .iter()
            .map(|(_, r)| Command::Rcpt {
                to: r.address.clone(),
                params: rcpt_params(r, &self.caps),
            })
            .collect();
        let bdat = self.caps.chunking;
        let t = &self.timeouts;
        let group = CommandGroup {
            reset: shape.reset,
            stale_check: shape.stale_check,
            held_end: previous.held.is_some(),
            mail: &mail,
            rcpts: &rcpts,
            with_data: !bdat,
        };
        let exchange = if self.caps.pipelining {
            let sent = pipelined(&mut self.wire, &group, t).await;
            if let Some(end) = sent.held_end
                && let Some(held) = previous.held.take()
            {
                self.reply_owed = false;
                previous.replies = Some(held.finish(end));
            }
            sent.exchange
        } else {
            // `send_message_after` settles a held message first when no pipelined group can carry it.
            debug_assert!(
                previous.held.is_none(),
                "a held end of data in a lock-step exchange"
            );
            lockstep(&mut self.wire, &group, t).await
        };
        let (mail_reply, mut replies, data_reply) = match exchange {
            Ok(x) => x,
            Err(GroupFailure::Stale) => {
                self.wire.mark_broken();
                return Err(NotStarted);
            }
            Err(GroupFailure::Wire(e)) => {
                let r = RecipientReply::Local(e.as_reply());
                return Ok(TransactionEnd {
                    done: todo.iter().map(|(i, _)| (*i, r.clone())).collect(),
                    retry: Vec::new(),
                    accepted: 0,
                    held: None,
                });
            }
        };
        // Commands not sent (a lock-step exchange stopped at a 452) are retried like the 452 itself.
        if let Some(last) = replies.last().filter(|r| r.code == 452).cloned() {
            replies.resize(todo.len().max(replies.len()), last);
        }
        let (verdicts, next) = match_replies(&mail_reply, &replies, data_reply.as_ref());
        let mut end = TransactionEnd {
            done: Vec::new(),
            retry: Vec::new(),
            accepted: 0,
            held: None,
        };
        let mut accepted = Vec::new();
        for ((i, rc), v) in todo.iter().zip(verdicts) {
            match v {
                RcptVerdict::Accepted => accepted.push(*i),
                RcptVerdict::Final(r) => end.done.push((*i, RecipientReply::Remote(r))),
                RcptVerdict::Retry(r) => end.retry.push((*i, *rc, r)),
            }
        }
        end.accepted = accepted.len();
        let stopped = std::iter::once(&mail_reply)
            .chain(&replies)
            .any(|r| r.code == 421);
        if bdat && next == Next::Done && !accepted.is_empty() && !stopped && self.wire.is_usable() {
            let window = if self.caps.pipelining { WINDOW } else { 1 };
            let payload = bdat_payload(envelope, body);
            let sent = send_chunks(&mut self.wire, &payload, CHUNK_SIZE, window, &self.timeouts).await;
            let final_reply = match sent {
                Ok(r) => {
                    // Every chunk was taken, the last one included (a refused chunk may leave the server
                    // inside the transaction: RSET then).
                    self.needs_reset = !r.is_positive();
                    RecipientReply::Remote(r)
                }
                Err(e) => RecipientReply::Local(e.as_reply()),
            };
            end.done
                .extend(accepted.into_iter().map(|i| (i, final_reply.clone())));
            return Ok(end);
        }
        match next {
            Next::Done => {
                // Accepted recipients whose DATA was never sent (the exchange stopped at a 421): deferred.
                let stop = std::iter::once(&mail_reply)
                    .chain(&replies)
                    .find(|r| r.code == 421)
                    .cloned()
                    .map(RecipientReply::Remote)
                    .unwrap_or_else(|| {
                        RecipientReply::Local(Reply::new(451, "4.4.2", "transaction ended before DATA"))
                    });
                end.done.extend(accepted.into_iter().map(|i| (i, stop.clone())));
            }
            Next::SendDotOnly => {
                // Its reply is of no use: the wire notes a failure for the next message.
                let t = &self.timeouts;
                if self.wire.send_dot(t.data_block).await.is_ok()
                    && self.wire.read_reply(t.data_done, "end of data").await.is_ok()
                {
                    self.needs_reset = false;
                }
            }
            Next::SendBody => {
                // Only a pipelined group can carry it: a lock-step server answers each command before the next.
                let can_hold = shape.hold_end && self.caps.pipelining && end.retry.is_empty();
                if can_hold && self.wire.hold_data(body) {
                    // The end of data ends the transaction whatever its reply says.
                    self.needs_reset = false;
                    self.reply_owed = true;
                    end.held = Some(accepted);
                    return Ok(end);
                }
                let t = &self.timeouts;
                let sent = match self.wire.send_data(body, t.data_block).await {
                    Ok(()) => self.wire.read_reply(t.data_done, "end of data").await,
                    Err(e) => Err(e),
                };
                let final_reply = match sent {
                    Ok(r) => {
                        // Whatever it said, the end of data ended the transaction.
                        self.needs_reset = false;
                        RecipientReply::Remote(r)
                    }
                    Err(e) => RecipientReply::Local(e.as_reply()),
                };
                end.done
                    .extend(accepted.into_iter().map(|i| (i, final_reply.clone())));
            }
        }
        Ok(end)
    }
}
