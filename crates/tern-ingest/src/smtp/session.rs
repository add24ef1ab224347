//! One SMTP submission session: it owns its connection and framing, reads commands with
//! [`tern_smtp::LineFramer`], parses them with [`tern_smtp::parse_command_with`] and applies each verb with
//! one function (`ehlo`, `mail`, `rcpt`, `data`, `bdat`, `starttls`, `auth`, ...).
//!
//! Replies are queued and written when the session needs more input, so pipelined commands (RFC 2920) get
//! their replies in one write. Replies carry enhanced status codes (RFC 2034) except the greeting, the EHLO
//! and HELO replies, 334 SASL challenges and the 354 go-ahead, which RFC 2034 and RFC 4954 leave without.
//!
//! Reply choices that are not fixed by an RFC:
//!
//! | situation | reply |
//! |---|---|
//! | MAIL before EHLO/HELO, nested MAIL, RCPT before MAIL, AUTH twice or inside a transaction | `503 5.5.1` |
//! | MAIL from a client neither authenticated nor in `relay_networks` | `530 5.7.0` |
//! | MAIL with `SIZE=` over `max_message_size` | `552 5.3.4` |
//! | sender outside the user's allowed domains | `553 5.7.1` |
//! | RCPT beyond `max_recipients` | `452 4.5.3` |
//! | DATA without recipients | `554 5.5.1` |
//! | message over `max_message_size` (after the data is drained) | `552 5.3.4` |
//! | message with bare CR, bare LF, NUL or a line over 998 octets (SMTP smuggling; BINARYMIME by BDAT exempt) | `554 5.6.0` |
//! | an empty message (DATA or BDAT with nothing but white space, `BDAT 0 LAST`) | `554 5.6.0` |
//! | more than 100 Received fields | `554 5.4.6` |
//! | the queue failed, after repeating the write (see [`crate::enqueue`]) | `451 4.3.0`, saying whether the message may have been queued |
//! | AUTH without TLS (and `allow_plaintext_auth` off) | `538 5.7.11` |
//! | AUTH while the client address is locked out | `454 4.7.0` (the session stays open) |
//! | wrong credentials | `535 5.7.8` after a delay; the third in one session is followed by `421 4.7.0` and close |
//! | `*` to a SASL challenge / undecodable response | `501 5.7.0` / `501 5.5.2` |
//! | `max_errors` 5xx replies in one session | `421 4.7.0` and close |
//! | idle for `idle_timeout` | `421 4.4.2` and close |
//! | a command line not complete within `idle_timeout` of its first byte, a DATA or BDAT transfer slower than `deadline`'s floor rate | `421 4.4.2` and close |
//! | shutdown while waiting for a command | `421 4.3.2` and close |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tern_core::{Envelope, MessageId, Recipient, Shutdown};
use tern_queue::NewMessage;
use tern_smtp::{
    Body, Capabilities, Command, CommandError, DataDecoder, DataStatus, LineError, LineFramer, MailParams,
    Mailbox, ParseContext, RcptParams, Reply, ReversePath, Violations, parse_command_with,
};
use tern_telemetry::metrics::Listener;
use tern_telemetry::trace::message_span;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, debug, info, info_span, warn};

use super::auth::AuthedUser;
use super::received::{self, MAX_RECEIVED, Protocol, ReceivedInfo};
use super::stream::Stream;
use super::{CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, Shared};
use crate::enqueue::{self, Bounds, EnqueueFailure, EnqueueRetry};
use crate::log_fields;
use chunking::{Chunks, is_bdat};
use deadline::{Deadline, LineClock, TransferClock};

mod chunking;
mod deadline;
mod oauth;
mod sasl;

