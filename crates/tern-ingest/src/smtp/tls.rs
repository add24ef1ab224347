//! The rustls server configuration, from the PEM files named by `ingest.tls_cert` and `ingest.tls_key`.
//!
//! The `ring` provider is used (no aws-lc), with rustls' safe default protocol versions (TLS 1.2 and 1.3).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::IngestError;

/// Loads the certificate chain and key and builds the server configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, IngestError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| IngestError::Tls(format!("reading certificates from {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(IngestError::Tls(format!("no certificate in {}", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| IngestError::Tls(format!("reading the private key from {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IngestError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| IngestError::Tls(format!("certificate and key do not make a usable pair: {e}")))?;
    Ok(Arc::new(config))
}
