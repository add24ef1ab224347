//! The client itself: what it knows about its session, its deadlines, and closing.
//!
//! A session goes: [`SmtpClient::connect`] (or [`SmtpClient::connect_tls`]) and the greeting,
//! [`SmtpClient::ehlo`], optionally [`SmtpClient::starttls`] and [`SmtpClient::auth_plain`], then any number
//! of [`SmtpClient::send_message`], then [`SmtpClient::quit`]. The client knows the protocol and nothing of
//! who uses it: no connection limits, queue holds or reuse policy.

use std::net::SocketAddr;
use std::time::Duration;

use tern_smtp::{Capabilities, Command};

use super::tls::{CertificateProblem, TlsSession};
use super::transcript::TranscriptHook;
use super::wire::Wire;

/// Every deadline of a session (RFC 5321 4.5.3.2 for the commands).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to one address.
    pub connect: Duration,
    /// A TLS handshake (implicit TLS or after STARTTLS).
    pub tls_handshake: Duration,
    /// The 220 greeting.
    pub greeting: Duration,
    /// EHLO, HELO, STARTTLS, AUTH, RSET.
    pub command: Duration,
    /// MAIL.
    pub mail: Duration,
    /// Each RCPT.
    pub rcpt: Duration,
    /// The 354 after DATA.
    pub data: Duration,
    /// Each block of message data.
    pub data_block: Duration,
    /// The reply after the final dot.
    pub data_done: Duration,
    /// QUIT when a session ends (after a refusal, at most `command`).
    pub quit: Duration,
}

impl Default for Timeouts {
    /// RFC 5321's minimums (and `delivery`'s defaults): 5 minutes for commands, 2 for DATA, 3 per data
    /// block, 10 for the end of data; 30 seconds to connect, 60 for a TLS handshake, 5 for QUIT.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(60),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            mail: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_done: Duration::from_secs(600),
            quit: Duration::from_secs(5),
        }
    }
}

/// What a client needs besides the server: its deadlines and, optionally, a transcript hook.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// The deadlines.
    pub timeouts: Timeouts,
    /// Sees every command and reply of the session (credentials masked, message data as its size).
    pub transcript: Option<TranscriptHook>,
}

/// An SMTP client session with one server.
pub struct SmtpClient {
    pub(super) wire: Wire,
    pub(super) timeouts: Timeouts,
    /// The server's host name (for errors, and the TLS name).
    pub(super) server: String,
    pub(super) addr: SocketAddr,
    /// This side's address of the connection (the kernel chose it), when the socket could tell.
    pub(super) local: Option<SocketAddr>,
    /// What the server advertised in its last EHLO reply (nothing after HELO).
    pub(super) caps: Capabilities,
    /// The name given in EHLO/HELO, repeated after STARTTLS.
    pub(super) helo: Option<String>,
    /// The TLS session's description and certificate check, when TLS is in use.
    pub(super) tls: Option<TlsSession>,
    /// The next transaction begins with RSET: the last one did not end with the server's reply to its end
    /// of data (the server may still be inside it), or the session sat idle and RSET finds out whether the
    /// server still has it. After a transaction that ended there is nothing to reset (RFC 5321 §4.1.1.4:
    /// the end of data clears the server's buffers), so none is sent between the messages of a batch.
    pub(super) needs_reset: bool,
    /// A transaction was started on this session: the next message's first transaction may find the
    /// session over (see [`super::NotStarted`]).
    pub(super) carried_mail: bool,
    /// A message's end of data was held ([`super::HeldMessage`]) and its reply is still to be read: the
    /// next reply read is that one.
    pub(super) reply_owed: bool,
}

impl SmtpClient {
    /// The server's host name, as given to connect.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This side's address of the connection (TLS-RPT's `sending-mta-ip`); `None` when the socket could
    /// not tell.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// What the server advertised (after TLS, when used; nothing after HELO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The TLS version and cipher, and whether the certificate verified, when TLS is in use.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.description.as_str())
    }

    /// Whether TLS is in use with a certificate that verified against the server's name (always so for a
    /// session that asked for verification; for an opportunistic one, when its certificate checks out).
    pub fn tls_verified(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.certificate.is_none())
    }

    /// Why the TLS session's certificate did not verify against the server's name (opportunistic TLS
    /// only); `None` without TLS or when it verified.
    pub fn certificate_problem(&self) -> Option<CertificateProblem> {
        self.tls.as_ref().and_then(|t| t.certificate)
    }

    /// Whether the session can take another command: the server did not answer 421, and the connection
    /// neither failed nor timed out.
    pub fn is_usable(&self) -> bool {
        self.wire.is_usable()
    }

    /// The deadlines in use.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Ends the session: QUIT, then close. A session that is no longer usable is just closed.
    pub async fn quit(mut self) {
        if self.wire.is_usable() {
            let timeout = self.timeouts.quit;
            self.send_quit(timeout).await;
        }
    }

    /// QUIT and close, leaving the session unusable (for a caller that gives up on it before using it).
    pub async fn give_up(&mut self) {
        self.hang_up().await;
    }

    /// QUIT and close after a refusal that ends the session; the session is unusable afterwards.
    pub(super) async fn hang_up(&mut self) {
        let timeout = self.timeouts.quit.min(self.timeouts.command);
        self.send_quit(timeout).await;
        self.wire.mark_broken();
    }

    /// QUIT, its reply and the close, each within `timeout` (the close is bounded too: see
    /// [`Wire::shutdown`]).
    async fn send_quit(&mut self, timeout: Duration) {
        if self.wire.send(&Command::Quit, timeout).await.is_ok() {
            let _ = self.wire.read_reply(timeout, "QUIT").await;
        }
        self.wire.shutdown(timeout).await;
    }

    /// The session is about to sit idle (kept for a later batch): its next transaction begins with RSET,
    /// which finds out whether the server closed it meanwhile; a session found closed failed before the
    /// message was started ([`super::NotStarted`]), so the caller can open a new one.
    pub fn going_idle(&mut self) {
        self.needs_reset = true;
    }

    /// Resets the session between transactions; `false` (and the session unusable) when that failed.
    pub(super) async fn rset(&mut self) -> bool {
        match self.wire.command(&Command::Rset, self.timeouts.command).await {
            Ok(r) if r.is_positive() => true,
            _ => {
                self.wire.mark_broken();
                false
            }
        }
    }
}
