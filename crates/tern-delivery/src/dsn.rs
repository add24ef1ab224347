//! Delivery status notifications (RFC 3464, with the DSN SMTP extension's parameters from RFC 3461).
//!
//! A DSN is an ordinary message, sent from `<>` to the original envelope sender through the queue like any
//! other. It is a `multipart/report; report-type=delivery-status` (RFC 6522) with three parts:
//!
//! 1. a readable explanation;
//! 2. `message/delivery-status`: one block of per-message fields (Reporting-MTA, Original-Envelope-Id,
//!    Arrival-Date), then one block per recipient (Final-Recipient, Original-Recipient, Action, Status,
//!    Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until);
//! 3. the original message, or only its header section when the sender asked for RET=HDRS or the message
//!    is larger than the return limit.
//!
//! For a message sent with SMTPUTF8 the report uses the RFC 6533 types (`message/global-delivery-status`,
//! `message/global`, `message/global-headers`) and `report-type=global-delivery-status` (the report type
//! names the type of the second part, RFC 6522), so UTF-8 addresses are reported as they are.
//!
//! Remote-MTA and `Diagnostic-Code: smtp;` appear only for what a remote server said. A failure tern decided
//! itself (content the server's EHLO says it cannot take, a DNS answer, a connection that failed, an
//! operator's bounce) has no Remote-MTA and is explained as `Diagnostic-Code: X-tern; <text>` (RFC 3464
//! 2.3.6 allows `X-` diagnostic types), its Status carrying the code ([`Diagnostic`]).
//!
//! [`build_dsn`] applies the rules of who gets one: never for a message whose sender is `<>` (a DSN must not
//! cause another, RFC 3461 6.2), and per recipient only for the events its NOTIFY asked for (failures and
//! delays by default, successes only on NOTIFY=SUCCESS). One DSN covers every recipient of the message that
//! reached the same kind of ending together. A success is tern's to report only when the receiving server
//! did not offer DSN, and then as `relayed` (RFC 3461 5.2.2; see `outcome`).

use std::fmt::Write as _;
use std::time::SystemTime;

use tern_core::message::header_section;
use tern_core::time::rfc5322_date;
use tern_core::{Envelope, JobId, MessageId, Recipient, Ret, ReversePath};
use tern_smtp::{EnhancedCode, xtext_encode};

/// What happened to a recipient (RFC 3464 2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DsnAction {
    /// Delivery failed for good (5xx, an admin bounce, or expiry).
    Failed,
    /// Delivery has been delayed and will be tried again.
    Delayed,
    /// Delivered to the recipient's mailbox. tern never reports this: it hands mail on, it does not deliver
    /// it into mailboxes.
    Delivered,
    /// Passed on to a server that does not offer DSN, so no further report will come (RFC 3461 5.2.2): the
    /// success tern reports.
    Relayed,
}

impl DsnAction {
    /// The field value.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }

    /// Whether `recipient`'s NOTIFY asks for a DSN on this action (RFC 3461 4.1).
    pub fn wanted_by(self, recipient: &Recipient) -> bool {
        match self {
            DsnAction::Failed => recipient.wants_failure_notice(),
            DsnAction::Delayed => recipient.wants_delay_notice(),
            DsnAction::Delivered | DsnAction::Relayed => recipient.wants_success_notice(),
        }
    }
}

/// Why a recipient ended as it did, as the `Diagnostic-Code` field says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// A remote server's reply (`550 5.1.1 User unknown`): `Diagnostic-Code: smtp; ...`.
    Smtp(String),
    /// tern's own explanation of a failure no server replied with (content checked against the server's
    /// EHLO, DNS, a failed connection, an operator's bounce): `Diagnostic-Code: X-tern; ...`.
    Local(String),
}

impl Diagnostic {
    /// The diagnostic type of the field (RFC 3464 2.3.6).
    pub fn kind(&self) -> &'static str {
        match self {
            Diagnostic::Smtp(_) => "smtp",
            Diagnostic::Local(_) => "X-tern",
        }
    }

    /// The text after the type.
    pub fn text(&self) -> &str {
        match self {
            Diagnostic::Smtp(t) | Diagnostic::Local(t) => t,
        }
    }
}

