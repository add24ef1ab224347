//! From per-recipient replies to the queue's [`Outcome`] and the DSNs due, pure.
//!
//! 2xx: delivered. 4xx (and every network failure, which arrives here as a 451): deferred on the retry
//! schedule, unless the message is older than `max_age`, in which case the recipient expires (a failure
//! DSN with status 4.4.7). 5xx: failed, with a DSN. A delay notice is due once, on the first deferral after
//! `delay_notice_after`. [`DeliveryClass`] makes that three-way split from the reply's [`ReplyClass`].
//!
//! A success DSN (for NOTIFY=SUCCESS) is tern's to send only when the server did not offer DSN: then the
//! message was `relayed` to a system that will not report (RFC 3461 5.2.2). When it did, NOTIFY went on
//! with the RCPT and the receiver reports the delivery itself; tern sends nothing. A reply the server sent
//! is reported as its reply (Remote-MTA, `Diagnostic-Code: smtp`); one tern made
//! ([`RecipientReply::Local`]) as tern's own (see [`crate::dsn::Diagnostic`]), and an attempt in which only
//! tern replied records no server (nor its TLS session) for the queue's events, only whether MTA-STS
//! applied. (An attempt with replies of both kinds keeps the server, for all its events: the queue's model
//! has one attempt per outcome.)

use std::time::Duration;

use tern_core::time::from_unix_ms;
use tern_core::{RetryDecision, RetrySchedule};
use tern_queue::{DeliveryAttempt, Job, Outcome, OutcomeKind, RecipientResult, RecipientStatus};
use tern_smtp::{EnhancedCode, Reply, ReplyClass};

use crate::dsn::{Diagnostic, DsnAction, DsnRecipient};
use crate::smtp::{RecipientReply, reply_line};

/// The outcome of one job's attempt and the DSN recipients it produces, grouped by event.
#[derive(Clone, Debug)]
pub struct Decision {
    /// What to complete the job with.
    pub outcome: Outcome,
    /// Recipients that failed or expired (one failure DSN).
    pub failed: Vec<DsnRecipient>,
    /// Recipients handed to a server that does not offer DSN (a `relayed` DSN, for those that asked with
    /// NOTIFY=SUCCESS). Empty when the server offered DSN: it reports successes itself.
    pub relayed: Vec<DsnRecipient>,
    /// Recipients deferred, when a delay notice is due.
    pub delayed: Vec<DsnRecipient>,
}

/// What [`decide`] needs besides the job and the replies.
#[derive(Clone, Debug)]
pub struct DecideContext<'a> {
    /// The retry schedule (with max age).
    pub retry: &'a RetrySchedule,
    /// Now (Unix ms).
    pub now_ms: u64,
    /// Jitter draw in -1.0..=1.0.
    pub spread: f64,
    /// Send a delay notice once the message has waited this long.
    pub delay_notice_after: Option<Duration>,
    /// Where the attempt went, for events and DSNs.
    pub attempt: Option<DeliveryAttempt>,
    /// The server offered DSN (RFC 3461), so each recipient's NOTIFY went on with its RCPT and a success
    /// is the receiver's to report.
    pub dsn_passed_on: bool,
}

/// What a recipient's final reply means for its delivery (RFC 5321 4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryClass {
    /// Delivered (2yz).
    Success,
    /// Try again later (4yz, which is also how a network failure or a timeout arrives here).
    Transient,
    /// Give up and send a DSN (5yz).
    Permanent,
}

impl DeliveryClass {
    /// The delivery class of a reply code, from its [`ReplyClass`]. 3yz (and anything that is no SMTP
    /// reply) is not a final answer to a delivery: a server that sends one where a final reply belongs is
    /// misbehaving, and the safe reading is transient.
    pub fn from_code(code: u16) -> Self {
        match ReplyClass::from_code(code) {
            Some(ReplyClass::PositiveCompletion) => DeliveryClass::Success,
            Some(ReplyClass::PermanentNegative) => DeliveryClass::Permanent,
            Some(ReplyClass::TransientNegative | ReplyClass::PositiveIntermediate) | None => {
                DeliveryClass::Transient
            }
        }
    }

    /// The delivery class of a reply.
    pub fn of(reply: &Reply) -> Self {
        DeliveryClass::from_code(reply.code)
    }

