//! A small scriptable SMTP server (tokio + rustls) for protocol details smtp-sink cannot play: STARTTLS with
//! a test CA certificate, bytes injected after the STARTTLS reply, a broken TLS stack, STARTTLS refused, a
//! connection closed during the handshake, EHLO refused, 452 after N recipients, DATA accepted with no valid
//! recipient, 421 mid-session, the connection closed at MAIL, SMTPUTF8 and DSN offered, QUIT never
//! answered.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_testkit::ServerCert;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the fake server behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Reply to EHLO instead of the capability list (e.g. `502 5.5.2 no`).
    pub ehlo_reply: Option<String>,
    /// Offer STARTTLS with this certificate.
    pub tls: Option<ServerCert>,
    /// Send these bytes right after `220 go ahead` to STARTTLS (a STARTTLS injection).
    pub inject_after_starttls: Option<Vec<u8>>,
    /// Advertise PIPELINING.
    pub pipelining: bool,
    /// Refuse every RCPT with this reply.
    pub rcpt_reply: Option<String>,
    /// Accept this many RCPTs per transaction, then answer `452 4.5.3 Too many recipients`.
    pub max_rcpts: Option<usize>,
    /// The reply beyond `max_rcpts` instead of the 452 (a 421 also closes the connection).
    pub over_max_reply: Option<String>,
    /// Answer DATA with 354 even when no recipient was accepted.
    pub data_always_354: bool,
    /// Answer MAIL with this reply (then close when it starts with 421).
    pub mail_reply: Option<String>,
    /// TLS from the first byte (needs `tls`).
    pub implicit_tls: bool,
    /// Offer AUTH PLAIN (over TLS only) and accept these credentials.
    pub auth: Option<(String, String)>,
    /// A broken TLS stack: offer STARTTLS, answer it with 220, read the client's first handshake bytes,
    /// answer them with garbage (no TLS record) and close.
    pub broken_tls: bool,
    /// Advertise SMTPUTF8.
    pub smtputf8: bool,
    /// Advertise DSN (RFC 3461).
    pub dsn: bool,
    /// Offer STARTTLS and answer it with this reply, then go on in plaintext (even after a 421, as a
    /// misbehaving server would).
    pub starttls_reply: Option<String>,
    /// Offer STARTTLS, answer it with 220, read the client's first handshake bytes and close the
    /// connection: the network failing during the handshake, not TLS.
    pub close_during_handshake: bool,
    /// Never answer QUIT (nor read anything after it), keeping the connection open until the client
    /// closes it.
    pub silent_quit: bool,
    /// Close the connection at MAIL without answering it: a session that breaks before the server
    /// replied to anything of the message.
    pub close_at_mail: bool,
    /// After this many accepted messages (counted over every session of the server), send `421 4.4.2 idle
    /// timeout` unasked and close, as a server whose idle timer ran out while the client kept the session.
    pub close_after_messages: Option<usize>,
    /// The reply to each end of data in turn (counted over every session), `250 2.0.0 queued` after the
    /// list; a message refused there is not kept.
    pub data_replies: Vec<String>,
    /// Close the connection without a reply after reading the end of data of this message (1 for the
    /// first, counted over every session): a server gone while the client waits for that reply.
    pub close_at_data_end: Option<usize>,
}

/// A message the server accepted.
#[derive(Clone, Debug)]
pub struct Received {
    pub tls: bool,
    pub helo: String,
    pub mail: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
}

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    pub messages: Vec<Received>,
    /// Ends of data read, refused ones included.
    pub data_ends: usize,
    /// Ends of data whose next command had arrived with them, in the same read: the client wrote the data
    /// and the next transaction's commands together.
    pub data_ends_with_next_command: usize,
    pub commands: Vec<String>,
    pub sessions: usize,
    pub empty_data: usize,
}

