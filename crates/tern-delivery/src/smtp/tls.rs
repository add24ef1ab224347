//! TLS for the SMTP client: the verified and the opportunistic client configurations, the handshake, and
//! the STARTTLS step (RFC 3207).
//!
//! Verified TLS trusts the web PKI roots (`webpki-roots`) plus `delivery.extra_ca_file`, and checks the
//! certificate against the MX name (also sent as SNI). Opportunistic TLS encrypts without requiring the
//! certificate to verify (RFC 7435): most MX certificates do not match their MX names, and plaintext would
//! be worse. The handshake signatures are still checked. Either way, rustls's safe defaults allow TLS 1.2
//! and 1.3 only, as MTA-STS (RFC 8461 §4.2) requires. Why a certificate did not verify is kept
//! ([`CertificateProblem`]) for TLS reports (RFC 8460) and MTA-STS `testing` policies.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use tern_smtp::{Command, Reply};

use super::client::SmtpClient;
use super::connect::ConnectError;
use crate::error::DeliveryError;

/// Why a certificate did not verify, told apart as far as TLS reports (RFC 8460 §4.3) tell causes apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertificateProblem {
    /// It is not valid for the server's name.
    NameMismatch,
    /// It has expired, or is not valid yet.
    Expired,
    /// It does not chain to a trusted root.
    NotTrusted,
    /// Any other reason: revoked, a bad signature or usage, no certificate at all.
    Invalid,
}

impl CertificateProblem {
    /// The problem behind a rustls error, when it is one of the peer's certificate.
    pub fn of(e: &rustls::Error) -> Option<CertificateProblem> {
        match e {
            rustls::Error::InvalidCertificate(c) => Some(match c {
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    CertificateProblem::NameMismatch
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => CertificateProblem::Expired,
                CertificateError::UnknownIssuer => CertificateProblem::NotTrusted,
                _ => CertificateProblem::Invalid,
            }),
            rustls::Error::NoCertificatesPresented => Some(CertificateProblem::Invalid),
            _ => None,
        }
    }

    /// The problem behind a failed handshake's I/O error (tokio-rustls wraps rustls's errors in one).
    fn of_io(e: &std::io::Error) -> Option<CertificateProblem> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(CertificateProblem::of)
    }
}

/// What a finished handshake established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSession {
    /// The version, the cipher suite and whether the certificate verified
    /// (`TLSv1_3 TLS13_AES_256_GCM_SHA384 verified`).
    pub description: String,
    /// Why the certificate did not verify against the server's name; `None` when it did. Only an
    /// opportunistic session can have one: a verified handshake fails instead.
    pub certificate: Option<CertificateProblem>,
}

/// The two client configurations.
#[derive(Clone)]
pub struct TlsClients {
    verified: TlsConnector,
    opportunistic: TlsConnector,
    /// Checks, after an opportunistic handshake, whether the certificate would have verified.
    checker: Arc<WebPkiServerVerifier>,
}