/// One recipient's part of a DSN.
#[derive(Clone, Debug, PartialEq)]
pub struct DsnRecipient {
    /// The recipient, with its NOTIFY and ORCPT parameters.
    pub recipient: Recipient,
    /// What happened.
    pub action: DsnAction,
    /// The enhanced status code (RFC 3463), e.g. 5.1.1.
    pub status: EnhancedCode,
    /// The mail exchanger whose reply the diagnostic is; `None` when tern decided (see [`Diagnostic`]).
    pub remote_mta: Option<String>,
    /// The remote reply, or tern's own explanation when no server replied.
    pub diagnostic: Option<Diagnostic>,
    /// When delivery was last tried.
    pub last_attempt: Option<SystemTime>,
    /// For delays: when tern will give up.
    pub will_retry_until: Option<SystemTime>,
}

/// The message a DSN reports on, and who reports.
#[derive(Clone, Debug)]
pub struct DsnContext<'a> {
    /// This MTA's host name (Reporting-MTA, and the domain of MAILER-DAEMON).
    pub reporting_mta: &'a str,
    /// The original message's envelope (sender, ENVID, RET, SMTPUTF8).
    pub envelope: &'a Envelope,
    /// When the original message was received.
    pub arrival: SystemTime,
    /// The original message as queued.
    pub original: &'a [u8],
    /// Originals larger than this are returned as headers only, whatever RET says.
    pub return_limit: usize,
    /// The time to date the DSN with.
    pub now: SystemTime,
}

/// A DSN ready to be queued.
#[derive(Clone, Debug, PartialEq)]
pub struct Dsn {
    /// The DSN's own message id.
    pub id: MessageId,
    /// From `<>` to the original sender.
    pub envelope: Envelope,
    /// The complete message, CRLF line ends.
    pub body: Vec<u8>,
}

/// The longest diagnostic text kept, so that every line of the report stays well under 998 octets.
const MAX_DIAGNOSTIC: usize = 800;