pub struct FakeMx {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMx {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeMx {
    pub async fn start(addr: SocketAddr, b: Behaviour) -> FakeMx {
        let listener = TcpListener::bind(addr).await.expect("bind fake MX");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let acceptor = b.tls.as_ref().map(|c| {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            TlsAcceptor::from(Arc::new(cfg))
        });
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let b = b.clone();
                let s = s.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    s.lock().unwrap().sessions += 1;
                    if b.implicit_tls {
                        let Some(acc) = acceptor else { return };
                        let Ok(tls) = acc.accept(tcp).await else { return };
                        let mut stream = BufReader::new(tls);
                        stream.get_mut().write_all(b"220 fake.test ESMTP\r\n").await.ok();
                        serve(stream, true, &b, &s).await;
                        return;
                    }
                    let mut stream = BufReader::new(tcp);
                    stream.get_mut().write_all(b"220 fake.test ESMTP\r\n").await.ok();
                    if let Some(tcp) = serve(stream, false, &b, &s).await {
                        let Some(acc) = acceptor else { return };
                        let Ok(tls) = acc.accept(tcp).await else { return };
                        serve(BufReader::new(tls), true, &b, &s).await;
                    }
                });
            }
        });
        FakeMx { addr, seen, task }
    }

    /// Stops listening, so that another server can take the address; sessions already open go on.
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    pub fn messages(&self) -> Vec<Received> {
        self.seen.lock().unwrap().messages.clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.seen.lock().unwrap().commands.clone()
    }
}

