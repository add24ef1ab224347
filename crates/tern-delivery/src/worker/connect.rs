//! Opening a connection for delivery: each host from a starting one, each of its addresses, a worker slot
//! for each try; and the session set up the way `[delivery]` and the domain's MTA-STS policy ask (STARTTLS
//! per the host's [`TlsPolicy`], plaintext on the same host when opportunistic TLS fails, AUTH towards the
//! relay). Each try's TLS result goes to the MTA-STS step ([`StsApplied::record_session`]), with what the
//! try learnt before it opened or failed ([`SessionFacts`]), and each try is a live trace session
//! (`trace.rs`) with its `connect` and, when it fails, `error` records.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tern_config::sections::TlsMode;
use tern_smtp::Reply;
use tern_telemetry::metrics::ConnectionKind;
use tracing::{Instrument, debug, info, warn};

use super::Inner;
use super::mta_sts::StsApplied;
use super::pool::Connection;
use super::tls_policy::{TlsFailures, TlsPolicy};
use super::trace::TraceSession;
use crate::oauth::TokenSource;
use crate::route::Host;
use crate::smtp::{
    ClientOptions, ConnectError, SmtpClient, StartTls, Timeouts, TlsClients, Transcript, TranscriptEntry,
    TranscriptHook, reply_line, tracing_transcript,
};

/// How the worker authenticates to the relay (`delivery.relay_auth`).
#[derive(Clone)]
pub(super) enum RelayCredentials {
    /// AUTH PLAIN: user and password.
    Plain(String, String),
    /// AUTH LOGIN: user and password.
    Login(String, String),
    /// AUTH XOAUTH2: user, and where the access token comes from.
    Xoauth2(String, Arc<TokenSource>),
}

impl RelayCredentials {
    /// What `[delivery]` asks for; `tls` for a token endpoint over HTTPS.
    pub(super) fn from_config(cfg: &tern_config::DeliveryConfig, tls: &TlsClients) -> Option<Self> {
        let user = cfg.relay_username.clone()?;
        let password = || cfg.relay_password.clone().unwrap_or_default();
        match cfg.relay_auth_mechanism()?.as_str() {
            "login" => Some(RelayCredentials::Login(user, password())),
            "xoauth2" => {
                let source = TokenSource::from_config(cfg, tls.clone(), cfg.command_timeout.get())?;
                Some(RelayCredentials::Xoauth2(user, Arc::new(source)))
            }
            _ => Some(RelayCredentials::Plain(user, password())),
        }
    }

    /// AUTH on `client`; a token that cannot be had ends the session like a refusal.
    async fn authenticate(&self, client: &mut SmtpClient) -> Result<(), ConnectError> {
        match self {
            RelayCredentials::Plain(user, password) => client.auth_plain(user, password).await,
            RelayCredentials::Login(user, password) => client.auth_login(user, password).await,
            RelayCredentials::Xoauth2(user, source) => match source.token().await {
                Ok(token) => {
                    let result = client.auth_xoauth2(user, &token).await;
                    if matches!(result, Err(ConnectError::Rejected(_))) {
                        source.refused(&token).await;
                    }
                    result
                }
                Err(e) => {
                    warn!(relay = %client.server(), error = %e, "no OAuth token for the relay");
                    client.give_up().await;
                    Err(ConnectError::Rejected(e.to_string()))
                }
            },
        }
    }
}

/// How the worker opens sessions.
#[derive(Clone)]
pub(super) struct SessionSettings {
    /// The EHLO/HELO name.
    pub(super) helo: String,
    /// The STARTTLS policy.
    pub(super) tls_mode: TlsMode,
    /// The deadlines.
    pub(super) timeouts: Timeouts,
    /// AUTH towards the relay host.
    pub(super) relay_auth: Option<RelayCredentials>,
    /// The TLS clients.
    pub(super) tls: TlsClients,
    /// The hosts whose STARTTLS failed recently (reached in plaintext meanwhile under opportunistic TLS).
    pub(super) tls_failures: std::sync::Arc<TlsFailures>,
}

