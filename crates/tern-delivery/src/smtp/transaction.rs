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
use super::pipeline::{GroupFailure, Next, RcptVerdict, lockstep, match_replies, pipelined};

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

/// What one transaction left: final replies, recipients to try again (452), how many were accepted.
struct TransactionEnd<'a> {
    done: Vec<(u32, RecipientReply)>,
    retry: Vec<(u32, &'a Recipient, Reply)>,
    accepted: usize,
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
        if let Some(reply) = content_check(envelope, recipients, body, &self.caps) {
            let replies = recipients
                .iter()
                .map(|(i, _)| (*i, RecipientReply::Local(reply.clone())))
                .collect();
            return Ok(MessageReplies {
                replies,
                transactions: 0,
            });
        }
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
                self.transaction(envelope, &todo, body, reset_in_group, stale_check)
                    .await
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
        // Keep the caller's order.
        out.sort_by_key(|(i, _)| recipients.iter().position(|(j, _)| j == i).unwrap_or(usize::MAX));
        Ok(MessageReplies {
            replies: out,
            transactions,
        })
    }

    /// One MAIL..DATA transaction for `todo`, led by RSET when `reset` (pipelined only). `Err` when that
    /// RSET failed, or (with `stale_check`) the session was found over before MAIL was accepted: the session
    /// is unusable and nothing of the transaction was taken.
    async fn transaction<'a>(
        &mut self,
        envelope: &Envelope,
        todo: &[(u32, &'a Recipient)],
        body: &[u8],
        reset: bool,
        stale_check: bool,
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
        let exchange = if self.caps.pipelining {
            pipelined(&mut self.wire, reset, stale_check, &mail, &rcpts, !bdat, t).await
        } else {
            lockstep(&mut self.wire, stale_check, &mail, &rcpts, !bdat, t).await
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
