//! Opening a session: the TCP connection (with TLS from the first byte for implicit TLS), the greeting, and
//! EHLO with HELO when EHLO is not understood.

use std::net::SocketAddr;

use tern_smtp::{Capabilities, Command, Reply};
use tokio::net::TcpStream;

use super::client::{ClientOptions, SmtpClient};
use super::tls::{CertificateProblem, TlsClients, TlsSession};
use super::wire::{Stream, Wire, WireError, reply_line};

/// Why a server could not be used (while opening a session); a caller with other hosts tries the next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection was refused or timed out.
    #[error("{0}")]
    Unreachable(String),
    /// The greeting, EHLO/HELO or AUTH was refused.
    #[error("{0}")]
    Rejected(String),
    /// The session broke while opening.
    #[error("{0}")]
    Wire(String),
    /// TLS failed (the handshake, or EHLO over TLS).
    #[error("{0}")]
    Tls(String),
    /// The server's certificate did not verify (a handshake that asked for verification).
    #[error("{1}")]
    Certificate(CertificateProblem, String),
    /// TLS is required but the server does not offer STARTTLS, or refused it.
    #[error("{0}")]
    NoStartTls(String),
}

impl ConnectError {
    /// The failure as the reply a deferral records.
    pub fn reply(&self) -> Reply {
        match self {
            ConnectError::Unreachable(t) => Reply::new(451, "4.4.1", t.clone()),
            ConnectError::Rejected(t) => Reply::new(451, "4.4.0", t.clone()),
            ConnectError::Wire(t) => Reply::new(451, "4.4.2", t.clone()),
            ConnectError::Tls(t) | ConnectError::Certificate(_, t) | ConnectError::NoStartTls(t) => {
                Reply::new(451, "4.7.5", t.clone())
            }
        }
    }

    /// Whether TLS itself failed: the handshake (a certificate among the causes), or EHLO over TLS; not
    /// the connection under it, nor a server without STARTTLS.
    pub fn is_tls_failure(&self) -> bool {
        matches!(self, ConnectError::Tls(_) | ConnectError::Certificate(..))
    }
}

impl From<WireError> for ConnectError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Tls(..) => ConnectError::Tls(e.to_string()),
            _ => ConnectError::Wire(e.to_string()),
        }
    }
}

impl SmtpClient {
    /// Connects to `addr` over plain TCP and reads the greeting. `server` is the host name: it names the
    /// server in errors and is the TLS name for a later STARTTLS.
    pub async fn connect(
        server: &str,
        addr: SocketAddr,
        options: &ClientOptions,
    ) -> Result<SmtpClient, ConnectError> {
        let tcp = tcp_connect(server, addr, options).await?;
        let local = tcp.local_addr().ok();
        SmtpClient::greet(server, addr, local, Stream::Plain(tcp), None, options).await
    }

    /// Connects to `addr` with TLS from the first byte (implicit TLS, RFC 8314), checking the certificate
    /// against `server` when `verify`, and reads the greeting.
    pub async fn connect_tls(
        server: &str,
        addr: SocketAddr,
        options: &ClientOptions,
        tls: &TlsClients,
        verify: bool,
    ) -> Result<SmtpClient, ConnectError> {
        let tcp = tcp_connect(server, addr, options).await?;
        let local = tcp.local_addr().ok();
        let (stream, session) = tls
            .handshake(tcp, server, verify, options.timeouts.tls_handshake)
            .await?;
        let stream = Stream::Tls(Box::new(stream));
        SmtpClient::greet(server, addr, local, stream, Some(session), options).await
    }

    async fn greet(
        server: &str,
        addr: SocketAddr,
        local: Option<SocketAddr>,
        stream: Stream,
        tls: Option<TlsSession>,
        options: &ClientOptions,
    ) -> Result<SmtpClient, ConnectError> {
        let wire = Wire::new(stream, options.transcript.clone());
        if let Some(session) = &tls {
            wire.note(super::TranscriptEntry::Tls(&session.description));
        }
        let mut client = SmtpClient {
            wire,
            timeouts: options.timeouts.clone(),
            server: server.to_string(),
            addr,
            local,
            caps: Capabilities::default(),
            helo: None,
            tls,
            needs_reset: false,
            carried_mail: false,
            reply_owed: false,
        };
        let greeting = client
            .wire
            .read_reply(client.timeouts.greeting, "greeting")
            .await?;
        if !greeting.is_positive() {
            client.hang_up().await;
            return Err(ConnectError::Rejected(format!(
                "{server} [{addr}] greeted with {}",
                reply_line(&greeting)
            )));
        }
        Ok(client)
    }

    /// EHLO `name`, or HELO when the server does not understand EHLO (500, 502). Returns what the server
    /// advertised (nothing after HELO). A refusal ends the session.
    pub async fn ehlo(&mut self, name: &str) -> Result<&Capabilities, ConnectError> {
        self.helo = Some(name.to_string());
        self.hello(name).await?;
        Ok(&self.caps)
    }

    /// EHLO (HELO as the fallback) with `name`, keeping what the server advertised.
    pub(super) async fn hello(&mut self, name: &str) -> Result<(), ConnectError> {
        let timeout = self.timeouts.command;
        let r = self
            .wire
            .command(&Command::Ehlo(name.to_string()), timeout)
            .await?;
        if r.is_positive() {
            self.caps = Capabilities::from_ehlo_reply(&r);
            return Ok(());
        }
        if r.code == 500 || r.code == 502 {
            let h = self
                .wire
                .command(&Command::Helo(name.to_string()), timeout)
                .await?;
            if h.is_positive() {
                self.caps = Capabilities::default();
                return Ok(());
            }
            return Err(self.refused("HELO", &h).await);
        }
        Err(self.refused("EHLO", &r).await)
    }

    async fn refused(&mut self, what: &str, r: &Reply) -> ConnectError {
        self.hang_up().await;
        ConnectError::Rejected(format!(
            "{} [{}] refused {what}: {}",
            self.server,
            self.addr,
            reply_line(r)
        ))
    }
}

async fn tcp_connect(
    server: &str,
    addr: SocketAddr,
    options: &ClientOptions,
) -> Result<TcpStream, ConnectError> {
    let tcp = match tokio::time::timeout(options.timeouts.connect, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(ConnectError::Unreachable(format!(
                "connect to {server} [{addr}]: {e}"
            )));
        }
        Err(_) => {
            return Err(ConnectError::Unreachable(format!(
                "connect to {server} [{addr}] timed out"
            )));
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