/// Size of the read buffer at the start of a session: commands and a small message fit.
const READ_BUF_START: usize = 8 * 1024;
/// The read buffer's largest size: it doubles up to this while a large message arrives (fewer reads), and
/// never starts there, because most sessions carry a few KiB and glibc consolidates its heap whenever a
/// chunk of 64 KiB or more is freed.
const READ_BUF: usize = 64 * 1024;
/// The capacity a message body starts with: a typical message fits without a reallocation.
const BODY_START: usize = 8 * 1024;
/// Failed AUTH attempts after which a session is closed.
const MAX_SESSION_AUTH_FAILURES: u32 = 3;
/// Commands that carry no mail (EHLO, HELO, RSET, NOOP, VRFY, HELP) allowed between two accepted messages
/// (Postfix's `smtpd_junk_command_limit`): a client cannot hold a connection forever with them.
const JUNK_COMMAND_LIMIT: u32 = 100;
/// Replies queued beyond this many bytes are written before more commands are read, so that a pipelined
/// flood of cheap commands cannot pile up replies in memory.
const OUT_HIGH_WATER: usize = 64 * 1024;

/// Whether the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// What waiting for input gave.
enum Input {
    /// This many bytes are in the read buffer.
    Data(usize),
    /// The connection ended (EOF, error, idle timeout or shutdown; any 421 is already sent).
    Closed,
}

/// The client's EHLO or HELO.
struct Helo {
    name: String,
    esmtp: bool,
}

/// A mail transaction, from MAIL to the end of the message.
struct Transaction {
    id: MessageId,
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<Recipient>,
    /// BDAT chunks so far; `Some` once the first chunk that is not LAST arrived.
    bdat: Option<Chunks>,
}

/// One SMTP session. See the module docs.
pub(crate) struct Session {
    shared: Arc<Shared>,
    stream: Stream,
    ip: IpAddr,
    shutdown: Shutdown,
    framer: LineFramer,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    tls: bool,
    helo: Option<Helo>,
    user: Option<AuthedUser>,
    tx: Option<Transaction>,
    errors: u32,
    auth_failures: u32,
    /// Commands without mail since the last accepted message (see [`JUNK_COMMAND_LIMIT`]).
    junk: u32,
    /// When the command line being received began (see `deadline`).
    line_clock: LineClock,
    /// The kind of listener the session came through, for the metrics.
    listener: Listener,
    /// The client said `QUIT` (answered `221`): the session ends cleanly (see [`Stream::finish`]).
    quit: bool,
}

/// The `421 4.3.2` of a server that shuts down: to sessions waiting for a command, and to connections
/// accepted during the drain (see [`super::BoundSmtpServer::run`]).
pub(crate) fn shutting_down_reply(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{hostname} Service shutting down, try again later"),
    )
}

fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, "5.5.1", text)
}