impl Inner {
    /// Tries every host from `start` on (wrapping), and every address of each, until one takes a session
    /// as `sts` (the domain's MTA-STS policy) allows. Returns the connection and the index of its host; or
    /// the last failure, but under an enforced policy the last failure the policy caused, if any, as that
    /// is why the mail waits.
    pub(super) async fn connect_any(
        &self,
        domain: &str,
        hosts: &[Host],
        start: usize,
        sts: &StsApplied,
    ) -> Result<(Connection, usize), ConnectError> {
        let mut last = ConnectError::Unreachable(format!("no host to try for {domain}"));
        let mut policy_error = None;
        for k in 0..hosts.len() {
            let i = (start + k) % hosts.len();
            let host = &hosts[i];
            for addr in &host.addrs {
                let slot = self.connection_slot().await?;
                let trace = self
                    .tracer
                    .as_ref()
                    .map(|t| Arc::new(t.session(domain, &host.name, *addr)));
                if let Some(t) = &trace {
                    t.connect("");
                }
                let span = tracing::info_span!("connect", mx = %host.name, ip = %addr);
                // Only a looked-up domain's sessions are TLS results, which need these.
                let facts = sts.looked_up_domain().then(|| Arc::new(SessionFacts::default()));
                let opened = open_session(host, *addr, &self.settings, sts, trace.as_ref(), facts.as_ref())
                    .instrument(span)
                    .await;
                sts.record_session(host, addr.ip(), &opened, facts.as_deref());
                match opened {
                    Ok(client) => {
                        tern_telemetry::metrics().connection(ConnectionKind::Opened);
                        let tls = client.tls().unwrap_or("-");
                        debug!(domain, mx = %host.name, ip = %addr, tls, "connected");
                        return Ok((Connection::new(client, slot, trace), i));
                    }
                    Err(e) => {
                        if let Some(t) = &trace {
                            t.error(&e.to_string());
                        }
                        info!(
                            domain, mx = %host.name, ip = %addr, error = %e,
                            "host not usable, trying the next"
                        );
                        if sts.is_policy_error(&e) {
                            policy_error = Some(e.clone());
                        }
                        last = e;
                    }
                }
            }
        }
        Err(policy_error.unwrap_or(last))
    }
}

/// What a session attempt learnt before it opened or failed, for the TLS-RPT details of a failure
/// (RFC 8460 §4.3): this side's address of the TCP connection (`sending-mta-ip`) and the name the server
/// gave in its EHLO reply, or else its greeting (`receiving-mx-helo`). A session that fails STARTTLS or
/// its certificate check is dropped with its client, so these are noted as the attempt goes: the address
/// once connected, the names from the transcript.
#[derive(Debug, Default)]
pub(super) struct SessionFacts {
    local: OnceLock<SocketAddr>,
    /// A reply was read: the next ones are no greeting.
    greeted: AtomicBool,
    greeting_name: OnceLock<String>,
    hello_name: OnceLock<String>,
}

impl SessionFacts {
    /// Notes what `entry` tells: the first reply is the greeting, and the first 250 reply after it
    /// answers EHLO (or the HELO after a refused EHLO). Quick once the EHLO name is known.
    fn note(&self, entry: TranscriptEntry<'_>) {
        if self.hello_name.get().is_some() {
            return;
        }
        let TranscriptEntry::Reply(reply) = entry else {
            return;
        };
        let target = if !self.greeted.swap(true, Ordering::Relaxed) {
            &self.greeting_name
        } else if reply.code == 250 {
            &self.hello_name
        } else {
            return;
        };
        if let Some(name) = announced_name(reply) {
            let _ = target.set(name);
        }
    }

    /// Notes this side's address of the connection.
    fn connected(&self, client: &SmtpClient) {
        if let Some(local) = client.local_addr() {
            let _ = self.local.set(local);
        }
    }

