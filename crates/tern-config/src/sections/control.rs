//! `[control]`: the control plane (`tern control`): the `tern.v1.QueueAdmin` and `tern.v1.Events` gRPC
//! services that `ternctl` talks to.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[control]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Where the control plane's gRPC server listens.
    pub grpc_listen: SocketAddr,
    /// The admin keys file: one `name:<lowercase hex SHA-256 of the key>` per line (made by `tern apikey`), the
    /// same format as `ingest.api_keys_file` but separate keys. Unset: calls need no key, which is allowed only
    /// when `grpc_listen` is a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// PEM file with the server certificate chain (leaf first). With `tls_key`, the listener speaks TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM file with the CA certificates that client certificates must chain to (mutual TLS). Needs `tls_cert`
    /// and `tls_key`. Unset: clients are not asked for a certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            api_keys_file: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }
}

impl ControlConfig {
    /// Checks the rules serde cannot express; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(("tls_key".into(), "tls_cert is set but tls_key is not".into())),
            (None, Some(_)) => return Err(("tls_cert".into(), "tls_key is set but tls_cert is not".into())),
            _ => {}
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            return Err((
                "client_ca".into(),
                "mutual TLS needs tls_cert and tls_key as well".into(),
            ));
        }
        if self.api_keys_file.is_none() && !self.grpc_listen.ip().is_loopback() {
            return Err((
                "api_keys_file".into(),
                format!(
                    "grpc_listen {} is not a loopback address: set an admin keys file (see `tern apikey`) or \
                     listen on 127.0.0.1",
                    self.grpc_listen
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = ControlConfig::default();
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:7070");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn tls_halves_and_public_listener_are_refused() {
        let c = ControlConfig {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert_eq!(c.validate().map_err(|e| e.0), Err("tls_key".to_string()));
        let c = ControlConfig {
            client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        assert_eq!(c.validate().map_err(|e| e.0), Err("client_ca".to_string()));
        let c = ControlConfig {
            grpc_listen: "0.0.0.0:7070"
                .parse()
                .unwrap_or(ControlConfig::default().grpc_listen),
            ..Default::default()
        };
        assert_eq!(c.validate().map_err(|e| e.0), Err("api_keys_file".to_string()));
    }

    #[test]
    fn keys_parse_from_toml() {
        let c: ControlConfig =
            toml::from_str("grpc_listen = \"127.0.0.1:9000\"\napi_keys_file = \"/etc/tern/admin.keys\"\n")
                .unwrap_or_default();
        assert_eq!(c.grpc_listen.port(), 9000);
        assert!(c.api_keys_file.is_some());
        assert!(toml::from_str::<ControlConfig>("bogus = 1").is_err());
    }
}