/// Serves one session phase; returns the raw stream when STARTTLS was accepted.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut r: BufReader<S>,
    tls: bool,
    b: &Behaviour,
    seen: &Arc<Mutex<Seen>>,
) -> Option<S> {
    let mut helo = String::new();
    let mut mail = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let cmd = line.trim_end().to_string();
        seen.lock().unwrap().commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            helo = cmd.clone();
            match &b.ehlo_reply {
                Some(e) => format!("{e}\r\n"),
                None => {
                    let mut s = String::from("250-fake.test\r\n250-8BITMIME\r\n250-SIZE 1000000\r\n");
                    if b.pipelining {
                        s.push_str("250-PIPELINING\r\n");
                    }
                    let offers_tls = b.tls.is_some()
                        || b.broken_tls
                        || b.starttls_reply.is_some()
                        || b.close_during_handshake;
                    if offers_tls && !tls {
                        s.push_str("250-STARTTLS\r\n");
                    }
                    if b.smtputf8 {
                        s.push_str("250-SMTPUTF8\r\n");
                    }
                    if b.dsn {
                        s.push_str("250-DSN\r\n");
                    }
                    if b.auth.is_some() && tls {
                        s.push_str("250-AUTH PLAIN\r\n");
                    }
                    s.push_str("250 ENHANCEDSTATUSCODES\r\n");
                    s
                }
            }
        } else if upper.starts_with("HELO") {
            helo = cmd.clone();
            "250 fake.test\r\n".into()
        } else if upper == "STARTTLS" && !tls && b.starttls_reply.is_some() {
            format!("{}\r\n", b.starttls_reply.clone().unwrap_or_default())
        } else if upper == "STARTTLS" && !tls && b.close_during_handshake {
            use tokio::io::AsyncReadExt as _;
            let w = r.get_mut();
            w.write_all(b"220 2.0.0 go ahead\r\n").await.ok()?;
            w.flush().await.ok()?;
            let mut hello = [0u8; 512];
            let _ = r.read(&mut hello).await;
            return None;
        } else if upper == "STARTTLS" && b.broken_tls && !tls {
            use tokio::io::AsyncReadExt as _;
            let w = r.get_mut();
            w.write_all(b"220 2.0.0 go ahead\r\n").await.ok()?;
            w.flush().await.ok()?;
            let mut hello = [0u8; 512];
            let _ = r.read(&mut hello).await;
            let w = r.get_mut();
            w.write_all(b"this is no TLS record\r\n").await.ok()?;
            w.flush().await.ok()?;
            return None;
        } else if upper == "STARTTLS" && b.tls.is_some() && !tls {
            let w = r.get_mut();
            w.write_all(b"220 2.0.0 go ahead\r\n").await.ok()?;
            if let Some(inj) = &b.inject_after_starttls {
                w.write_all(inj).await.ok()?;
            }
            w.flush().await.ok()?;
            return Some(r.into_inner());
        } else if upper.starts_with("AUTH PLAIN ") && tls && b.auth.is_some() {
            use base64::Engine as _;
            let (u, p) = b.auth.clone().unwrap();
            let got = base64::engine::general_purpose::STANDARD
                .decode(cmd[11..].trim())
                .unwrap_or_default();
            if got == format!("\0{u}\0{p}").into_bytes() {
                "235 2.7.0 Authentication successful\r\n".into()
            } else {
                "535 5.7.8 Authentication credentials invalid\r\n".into()
            }
        } else if upper.starts_with("MAIL") && b.close_at_mail {
            return None;
        } else if upper.starts_with("MAIL") {
            mail = cmd.clone();
            rcpts.clear();
            match &b.mail_reply {
                Some(m) => {
                    let w = r.get_mut();
                    w.write_all(format!("{m}\r\n").as_bytes()).await.ok()?;
                    if m.starts_with("421") {
                        return None;
                    }
                    continue;
                }
                None => "250 2.1.0 ok\r\n".into(),
            }
        } else if upper.starts_with("RCPT") {
            if let Some(rr) = &b.rcpt_reply {
                format!("{rr}\r\n")
            } else if b.max_rcpts.is_some_and(|m| rcpts.len() >= m) {
                match &b.over_max_reply {
                    Some(o) if o.starts_with("421") => {
                        r.get_mut().write_all(format!("{o}\r\n").as_bytes()).await.ok()?;
                        return None;
                    }
                    Some(o) => format!("{o}\r\n"),
                    None => "452 4.5.3 Too many recipients\r\n".into(),
                }
            } else {
                rcpts.push(cmd.clone());
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() && !b.data_always_354 {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                r.get_mut().write_all(b"354 go ahead\r\n").await.ok()?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l).await.ok()? == 0 {
                        return None;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&l);
                }
                let data_end = {
                    let mut seen = seen.lock().unwrap();
                    seen.data_ends += 1;
                    if !r.buffer().is_empty() {
                        seen.data_ends_with_next_command += 1;
                    }
                    seen.data_ends
                };
                if b.close_at_data_end == Some(data_end) {
                    return None;
                }
                if rcpts.is_empty() {
                    seen.lock().unwrap().empty_data += 1;
                    "554 5.5.1 no valid recipients\r\n".into()
                } else if let Some(refusal) = b.data_replies.get(data_end - 1).filter(|r| !r.starts_with('2'))
                {
                    format!("{refusal}\r\n")
                } else {
                    let accepted = {
                        let mut seen = seen.lock().unwrap();
                        seen.messages.push(Received {
                            tls,
                            helo: helo.clone(),
                            mail: mail.clone(),
                            rcpts: rcpts.clone(),
                            data,
                        });
                        seen.messages.len()
                    };
                    if b.close_after_messages.is_some_and(|n| accepted >= n) {
                        let w = r.get_mut();
                        w.write_all(b"250 2.0.0 queued\r\n421 4.4.2 idle timeout\r\n")
                            .await
                            .ok()?;
                        w.flush().await.ok()?;
                        return None;
                    }
                    "250 2.0.0 queued\r\n".into()
                }
            }
        } else if upper == "RSET" {
            rcpts.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" && b.silent_quit {
            use tokio::io::AsyncReadExt as _;
            // Wait (without answering or reading more than the close) until the client goes.
            let mut rest = [0u8; 64];
            while r.read(&mut rest).await.ok()? > 0 {}
            return None;
        } else if upper == "QUIT" {
            r.get_mut().write_all(b"221 2.0.0 bye\r\n").await.ok()?;
            return None;
        } else if upper == "NOOP" {
            "250 2.0.0 ok\r\n".into()
        } else {
            "502 5.5.2 not implemented\r\n".into()
        };
        r.get_mut().write_all(reply.as_bytes()).await.ok()?;
    }
}
