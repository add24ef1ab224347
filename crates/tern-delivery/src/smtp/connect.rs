//! Opening a session: TCP connect, the greeting, EHLO (HELO when EHLO is not understood), STARTTLS and EHLO
//! again, and AUTH towards a relay.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tern_config::sections::TlsMode;
use tern_smtp::{AuthMechanism, Capabilities, Command, Reply};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::conn::{Stream, Wire, WireError, reply_line};
use super::tls::TlsClients;
use crate::route::Host;

/// Per-command deadlines (RFC 5321 4.5.3.2).
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// TCP connect to one address.
    pub connect: Duration,
    /// The 220 greeting.
    pub greeting: Duration,
    /// EHLO, HELO, STARTTLS, AUTH, RSET, QUIT.
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
}

/// What a session needs to open.
#[derive(Clone)]
pub struct SessionSettings {
    /// The EHLO/HELO name.
    pub helo: String,
    /// The STARTTLS policy.
    pub tls_mode: TlsMode,
    /// The deadlines.
    pub timeouts: Timeouts,
    /// AUTH PLAIN credentials for the relay host.
    pub relay_auth: Option<(String, String)>,
    /// The TLS clients.
    pub tls: TlsClients,
}

/// Why a host could not be used; the next host is tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The TCP connection was refused or timed out.
    Unreachable(String),
    /// The greeting or EHLO/HELO was refused.
    Rejected(String),
    /// The session broke while opening.
    Wire(String),
    /// TLS failed (handshake, or required but not offered).
    Tls(String),
}

impl ConnectError {
    /// The failure as the reply a deferral records.
    pub fn reply(&self) -> Reply {
        match self {
            ConnectError::Unreachable(t) => Reply::new(451, "4.4.1", t.clone()),
            ConnectError::Rejected(t) => Reply::new(451, "4.4.0", t.clone()),
            ConnectError::Wire(t) => Reply::new(451, "4.4.2", t.clone()),
            ConnectError::Tls(t) => Reply::new(451, "4.7.5", t.clone()),
        }
    }
}

impl From<WireError> for ConnectError {
    fn from(e: WireError) -> Self {
        ConnectError::Wire(e.to_string())
    }
}

