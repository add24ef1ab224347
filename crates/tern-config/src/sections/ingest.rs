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
    /// `:domain,domain` to restrict the sender domains the user may use. The hash `!` marks a user without a
    /// password, listed only to set the sender domains of an OAuth user. Unset: AUTH PLAIN and LOGIN are not
    /// offered.
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
    /// `[ingest.oauth]`: AUTH XOAUTH2 and OAUTHBEARER (RFC 7628) with bearer JWTs. Unset: not offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<IngestOauthConfig>,
}

/// The signature algorithms `[ingest.oauth] allowed_algorithms` may name (JWA names, RFC 7518 and RFC 8037).
/// No HMAC: a JWKS is public, and a shared secret in it would let anyone mint tokens.
pub const OAUTH_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The `[ingest.oauth]` table: bearer JWTs for AUTH XOAUTH2 and OAUTHBEARER, verified against the identity
/// provider's JSON Web Key Set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestOauthConfig {
    /// A JWKS file (`{"keys": [...]}`) with the provider's public keys, read at start. Exactly one of
    /// `jwks_file` and `jwks_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The provider's JWKS URL (`https://`; `http://` only to a loopback address, for tests). Fetched on first
    /// use, refreshed every `jwks_refresh` and when a token names a key id it does not hold (at most once a
    /// minute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The `iss` every token must carry (required).
    pub issuer: String,
    /// A value the token's `aud` must hold (required).
    pub audience: String,
    /// The claim naming the user (default `email`); its value is the authenticated user.
    pub user_claim: String,
    /// The signature algorithms accepted (default `RS256`, `ES256`, `EdDSA`).
    pub allowed_algorithms: Vec<String>,
    /// Clock skew allowed when checking `exp` and `nbf` (default 60s, at most 10m).
    pub leeway: HumanDuration,
    /// How often a `jwks_url` is fetched again (default 10m, at least 1m).
    pub jwks_refresh: HumanDuration,
    /// The scope named in the error challenge of a failed exchange (RFC 7628 3.2.2), for example
    /// `https://mail.google.com/`. Unset: no scope is named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Default for IngestOauthConfig {
    fn default() -> Self {
        IngestOauthConfig {
            jwks_file: None,
            jwks_url: None,
            issuer: String::new(),
            audience: String::new(),
            user_claim: "email".into(),
            allowed_algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            leeway: HumanDuration::from_secs(60),
            jwks_refresh: HumanDuration::from_secs(600),
            scope: None,
        }
    }
}

impl IngestOauthConfig {
    /// Checks the table; returns the offending key (relative to `[ingest.oauth]`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) => return err("jwks_file", "one of jwks_file and jwks_url is required".into()),
            (Some(_), Some(_)) => return err("jwks_url", "set only one of jwks_file and jwks_url".into()),
            _ => {}
        }
        if let Some(url) = &self.jwks_url {
            check_jwks_url(url).map_err(|m| ("jwks_url".to_string(), m))?;
        }
        if self.issuer.trim().is_empty() {
            return err("issuer", "is required".into());
        }
        if self.audience.trim().is_empty() {
            return err("audience", "is required".into());
        }
        if self.user_claim.trim().is_empty() {
            return err("user_claim", "must not be empty".into());
        }
        if self.allowed_algorithms.is_empty() {
            return err("allowed_algorithms", "must name at least one algorithm".into());
        }
        if let Some(a) = self
            .allowed_algorithms
            .iter()
            .find(|a| !OAUTH_ALGORITHMS.contains(&a.as_str()))
        {
            return err(
                "allowed_algorithms",
                format!("{a:?} is not one of {}", OAUTH_ALGORITHMS.join(", ")),
            );
        }
        if self.leeway.get() > Duration::from_secs(600) {
            return err("leeway", format!("{} is longer than 10m", self.leeway));
        }
        if self.jwks_refresh.get() < Duration::from_secs(60) {
            return err(
                "jwks_refresh",
                format!("{} is shorter than 1m", self.jwks_refresh),
            );
        }
        Ok(())
    }
}

/// A JWKS URL is `https://host[:port]/path`, or `http://` to a loopback host (a token's keys fetched in
/// clear could be replaced by anyone on the path).
fn check_jwks_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} has no host (or has credentials in it)"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url:?}: http:// is allowed only to a loopback address; use https://"
                ))
            }
        }
        _ => Err(format!("{url:?} is not an http(s) URL")),
    }
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
            oauth: None,
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
        if let Some(oauth) = &self.oauth {
            oauth.validate().map_err(|(k, m)| (format!("oauth.{k}"), m))?;
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
    fn oauth_table_parses_with_defaults_and_round_trips() {
        let c: IngestConfig = toml::from_str(
            "[oauth]\njwks_file = \"/etc/tern/jwks.json\"\nissuer = \"https://idp.example\"\naudience = \"smtp\"\n",
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        let o = c.oauth.clone().unwrap();
        assert_eq!(o.user_claim, "email");
        assert_eq!(o.allowed_algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(o.leeway.get(), Duration::from_secs(60));
        assert_eq!(o.jwks_refresh.get(), Duration::from_secs(600));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<IngestConfig>(&text).unwrap(), c);
    }

    #[test]
    fn oauth_mistakes_name_the_key() {
        let good = IngestOauthConfig {
            jwks_url: Some("https://idp.example/keys".into()),
            issuer: "https://idp.example".into(),
            audience: "smtp".into(),
            ..IngestOauthConfig::default()
        };
        let key = |o: IngestOauthConfig| {
            IngestConfig {
                oauth: Some(o),
                ..IngestConfig::default()
            }
            .validate()
            .unwrap_err()
            .0
        };
        assert_eq!(good.validate(), Ok(()));
        for (url, ok) in [
            ("http://127.0.0.1:8080/jwks", true),
            ("http://[::1]:8080/jwks", true),
            ("http://localhost/jwks", true),
            ("http://idp.example/jwks", false),
            ("ftp://idp.example/jwks", false),
            ("https://", false),
        ] {
            let o = IngestOauthConfig {
                jwks_url: Some(url.into()),
                ..good.clone()
            };
            assert_eq!(o.validate().is_ok(), ok, "{url}");
        }
        let cases = [
            (
                IngestOauthConfig {
                    jwks_url: None,
                    ..good.clone()
                },
                "oauth.jwks_file",
            ),
            (
                IngestOauthConfig {
                    jwks_file: Some("/k".into()),
                    ..good.clone()
                },
                "oauth.jwks_url",
            ),
            (
                IngestOauthConfig {
                    issuer: String::new(),
                    ..good.clone()
                },
                "oauth.issuer",
            ),
            (
                IngestOauthConfig {
                    audience: " ".into(),
                    ..good.clone()
                },
                "oauth.audience",
            ),
            (
                IngestOauthConfig {
                    allowed_algorithms: vec!["HS256".into()],
                    ..good.clone()
                },
                "oauth.allowed_algorithms",
            ),
            (
                IngestOauthConfig {
                    leeway: HumanDuration::from_secs(3600),
                    ..good.clone()
                },
                "oauth.leeway",
            ),
            (
                IngestOauthConfig {
                    jwks_refresh: HumanDuration::from_secs(5),
                    ..good.clone()
                },
                "oauth.jwks_refresh",
            ),
        ];
        for (o, k) in cases {
            assert_eq!(key(o), k);
        }
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
