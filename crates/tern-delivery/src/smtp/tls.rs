//! TLS for the SMTP client: the verified and the opportunistic client configurations, and the handshake.
//!
//! Verified TLS trusts the web PKI roots (`webpki-roots`) plus `delivery.extra_ca_file`, and checks the
//! certificate against the MX name (also sent as SNI). Opportunistic TLS encrypts without requiring the
//! certificate to verify (RFC 7435): most MX certificates do not match their MX names, and plaintext would
//! be worse. The handshake signatures are still checked.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::DeliveryError;

/// The two client configurations.
#[derive(Clone)]
pub struct TlsClients {
    verified: TlsConnector,
    opportunistic: TlsConnector,
    /// Checks, after an opportunistic handshake, whether the certificate would have verified.
    checker: Arc<WebPkiServerVerifier>,
    /// The handshake deadline.
    pub handshake_timeout: Duration,
}

impl TlsClients {
    /// Builds both configurations; `extra_ca_file` adds PEM roots to the web PKI roots.
    pub fn new(
        extra_ca_file: Option<&std::path::Path>,
        handshake_timeout: Duration,
    ) -> Result<Self, DeliveryError> {
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
            handshake_timeout,
        })
    }

    /// Runs the client handshake over `tcp` with SNI `name`, verifying the certificate when `verify`.
    /// Returns the stream and a description (`TLSv1_3 TLS13_AES_256_GCM_SHA384 verified`).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        name: &str,
        verify: bool,
    ) -> Result<(TlsStream<TcpStream>, String), String> {
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| format!("bad TLS name {name}: {e}"))?;
        let connector = if verify {
            &self.verified
        } else {
            &self.opportunistic
        };
        let stream =
            match tokio::time::timeout(self.handshake_timeout, connector.connect(server_name, tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("TLS handshake with {name} failed: {e}")),
                Err(_) => return Err(format!("TLS handshake with {name} timed out")),
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
        let verified = verify
            || conn
                .peer_certificates()
                .is_some_and(|chain| match chain.split_first() {
                    Some((leaf, rest)) => ServerName::try_from(name.to_string()).is_ok_and(|sn| {
                        self.checker
                            .verify_server_cert(leaf, rest, &sn, &[], UnixTime::now())
                            .is_ok()
                    }),
                    None => false,
                });
        let desc = format!(
            "{version} {suite} {}",
            if verified { "verified" } else { "unverified" }
        );
        Ok((stream, desc))
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