    /// This side's address, once connected.
    pub(super) fn local_ip(&self) -> Option<IpAddr> {
        self.local.get().map(SocketAddr::ip)
    }

    /// The server's name from its EHLO reply, or else from its greeting.
    pub(super) fn helo(&self) -> Option<&str> {
        self.hello_name
            .get()
            .or_else(|| self.greeting_name.get())
            .map(String::as_str)
    }
}

/// The host name a server gives first in a reply (`220 mx.b.test ESMTP ready`, `250-mx.b.test hello`):
/// its first word, when that looks like a host name or an address literal (it goes into reports as it is).
fn announced_name(reply: &Reply) -> Option<String> {
    let word = reply.lines.first()?.split_ascii_whitespace().next()?;
    let plausible = word.len() <= 255
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    plausible.then(|| word.to_string())
}

/// Opens a session to `host` at `addr`: connect (TLS from the first byte for an implicit-TLS relay), EHLO,
/// STARTTLS as the host's [`TlsPolicy`] says ([`secure`]; verified and required under an enforced MTA-STS
/// policy), then AUTH towards the relay. `facts`, when given, learns what the attempt finds out.
async fn open_session(
    host: &Host,
    addr: SocketAddr,
    s: &SessionSettings,
    sts: &StsApplied,
    trace: Option<&Arc<TraceSession>>,
    facts: Option<&Arc<SessionFacts>>,
) -> Result<SmtpClient, ConnectError> {
    let mut transcript: TranscriptHook = tracing_transcript(&host.name, addr);
    if let Some(t) = trace {
        let (log, t) = (transcript, Arc::clone(t));
        transcript = Arc::new(move |entry: TranscriptEntry<'_>| {
            log.record(entry);
            t.record(entry);
        });
    }
    if let Some(f) = facts {
        let (inner, f) = (transcript, Arc::clone(f));
        transcript = Arc::new(move |entry: TranscriptEntry<'_>| {
            inner.record(entry);
            f.note(entry);
        });
    }
    let options = ClientOptions {
        timeouts: s.timeouts.clone(),
        transcript: Some(transcript),
    };
    let mut client = if host.implicit_tls {
        // A handshake that fails takes the connection's address with it; no policy applies to the
        // implicit-TLS relay, so no TLS result needs it.
        SmtpClient::connect_tls(&host.name, addr, &options, &s.tls, true).await?
    } else {
        SmtpClient::connect(&host.name, addr, &options).await?
    };
    if let Some(f) = facts {
        f.connected(&client);
    }
    client.ehlo(&s.helo).await?;

    if client.tls().is_none() {
        let policy = sts.tls_policy(TlsPolicy::for_host(s.tls_mode, host.relay));
        client = secure(client, host, addr, policy, s, &options, trace).await?;
    }

    if host.relay
        && let Some(auth) = &s.relay_auth
    {
        auth.authenticate(&mut client).await?;
    }
    Ok(client)
}