/// Builds the DSN for `recipients` of the message in `ctx`, or `None` when none is due: the original sender
/// is `<>`, or no recipient's NOTIFY asks for this kind of report.
pub fn build_dsn(ctx: &DsnContext<'_>, recipients: &[DsnRecipient]) -> Option<Dsn> {
    let ReversePath::Mailbox(sender) = &ctx.envelope.sender else {
        return None;
    };
    let reported: Vec<&DsnRecipient> = recipients
        .iter()
        .filter(|r| r.action.wanted_by(&r.recipient))
        .collect();
    let first = reported.first()?;

    let id = MessageId::new();
    let utf8 = ctx.envelope.smtputf8 || !sender.is_ascii();
    let boundary = format!("=_tern_dsn_{id}");
    let host = one_line(ctx.reporting_mta);
    let headers_only = ctx.envelope.ret == Some(Ret::Hdrs) || ctx.original.len() > ctx.return_limit;

    let mut out = String::with_capacity(2048);
    let _ = write!(out, "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n");
    let _ = write!(out, "To: <{sender}>\r\n");
    let _ = write!(out, "Subject: {}\r\n", subject(first.action));
    let _ = write!(out, "Date: {}\r\n", rfc5322_date(ctx.now));
    let _ = write!(out, "Message-ID: <{id}@{host}>\r\n");
    // RFC 3834: an automatic reply; vacation responders and the like must not answer it.
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    // RFC 6522: the report type is the type of the second part.
    let report_type = if utf8 {
        "global-delivery-status"
    } else {
        "delivery-status"
    };
    let _ = write!(
        out,
        "Content-Type: multipart/report; report-type={report_type};\r\n\tboundary=\"{boundary}\"\r\n"
    );
    out.push_str("\r\nThis is a MIME-encapsulated delivery status notification.\r\n");

    // Part 1: for people.
    let _ = write!(out, "\r\n--{boundary}\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    explain(
        &mut out,
        &host,
        first.action,
        &reported,
        headers_only && ctx.envelope.ret != Some(Ret::Hdrs),
    );

    // Part 2: for programs.
    let _ = write!(out, "\r\n--{boundary}\r\n");
    let status_type = if utf8 {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    let _ = write!(out, "Content-Type: {status_type}\r\n\r\n");
    let _ = write!(out, "Reporting-MTA: dns; {host}\r\n");
    if let Some(envid) = &ctx.envelope.envid {
        let _ = write!(out, "Original-Envelope-Id: {}\r\n", safe_field(envid));
    }
    let _ = write!(out, "Arrival-Date: {}\r\n", rfc5322_date(ctx.arrival));
    for r in &reported {
        out.push_str("\r\n");
        per_recipient(&mut out, r, utf8);
    }

    // Part 3: the original, whole or its header section.
    let _ = write!(out, "\r\n--{boundary}\r\n");
    let (kind, content) = match (headers_only, utf8) {
        (true, false) => ("text/rfc822-headers", header_section(ctx.original)),
        (true, true) => ("message/global-headers", header_section(ctx.original)),
        (false, false) => ("message/rfc822", ctx.original),
        (false, true) => ("message/global", ctx.original),
    };
    let eight_bit = !content.is_ascii();
    let _ = write!(out, "Content-Type: {kind}\r\n");
    if eight_bit {
        out.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    out.push_str("\r\n");
    let mut body = out.into_bytes();
    body.extend_from_slice(content);
    if !content.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let mut envelope = Envelope::new(ReversePath::Null, vec![Recipient::new(sender.clone())]);
    envelope.smtputf8 = utf8;
    if eight_bit || !body.is_ascii() {
        envelope.body = Some(tern_core::Body::EightBitMime);
    }
    Some(Dsn { id, envelope, body })
}

fn subject(action: DsnAction) -> &'static str {
    match action {
        DsnAction::Failed => "Undelivered Mail Returned to Sender",
        DsnAction::Delayed => "Delayed Mail (still being retried)",
        DsnAction::Delivered | DsnAction::Relayed => "Successful Mail Delivery Report",
    }
}

fn explain(out: &mut String, host: &str, action: DsnAction, reported: &[&DsnRecipient], truncated: bool) {
    let _ = write!(out, "This is the mail system at host {host}.\r\n\r\n");
    out.push_str(match action {
        DsnAction::Failed => {
            "Your message could not be delivered to one or more recipients. It is attached below.\r\n\
             The mail system gave these reasons:\r\n"
        }
        DsnAction::Delayed => {
            "Your message could not be delivered yet. The mail system will keep trying; you do not need to\r\n\
             send it again. The reasons so far:\r\n"
        }
        DsnAction::Delivered => {
            "Your message was delivered to the recipients below, as you asked to be told.\r\n"
        }
        DsnAction::Relayed => {
            "Your message was handed on to the mail servers of the recipients below, as you asked to be told.\r\n\
             Those servers do not send delivery reports, so no further report will come.\r\n"
        }
    });
    for r in reported {
        let _ = write!(out, "\r\n<{}>", r.recipient.address);
        if let Some(mta) = &r.remote_mta {
            let _ = write!(out, " (host {})", one_line(mta));
        }
        out.push_str(":\r\n");
        match &r.diagnostic {
            Some(Diagnostic::Smtp(d)) => {
                let _ = write!(out, "    {}\r\n", diagnostic_text(d));
            }
            Some(Diagnostic::Local(d)) => {
                let _ = write!(out, "    {} (status {})\r\n", diagnostic_text(d), r.status);
            }
            None => {
                let _ = write!(out, "    status {}\r\n", r.status);
            }
        }
        if let Some(until) = r.will_retry_until {
            let _ = write!(out, "    tern will try until {}\r\n", rfc5322_date(until));
        }
    }
    if truncated {
        out.push_str("\r\nThe message was too large to return whole; only its headers are attached.\r\n");
    }
}

fn per_recipient(out: &mut String, r: &DsnRecipient, utf8: bool) {
    let address = r.recipient.address.to_string();
    // RFC 6533: a UTF-8 address is reported with the utf-8 address type, and only in a global report.
    let addr_type = if utf8 && !r.recipient.address.is_ascii() {
        "utf-8"
    } else {
        "rfc822"
    };
    let _ = write!(out, "Final-Recipient: {addr_type}; {}\r\n", safe_field(&address));
    if let Some(orcpt) = &r.recipient.orcpt {
        let _ = write!(
            out,
            "Original-Recipient: {}; {}\r\n",
            safe_field(&orcpt.addr_type),
            safe_field(&orcpt.address)
        );
    }
    let _ = write!(out, "Action: {}\r\n", r.action.as_str());
    let _ = write!(out, "Status: {}\r\n", r.status);
    if let Some(mta) = &r.remote_mta {
        let _ = write!(out, "Remote-MTA: dns; {}\r\n", one_line(mta));
    }
    if let Some(d) = &r.diagnostic {
        let _ = write!(
            out,
            "Diagnostic-Code: {}; {}\r\n",
            d.kind(),
            diagnostic_text(d.text())
        );
    }
    if let Some(t) = r.last_attempt {
        let _ = write!(out, "Last-Attempt-Date: {}\r\n", rfc5322_date(t));
    }
    if let Some(t) = r.will_retry_until {
        let _ = write!(out, "Will-Retry-Until: {}\r\n", rfc5322_date(t));
    }
}

/// Collapses whitespace, so that text from the network can never start a new header line.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn diagnostic_text(d: &str) -> String {
    let mut t = one_line(d);
    if t.len() > MAX_DIAGNOSTIC {
        let mut cut = MAX_DIAGNOSTIC;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push_str(" ...");
    }
    t
}

