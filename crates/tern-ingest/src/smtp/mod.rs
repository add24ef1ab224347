//! The SMTP submission server: listeners, connection limits and graceful shutdown. One
//! `session` per connection does the protocol.
//!
//! Shutdown ([`BoundSmtpServer::run`]'s token is cancelled): sessions waiting for a command get `421 4.3.2` and
//! are closed; sessions in the middle of DATA or BDAT may finish their message (and get its reply) for up to
//! `ingest.shutdown_grace`, after which whatever is left is dropped. Until then the listeners stay open and
//! answer every new connection `421 4.3.2` at once (implicit TLS: after the handshake); they close when the
//! last session has ended or the grace is over.

pub mod auth;
pub mod body;
pub mod limits;
pub mod received;
mod session;
mod stream;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tern_config::IngestConfig;
use tern_core::Shutdown;
use tern_queue::Queue;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::IngestError;
use auth::{Lockout, UserDb};
use limits::ConnLimiter;

/// How long a TLS handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing a connection may take (a TLS close_notify to a client that stopped reading would
/// otherwise wait for ever).
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every session shares: settings from the configuration, the queue, TLS, users and counters.
pub(crate) struct Shared {
    pub(crate) hostname: String,
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) users: Option<Arc<UserDb>>,
    /// `[[dkim]]`: the keys messages are signed with before they are queued.
    pub(crate) dkim: Option<Arc<tern_dkim::SharedSigners>>,
    /// `[ingest.oauth]`: the verifier of AUTH XOAUTH2 and OAUTHBEARER tokens.
    pub(crate) oauth: Option<Arc<crate::oauth::OauthVerifier>>,
    pub(crate) lockout: Lockout,
    pub(crate) allow_plaintext_auth: bool,
    pub(crate) relay_networks: Vec<IpNet>,
    pub(crate) max_message_size: u64,
    pub(crate) max_recipients: usize,
    pub(crate) max_errors: u32,
    pub(crate) idle_timeout: Duration,
    /// How long a queue write whose outcome is unknown is repeated (`ingest.enqueue_retry_for`).
    pub(crate) enqueue_retry: crate::enqueue::EnqueueRetry,
    limiter: Arc<ConnLimiter>,
}

impl Shared {
    /// Whether `ip` may submit without authenticating.
    pub(crate) fn is_relay_client(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.relay_networks.iter().any(|n| n.contains(&ip))
    }

    /// `relay_networks` for a log line: the networks, comma-separated, or `none`.
    pub(crate) fn relay_networks_text(&self) -> String {
        if self.relay_networks.is_empty() {
            return "none".into();
        }
        let networks: Vec<String> = self.relay_networks.iter().map(ToString::to_string).collect();
        networks.join(",")
    }
}

/// `ingest.relay_networks`' default (loopback only) for a log line, as [`Shared::relay_networks_text`]
/// writes the configured value: taken from the configuration's own default, so the two cannot drift.
pub(crate) fn default_relay_networks_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let networks: Vec<String> = IngestConfig::default()
            .relay_networks
            .iter()
            .map(ToString::to_string)
            .collect();
        networks.join(",")
    })
}

/// An SMTP submission server, configured but not yet listening. [`SmtpServer::bind`] opens the listeners.
pub struct SmtpServer {
    shared: Arc<Shared>,
    smtp_listen: Vec<SocketAddr>,
    smtps_listen: Vec<SocketAddr>,
    grace: Duration,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("hostname", &self.shared.hostname)
            .field("smtp_listen", &self.smtp_listen)
            .field("smtps_listen", &self.smtps_listen)
            .finish_non_exhaustive()
    }
}

/// What [`load_files`] loads.
struct Loaded {
    tls: Option<TlsAcceptor>,
    users: Option<Arc<UserDb>>,
    oauth: Option<Arc<crate::oauth::OauthVerifier>>,
}