    /// The class digit of an enhanced status code (RFC 3463): 2, 4 or 5.
    pub fn status_class(self) -> u8 {
        match self {
            DeliveryClass::Success => 2,
            DeliveryClass::Transient => 4,
            DeliveryClass::Permanent => 5,
        }
    }
}

/// The enhanced status of a reply: its own, or `class.0.0` from its [`DeliveryClass`].
pub fn status_of(r: &Reply) -> EnhancedCode {
    r.enhanced
        .unwrap_or_else(|| EnhancedCode::new(DeliveryClass::of(r).status_class(), 0, 0))
}

/// Decides the outcome of `job` from one reply per attempted recipient (`(index, reply)`).
pub fn decide(job: &Job, results: &[(u32, RecipientReply)], ctx: &DecideContext<'_>) -> Decision {
    let now = from_unix_ms(ctx.now_ms);
    let remote_mta = ctx.attempt.as_ref().and_then(|a| a.remote_mx.clone());
    let mut out = Decision {
        outcome: Outcome::delivered(),
        failed: Vec::new(),
        relayed: Vec::new(),
        delayed: Vec::new(),
    };
    let transient = results
        .iter()
        .any(|(_, r)| DeliveryClass::of(r.reply()) == DeliveryClass::Transient);
    let retry = if transient {
        Some(ctx.retry.decide(
            job.attempts.saturating_add(1),
            job.first_queued_ms,
            ctx.now_ms,
            ctx.spread,
        ))
    } else {
        None
    };
    let expires = from_unix_ms(
        job.first_queued_ms
            .saturating_add(u64::try_from(ctx.retry.max_age().as_millis()).unwrap_or(u64::MAX)),
    );
    let delay_due = delay_notice_due(job, ctx);

    let (mut any_pending, mut any_expired, mut any_failed) = (false, false, false);
    let mut first_bad: Option<String> = None;
    let mut last: Option<String> = None;
    for (index, answer) in results {
        let Some(state) = job.recipients.get(*index as usize) else {
            continue;
        };
        let reply = answer.reply();
        let line = reply_line(reply);
        last = Some(line.clone());
        // The server's reply is reported as such; tern's own decision names no server.
        let (mta, diagnostic) = match answer {
            RecipientReply::Remote(_) => (remote_mta.clone(), Diagnostic::Smtp(line.clone())),
            RecipientReply::Local(r) => {
                let text = r.text();
                (
                    None,
                    Diagnostic::Local(if text.is_empty() { line.clone() } else { text }),
                )
            }
        };
        let dsn = |action, status| DsnRecipient {
            recipient: state.recipient.clone(),
            action,
            status,
            remote_mta: mta.clone(),
            diagnostic: Some(diagnostic.clone()),
            last_attempt: Some(now),
            will_retry_until: None,
        };
        let status = match DeliveryClass::of(reply) {
            DeliveryClass::Success => {
                if !ctx.dsn_passed_on {
                    out.relayed.push(dsn(DsnAction::Relayed, status_of(reply)));
                }
                RecipientStatus::Delivered
            }
            DeliveryClass::Permanent => {
                first_bad.get_or_insert_with(|| line.clone());
                any_failed = true;
                out.failed.push(dsn(DsnAction::Failed, status_of(reply)));
                RecipientStatus::Failed
            }
            DeliveryClass::Transient => {
                first_bad.get_or_insert_with(|| line.clone());
                match retry {
                    Some(RetryDecision::Expire) => {
                        any_expired = true;
                        out.failed
                            .push(dsn(DsnAction::Failed, EnhancedCode::new(4, 4, 7)));
                        RecipientStatus::Failed
                    }
                    _ => {
                        any_pending = true;
                        if delay_due {
                            let mut d = dsn(DsnAction::Delayed, status_of(reply));
                            d.will_retry_until = Some(expires);
                            out.delayed.push(d);
                        }
                        RecipientStatus::Pending
                    }
                }
            }
        };
        out.outcome.recipients.push(RecipientResult {
            index: *index,
            status,
            reply: Some(line),
        });
    }
    out.outcome.kind = if any_pending {
        match retry {
            Some(RetryDecision::RetryAt(at)) => OutcomeKind::Deferred { until_ms: at },
            _ => OutcomeKind::Deferred {
                until_ms: ctx.now_ms + 60_000,
            },
        }
    } else if any_expired {
        OutcomeKind::Expired
    } else if any_failed {
        OutcomeKind::Failed
    } else {
        OutcomeKind::Delivered
    };
    out.outcome.reply = first_bad.or(last);
    // The queue's events pair the replies with the attempt's server. The model has no mark for a reply tern
    // made, so when no server replied at all (content the server cannot take, a session that broke before
    // any answer) the events name no server: they must not say the MX said it. They still say whether
    // MTA-STS applied, as every delivery event does ([`without_server`]).
    out.outcome.attempt = if results.iter().any(|(_, r)| r.is_remote()) {
        ctx.attempt.clone()
    } else {
        ctx.attempt.as_ref().and_then(without_server)
    };
    out
}

