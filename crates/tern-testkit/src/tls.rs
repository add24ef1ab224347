//! A throw-away certificate authority and server certificates for TLS tests (made with `rcgen`, ring backend).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A self-signed test CA (ECDSA P-256). Point the code under test at [`TestCa::cert_pem`] or the file written
/// by [`TestCa::write_to`] (for tern: `delivery.extra_ca_file`).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A server certificate issued by a [`TestCa`], with its private key.
#[derive(Clone)]
pub struct ServerCert {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Where [`ServerCert::write_to`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// `<dir>/<stem>.crt`.
    pub cert: PathBuf,
    /// `<dir>/<stem>.key`.
    pub key: PathBuf,
}

impl TestCa {
    /// Generates a new CA key and self-signed CA certificate (`CN=tern test CA`).
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        params.distinguished_name.remove(DnType::CommonName);
        params.distinguished_name.push(DnType::CommonName, "tern test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating the CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-signing the CA")?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// Issues a server certificate (serverAuth) for `names`: DNS names, or IP addresses (`"127.0.0.1"`), which
    /// become IP subject alternative names. The first name is also the common name.
    pub fn issue(&self, names: &[&str]) -> Result<ServerCert> {
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params =
            CertificateParams::new(sans).with_context(|| format!("certificate parameters for {names:?}"))?;
        params.distinguished_name.remove(DnType::CommonName);
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing a certificate for {names:?}"))?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate to `<dir>/ca.crt` and returns that path.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("ca.crt");
        std::fs::write(&path, self.cert_pem()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl ServerCert {
    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` (the key with mode 0600).
    pub fn write_to(&self, dir: &Path, stem: &str) -> Result<CertPaths> {
        use std::os::unix::fs::PermissionsExt;
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
        std::fs::write(&key, &self.key_pem).with_context(|| format!("writing {}", key.display()))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", key.display()))?;
        Ok(CertPaths { cert, key })
    }

    /// The leaf followed by `ca_pem`: the chain a server sends.
    pub fn chain_pem(&self, ca: &TestCa) -> String {
        format!("{}{}", self.cert_pem, ca.cert_pem())
    }
}