/// Validates the section and loads the files it names: the TLS certificate and key, the users file and the
/// OAuth JWKS file.
fn load_files(config: &IngestConfig) -> Result<Loaded, IngestError> {
    config.validate().map_err(|(key, message)| IngestError::Config {
        key: format!("ingest.{key}"),
        message,
    })?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(TlsAcceptor::from(tls::server_config(cert, key)?)),
        _ => None,
    };
    let users = match &config.users_file {
        Some(path) => Some(Arc::new(UserDb::load(path)?)),
        None => None,
    };
    let oauth = crate::oauth::OauthVerifier::from_config(config)?;
    Ok(Loaded { tls, users, oauth })
}

impl SmtpServer {
    /// Every check [`SmtpServer::new`] makes (the section's values, the TLS files, the users file), without
    /// a queue: what `tern check-config` runs.
    pub fn check(config: &IngestConfig) -> Result<(), IngestError> {
        load_files(config).map(|_| ())
    }

    /// Builds the server from the `[ingest]` section: validates it, loads the TLS certificate and the users
    /// file. Nothing listens yet.
    pub fn new(config: &IngestConfig, queue: Arc<dyn Queue>) -> Result<SmtpServer, IngestError> {
        Self::with_dkim(config, queue, None)
    }

    /// [`SmtpServer::new`], signing every message with the DKIM keys of `dkim` before it is queued.
    pub fn with_dkim(
        config: &IngestConfig,
        queue: Arc<dyn Queue>,
        dkim: Option<Arc<tern_dkim::SharedSigners>>,
    ) -> Result<SmtpServer, IngestError> {
        let Loaded { tls, users, oauth } = load_files(config)?;
        let limiter = ConnLimiter::new(
            usize::try_from(config.max_connections).unwrap_or(usize::MAX),
            usize::try_from(config.max_connections_per_ip).unwrap_or(usize::MAX),
        );
        let shared = Shared {
            hostname: config
                .hostname
                .clone()
                .unwrap_or_else(tern_server::system_hostname),
            queue,
            tls,
            users: users.filter(|u| !u.is_empty()),
            dkim,
            oauth,
            lockout: Lockout::new(config.auth_max_failures),
            allow_plaintext_auth: config.allow_plaintext_auth,
            relay_networks: config.relay_networks.clone(),
            max_message_size: config.max_message_size,
            max_recipients: usize::try_from(config.max_recipients).unwrap_or(usize::MAX),
            max_errors: config.max_errors,
            idle_timeout: config.idle_timeout.get(),
            enqueue_retry: crate::enqueue::EnqueueRetry::from_config(config),
            limiter,
        };
        Ok(SmtpServer {
            shared: Arc::new(shared),
            smtp_listen: config.smtp_listen.clone(),
            smtps_listen: config.smtps_listen.clone(),
            grace: config.shutdown_grace.get(),
        })
    }

    /// Binds every listener (port 0 picks a free port; see [`BoundSmtpServer::smtp_addrs`]).
    pub async fn bind(self) -> Result<BoundSmtpServer, IngestError> {
        let mut listeners = Vec::new();
        let mut smtp_addrs = Vec::new();
        let mut smtps_addrs = Vec::new();
        for (addrs, implicit, out) in [
            (&self.smtp_listen, false, &mut smtp_addrs),
            (&self.smtps_listen, true, &mut smtps_addrs),
        ] {
            for addr in addrs {
                let (l, nodelay_inherited) =
                    bind_listener(*addr).map_err(|source| IngestError::Bind { addr: *addr, source })?;
                let local = l
                    .local_addr()
                    .map_err(|source| IngestError::Bind { addr: *addr, source })?;
                out.push(local);
                listeners.push(Listening {
                    listener: l,
                    implicit,
                    nodelay_inherited,
                });
            }
        }
        Ok(BoundSmtpServer {
            shared: self.shared,
            listeners,
            smtp_addrs,
            smtps_addrs,
            grace: self.grace,
        })
    }

    /// [`SmtpServer::bind`] then [`BoundSmtpServer::run`].
    pub async fn run(self, shutdown: Shutdown) -> Result<(), IngestError> {
        self.bind().await?.run(shutdown).await
    }
}

