//! `[ingest]`: SMTP submission (RFC 6409) and the gRPC Send API, from applications into the queue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tern_core::HumanDuration;

/// The longest `ingest.enqueue_retry_for`: RFC 5321 4.5.3.2.6 has an SMTP client wait 10 minutes for the reply
/// to the final dot, and the queue remembers a message id (which makes the repeat harmless) for far longer.
const MAX_ENQUEUE_RETRY_FOR: Duration = Duration::from_secs(600);

/// The `[ingest]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Addresses the plain SMTP submission listeners bind (`"host:port"`). STARTTLS is offered on them when
    /// `tls_cert` and `tls_key` are set.
    pub smtp_listen: Vec<SocketAddr>,
    /// Addresses of implicit-TLS submission listeners (RFC 8314, "port 465"). Needs `tls_cert` and `tls_key`.
    pub smtps_listen: Vec<SocketAddr>,
    /// PEM file with the server certificate chain (leaf first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The name used in the greeting, the EHLO reply, the Received header and generated Message-IDs. Unset:
    /// the system host name, or `localhost` when it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Offer AUTH on connections without TLS. Off by default: passwords never cross the network in clear.
    pub allow_plaintext_auth: bool,
    /// Client networks (CIDR) that may submit without authenticating. Default: loopback only (`127.0.0.0/8`,
    /// `::1/128`), as Postfix's `mynetworks`; empty: every client must authenticate.
    #[serde(deserialize_with = "networks")]
    pub relay_networks: Vec<IpNet>,
    /// The users file: one `user:<argon2id PHC hash>` per line (made by `tern passwd`), optionally followed by
    /// `:domain,domain` to restrict the sender domains the user may use. Unset: AUTH is not offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
    /// Failed AUTH attempts from one client address after which that address is locked out for 15 minutes.
    pub auth_max_failures: u32,
    /// The largest message accepted, in octets (advertised with SIZE).
    pub max_message_size: u64,
    /// Recipients per message; further RCPTs get `452 4.5.3`.
    pub max_recipients: u32,
    /// Concurrent SMTP connections over all listeners; further ones get `421 4.7.0` and are closed.
    pub max_connections: u32,
    /// Concurrent SMTP connections from one client address.
    pub max_connections_per_ip: u32,
    /// A session that sends nothing for this long gets `421 4.4.2` and is closed.
    pub idle_timeout: HumanDuration,
    /// Error replies one session may cause before it gets `421 4.7.0` and is closed.
    pub max_errors: u32,
    /// On shutdown, how long sessions in the middle of a message may take to finish it.
    pub shutdown_grace: HumanDuration,
    /// How long a submission (SMTP after the final dot or BDAT LAST, a gRPC call) may repeat a queue write
    /// that timed out or lost its connection, with the same message id, before it answers a temporary failure.
    /// Zero: no repeat. At most 10 minutes.
    pub enqueue_retry_for: HumanDuration,
    /// Where the gRPC Send API (`tern.v1.Submission`) listens.
    pub grpc_listen: SocketAddr,
    /// The API keys file of the gRPC Send API: one `name:<lowercase hex SHA-256 of the key>` per line (made by
    /// `tern apikey`), optionally followed by `:domain,domain`. Unset: calls need no key, which is allowed
    /// only when `grpc_listen` is a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            smtp_listen: vec![SocketAddr::from(([127, 0, 0, 1], 2587))],
            smtps_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            hostname: None,
            allow_plaintext_auth: false,
            relay_networks: loopback_networks(),
            users_file: None,
            auth_max_failures: 5,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            idle_timeout: HumanDuration::from_secs(300),
            max_errors: 10,
            shutdown_grace: HumanDuration::from_secs(30),
            enqueue_retry_for: HumanDuration::from_secs(60),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            api_keys_file: None,
        }
    }
}

/// The networks of this host's own clients: `127.0.0.0/8` and `::1/128`.
fn loopback_networks() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default()),
        IpNet::V6(ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).unwrap_or_default()),
    ]
}

impl IngestConfig {
    /// Whether both `tls_cert` and `tls_key` are set.
    pub fn tls_configured(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Checks ranges and consistency serde cannot express; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return err("tls_key", "is required when tls_cert is set".into()),
            (None, Some(_)) => return err("tls_cert", "is required when tls_key is set".into()),
            _ => {}
        }
        if !self.smtps_listen.is_empty() && !self.tls_configured() {
            return err("smtps_listen", "needs tls_cert and tls_key".into());
        }
        if let Some(h) = &self.hostname
            && (h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b)))
        {
            return err("hostname", format!("{h:?} is not a host name"));
        }
        if self.auth_max_failures == 0 {
            return err("auth_max_failures", "must be at least 1".into());
        }
        if self.max_message_size < 1024 {
            return err(
                "max_message_size",
                format!("{} is below 1024 octets", self.max_message_size),
            );
        }
        if self.max_recipients == 0 {
            return err("max_recipients", "must be at least 1".into());
        }
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1".into());
        }
        if self.max_connections_per_ip == 0 || self.max_connections_per_ip > self.max_connections {
            return err(
                "max_connections_per_ip",
                format!("{} is outside 1..=max_connections", self.max_connections_per_ip),
            );
        }
        if self.idle_timeout.get() < Duration::from_secs(1) {
            return err(
                "idle_timeout",
                format!("{} is shorter than 1s", self.idle_timeout),
            );
        }
        if self.max_errors == 0 {
            return err("max_errors", "must be at least 1".into());
        }
        if self.enqueue_retry_for.get() > MAX_ENQUEUE_RETRY_FOR {
            return err(
                "enqueue_retry_for",
                format!("{} is longer than 10m", self.enqueue_retry_for),
            );
        }
        Ok(())
    }
}