impl TlsClients {
    /// Builds both configurations; `extra_ca_file` adds PEM roots to the web PKI roots.
    pub fn new(extra_ca_file: Option<&std::path::Path>) -> Result<Self, DeliveryError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| DeliveryError::Tls(format!("reading {}: {e}", path.display())))?;
            let mut n = 0;
            for c in certs {
                let c = c.map_err(|e| DeliveryError::Tls(format!("reading {}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| DeliveryError::Tls(format!("{}: {e}", path.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(DeliveryError::Tls(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
        }
        let roots = Arc::new(roots);
        let checker = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| DeliveryError::Tls(e.to_string()))?;
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| DeliveryError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let opportunistic = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| DeliveryError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(TlsClients {
            verified: TlsConnector::from(Arc::new(verified)),
            opportunistic: TlsConnector::from(Arc::new(opportunistic)),
            checker,
        })
    }

    /// Runs the client handshake over `tcp` with SNI `name` within `timeout`, verifying the certificate
    /// when `verify`. Returns the stream and what the handshake established ([`TlsSession`]).
    ///
    /// A failure of TLS itself (an alert, bytes that are no TLS, a handshake that stalls past `timeout`) is
    /// [`ConnectError::Tls`], a certificate that does not verify [`ConnectError::Certificate`]; the
    /// connection failing under it (a reset, the peer closing) is [`ConnectError::Wire`], as it would be at
    /// any other step.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        name: &str,
        verify: bool,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, TlsSession), ConnectError> {
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| ConnectError::Tls(format!("bad TLS name {name}: {e}")))?;
        let connector = if verify {
            &self.verified
        } else {
            &self.opportunistic
        };
        let stream = match tokio::time::timeout(timeout, connector.connect(server_name, tcp)).await {
            Ok(Ok(s)) => s,
            // tokio-rustls reports rustls's own errors as InvalidData.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                if let Some(problem) = CertificateProblem::of_io(&e) {
                    return Err(ConnectError::Certificate(
                        problem,
                        format!("TLS handshake with {name} failed: {e}"),
                    ));
                }
                return Err(ConnectError::Tls(format!(
                    "TLS handshake with {name} failed: {e}"
                )));
            }
            Ok(Err(e)) => {
                return Err(ConnectError::Wire(format!(
                    "connection lost during the TLS handshake with {name}: {e}"
                )));
            }
            Err(_) => return Err(ConnectError::Tls(format!("TLS handshake with {name} timed out"))),
        };
        let (_, conn) = stream.get_ref();
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "TLS".into());
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        // An opportunistic session is still reported as verified when its certificate checks out.
        let certificate = if verify {
            None
        } else {
            self.check(conn.peer_certificates(), name)
        };
        let description = format!(
            "{version} {suite} {}",
            if certificate.is_none() {
                "verified"
            } else {
                "unverified"
            }
        );
        Ok((
            stream,
            TlsSession {
                description,
                certificate,
            },
        ))
    }

    /// Why the certificate `chain` (leaf first) would not verify for `name`; `None` when it would.
    fn check(&self, chain: Option<&[CertificateDer<'_>]>, name: &str) -> Option<CertificateProblem> {
        let Some((leaf, rest)) = chain.and_then(|c| c.split_first()) else {
            return Some(CertificateProblem::Invalid);
        };
        let Ok(server_name) = ServerName::try_from(name.to_string()) else {
            return Some(CertificateProblem::NameMismatch);
        };
        match self
            .checker
            .verify_server_cert(leaf, rest, &server_name, &[], UnixTime::now())
        {
            Ok(_) => None,
            Err(e) => Some(CertificateProblem::of(&e).unwrap_or(CertificateProblem::Invalid)),
        }
    }
}

/// What came of a STARTTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartTls {
    /// TLS is in use, and EHLO was sent again over it.
    Started,
    /// The server refused STARTTLS with this reply; the session goes on in plain text.
    Refused(Reply),
}

impl SmtpClient {
    /// STARTTLS, the handshake (the certificate checked against the server's name when `verify`), then
    /// EHLO again with the name given to [`SmtpClient::ehlo`], which must come first. A failed handshake,
    /// or bytes sent by the server between its 220 and the handshake (read as if they were protected,
    /// CVE-2011-0411), end the session.
    ///
    /// The error tells TLS failing ([`ConnectError::Tls`]: the handshake failed or stalled, EHLO over TLS
    /// was refused or broke with a TLS error; [`ConnectError::Certificate`]: the certificate did not
    /// verify) from the connection failing ([`ConnectError::Wire`]: no reply
    /// to STARTTLS, a reset or close during the handshake, bytes before the handshake), so that a caller
    /// that falls back to plaintext remembers only the first as the host's.
    pub async fn starttls(&mut self, tls: &TlsClients, verify: bool) -> Result<StartTls, ConnectError> {
        let Some(helo) = self.helo.clone() else {
            return Err(ConnectError::Tls("STARTTLS before EHLO".into()));
        };
        if self.tls.is_some() {
            return Err(ConnectError::Tls("STARTTLS on a TLS stream".into()));
        }
        let r = self
            .wire
            .command(&Command::StartTls, self.timeouts.command)
            .await?;
        if r.code != 220 {
            return Ok(StartTls::Refused(r));
        }
        if self.wire.has_unread() || self.wire.try_read_ahead() {
            self.wire.shutdown(self.timeouts.quit).await;
            self.wire.mark_broken();
            return Err(ConnectError::Wire(format!(
                "{} [{}] sent data between the STARTTLS reply and the handshake",
                self.server, self.addr
            )));
        }
        let Some(tcp) = self.wire.take_plain() else {
            return Err(ConnectError::Tls("STARTTLS on a TLS stream".into()));
        };
        let (stream, session) = tls
            .handshake(tcp, &self.server, verify, self.timeouts.tls_handshake)
            .await?;
        self.wire.resume_tls(stream, &session.description);
        self.tls = Some(session);
        match self.hello(&helo).await {
            Ok(()) => Ok(StartTls::Started),
            Err(ConnectError::Rejected(why)) => Err(ConnectError::Tls(format!("over TLS: {why}"))),
            Err(e) => Err(e),
        }
    }
}

/// Accepts any certificate, still checking handshake signatures (opportunistic TLS).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
