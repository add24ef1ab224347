//! The failure result types of SMTP TLS reports (RFC 8460 §4.3), shared by MTA-STS and, later, DANE.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A `result-type` of an RFC 8460 failure-details entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsRptResultType {
    /// The receiving MX did not offer STARTTLS.
    StarttlsNotSupported,
    /// The certificate presented did not match the MX host name.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The certificate does not chain to a trusted root.
    CertificateNotTrusted,
    /// Any other failure to validate the certificate or the TLS session.
    ValidationFailure,
    /// DANE: the TLSA record set is invalid.
    TlsaInvalid,
    /// DANE: DNSSEC validation failed.
    DnssecInvalid,
    /// DANE: the domain requires DANE and none was usable.
    DaneRequired,
    /// MTA-STS: the policy could not be fetched.
    StsPolicyFetchError,
    /// MTA-STS: the policy fetched is not a valid policy.
    StsPolicyInvalid,
    /// MTA-STS: the policy host's certificate did not verify (PKIX).
    StsWebpkiInvalid,
}

impl TlsRptResultType {
    /// The name used in reports, for example `sts-policy-fetch-error`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRptResultType::StarttlsNotSupported => "starttls-not-supported",
            TlsRptResultType::CertificateHostMismatch => "certificate-host-mismatch",
            TlsRptResultType::CertificateExpired => "certificate-expired",
            TlsRptResultType::CertificateNotTrusted => "certificate-not-trusted",
            TlsRptResultType::ValidationFailure => "validation-failure",
            TlsRptResultType::TlsaInvalid => "tlsa-invalid",
            TlsRptResultType::DnssecInvalid => "dnssec-invalid",
            TlsRptResultType::DaneRequired => "dane-required",
            TlsRptResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            TlsRptResultType::StsPolicyInvalid => "sts-policy-invalid",
            TlsRptResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

impl fmt::Display for TlsRptResultType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_uses_the_report_names() {
        for t in [
            TlsRptResultType::StarttlsNotSupported,
            TlsRptResultType::StsPolicyFetchError,
            TlsRptResultType::StsWebpkiInvalid,
            TlsRptResultType::DnssecInvalid,
        ] {
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", t.as_str()));
        }
    }
}