/// Reads networks in CIDR form. A bare address is the likeliest mistake (Postfix's `mynetworks` takes one), so
/// its error says how to write it.
fn networks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| parse_network(text).map_err(serde::de::Error::custom))
        .collect()
}

/// One network in CIDR form, or why not (with the CIDR form to write when `text` is one address).
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>().map_err(|_| match text.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => {
            format!("\"{text}\" is an address, not a network: write \"{text}/32\" for this one host (CIDR form)")
        }
        Ok(std::net::IpAddr::V6(_)) => {
            format!("\"{text}\" is an address, not a network: write \"{text}/128\" for this one host (CIDR form)")
        }
        Err(_) => format!("\"{text}\" is not a network in CIDR form (for example \"10.0.0.0/8\" or \"::1/128\")"),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_bare_address_in_relay_networks_gets_the_cidr_form_as_a_hint() {
        let four = parse_network("127.0.0.1").unwrap_err();
        assert!(four.contains("\"127.0.0.1/32\""), "{four}");
        let six = parse_network("::1").unwrap_err();
        assert!(six.contains("\"::1/128\""), "{six}");
        assert!(parse_network("nonsense").unwrap_err().contains("CIDR"));
        assert_eq!(
            parse_network("10.0.0.0/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
    }
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = IngestConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.max_message_size, 52_428_800);
        assert_eq!(c.smtp_listen[0].to_string(), "127.0.0.1:2587");
        assert!(!c.tls_configured());
        let loopback: Vec<String> = c.relay_networks.iter().map(ToString::to_string).collect();
        assert_eq!(loopback, ["127.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn defaults_and_every_key_round_trip_through_toml() {
        let d = IngestConfig::default();
        let text = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<IngestConfig>(&text).unwrap(), d);
        let full = IngestConfig {
            tls_cert: Some("/etc/tern/cert.pem".into()),
            tls_key: Some("/etc/tern/key.pem".into()),
            hostname: Some("mx.example.test".into()),
            users_file: Some("/etc/tern/users".into()),
            relay_networks: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..d
        };
        let text = toml::to_string(&full).unwrap();
        assert_eq!(toml::from_str::<IngestConfig>(&text).unwrap(), full);
    }

    #[test]
    fn inconsistent_values_name_the_key() {
        let key = |c: IngestConfig| c.validate().unwrap_err().0;
        let d = IngestConfig::default;
        assert_eq!(
            key(IngestConfig {
                tls_cert: Some("a".into()),
                ..d()
            }),
            "tls_key"
        );
        assert_eq!(
            key(IngestConfig {
                smtps_listen: d().smtp_listen,
                ..d()
            }),
            "smtps_listen"
        );
        assert_eq!(
            key(IngestConfig {
                hostname: Some("a b".into()),
                ..d()
            }),
            "hostname"
        );
        assert_eq!(
            key(IngestConfig {
                max_recipients: 0,
                ..d()
            }),
            "max_recipients"
        );
        assert_eq!(
            key(IngestConfig {
                max_connections_per_ip: 2000,
                ..d()
            }),
            "max_connections_per_ip"
        );
        assert_eq!(
            key(IngestConfig {
                idle_timeout: HumanDuration::from_secs(0),
                ..d()
            }),
            "idle_timeout"
        );
        assert_eq!(
            key(IngestConfig {
                enqueue_retry_for: HumanDuration::from_secs(601),
                ..d()
            }),
            "enqueue_retry_for"
        );
    }

    #[test]
    fn enqueue_retry_for_defaults_to_a_minute_and_may_be_zero() {
        let d = IngestConfig::default();
        assert_eq!(d.enqueue_retry_for.get(), Duration::from_secs(60));
        let off: IngestConfig = toml::from_str("enqueue_retry_for = \"0s\"").unwrap();
        assert_eq!(off.enqueue_retry_for.get(), Duration::ZERO);
        assert_eq!(off.validate(), Ok(()));
        let most: IngestConfig = toml::from_str("enqueue_retry_for = \"10m\"").unwrap();
        assert_eq!(most.validate(), Ok(()));
    }
}