/// An open SMTP session, greeted and ready for a transaction.
pub struct Session {
    pub(crate) wire: Wire,
    /// What the server advertised (after TLS, when used).
    pub caps: Capabilities,
    /// The host name connected to.
    pub mx: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// The TLS version and cipher, when TLS is in use.
    pub tls: Option<String>,
    /// Transactions started on this connection.
    pub transactions: u32,
    /// The session can take another transaction (no 421, no dropped connection).
    pub usable: bool,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

impl Session {
    /// Opens a session to `host` at `addr`.
    pub async fn open(
        host: &Host,
        addr: SocketAddr,
        s: &SessionSettings,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Session, ConnectError> {
        let t = &s.timeouts;
        let tcp = match tokio::time::timeout(t.connect, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(ConnectError::Unreachable(format!(
                    "connect to {} [{addr}]: {e}",
                    host.name
                )));
            }
            Err(_) => {
                return Err(ConnectError::Unreachable(format!(
                    "connect to {} [{addr}] timed out",
                    host.name
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut tls = None;
        let mut wire = if host.implicit_tls {
            let (stream, desc) = s
                .tls
                .handshake(tcp, &host.name, true)
                .await
                .map_err(ConnectError::Tls)?;
            tls = Some(desc);
            Wire::new(Stream::Tls(Box::new(stream)))
        } else {
            Wire::new(Stream::Plain(tcp))
        };
        let greeting = wire.read_reply(t.greeting, "greeting").await?;
        if !greeting.is_positive() {
            quit(&mut wire, t.command).await;
            return Err(ConnectError::Rejected(format!(
                "{} [{addr}] greeted with {}",
                host.name,
                reply_line(&greeting)
            )));
        }
        let mut caps = hello(&mut wire, &s.helo, t.command, host, addr).await?;

        if tls.is_none() && s.tls_mode != TlsMode::Disabled {
            if caps.starttls {
                let r = wire.command(&Command::StartTls, t.command).await?;
                if r.code == 220 {
                    // Bytes sent before the handshake would be read as if protected by TLS (CVE-2011-0411).
                    if wire.has_unread() || wire.try_read_ahead() {
                        wire.shutdown().await;
                        return Err(ConnectError::Wire(format!(
                            "{} [{addr}] sent data between the STARTTLS reply and the handshake",
                            host.name
                        )));
                    }
                    let Stream::Plain(tcp) = wire.stream else {
                        return Err(ConnectError::Tls("STARTTLS on a TLS stream".into()));
                    };
                    let verify = s.tls_mode == TlsMode::Required || host.relay;
                    let (stream, desc) = s
                        .tls
                        .handshake(tcp, &host.name, verify)
                        .await
                        .map_err(ConnectError::Tls)?;
                    tls = Some(desc);
                    wire = Wire::new(Stream::Tls(Box::new(stream)));
                    caps = hello(&mut wire, &s.helo, t.command, host, addr).await?;
                } else if s.tls_mode == TlsMode::Required {
                    quit(&mut wire, t.command).await;
                    return Err(ConnectError::Tls(format!(
                        "{} [{addr}] refused STARTTLS: {}",
                        host.name,
                        reply_line(&r)
                    )));
                }
            } else if s.tls_mode == TlsMode::Required {
                quit(&mut wire, t.command).await;
                return Err(ConnectError::Tls(format!(
                    "TLS is required but {} [{addr}] does not offer STARTTLS",
                    host.name
                )));
            }
        }

        if host.relay
            && let Some((user, pass)) = &s.relay_auth
        {
            if tls.is_none() {
                quit(&mut wire, t.command).await;
                return Err(ConnectError::Tls(format!(
                    "not sending credentials to {} without TLS",
                    host.name
                )));
            }
            let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
            let r = wire
                .command(
                    &Command::Auth {
                        mechanism: AuthMechanism::Plain,
                        initial_response: Some(token),
                    },
                    t.command,
                )
                .await?;
            if r.code != 235 {
                quit(&mut wire, t.command).await;
                return Err(ConnectError::Rejected(format!(
                    "AUTH at {} failed: {}",
                    host.name,
                    reply_line(&r)
                )));
            }
        }

        Ok(Session {
            wire,
            caps,
            mx: host.name.clone(),
            addr,
            tls,
            transactions: 0,
            usable: true,
            _permit: permit,
        })
    }

    /// Ends the session politely: QUIT, then close.
    pub async fn quit(mut self) {
        let t = Duration::from_secs(5);
        quit(&mut self.wire, t).await;
    }

    /// Resets the session between transactions; `false` when the session is no longer usable.
    pub async fn rset(&mut self, timeout: Duration) -> bool {
        match self.wire.command(&Command::Rset, timeout).await {
            Ok(r) if r.is_positive() => true,
            _ => {
                self.usable = false;
                false
            }
        }
    }
}

async fn hello(
    wire: &mut Wire,
    helo: &str,
    timeout: Duration,
    host: &Host,
    addr: SocketAddr,
) -> Result<Capabilities, ConnectError> {
    let r = wire.command(&Command::Ehlo(helo.to_string()), timeout).await?;
    if r.is_positive() {
        return Ok(Capabilities::from_ehlo_reply(&r));
    }
    if r.code == 500 || r.code == 502 {
        let h = wire.command(&Command::Helo(helo.to_string()), timeout).await?;
        if h.is_positive() {
            return Ok(Capabilities::default());
        }
        return Err(rejected(wire, timeout, host, addr, "HELO", &h).await);
    }
    Err(rejected(wire, timeout, host, addr, "EHLO", &r).await)
}

async fn rejected(
    wire: &mut Wire,
    timeout: Duration,
    host: &Host,
    addr: SocketAddr,
    what: &str,
    r: &Reply,
) -> ConnectError {
    quit(wire, timeout).await;
    ConnectError::Rejected(format!(
        "{} [{addr}] refused {what}: {}",
        host.name,
        reply_line(r)
    ))
}

async fn quit(wire: &mut Wire, timeout: Duration) {
    let t = timeout.min(Duration::from_secs(5));
    if wire.send(&Command::Quit, t).await.is_ok() {
        let _ = wire.read_reply(t, "QUIT").await;
    }
    wire.shutdown().await;
}