/// ENVID and ORCPT arrive xtext-decoded and may hold anything, CR and LF included. A value that is not plain
/// printable text is reported in its xtext form instead, which is what the sender sent.
fn safe_field(value: &str) -> String {
    if value.chars().all(|c| !c.is_control()) {
        value.to_string()
    } else {
        xtext_encode(value)
    }
}

/// The idempotency key of a DSN: one per job, event and set of recipients reported. A later attempt that
/// reports the same recipients again (the first attempt's completion was lost) finds the key and sends
/// nothing twice; one that reports other recipients gets its own DSN. Delay notices have one key per job,
/// as only one is ever due (see `outcome::delay_notice_due`).
pub(crate) fn idempotency_key(job: JobId, event: &str, recipients: &[DsnRecipient]) -> String {
    if event == "delayed" {
        return format!("dsn:{job}:delayed");
    }
    let mut addrs: Vec<String> = recipients
        .iter()
        .map(|r| r.recipient.address.to_string().to_ascii_lowercase())
        .collect();
    addrs.sort();
    // 64-bit FNV-1a: fixed by its definition, so every worker version computes the same key.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addrs.join("\n").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("dsn:{job}:{event}:{}:{h:016x}", addrs.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use tern_core::{Notify, OriginalRecipient};

    const ORIGINAL: &[u8] = b"From: s@a.test\r\nTo: x@b.test\r\nSubject: hi\r\n\r\nbody line\r\n";

    fn envelope() -> Envelope {
        Envelope::new(
            ReversePath::Mailbox("s@a.test".parse().unwrap()),
            vec![
                Recipient::new("x@b.test".parse().unwrap()),
                Recipient::new("y@b.test".parse().unwrap()),
            ],
        )
    }

    fn failed(addr: &str) -> DsnRecipient {
        DsnRecipient {
            recipient: Recipient::new(addr.parse().unwrap()),
            action: DsnAction::Failed,
            status: "5.1.1".parse().unwrap(),
            remote_mta: Some("mx1.b.test".into()),
            diagnostic: Some(Diagnostic::Smtp("550 5.1.1 User unknown".into())),
            last_attempt: Some(UNIX_EPOCH + Duration::from_secs(1_795_872_409)),
            will_retry_until: None,
        }
    }

    #[test]
    fn a_dsn_key_names_the_job_the_event_and_the_set_of_recipients() {
        let job: JobId = "01ARZ3NDEKTSV4RRFFQ69G5FAV.0".parse().unwrap();
        let ab = idempotency_key(job, "failed", &[failed("a@b.test"), failed("B@b.test")]);
        assert_eq!(
            ab,
            idempotency_key(job, "failed", &[failed("b@b.test"), failed("a@b.test")]),
            "order and case do not matter"
        );
        assert!(
            ab.starts_with("dsn:01ARZ3NDEKTSV4RRFFQ69G5FAV.0:failed:2:"),
            "{ab}"
        );
        assert_ne!(ab, idempotency_key(job, "failed", &[failed("a@b.test")]));
        assert_ne!(
            ab,
            idempotency_key(job, "delivered", &[failed("a@b.test"), failed("b@b.test")])
        );
        assert_eq!(
            idempotency_key(job, "delayed", &[failed("a@b.test")]),
            idempotency_key(job, "delayed", &[failed("c@b.test")]),
            "one delay notice per job"
        );
    }

    fn ctx(env: &Envelope) -> DsnContext<'_> {
        DsnContext {
            reporting_mta: "tern.a.test",
            envelope: env,
            arrival: UNIX_EPOCH + Duration::from_secs(1_795_872_000),
            original: ORIGINAL,
            return_limit: 1 << 20,
            now: UNIX_EPOCH + Duration::from_secs(1_795_872_410),
        }
    }

    fn text(d: &Dsn) -> String {
        String::from_utf8(d.body.clone()).unwrap()
    }

    #[test]
    fn failure_report_has_the_three_rfc3464_parts_and_fields() {
        let env = envelope();
        let dsn = build_dsn(&ctx(&env), &[failed("x@b.test")]).unwrap();
        let t = text(&dsn);
        assert!(
            t.contains("Content-Type: multipart/report; report-type=delivery-status;"),
            "{t}"
        );
        assert!(t.contains("Content-Type: text/plain; charset=utf-8"), "{t}");
        assert!(
            t.contains("Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; tern.a.test\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Arrival-Date: Sat, 28 Nov 2026 13:20:00 +0000\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Final-Recipient: rfc822; x@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
            "{t}"
        );
        assert!(t.contains("Remote-MTA: dns; mx1.b.test\r\n"), "{t}");
        assert!(
            t.contains("Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Last-Attempt-Date: Sat, 28 Nov 2026 13:26:49 +0000\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Content-Type: message/rfc822\r\n\r\nFrom: s@a.test\r\n"),
            "{t}"
        );
        assert!(t.contains("body line"), "{t}");
        assert!(t.contains("Auto-Submitted: auto-replied\r\n"), "{t}");
        assert!(t.ends_with("--\r\n"), "{t}");
        assert!(!t.contains("y@b.test"), "only the reported recipient: {t}");
    }

    #[test]
    fn dsn_goes_from_the_null_sender_to_the_original_sender() {
        let env = envelope();
        let dsn = build_dsn(&ctx(&env), &[failed("x@b.test")]).unwrap();
        assert_eq!(dsn.envelope.sender, ReversePath::Null);
        assert_eq!(dsn.envelope.recipients.len(), 1);
        assert_eq!(dsn.envelope.recipients[0].address.to_string(), "s@a.test");
        assert!(text(&dsn).contains("To: <s@a.test>\r\n"));
        assert!(text(&dsn).contains(&format!("Message-ID: <{}@tern.a.test>", dsn.id)));
    }

    #[test]
    fn no_dsn_for_a_message_from_the_null_sender() {
        let mut env = envelope();
        env.sender = ReversePath::Null;
        assert_eq!(build_dsn(&ctx(&env), &[failed("x@b.test")]), None);
    }

    #[test]
    fn notify_is_honoured() {
        let env = envelope();
        let mut never = failed("x@b.test");
        never.recipient.notify = Some(Notify::NEVER);
        assert_eq!(build_dsn(&ctx(&env), &[never.clone()]), None);

        let mut delivered = failed("x@b.test");
        delivered.action = DsnAction::Delivered;
        assert_eq!(
            build_dsn(&ctx(&env), &[delivered.clone()]),
            None,
            "success only on NOTIFY=SUCCESS"
        );
        delivered.recipient.notify = Some(Notify {
            success: true,
            failure: false,
            delay: false,
        });
        assert!(build_dsn(&ctx(&env), &[delivered]).is_some());

        let mut delayed = failed("x@b.test");
        delayed.action = DsnAction::Delayed;
        delayed.recipient.notify = Some(Notify {
            success: false,
            failure: true,
            delay: false,
        });
        assert_eq!(build_dsn(&ctx(&env), &[delayed]), None);

        // Of two failures, only the one that wants a notice is reported.
        let t = text(&build_dsn(&ctx(&env), &[never, failed("y@b.test")]).unwrap());
        assert!(
            t.contains("Final-Recipient: rfc822; y@b.test")
                && !t.contains("Final-Recipient: rfc822; x@b.test")
        );
    }

    #[test]
    fn one_dsn_covers_every_recipient_given() {
        let env = envelope();
        let t = text(&build_dsn(&ctx(&env), &[failed("x@b.test"), failed("y@b.test")]).unwrap());
        assert_eq!(t.matches("Final-Recipient:").count(), 2, "{t}");
    }

    #[test]
    fn ret_hdrs_returns_only_the_header_section() {
        let mut env = envelope();
        env.ret = Some(Ret::Hdrs);
        let t = text(&build_dsn(&ctx(&env), &[failed("x@b.test")]).unwrap());
        assert!(
            t.contains("Content-Type: text/rfc822-headers\r\n\r\nFrom: s@a.test\r\n"),
            "{t}"
        );
        assert!(!t.contains("body line"), "{t}");
        assert!(!t.contains("too large"), "{t}");
    }

    #[test]
    fn large_originals_are_returned_as_headers_with_a_note() {
        let env = envelope();
        let mut c = ctx(&env);
        c.return_limit = 10;
        let t = text(&build_dsn(&c, &[failed("x@b.test")]).unwrap());
        assert!(
            t.contains("text/rfc822-headers") && !t.contains("body line") && t.contains("too large"),
            "{t}"
        );
    }

    #[test]
    fn envid_and_orcpt_are_reported_and_cannot_inject_lines() {
        let mut env = envelope();
        env.envid = Some("QQ314159".into());
        let mut r = failed("x@b.test");
        r.recipient.orcpt = Some(OriginalRecipient {
            addr_type: "rfc822".into(),
            address: "X@B.test".into(),
        });
        let t = text(&build_dsn(&ctx(&env), std::slice::from_ref(&r)).unwrap());
        assert!(t.contains("Original-Envelope-Id: QQ314159\r\n"), "{t}");
        assert!(t.contains("Original-Recipient: rfc822; X@B.test\r\n"), "{t}");

        env.envid = Some("a\r\nBcc: victim@c.test".into());
        r.diagnostic = Some(Diagnostic::Smtp("550 bad\r\nX-Injected: 1".into()));
        let t = text(&build_dsn(&ctx(&env), &[r]).unwrap());
        assert!(!t.contains("\r\nBcc: victim"), "{t}");
        assert!(!t.contains("\r\nX-Injected"), "{t}");
        assert!(
            t.contains("Original-Envelope-Id: a+0D+0ABcc:+20victim@c.test\r\n"),
            "{t}"
        );
    }

    #[test]
    fn delay_notice_says_until_when() {
        let env = envelope();
        let mut r = failed("x@b.test");
        r.action = DsnAction::Delayed;
        r.status = "4.4.1".parse().unwrap();
        r.will_retry_until = Some(UNIX_EPOCH + Duration::from_secs(1_796_304_000));
        let t = text(&build_dsn(&ctx(&env), &[r]).unwrap());
        assert!(t.contains("Subject: Delayed Mail"), "{t}");
        assert!(t.contains("Action: delayed\r\nStatus: 4.4.1\r\n"), "{t}");
        assert!(
            t.contains("Will-Retry-Until: Thu, 3 Dec 2026 13:20:00 +0000\r\n"),
            "{t}"
        );
    }

    #[test]
    fn smtputf8_messages_get_a_global_report() {
        let mut env = Envelope::new(
            ReversePath::Mailbox("用户@例子.测试".parse().unwrap()),
            vec![Recipient::new("收件人@例子.测试".parse().unwrap())],
        );
        env.smtputf8 = true;
        let mut r = failed("x@b.test");
        r.recipient = env.recipients[0].clone();
        let dsn = build_dsn(&ctx(&env), &[r]).unwrap();
        let t = text(&dsn);
        assert!(dsn.envelope.smtputf8);
        assert!(t.contains("Content-Type: message/global-delivery-status"), "{t}");
        assert!(t.contains("Final-Recipient: utf-8; 收件人@例子.测试"), "{t}");
        assert!(t.contains("Content-Type: message/global\r\n"), "{t}");
        assert!(
            t.contains("Content-Type: multipart/report; report-type=global-delivery-status;"),
            "the report type names the global status part (RFC 6522, RFC 6533): {t}"
        );
        assert!(!t.contains("report-type=delivery-status"), "{t}");
    }

    #[test]
    fn a_failure_tern_decided_is_not_presented_as_the_servers_reply() {
        let env = envelope();
        let mut r = failed("x@b.test");
        r.status = "5.3.4".parse().unwrap();
        r.remote_mta = None;
        r.diagnostic = Some(Diagnostic::Local(
            "message size 2000 exceeds the server's limit of 1000".into(),
        ));
        let t = text(&build_dsn(&ctx(&env), &[r]).unwrap());
        assert!(t.contains("Action: failed\r\nStatus: 5.3.4\r\n"), "{t}");
        assert!(
            t.contains("Diagnostic-Code: X-tern; message size 2000 exceeds the server's limit of 1000\r\n"),
            "{t}"
        );
        assert!(!t.contains("Diagnostic-Code: smtp;"), "{t}");
        assert!(!t.contains("Remote-MTA:"), "{t}");
        assert!(
            t.contains("exceeds the server's limit of 1000 (status 5.3.4)"),
            "{t}"
        );
    }

    #[test]
    fn a_relayed_success_says_no_further_report_will_come() {
        let env = envelope();
        let mut r = failed("x@b.test");
        r.action = DsnAction::Relayed;
        r.status = "2.0.0".parse().unwrap();
        r.diagnostic = Some(Diagnostic::Smtp("250 2.0.0 queued".into()));
        r.recipient.notify = Some(Notify {
            success: true,
            failure: true,
            delay: false,
        });
        let t = text(&build_dsn(&ctx(&env), &[r]).unwrap());
        assert!(t.contains("Subject: Successful Mail Delivery Report"), "{t}");
        assert!(t.contains("Action: relayed\r\nStatus: 2.0.0\r\n"), "{t}");
        assert!(t.contains("no further report will come"), "{t}");
    }

    #[test]
    fn long_diagnostics_are_cut_so_lines_stay_short() {
        let env = envelope();
        let mut r = failed("x@b.test");
        r.diagnostic = Some(Diagnostic::Smtp(format!("550 5.1.1 {}", "x".repeat(5000))));
        let dsn = build_dsn(&ctx(&env), &[r]).unwrap();
        assert!(dsn.body.split(|b| *b == b'\n').all(|l| l.len() <= 998));
    }

    #[test]
    fn every_line_ends_in_crlf() {
        let env = envelope();
        let dsn = build_dsn(&ctx(&env), &[failed("x@b.test")]).unwrap();
        for (i, b) in dsn.body.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(dsn.body[i - 1], b'\r', "bare LF at {i}");
            }
        }
    }
}