fn describe(v: Violations) -> &'static str {
    if v.bare_lf || v.bare_cr {
        "Message rejected: bare CR or LF in the data (only CRLF may end a line)"
    } else if v.nul {
        "Message rejected: NUL octet in the data"
    } else {
        "Message rejected: line longer than 998 octets"
    }
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        stream: Stream,
        peer: SocketAddr,
        tls: bool,
        shutdown: Shutdown,
    ) -> Session {
        Session {
            shared,
            stream,
            ip: peer.ip().to_canonical(),
            shutdown,
            framer: LineFramer::new(),
            rbuf: vec![0; READ_BUF_START],
            out: Vec::with_capacity(1024),
            tls,
            helo: None,
            user: None,
            tx: None,
            errors: 0,
            auth_failures: 0,
            junk: 0,
            line_clock: LineClock::default(),
            listener: if tls { Listener::Smtps } else { Listener::Smtp },
            quit: false,
        }
    }

    /// Runs the session to its end.
    pub(crate) async fn run(self) {
        let span = info_span!("smtp_session", peer = %self.ip);
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        debug!(tls = self.tls, "connected");
        self.out.extend_from_slice(
            &Reply::new(220, None, format!("{} ESMTP tern", self.shared.hostname)).to_bytes(),
        );
        loop {
            // After a shutdown, no new transaction starts, even from commands already pipelined.
            if self.shutdown.is_cancelled() && self.tx.is_none() {
                self.shutting_down();
                break;
            }
            let line = match self.framer.next_line() {
                Some(Ok(line)) => {
                    self.line_clock.reset();
                    line
                }
                Some(Err(LineError::TooLong)) => {
                    self.line_clock.reset();
                    if self.reply(Reply::new(500, "5.5.2", "Line too long")) == Flow::Close {
                        break;
                    }
                    continue;
                }
                None => {
                    let deadline = self.line_deadline();
                    match self.read_input(true, deadline).await {
                        Input::Data(n) => {
                            self.framer.push(&self.rbuf[..n]);
                            continue;
                        }
                        Input::Closed => break,
                    }
                }
            };
            let ctx = ParseContext {
                smtputf8: self.tx.as_ref().is_some_and(|t| t.params.smtputf8),
                postmaster_domain: Some(self.shared.hostname.clone()),
            };
            let flow = match parse_command_with(&line, &ctx) {
                Ok(cmd) => self.dispatch(cmd).await,
                // A BDAT line that does not parse has a chunk of unknown size after it, which would be read
                // as commands: the session cannot go on.
                Err(e) if is_bdat(&line) => {
                    self.reply(e.reply());
                    self.out.extend_from_slice(
                        &Reply::new(421, "4.5.0", "Bad BDAT command, closing connection").to_bytes(),
                    );
                    Flow::Close
                }
                Err(CommandError::UnknownAuthMechanism(m)) if self.offers_oauth(&m) => {
                    Box::pin(self.oauth_auth(&line)).await
                }
                Err(e) => self.reply(e.reply()),
            };
            if flow == Flow::Close {
                break;
            }
            if self.out.len() > OUT_HIGH_WATER && self.flush().await.is_err() {
                break;
            }
        }
        // The `221` goes with the FIN of the close that follows (see `Stream::write_before_close`), when it
        // is the only reply left: a client that pipelined QUIT behind its message gets that message's reply
        // the usual way, so that nothing it sent after QUIT can make the close a reset that drops the reply.
        if self.quit && self.out.iter().position(|&b| b == b'\n').map(|end| end + 1) == Some(self.out.len()) {
            let taken = self.stream.write_before_close(&self.out);
            self.out.drain(..taken);
        }
        let _ = self.flush().await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.finish(self.quit)).await;
        debug!("closed");
    }

    /// Queues the reply to a message's data, counting the message by it.
    fn message_reply(&mut self, r: Reply) -> Flow {
        crate::telemetry::smtp_message(self.listener, &r);
        self.reply(r)
    }

    /// Queues a reply. A 5xx counts against the error budget; when it is spent, `421 4.7.0` follows and the
    /// session ends.
    fn reply(&mut self, r: Reply) -> Flow {
        self.out.extend_from_slice(&r.to_bytes());
        if r.code >= 500 {
            self.errors += 1;
            if self.errors >= self.shared.max_errors {
                info!(errors = self.errors, "closing: too many errors");
                self.out.extend_from_slice(
                    &Reply::new(421, "4.7.0", "Too many errors, closing connection").to_bytes(),
                );
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Queues the `421 4.3.2` sent when the server shuts down.
    fn shutting_down(&mut self) {
        self.out
            .extend_from_slice(&shutting_down_reply(&self.shared.hostname).to_bytes());
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        // A client that stops reading is treated like one that stops writing.
        let idle = self.shared.idle_timeout;
        let (stream, out) = (&mut self.stream, &self.out);
        let r = tokio::time::timeout(idle, async {
            stream.write_all(out).await?;
            stream.flush().await
        })
        .await;
        self.out.clear();
        match r {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )),
        }
    }

    /// The deadline of the command line being received, if part of one has arrived (see `deadline`).
    fn line_deadline(&mut self) -> Option<Deadline> {
        let partial = self.framer.partial();
        self.line_clock
            .deadline(partial, Instant::now(), self.shared.idle_timeout)
    }

    /// Writes the queued replies, then waits for input, at most `idle_timeout` and not past `deadline`.
    /// `between_commands`: a shutdown ends the wait with `421 4.3.2` (inside a message it does not: the
    /// message may finish within the grace period).
    async fn read_input(&mut self, between_commands: bool, deadline: Option<Deadline>) -> Input {
        if self.flush().await.is_err() {
            return Input::Closed;
        }
        enum Waited {
            Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
            Shutdown,
        }
        let idle = self.shared.idle_timeout;
        let (limit, reason) = match deadline {
            Some(d) if d.at.saturating_duration_since(Instant::now()) < idle => {
                (d.at.saturating_duration_since(Instant::now()), d.reason)
            }
            _ => (idle, "Idle timeout, closing connection"),
        };
        let token = self.shutdown.clone();
        let read = tokio::time::timeout(limit, self.stream.read(&mut self.rbuf));
        let waited = if between_commands {
            tokio::select! {
                biased;
                () = token.cancelled() => Waited::Shutdown,
                r = read => Waited::Read(r),
            }
        } else {
            Waited::Read(read.await)
        };
        match waited {
            Waited::Read(Ok(Ok(0))) => Input::Closed,
            Waited::Read(Ok(Ok(n))) => Input::Data(n),
            Waited::Read(Ok(Err(e))) => {
                debug!(error = %e, "read failed");
                Input::Closed
            }
            Waited::Read(Err(_)) => {
                info!(reason, "closing: timed out");
                self.out
                    .extend_from_slice(&Reply::new(421, "4.4.2", reason).to_bytes());
                let _ = self.flush().await;
                Input::Closed
            }
            Waited::Shutdown => {
                self.shutting_down();
                let _ = self.flush().await;
                Input::Closed
            }
        }
    }

    async fn dispatch(&mut self, cmd: Command) -> Flow {
        let in_bdat = self.tx.as_ref().is_some_and(|t| t.bdat.is_some());
        if in_bdat
            && !matches!(
                cmd,
                Command::Bdat { .. } | Command::Rset | Command::Quit | Command::Noop
            )
        {
            return self.reply(bad_sequence(
                "Only BDAT, RSET, NOOP or QUIT during a BDAT transfer",
            ));
        }
        if matches!(
            cmd,
            Command::Ehlo(_)
                | Command::Helo(_)
                | Command::Rset
                | Command::Noop
                | Command::Vrfy(_)
                | Command::Help(_)
        ) {
            self.junk += 1;
            if self.junk > JUNK_COMMAND_LIMIT {
                info!(commands = self.junk, "closing: too many commands without mail");
                self.out.extend_from_slice(
                    &Reply::new(421, "4.7.0", "Too many commands without mail, closing connection")
                        .to_bytes(),
                );
                return Flow::Close;
            }
        }
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            // The message, STARTTLS and AUTH are boxed: each is far larger than the other commands' state,
            // and unboxed every command's future (five per message on a new connection) would carry and copy
            // it.
            Command::Data => {
                let span = message_span(self.listener, None);
                Box::pin(self.data()).instrument(span).await
            }
            Command::Bdat { size, last: true } => {
                let span = message_span(self.listener, None);
                Box::pin(self.bdat(size, true)).instrument(span).await
            }
            Command::Bdat { size, last } => Box::pin(self.bdat(size, last)).await,
            Command::Rset => {
                self.tx = None;
                self.reply(Reply::new(250, "2.0.0", "Ok"))
            }
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                self.quit = true;
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                Flow::Close
            }
            Command::Vrfy(_) => self.reply(Reply::new(252, "2.5.0", "Cannot VRFY user")),
            Command::Help(_) => self.reply(Reply::new(214, "2.0.0", "See RFC 5321 and RFC 6409")),
            Command::StartTls => Box::pin(self.starttls()).await,
            Command::Auth {
                mechanism,
                initial_response,
            } => Box::pin(self.auth(mechanism, initial_response)).await,
        }
    }

    /// Whether AUTH may be used on this connection now (TLS, or `allow_plaintext_auth`).
    fn auth_offered(&self) -> bool {
        self.tls || self.shared.allow_plaintext_auth
    }

    /// EHLO / HELO: greets, resets the transaction, lists the extensions (EHLO only).
    fn ehlo(&mut self, name: String, esmtp: bool) -> Flow {
        self.tx = None;
        let greeting = format!("{} Hello {} [{}]", self.shared.hostname, name, self.ip);
        self.helo = Some(Helo { name, esmtp });
        if !esmtp {
            return self.reply(Reply::new(250, None, greeting));
        }
        let caps = Capabilities {
            size: Some(self.shared.max_message_size),
            pipelining: true,
            starttls: self.shared.tls.is_some() && !self.tls,
            auth: self.auth_mechanisms(),
            eight_bit_mime: true,
            smtputf8: true,
            chunking: true,
            binarymime: true,
            dsn: true,
            enhanced_status_codes: true,
            requiretls: false,
            other: Vec::new(),
        };
        self.reply(caps.to_ehlo_reply(&greeting))
    }

    /// MAIL FROM: starts a transaction, for authenticated clients and relay networks only.
    fn mail(&mut self, from: ReversePath, params: MailParams) -> Flow {
        if self.helo.is_none() {
            return self.reply(bad_sequence("Send EHLO first"));
        }
        if self.tx.is_some() {
            return self.reply(bad_sequence("Nested MAIL command"));
        }
        if self.user.is_none() && !self.shared.is_relay_client(self.ip) {
            // The default is named because a client outside loopback is refused by a configuration that
            // never mentions relay_networks (issue #16): the line says where to look.
            info!(
                sender = %from,
                client = %self.ip,
                reply = 530,
                relay_networks = %self.shared.relay_networks_text(),
                relay_networks_default = super::default_relay_networks_text(),
                "MAIL refused: not authenticated, and relaying is allowed from ingest.relay_networks only (default: loopback)"
            );
            return self.reply(Reply::new(530, "5.7.0", "Authentication required"));
        }
        if params.requiretls {
            return self.reply(Reply::new(555, "5.5.4", "REQUIRETLS is not supported"));
        }
        if params.size.is_some_and(|s| s > self.shared.max_message_size) {
            return self.reply(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        if let Some(user) = &self.user
            && !user.may_send_from(&from)
        {
            info!(user = %user.name, sender = %from, "MAIL refused: sender not allowed for user");
            return self.reply(Reply::new(
                553,
                "5.7.1",
                "Sender address not allowed for this user",
            ));
        }
        self.tx = Some(Transaction {
            id: MessageId::new(),
            from,
            params,
            rcpts: Vec::new(),
            bdat: None,
        });
        self.reply(Reply::new(250, "2.1.0", "Ok"))
    }

    /// RCPT TO: adds a recipient with its DSN parameters.
    fn rcpt(&mut self, to: Mailbox, params: RcptParams) -> Flow {
        let max = self.shared.max_recipients;
        let Some(tx) = &mut self.tx else {
            return self.reply(bad_sequence("Need MAIL before RCPT"));
        };
        // ASCII case only, as the queue's envelope check does: a Unicode fold (the Kelvin sign is a "k")
        // would call a distinct address a duplicate and drop it.
        let key = to.to_string().to_ascii_lowercase();
        if tx
            .rcpts
            .iter()
            .any(|r| r.address.to_string().to_ascii_lowercase() == key)
        {
            return self.reply(Reply::new(250, "2.1.5", "Ok (duplicate recipient)"));
        }
        if tx.rcpts.len() >= max {
            return self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        tx.rcpts.push(Recipient {
            address: to,
            notify: params.notify,
            orcpt: params.orcpt,
        });
        self.reply(Reply::new(250, "2.1.5", "Ok"))
    }

    /// DATA: reads the message up to `CRLF.CRLF` (the only end marker), then checks and queues it.
    async fn data(&mut self) -> Flow {
        let Some(tx) = &self.tx else {
            return self.reply(bad_sequence("Need MAIL before DATA"));
        };
        if tx.rcpts.is_empty() {
            return self.reply(Reply::new(554, "5.5.1", "No valid recipients"));
        }
        if tx.params.body == Some(Body::BinaryMime) {
            return self.reply(bad_sequence("BODY=BINARYMIME requires BDAT"));
        }
        self.reply(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        let mut decoder = DataDecoder::with_max_size(self.shared.max_message_size);
        let mut clock = TransferClock::new(
            Instant::now(),
            self.shared.idle_timeout,
            self.shared.max_message_size,
        );
        let mut body = Vec::with_capacity(BODY_START);
        let first = self.framer.take_buffered();
        clock.received(first.len());
        let mut done = match decoder.feed(&first, &mut body) {
            DataStatus::Done { consumed } => {
                self.framer.push(&first[consumed..]);
                true
            }
            DataStatus::NeedMore => false,
        };
        while !done {
            let n = match self.read_input(false, Some(clock.deadline())).await {
                Input::Data(n) => n,
                Input::Closed => return Flow::Close,
            };
            clock.received(n);
            if let DataStatus::Done { consumed } = decoder.feed(&self.rbuf[..n], &mut body) {
                self.framer.push(&self.rbuf[consumed..n]);
                done = true;
            }
            self.grow_read_buffer_if_filled(n);
        }
        let Some(tx) = self.tx.take() else {
            return Flow::Close;
        };
        if decoder.overflowed() {
            info!(
                message_id = %tx.id, sender = log_fields::sender(&tx.from),
                recipients = log_fields::recipients(&tx.rcpts), domain = log_fields::domains(&tx.rcpts),
                size = decoder.total_len(), "message refused: too big"
            );
            return self.message_reply(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        let v = decoder.violations();
        if v.any() {
            warn!(
                message_id = %tx.id, sender = log_fields::sender(&tx.from),
                recipients = log_fields::recipients(&tx.rcpts), domain = log_fields::domains(&tx.rcpts),
                violations = log_fields::violations(v),
                "message refused: malformed line endings (smuggling attempt?)"
            );
            return self.message_reply(Reply::new(554, "5.6.0", describe(v)));
        }
        self.submit(tx, body).await
    }

    /// Doubles the read buffer (up to [`READ_BUF`]) after a read filled it: a large message is arriving.
    fn grow_read_buffer_if_filled(&mut self, read: usize) {
        if read == self.rbuf.len() && self.rbuf.len() < READ_BUF {
            let larger = (self.rbuf.len() * 2).min(READ_BUF);
            self.rbuf.resize(larger, 0);
        }
    }

    /// The repeat policy of queue writes (`ingest.enqueue_retry_for`).
    fn enqueue_retry(&self) -> EnqueueRetry {
        self.shared.enqueue_retry
    }

    /// Adds the trace and missing headers and queues the message; `250` only once the queue has it.
    async fn submit(&mut self, tx: Transaction, body: Vec<u8>) -> Flow {
        // Nothing to deliver (`BDAT 0 LAST`, or DATA with a blank body): refused like a malformed message
        // rather than queued as the few headers tern would add.
        if body.iter().all(u8::is_ascii_whitespace) {
            info!(
                message_id = %tx.id, sender = log_fields::sender(&tx.from),
                recipients = log_fields::recipients(&tx.rcpts), domain = log_fields::domains(&tx.rcpts),
                size = body.len(), "message refused: empty"
            );
            return self.message_reply(Reply::new(554, "5.6.0", "Message rejected: empty message"));
        }
        let scan = received::scan_headers(&body);
        if scan.received > MAX_RECEIVED {
            warn!(
                message_id = %tx.id, sender = log_fields::sender(&tx.from),
                recipients = log_fields::recipients(&tx.rcpts), domain = log_fields::domains(&tx.rcpts),
                received = scan.received, "message refused: mail loop"
            );
            return self.message_reply(Reply::new(554, "5.4.6", "Too many Received headers: mail loop"));
        }
        let id = tx.id.to_string();
        let now = SystemTime::now();
        let single = match tx.rcpts.as_slice() {
            [only] => Some(only.address.to_string()),
            _ => None,
        };
        let protocol = Protocol {
            esmtp: self.helo.as_ref().is_some_and(|h| h.esmtp),
            tls: self.tls,
            auth: self.user.is_some(),
            utf8: tx.params.smtputf8,
        };
        let header = received::received_header(&ReceivedInfo {
            helo: self.helo.as_ref().map_or("unknown", |h| h.name.as_str()),
            peer: self.ip,
            hostname: &self.shared.hostname,
            protocol,
            id: &id,
            single_recipient: single.as_deref(),
            time: now,
        });
        let message = received::prepare_message(&body, &scan, &header, &id, &self.shared.hostname, now);
        drop(body);
        let signed = crate::dkim::sign_off_runtime(
            self.shared.dkim.as_ref(),
            message,
            None,
            self.user.as_ref().and_then(|u| u.domains.as_deref()),
        )
        .await;
        let Ok(message) = signed
            .inspect_err(|e| warn!(message_id = %id, error = %e, "message refused: DKIM signing failed"))
        else {
            return self.message_reply(Reply::new(
                451,
                "4.3.0",
                "Cannot sign the message now; try again later",
            ));
        };
        let size = message.len();
        // The message's log fields, from the envelope before it moves into the queue's message.
        let sender = log_fields::sender(&tx.from);
        let recipients = log_fields::recipients(&tx.rcpts);
        let domain = log_fields::domains(&tx.rcpts);
        let recipient_count = tx.rcpts.len();
        let mut envelope = Envelope::new(tx.from, tx.rcpts);
        envelope.envid = tx.params.envid;
        envelope.ret = tx.params.ret;
        envelope.body = tx.params.body;
        envelope.smtputf8 = tx.params.smtputf8;
        let mut new = NewMessage::new(envelope, message);
        new.id = Some(tx.id);
        if let Some(user) = &self.user {
            new = new.with_tag("auth_user", user.name.clone());
        }
        let user = self
            .user
            .as_ref()
            .map_or_else(|| "-".to_string(), |u| u.name.clone());
        let retry = self.enqueue_retry();
        let bounds = Bounds {
            until: None,
            stop: Some(self.shutdown.clone()),
        };
        match enqueue::enqueue(self.shared.queue.as_ref(), new, &retry, &bounds).await {
            Ok(receipt) => {
                self.junk = 0;
                info!(
                    message_id = %receipt.message, sender, recipients, recipient_count, domain, user, size,
                    client = %self.ip, "message queued"
                );
                self.message_reply(Reply::new(
                    250,
                    "2.0.0",
                    format!("Ok: queued as {}", receipt.message),
                ))
            }
            Err(failure) => {
                warn!(
                    message_id = %id,
                    sender,
                    recipients,
                    domain,
                    error = %failure.error,
                    attempts = failure.attempts,
                    maybe_queued = failure.maybe_queued,
                    "queue failed the message"
                );
                self.message_reply(queue_failure_reply(&failure))
            }
        }
    }

    /// STARTTLS (RFC 3207): everything the client sent after the command line is discarded (CVE-2011-0411),
    /// and after the handshake the session starts over (EHLO again, no AUTH, no transaction).
    async fn starttls(&mut self) -> Flow {
        if self.tls {
            return self.reply(bad_sequence("TLS already active"));
        }
        let Some(acceptor) = self.shared.tls.clone() else {
            return self.reply(Reply::new(502, "5.5.1", "STARTTLS not available"));
        };
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        let discarded = self.framer.buffered().len();
        self.framer.clear();
        if discarded > 0 {
            warn!(discarded, "discarded bytes pipelined after STARTTLS");
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Flow::Close;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => self.stream = Stream::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                info!(error = %e, "STARTTLS handshake failed");
                return Flow::Close;
            }
            Err(_) => {
                info!("STARTTLS handshake timed out");
                return Flow::Close;
            }
        }
        self.tls = true;
        self.helo = None;
        self.tx = None;
        self.user = None;
        Flow::Continue
    }
}

/// The reply to a message the queue did not acknowledge: it says "nothing was queued" only when that is
/// certain, so that a client never takes a message that may be delivered for one that will not.
fn queue_failure_reply(failure: &EnqueueFailure) -> Reply {
    let text = if failure.maybe_queued {
        "Temporary queue failure: the message may have been queued; try again later"
    } else {
        "Temporary queue failure, nothing was queued; try again later"
    };
    Reply::new(451, "4.3.0", text)
}