/// The attempt an outcome only tern replied to records: one that names no server (a batch deferred before
/// any session) as it is; otherwise without the server, and with its `tls` reduced to its MTA-STS part
/// (from `mta-sts=` on), so that the event neither names the MX nor claims its TLS session. `None` when
/// nothing is left to record.
fn without_server(a: &DeliveryAttempt) -> Option<DeliveryAttempt> {
    if a.remote_mx.is_none() && a.remote_ip.is_none() {
        return Some(a.clone());
    }
    let tls = a.tls.as_deref()?;
    let at = tls.find("mta-sts=")?;
    Some(DeliveryAttempt {
        remote_mx: None,
        remote_ip: None,
        tls: tls.get(at..).map(str::to_owned),
        dsn: a.dsn.clone(),
    })
}

/// A delay notice is due on the first deferral after `delay_notice_after`: the message has waited that
/// long now, and had not at the previous attempt. The previous attempt's time is not stored; it is put at
/// the earliest the schedule allows (this attempt's due time less the step stretched by the full jitter),
/// so a notice is never missed. When that errs, the next deferral is due too: the worker queues delay
/// notices under one idempotency key per job, so the queue keeps the first and drops the repeat.
fn delay_notice_due(job: &Job, ctx: &DecideContext<'_>) -> bool {
    let Some(after) = ctx.delay_notice_after else {
        return false;
    };
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    let waited = ctx.now_ms.saturating_sub(job.first_queued_ms);
    if waited < after_ms {
        return false;
    }
    if job.attempts == 0 {
        return true;
    }
    let step = ctx.retry.base_delay(job.attempts).as_secs_f64() * 1000.0 * (1.0 + ctx.retry.jitter());
    let previous = job.next_attempt_ms.saturating_sub(step as u64);
    previous.saturating_sub(job.first_queued_ms) < after_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tern_core::{Envelope, JobId, MessageId, Recipient, ReversePath};
    use tern_queue::{JobState, RecipientState};

    const MIN: u64 = 60_000;

    fn remote(code: u16, enhanced: impl tern_smtp::IntoEnhancedCode, text: &str) -> RecipientReply {
        RecipientReply::Remote(Reply::new(code, enhanced, text))
    }

    fn local(code: u16, enhanced: impl tern_smtp::IntoEnhancedCode, text: &str) -> RecipientReply {
        RecipientReply::Local(Reply::new(code, enhanced, text))
    }

    fn job(n: usize, attempts: u32, first_queued_ms: u64) -> Job {
        let rcpts: Vec<Recipient> = (0..n)
            .map(|i| Recipient::new(format!("r{i}@b.test").parse().unwrap()))
            .collect();
        Job {
            id: JobId::new(MessageId::new(), 0),
            domain: "b.test".into(),
            envelope: Envelope::new(ReversePath::Mailbox("s@a.test".parse().unwrap()), rcpts.clone()),
            recipients: rcpts
                .into_iter()
                .map(|recipient| RecipientState {
                    recipient,
                    status: RecipientStatus::Pending,
                    reply: None,
                })
                .collect(),
            state: JobState::InFlight,
            attempts,
            first_queued_ms,
            next_attempt_ms: first_queued_ms,
            last_error: None,
            tags: BTreeMap::new(),
            trace: None,
            admin_bounce: false,
            bounce_reason: None,
            owner: None,
            lease_until_ms: None,
        }
    }

    fn ctx(retry: &RetrySchedule, now_ms: u64) -> DecideContext<'_> {
        DecideContext {
            retry,
            now_ms,
            spread: 0.0,
            delay_notice_after: None,
            attempt: Some(DeliveryAttempt {
                remote_mx: Some("mx1.b.test".into()),
                remote_ip: Some("127.0.0.1".into()),
                tls: None,
                dsn: None,
            }),
            dsn_passed_on: false,
        }
    }

    #[test]
    fn reply_codes_classify_by_first_digit() {
        assert_eq!(DeliveryClass::from_code(250), DeliveryClass::Success);
        assert_eq!(DeliveryClass::from_code(251), DeliveryClass::Success);
        assert_eq!(DeliveryClass::from_code(421), DeliveryClass::Transient);
        assert_eq!(DeliveryClass::from_code(452), DeliveryClass::Transient);
        assert_eq!(DeliveryClass::from_code(550), DeliveryClass::Permanent);
        assert_eq!(DeliveryClass::from_code(554), DeliveryClass::Permanent);
    }

    #[test]
    fn network_errors_and_odd_codes_are_transient() {
        use crate::smtp::{ConnectError, WireError};
        let failures = [
            WireError::Dropped("DATA").as_reply(),
            WireError::Timeout("RCPT").as_reply(),
            ConnectError::Unreachable("x".into()).reply(),
            ConnectError::Tls("x".into()).reply(),
        ];
        for reply in &failures {
            assert_eq!(DeliveryClass::of(reply), DeliveryClass::Transient, "{reply}");
        }
        assert_eq!(DeliveryClass::from_code(354), DeliveryClass::Transient);
        assert_eq!(DeliveryClass::from_code(100), DeliveryClass::Transient);
        assert_eq!(DeliveryClass::from_code(999), DeliveryClass::Transient);
    }

    #[test]
    fn a_reply_without_an_enhanced_code_gets_its_class_digit() {
        assert_eq!(status_of(&Reply::new(250, None, "ok")).to_string(), "2.0.0");
        assert_eq!(status_of(&Reply::new(452, None, "later")).to_string(), "4.0.0");
        assert_eq!(status_of(&Reply::new(354, None, "go on")).to_string(), "4.0.0");
        assert_eq!(status_of(&Reply::new(550, None, "no")).to_string(), "5.0.0");
        assert_eq!(status_of(&Reply::new(550, "5.1.1", "no")).to_string(), "5.1.1");
    }

    #[test]
    fn all_2xx_is_delivered() {
        let s = RetrySchedule::default();
        let d = decide(
            &job(2, 0, 0),
            &[(0, remote(250, "2.0.0", "ok")), (1, remote(250, None, "ok"))],
            &ctx(&s, MIN),
        );
        assert_eq!(d.outcome.kind, OutcomeKind::Delivered);
        assert!(d.failed.is_empty());
        assert_eq!(d.outcome.recipients.len(), 2);
        assert_eq!(
            d.outcome.attempt.unwrap().remote_mx.as_deref(),
            Some("mx1.b.test")
        );
    }

    #[test]
    fn one_5xx_one_2xx_fails_one_with_a_dsn() {
        let s = RetrySchedule::default();
        let d = decide(
            &job(2, 0, 0),
            &[
                (0, remote(250, None, "ok")),
                (1, remote(550, "5.1.1", "User unknown")),
            ],
            &ctx(&s, MIN),
        );
        assert_eq!(d.outcome.kind, OutcomeKind::Failed);
        assert_eq!(d.outcome.recipients[0].status, RecipientStatus::Delivered);
        assert_eq!(d.outcome.recipients[1].status, RecipientStatus::Failed);
        assert_eq!(d.failed.len(), 1);
        assert_eq!(d.failed[0].status.to_string(), "5.1.1");
        assert_eq!(
            d.failed[0].diagnostic,
            Some(Diagnostic::Smtp("550 5.1.1 User unknown".into()))
        );
        assert_eq!(d.failed[0].remote_mta.as_deref(), Some("mx1.b.test"));
        assert_eq!(d.outcome.reply.as_deref(), Some("550 5.1.1 User unknown"));
    }

    fn notify_success(j: &mut Job) {
        for r in &mut j.recipients {
            r.recipient.notify = Some(tern_core::Notify {
                success: true,
                failure: true,
                delay: false,
            });
        }
    }

    #[test]
    fn a_success_at_a_server_without_dsn_is_relayed() {
        let s = RetrySchedule::default();
        let mut j = job(1, 0, 0);
        notify_success(&mut j);
        let d = decide(&j, &[(0, remote(250, "2.0.0", "queued"))], &ctx(&s, MIN));
        assert_eq!(d.outcome.kind, OutcomeKind::Delivered);
        assert_eq!(d.relayed.len(), 1);
        assert_eq!(d.relayed[0].action, DsnAction::Relayed);
        assert_eq!(d.relayed[0].status.to_string(), "2.0.0");
    }

    #[test]
    fn a_success_at_a_server_that_offered_dsn_is_its_to_report() {
        let s = RetrySchedule::default();
        let mut j = job(2, 0, 0);
        notify_success(&mut j);
        let mut c = ctx(&s, MIN);
        c.dsn_passed_on = true;
        let d = decide(
            &j,
            &[
                (0, remote(250, "2.0.0", "queued")),
                (1, remote(550, "5.1.1", "unknown")),
            ],
            &c,
        );
        assert!(d.relayed.is_empty(), "{:?}", d.relayed);
        assert_eq!(d.outcome.recipients[0].status, RecipientStatus::Delivered);
        assert_eq!(
            d.failed.len(),
            1,
            "failures at this hop are still tern's to report"
        );
    }

    #[test]
    fn a_reply_tern_made_names_no_server_and_is_no_smtp_diagnostic() {
        let s = RetrySchedule::default();
        let d = decide(
            &job(1, 0, 0),
            &[(
                0,
                local(552, "5.3.4", "message size 20 exceeds the server's limit of 10"),
            )],
            &ctx(&s, MIN),
        );
        assert_eq!(d.outcome.kind, OutcomeKind::Failed);
        let f = &d.failed[0];
        assert_eq!(f.status.to_string(), "5.3.4");
        assert_eq!(f.remote_mta, None);
        assert_eq!(
            f.diagnostic,
            Some(Diagnostic::Local(
                "message size 20 exceeds the server's limit of 10".into()
            ))
        );
        // The queue's event still records the whole line, and names no server for it.
        assert_eq!(
            d.outcome.reply.as_deref(),
            Some("552 5.3.4 message size 20 exceeds the server's limit of 10")
        );
        assert_eq!(d.outcome.attempt, None);
    }

    #[test]
    fn an_attempt_naming_no_server_is_kept_for_tern_s_own_replies() {
        let s = RetrySchedule::default();
        let mut c = ctx(&s, MIN);
        c.attempt = Some(DeliveryAttempt {
            remote_mx: None,
            remote_ip: None,
            tls: Some("mta-sts=enforce".into()),
            dsn: None,
        });
        let d = decide(
            &job(1, 0, 0),
            &[(0, local(451, "4.7.5", "MTA-STS policy not met"))],
            &c,
        );
        assert_eq!(d.outcome.attempt, c.attempt);
    }

    #[test]
    fn a_session_only_tern_replied_to_names_no_server_but_says_whether_mta_sts_applied() {
        let s = RetrySchedule::default();
        for (tls, kept) in [
            (
                "TLSv1.3 TLS_AES_256_GCM_SHA384 verified; mta-sts=enforce",
                "mta-sts=enforce",
            ),
            (
                "plaintext; mta-sts=not-applied (relayed)",
                "mta-sts=not-applied (relayed)",
            ),
            (
                "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 unverified; mta-sts=testing; \
                 mta-sts-failure=certificate-not-trusted",
                "mta-sts=testing; mta-sts-failure=certificate-not-trusted",
            ),
        ] {
            let mut c = ctx(&s, MIN);
            c.attempt = Some(DeliveryAttempt {
                remote_mx: Some("mx1.b.test".into()),
                remote_ip: Some("127.0.0.1".into()),
                tls: Some(tls.into()),
                dsn: None,
            });
            let d = decide(
                &job(1, 0, 0),
                &[(0, local(451, "4.4.2", "connection dropped during MAIL"))],
                &c,
            );
            let attempt = d.outcome.attempt.expect("the MTA-STS note");
            assert_eq!(
                (attempt.remote_mx, attempt.remote_ip, attempt.tls.as_deref()),
                (None, None, Some(kept)),
                "{tls}"
            );
        }
    }

    #[test]
    fn an_attempt_with_a_server_reply_keeps_the_server_for_its_events() {
        let s = RetrySchedule::default();
        let d = decide(
            &job(2, 0, 0),
            &[
                (0, remote(550, "5.1.1", "no such user")),
                (1, local(451, "4.4.2", "connection dropped during DATA")),
            ],
            &ctx(&s, MIN),
        );
        let attempt = d.outcome.attempt.expect("the server that replied");
        assert_eq!(attempt.remote_mx.as_deref(), Some("mx1.b.test"));
        assert_eq!(d.failed[0].remote_mta.as_deref(), Some("mx1.b.test"));
    }

    #[test]
    fn transient_defers_on_the_schedule() {
        let s = RetrySchedule::default();
        let d = decide(
            &job(1, 0, 0),
            &[(0, remote(450, "4.2.1", "later"))],
            &ctx(&s, MIN),
        );
        assert_eq!(d.outcome.kind, OutcomeKind::Deferred { until_ms: 6 * MIN });
        assert_eq!(d.outcome.recipients[0].status, RecipientStatus::Pending);
        assert!(d.failed.is_empty() && d.delayed.is_empty());
    }

    #[test]
    fn transient_past_max_age_expires_with_4_4_7() {
        let s = RetrySchedule::new(vec![Duration::from_secs(60)], 0.1, Duration::from_secs(600)).unwrap();
        let d = decide(
            &job(1, 3, 0),
            &[(0, remote(451, "4.4.1", "no answer"))],
            &ctx(&s, 11 * MIN),
        );
        assert_eq!(d.outcome.kind, OutcomeKind::Expired);
        assert_eq!(d.outcome.recipients[0].status, RecipientStatus::Failed);
        assert_eq!(d.failed[0].status.to_string(), "4.4.7");
        assert_eq!(d.failed[0].action, DsnAction::Failed);
    }

    #[test]
    fn mixed_pending_and_failed_defers_the_job() {
        let s = RetrySchedule::default();
        let d = decide(
            &job(2, 0, 0),
            &[(0, remote(450, None, "later")), (1, remote(550, None, "no"))],
            &ctx(&s, MIN),
        );
        assert!(matches!(d.outcome.kind, OutcomeKind::Deferred { .. }));
        assert_eq!(d.failed.len(), 1);
        assert_eq!(d.failed[0].status.to_string(), "5.0.0");
    }

    #[test]
    fn delay_notice_is_due_once_after_the_threshold() {
        let s = RetrySchedule::new(vec![Duration::from_secs(600)], 0.0, Duration::from_secs(86400)).unwrap();
        let mut c = ctx(&s, 0);
        c.delay_notice_after = Some(Duration::from_secs(900));
        let mut j = job(1, 1, 0);
        // Attempt 2 at 10 min: not yet waited 15 min.
        j.next_attempt_ms = 10 * MIN;
        c.now_ms = 10 * MIN;
        assert!(decide(&j, &[(0, remote(450, None, "x"))], &c).delayed.is_empty());
        // Attempt 3 at 20 min: crossed 15 min since the previous attempt.
        j.attempts = 2;
        j.next_attempt_ms = 20 * MIN;
        c.now_ms = 20 * MIN;
        let d = decide(&j, &[(0, remote(450, None, "x"))], &c);
        assert_eq!(d.delayed.len(), 1);
        assert!(d.delayed[0].will_retry_until.is_some());
        // Attempt 4 at 30 min: already notified.
        j.attempts = 3;
        j.next_attempt_ms = 30 * MIN;
        c.now_ms = 30 * MIN;
        assert!(decide(&j, &[(0, remote(450, None, "x"))], &c).delayed.is_empty());
    }

    #[test]
    fn delay_notice_is_not_missed_when_the_last_wait_was_stretched_by_jitter() {
        let s = RetrySchedule::new(vec![Duration::from_secs(600)], 0.1, Duration::from_secs(86400)).unwrap();
        let mut c = ctx(&s, 0);
        c.delay_notice_after = Some(Duration::from_secs(900));
        // The previous attempt ran at 14 min (before the threshold) and waited 10 min + 10%: this attempt
        // runs at 25 min. Ignoring the jitter would put the previous attempt at 15 min, and miss the notice.
        let mut j = job(1, 2, 0);
        j.next_attempt_ms = 25 * MIN;
        c.now_ms = 25 * MIN;
        let d = decide(&j, &[(0, remote(450, None, "x"))], &c);
        assert_eq!(
            d.delayed.len(),
            1,
            "the first deferral after the threshold sends the notice"
        );
    }
}