/// STARTTLS on a plaintext session as `policy` says. Without TLS to be had (not offered, refused, or
/// failed) a policy that requires TLS gives up on the host; an opportunistic one goes on in plaintext: on
/// this session when STARTTLS was not offered or refused, on a new one to the same address when it failed
/// (the old one is unusable). A refusal that ends the session (421) gives up on this address whatever the
/// policy: the next one is tried. Only a failure of TLS itself ([`ConnectError::is_tls_failure`]) is
/// remembered, so that the host is reached in plaintext for a while without trying TLS; the connection
/// failing during STARTTLS (no reply, a reset, bytes before the handshake) may be one on-path event, and
/// TLS is tried again next time.
async fn secure(
    mut client: SmtpClient,
    host: &Host,
    addr: SocketAddr,
    policy: TlsPolicy,
    s: &SessionSettings,
    options: &ClientOptions,
    trace: Option<&Arc<TraceSession>>,
) -> Result<SmtpClient, ConnectError> {
    if !policy.starttls {
        return Ok(client);
    }
    if policy.plaintext_fallback && s.tls_failures.remembers(&host.name, addr, Instant::now()) {
        debug!(mx = %host.name, ip = %addr, "STARTTLS failed here recently: plaintext without trying TLS");
        return Ok(client);
    }
    if !client.capabilities().starttls {
        if policy.required {
            client.quit().await;
            return Err(ConnectError::NoStartTls(format!(
                "TLS is required but {} [{addr}] does not offer STARTTLS",
                host.name
            )));
        }
        return Ok(client);
    }
    let span = tracing::info_span!("tls", mx = %host.name, ip = %addr);
    match client.starttls(&s.tls, policy.verify).instrument(span).await {
        Ok(StartTls::Started) => Ok(client),
        Ok(StartTls::Refused(r)) if policy.required => {
            client.quit().await;
            Err(ConnectError::NoStartTls(format!(
                "{} [{addr}] refused STARTTLS: {}",
                host.name,
                reply_line(&r)
            )))
        }
        Ok(StartTls::Refused(r)) if !client.is_usable() => {
            client.quit().await;
            Err(ConnectError::Rejected(format!(
                "{} [{addr}] refused STARTTLS and ended the session: {}",
                host.name,
                reply_line(&r)
            )))
        }
        Ok(StartTls::Refused(_)) => Ok(client),
        Err(e) if policy.plaintext_fallback => {
            drop(client);
            let remembered = e.is_tls_failure();
            if remembered {
                s.tls_failures.remember(&host.name, addr, Instant::now());
            }
            info!(
                mx = %host.name, ip = %addr, error = %e, remembered,
                "STARTTLS failed: going on in plaintext on a new connection (opportunistic TLS)"
            );
            if let Some(t) = trace {
                t.error(&format!("STARTTLS failed: {e}"));
                t.connect("again, in plaintext (opportunistic TLS)");
            }
            let mut plain = SmtpClient::connect(&host.name, addr, options).await?;
            plain.ehlo(&s.helo).await?;
            Ok(plain)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::CommandLine;
    use tern_smtp::Command;

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn the_mx_name_comes_from_the_ehlo_reply_or_else_the_greeting() {
        let facts = SessionFacts::default();
        assert_eq!(facts.helo(), None);
        facts.note(TranscriptEntry::Reply(&reply(220, &["greet.b.test ESMTP ready"])));
        assert_eq!(facts.helo(), Some("greet.b.test"));
        facts.note(TranscriptEntry::Command(CommandLine::command(&Command::Ehlo(
            "tern.a.test".into(),
        ))));
        // EHLO refused, HELO answered.
        facts.note(TranscriptEntry::Reply(&reply(502, &["5.5.2 no"])));
        assert_eq!(facts.helo(), Some("greet.b.test"));
        facts.note(TranscriptEntry::Reply(&reply(
            250,
            &["mx.b.test hello", "PIPELINING"],
        )));
        assert_eq!(facts.helo(), Some("mx.b.test"));
        // Later replies (after STARTTLS, MAIL) change nothing.
        facts.note(TranscriptEntry::Reply(&reply(220, &["2.0.0 go ahead"])));
        facts.note(TranscriptEntry::Reply(&reply(250, &["other.b.test"])));
        assert_eq!(facts.helo(), Some("mx.b.test"));
        assert_eq!(facts.local_ip(), None);
    }

    #[test]
    fn a_greeting_without_a_plausible_name_names_nothing() {
        let facts = SessionFacts::default();
        facts.note(TranscriptEntry::Reply(&reply(220, &["<script>"])));
        facts.note(TranscriptEntry::Reply(&reply(250, &[""])));
        assert_eq!(facts.helo(), None);
        let facts = SessionFacts::default();
        facts.note(TranscriptEntry::Reply(&reply(220, &[])));
        facts.note(TranscriptEntry::Reply(&reply(250, &["[192.0.2.1]"])));
        assert_eq!(facts.helo(), Some("[192.0.2.1]"));
    }
}