/// An SMTP submission server with its listeners bound.
pub struct BoundSmtpServer {
    shared: Arc<Shared>,
    listeners: Vec<Listening>,
    smtp_addrs: Vec<SocketAddr>,
    smtps_addrs: Vec<SocketAddr>,
    grace: Duration,
}

impl std::fmt::Debug for BoundSmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundSmtpServer")
            .field("smtp_addrs", &self.smtp_addrs)
            .field("smtps_addrs", &self.smtps_addrs)
            .finish_non_exhaustive()
    }
}

impl BoundSmtpServer {
    /// The bound addresses of the plain (STARTTLS) listeners, in configuration order.
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    /// The bound addresses of the implicit-TLS listeners, in configuration order.
    pub fn smtps_addrs(&self) -> &[SocketAddr] {
        &self.smtps_addrs
    }

    /// Serves every listener until `shutdown` is cancelled, then shuts down gracefully (see the module docs)
    /// and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), IngestError> {
        let (tx, mut rx) = mpsc::channel::<(TcpStream, SocketAddr, bool)>(64);
        let mut accept_tasks = JoinSet::new();
        for Listening {
            listener,
            implicit,
            nodelay_inherited,
        } in self.listeners
        {
            let tx = tx.clone();
            accept_tasks.spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            // Replies go out as soon as they are written (each is one write).
                            if !nodelay_inherited {
                                let _ = stream.set_nodelay(true);
                            }
                            if tx.send((stream, peer, implicit)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: do not spin.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        drop(tx);
        info!(
            smtp = %addr_list(&self.smtp_addrs), smtps = %addr_list(&self.smtps_addrs),
            hostname = %self.shared.hostname, "SMTP submission listening"
        );

        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = rx.recv() => {
                    let Some((stream, peer, implicit)) = accepted else { break };
                    let shared = Arc::clone(&self.shared);
                    let token = shutdown.clone();
                    // Boxed: a session's future is large, and the runtime would otherwise copy it as it
                    // creates, runs and ends the task, once per connection.
                    sessions.spawn(Box::pin(handle_connection(shared, stream, peer, implicit, token)));
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        info!(
            open = sessions.len(),
            grace_s = self.grace.as_secs_f64(),
            "SMTP submission shutting down: sessions in flight may finish, new connections get 421 4.3.2"
        );
        // The listeners stay open through the drain (issue #18: sessions in flight finish, the others get
        // 421): a client connecting now is told to try again later, at this node or another, rather than
        // being refused without a reply. The refusals are not sessions: they do not hold the drain open.
        let mut refusals = JoinSet::new();
        let mut accepting = true;
        let grace = tokio::time::sleep(self.grace);
        tokio::pin!(grace);
        let drained = loop {
            tokio::select! {
                biased;
                () = &mut grace => break false,
                joined = sessions.join_next() => if joined.is_none() { break true },
                accepted = rx.recv(), if accepting => match accepted {
                    Some((stream, peer, implicit)) => {
                        refusals.spawn(refuse_draining(Arc::clone(&self.shared), stream, peer, implicit));
                    }
                    None => accepting = false,
                },
                Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
            }
        };
        // Closing the listeners: connections from now on are refused by the kernel, and those accepted but
        // not yet taken are closed.
        accept_tasks.abort_all();
        while accept_tasks.join_next().await.is_some() {}
        drop(rx);
        refusals.abort_all();
        if !drained {
            warn!(
                left = sessions.len(),
                "shutdown grace over: dropping the remaining SMTP sessions"
            );
            sessions.abort_all();
            while sessions.join_next().await.is_some() {}
        }
        while refusals.join_next().await.is_some() {}
        Ok(())
    }
}

/// A bound listener: whether its connections use implicit TLS, and whether they get `TCP_NODELAY` from it.
struct Listening {
    listener: TcpListener,
    implicit: bool,
    nodelay_inherited: bool,
}

/// The backlog of a listener, as `TcpListener::bind` (and the standard library) set it.
const LISTEN_BACKLOG: u32 = 128;

/// Binds a listener as `TcpListener::bind` does (`SO_REUSEADDR`, [`LISTEN_BACKLOG`]), on Linux with
/// `TCP_NODELAY` set before it listens: Linux copies that option into every connection the listener
/// accepts, so no connection needs a `setsockopt` of its own (one system call fewer per session), and none
/// is accepted without it. Returns the listener and whether its connections get the option from it;
/// elsewhere, or if setting it failed, each accepted connection sets it.
fn bind_listener(addr: SocketAddr) -> std::io::Result<(TcpListener, bool)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    let nodelay_inherited = cfg!(target_os = "linux") && socket.set_nodelay(true).is_ok();
    socket.bind(addr)?;
    Ok((socket.listen(LISTEN_BACKLOG)?, nodelay_inherited))
}

/// Addresses as a log value: comma-joined, `-` for none.
fn addr_list(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return "-".to_string();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A connection accepted during the drain: `421 4.3.2` at once, then close (RFC 5321 section 3.1 lets a server
/// refuse at the greeting). A client of implicit TLS cannot read a plaintext reply, so it gets the handshake
/// first; those handshakes count against the connection limits, so that a flood of them during the drain
/// stays bounded (over the limits, the connection is just closed, as outside the drain).
async fn refuse_draining(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, implicit_tls: bool) {
    let (mut stream, _permit) = if implicit_tls {
        let Ok(permit) = shared.limiter.try_acquire(peer.ip()) else {
            debug!(peer = %peer.ip(), "connection closed: shutting down, and too many connections");
            return;
        };
        let Some(acceptor) = shared.tls.clone() else {
            return;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => (stream::Stream::Tls(Box::new(tls)), Some(permit)),
            Ok(Err(e)) => {
                debug!(peer = %peer.ip(), error = %e, "TLS handshake failed during the drain");
                return;
            }
            Err(_) => return,
        }
    } else {
        (stream::Stream::Plain(tcp), None)
    };
    // Debug, not info: a client retrying in a loop during the drain would fill the log.
    debug!(peer = %peer.ip(), tls = implicit_tls, "connection refused with 421 4.3.2: shutting down");
    let reply = session::shutting_down_reply(&shared.hostname).to_bytes();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await;
}

/// Takes one accepted connection: counts it, does the implicit TLS handshake, runs the session.
async fn handle_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    shutdown: Shutdown,
) {
    let permit = shared.limiter.try_acquire(peer.ip());
    if implicit_tls && let Err(which) = &permit {
        // No handshake for a connection that will be refused: it would cost up to the handshake timeout
        // each, with no cap. A client of implicit TLS cannot read a plaintext 421; it sees a close.
        info!(peer = %peer.ip(), limit = which.as_str(), "connection refused: too many connections");
        return;
    }
    let mut stream = if implicit_tls {
        let Some(acceptor) = shared.tls.clone() else {
            return;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => stream::Stream::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                info!(peer = %peer.ip(), error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                info!(peer = %peer.ip(), "TLS handshake timed out");
                return;
            }
        }
    } else {
        stream::Stream::Plain(tcp)
    };
    let permit = match permit {
        Ok(p) => p,
        Err(which) => {
            info!(peer = %peer.ip(), limit = which.as_str(), "connection refused: too many connections");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                let _ = stream
                    .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                    .await;
                stream.shutdown().await
            })
            .await;
            return;
        }
    };
    session::Session::new(shared, stream, peer, implicit_tls, shutdown)
        .run()
        .await;
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_accepted_on_a_listener_bound_with_nodelay_have_it_without_a_call_of_their_own() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let (listener, inherited) = bind_listener(addr.parse().unwrap()).unwrap();
            assert_eq!(inherited, cfg!(target_os = "linux"), "{addr}");
            let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert_eq!(accepted.nodelay().unwrap(), inherited, "{addr}");
        }
    }
}
