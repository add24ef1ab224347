//! `[delivery]`: the delivery workers (`tern worker`): routing, the SMTP client, retries and DSNs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_core::{HumanDuration, RetrySchedule};

mod relay_oauth;
pub use relay_oauth::{RelayAuth, RelayOAuthConfig};

/// Which address families the worker connects over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpVersion {
    /// IPv4 and IPv6 (IPv6 addresses first for each host).
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// How STARTTLS is used towards remote mail exchangers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS when offered; the certificate is not required to verify; when STARTTLS fails (the handshake,
    /// among others) the message goes in plaintext over a new connection to the same host (RFC 7435), and,
    /// when TLS itself failed (not the connection under it), that host is reached in plaintext for
    /// `tls_failure_memory` without trying TLS.
    #[default]
    Opportunistic,
    /// Verified TLS or no delivery (the message is deferred); never plaintext.
    Required,
    /// Never STARTTLS.
    Disabled,
}

/// How the connection to `relay_host` is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Follow `tls` (STARTTLS when offered, as for any host).
    #[default]
    Starttls,
    /// TLS from the first byte (RFC 8314, port 465 style), always verified.
    Implicit,
}

/// One `[[delivery.routes]]` entry: mail for `domain` goes to `host` instead of the domain's MX hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The destination domain (case-insensitive).
    pub domain: String,
    /// `host`, `host:port`, `[host]:port` or `[ip]:port`; the host's A/AAAA records are used (no MX lookup),
    /// the port defaults to `smtp_port`.
    pub host: String,
}

/// `[delivery.mta_sts]`: MTA-STS (RFC 8461). A recipient domain's policy is discovered through its
/// `_mta-sts` TXT record, fetched over verified HTTPS from `mta-sts.<domain>` (trusting the web PKI roots
/// and `delivery.extra_ca_file`) and cached for the whole cluster in the queue's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtaStsConfig {
    /// Discover, cache and apply the MTA-STS policies of recipient domains.
    pub enabled: bool,
    /// The deadline of one policy fetch, from resolving the policy host to the last byte of the policy.
    pub fetch_timeout: HumanDuration,
    /// The HTTPS port of policy hosts. RFC 8461 fixes 443; only tests use another.
    pub https_port: u16,
    /// How long a worker trusts what it read of a domain's policy (the shared cache entry and the TXT
    /// record) before reading them again; `"0s"`: on every delivery.
    pub memory_ttl: HumanDuration,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            enabled: true,
            fetch_timeout: HumanDuration::from_secs(60),
            https_port: 443,
            memory_ttl: HumanDuration::from_secs(60),
        }
    }
}

impl MtaStsConfig {
    /// Checks ranges serde cannot express; returns the offending key (within `[delivery.mta_sts]`) and
    /// why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.fetch_timeout.get().is_zero() {
            return Err(("fetch_timeout".into(), "must not be 0".into()));
        }
        if self.https_port == 0 {
            return Err(("https_port".into(), "must not be 0".into()));
        }
        Ok(())
    }
}

/// `[delivery.tls_rpt]`: SMTP TLS reporting (TLS-RPT, RFC 8460). Workers count, per UTC day and policy
/// domain, the TLS sessions they tried and how they ended; once a day, `send_at` after midnight UTC, one
/// node of the cluster sends each domain that publishes a `_smtp._tls` TXT record the report of the day
/// before: by mail through tern's own queue (`mailto:`) and by HTTPS POST (`https:`, trusting the web PKI
/// roots and `delivery.extra_ca_file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsRptConfig {
    /// Send the daily reports. Off by default.
    pub enabled: bool,
    /// The report's `organization-name`: who sends it.
    pub organization_name: String,
    /// The report's `contact-info`: how to reach the sender (an address or a URL).
    pub contact_info: String,
    /// The reporting address: the From and envelope sender of report mails; its domain names the
    /// submitter (the `TLS-Report-Submitter` header, the report id and the file name).
    pub report_from: String,
    /// When the day's run starts, as the time after midnight UTC (less than a day).
    pub send_at: HumanDuration,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig {
            enabled: false,
            organization_name: String::new(),
            contact_info: String::new(),
            report_from: String::new(),
            send_at: HumanDuration::from_secs(30 * 60),
        }
    }
}

impl TlsRptConfig {
    /// Checks what serde cannot express; returns the offending key (within `[delivery.tls_rpt]`) and why.
    /// The names and the address are only required when reporting is on.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.send_at.get() >= Duration::from_secs(24 * 3600) {
            return Err((
                "send_at".into(),
                format!(
                    "{} is not within a day (the time after midnight UTC)",
                    self.send_at
                ),
            ));
        }
        if !self.enabled {
            return Ok(());
        }
        for (key, value) in [
            ("organization_name", &self.organization_name),
            ("contact_info", &self.contact_info),
            ("report_from", &self.report_from),
        ] {
            if value.trim().is_empty() {
                return Err((key.into(), "must be set when enabled = true".into()));
            }
            // They become header fields of the report mail and fields of the report.
            if value.chars().any(char::is_control) {
                return Err((key.into(), format!("{value:?} holds a control character")));
            }
        }
        if tern_core::Mailbox::parse(self.report_from.trim(), false).is_err() {
            return Err((
                "report_from".into(),
                format!("{:?} is not an address (local@domain)", self.report_from),
            ));
        }
        Ok(())
    }
}

/// The `[delivery]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Connections (claims) per destination domain at once, cluster-wide; enforced by the queue as the
    /// domain's default concurrency.
    pub connections_per_domain: u32,
    /// Messages sent over one SMTP connection before it is closed with QUIT (also the claim batch size).
    pub messages_per_connection: u32,
    /// SMTP connections (busy or idle) one worker process holds at once.
    pub max_connections: u32,
    /// An idle connection kept for reuse is closed after this long without a message.
    pub idle_connection_time: HumanDuration,
    /// The name sent in EHLO/HELO and used as Reporting-MTA in DSNs. Unset: the system host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helo_name: Option<String>,
    /// DNS servers (`ip:port`) to ask. Empty: the system's resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    /// Address families to connect over: `any`, `v4` or `v6`. A domain without MX whose addresses are all of
    /// the family left out is deferred (4.4.4), not bounced.
    pub ip_version: IpVersion,
    /// The port of remote mail exchangers.
    pub smtp_port: u16,
    /// A smart host (`"[host]:port"` or `"host:port"`) that takes all mail, bypassing MX lookup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_host: Option<String>,
    /// AUTH user name for `relay_host` (only sent over TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_username: Option<String>,
    /// AUTH password for `relay_host` (`plain` and `login`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_password: Option<String>,
    /// The AUTH mechanism towards `relay_host`: `plain`, `login` or `xoauth2`. Unset: `plain` when
    /// `relay_username` and `relay_password` are set, no AUTH otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_auth: Option<RelayAuth>,
    /// `[delivery.relay_oauth]`: the access token for `relay_auth = "xoauth2"`.
    #[serde(skip_serializing_if = "RelayOAuthConfig::is_empty")]
    pub relay_oauth: RelayOAuthConfig,
    /// How the relay connection is secured: `starttls` (as `tls` says) or `implicit`. TLS to the relay is
    /// always verified (trust a private CA with `extra_ca_file`), and credentials are only sent over TLS.
    pub relay_tls: RelayTls,
    /// Fixed routes: `[[delivery.routes]]` with `domain` and `host`.
    pub routes: Vec<RouteConfig>,
    /// STARTTLS policy: `opportunistic`, `required` or `disabled`.
    pub tls: TlsMode,
    /// PEM file of extra trusted root certificates, added to the built-in web PKI roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
    /// Longest TLS handshake.
    pub tls_handshake_timeout: HumanDuration,
    /// Under `tls = "opportunistic"`, how long a worker reaches a host (name and address) in plaintext,
    /// without trying STARTTLS, after TLS with it failed (an alert, a refused certificate, bytes that are no
    /// TLS, a stalled handshake, EHLO refused over TLS; not a connection lost during STARTTLS). Kept in each
    /// worker's memory, at most 10 000 hosts; `"0s"`: try TLS (and fall back) every time.
    pub tls_failure_memory: HumanDuration,
    /// Longest TCP connect to one address.
    pub connect_timeout: HumanDuration,
    /// Wait for the 220 greeting (RFC 5321 4.5.3.2: 5 min).
    pub greeting_timeout: HumanDuration,
    /// Wait for the reply to EHLO, HELO, STARTTLS, AUTH, RSET and QUIT.
    pub command_timeout: HumanDuration,
    /// Wait for the reply to MAIL (5 min).
    pub mail_timeout: HumanDuration,
    /// Wait for the reply to each RCPT (5 min).
    pub rcpt_timeout: HumanDuration,
    /// Wait for the 354 reply to DATA (2 min).
    pub data_timeout: HumanDuration,
    /// Longest write of one block of message data (3 min).
    pub data_block_timeout: HumanDuration,
    /// Wait for the reply after the final dot (10 min).
    pub data_done_timeout: HumanDuration,
    /// Waits between attempts of a deferred message; the last step repeats; each wait gets ±10% jitter.
    pub retry_schedule: Vec<HumanDuration>,
    /// A recipient still undelivered this long after the message was queued expires (DSN, status 4.4.7).
    pub max_age: HumanDuration,
    /// Send a delay notice (`Action: delayed`) once a message has waited this long. Unset: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_notice_after: Option<HumanDuration>,
    /// On shutdown, how long transactions under way may take to finish before their claims are released.
    pub shutdown_grace: HumanDuration,
    /// The longest an idle worker waits before asking the queue for work again. The queue wakes an idle
    /// worker when work becomes claimable, and the worker otherwise sleeps until the next due time the
    /// queue named: this bounds only how late a missed wake (or a raised concurrency limit) is noticed.
    pub poll_interval: HumanDuration,
    /// How long a worker waits before its next claim after two claims in a row of one domain, the second
    /// of which took all the domain's due jobs (fewer than a connection's worth): no other domain had due
    /// work, and the next claim then carries what arrived meanwhile instead of a job or two. `0s`: claim
    /// again at once.
    pub claim_linger: HumanDuration,
    /// Sandbox delivery, for development and tests: when set, no MX is looked up and no connection made;
    /// every message is written to `<dir>/<message id>.eml` (a message's further jobs, one per further
    /// recipient domain, to `<dir>/<message id>.<domain>.eml`) with `Return-Path` and `Delivered-To`
    /// headers prepended, and recorded as delivered. A write that fails defers the job. Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_dir: Option<PathBuf>,
    /// `[delivery.mta_sts]`: MTA-STS policies of recipient domains.
    pub mta_sts: MtaStsConfig,
    /// `[delivery.tls_rpt]`: the daily TLS reports (RFC 8460) to policy domains.
    pub tls_rpt: TlsRptConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            connections_per_domain: 10,
            messages_per_connection: 100,
            max_connections: 512,
            idle_connection_time: HumanDuration::from_secs(30),
            helo_name: None,
            dns_servers: Vec::new(),
            ip_version: IpVersion::Any,
            smtp_port: 25,
            relay_host: None,
            relay_username: None,
            relay_password: None,
            relay_auth: None,
            relay_oauth: RelayOAuthConfig::default(),
            relay_tls: RelayTls::Starttls,
            routes: Vec::new(),
            tls: TlsMode::Opportunistic,
            extra_ca_file: None,
            tls_handshake_timeout: HumanDuration::from_secs(60),
            tls_failure_memory: HumanDuration::from_secs(3600),
            connect_timeout: HumanDuration::from_secs(30),
            greeting_timeout: HumanDuration::from_secs(300),
            command_timeout: HumanDuration::from_secs(300),
            mail_timeout: HumanDuration::from_secs(300),
            rcpt_timeout: HumanDuration::from_secs(300),
            data_timeout: HumanDuration::from_secs(120),
            data_block_timeout: HumanDuration::from_secs(180),
            data_done_timeout: HumanDuration::from_secs(600),
            retry_schedule: RetrySchedule::default_steps(),
            max_age: HumanDuration::from_secs(5 * 86400),
            delay_notice_after: None,
            shutdown_grace: HumanDuration::from_secs(30),
            poll_interval: HumanDuration::from_secs(1),
            claim_linger: HumanDuration(Duration::from_millis(2)),
            sandbox_dir: None,
            mta_sts: MtaStsConfig::default(),
            tls_rpt: TlsRptConfig::default(),
        }
    }
}

/// The jitter applied to every retry wait (±10%).
pub const RETRY_JITTER: f64 = 0.1;

impl DeliveryConfig {
    /// The retry schedule made of `retry_schedule`, `max_age` and ±10% jitter.
    pub fn retry(&self) -> Result<RetrySchedule, (String, String)> {
        RetrySchedule::new(
            self.retry_schedule.iter().map(|d| d.get()).collect(),
            RETRY_JITTER,
            self.max_age.get(),
        )
        .map_err(|e| ("retry_schedule".to_string(), e.to_string()))
    }

    /// Checks ranges and consistency serde cannot express; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if self.connections_per_domain == 0 {
            return err("connections_per_domain", "must be at least 1".into());
        }
        if self.messages_per_connection == 0 {
            return err("messages_per_connection", "must be at least 1".into());
        }
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1".into());
        }
        if let Some(h) = &self.helo_name
            && (h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b)))
        {
            return err("helo_name", format!("{h:?} is not a host name"));
        }
        if self.smtp_port == 0 {
            return err("smtp_port", "must not be 0".into());
        }
        if let Some(r) = &self.relay_host
            && split_host_port(r).is_none()
        {
            return err("relay_host", format!("{r:?} is not \"[host]:port\""));
        }
        self.validate_relay_auth()?;
        for (i, r) in self.routes.iter().enumerate() {
            if r.domain.trim().is_empty() {
                return err(&format!("routes[{i}].domain"), "must not be empty".into());
            }
            if split_host_port(&r.host).is_none() {
                return err(
                    &format!("routes[{i}].host"),
                    format!("{:?} is not a host", r.host),
                );
            }
        }
        for (key, d) in [
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("connect_timeout", self.connect_timeout),
            ("greeting_timeout", self.greeting_timeout),
            ("command_timeout", self.command_timeout),
            ("mail_timeout", self.mail_timeout),
            ("rcpt_timeout", self.rcpt_timeout),
            ("data_timeout", self.data_timeout),
            ("data_block_timeout", self.data_block_timeout),
            ("data_done_timeout", self.data_done_timeout),
            ("idle_connection_time", self.idle_connection_time),
            ("poll_interval", self.poll_interval),
        ] {
            if d.get() < Duration::from_millis(10) {
                return err(key, format!("{d} is shorter than 10ms"));
            }
        }
        if self.claim_linger.get() > Duration::from_secs(1) {
            return err("claim_linger", format!("{} is longer than 1s", self.claim_linger));
        }
        if self.max_age.get().is_zero() {
            return err("max_age", "must not be 0".into());
        }
        if self
            .sandbox_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return err("sandbox_dir", "must not be empty".into());
        }
        self.mta_sts
            .validate()
            .map_err(|(k, m)| (format!("mta_sts.{k}"), m))?;
        self.tls_rpt
            .validate()
            .map_err(|(k, m)| (format!("tls_rpt.{k}"), m))?;
        self.retry()?;
        Ok(())
    }
}

/// Splits `host`, `host:port`, `[host]:port` or `[host]` into the host and an optional port.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if host.is_empty() {
            return None;
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok().filter(|p| *p != 0)?),
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && !h.is_empty() => {
            Some((h.to_string(), Some(p.parse().ok().filter(|p| *p != 0)?)))
        }
        Some(_) => None,
        None => Some((s.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let c = DeliveryConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.connections_per_domain, 10);
        assert_eq!(c.messages_per_connection, 100);
        assert_eq!(c.max_connections, 512);
        assert_eq!(c.smtp_port, 25);
        assert_eq!(c.tls, TlsMode::Opportunistic);
        assert_eq!(c.tls_failure_memory, HumanDuration::from_secs(3600));
        assert_eq!(c.retry().unwrap(), RetrySchedule::default());
        assert_eq!(c.delay_notice_after, None);
        assert_eq!(c.sandbox_dir, None, "sandbox delivery is off by default");
        assert_eq!(c.claim_linger, HumanDuration(Duration::from_millis(2)));
    }

    #[test]
    fn claim_linger_may_be_off_and_is_at_most_a_second() {
        let c: DeliveryConfig = toml::from_str(r#"claim_linger = "0s""#).unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.claim_linger.get().is_zero());
        let c = DeliveryConfig {
            claim_linger: HumanDuration(Duration::from_millis(1001)),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "claim_linger");
    }

    #[test]
    fn keys_parse_from_toml() {
        let c: DeliveryConfig = toml::from_str(
            r#"
            smtp_port = 2525
            dns_servers = ["127.0.0.1:5353"]
            ip_version = "v4"
            tls = "required"
            tls_failure_memory = "10m"
            retry_schedule = ["1s", "2s"]
            max_age = "1h"
            relay_host = "[smart.example]:587"
            sandbox_dir = "/var/tmp/tern-sandbox"
            [[routes]]
            domain = "b.test"
            host = "[127.0.0.9]:25"
            "#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.smtp_port, 2525);
        assert_eq!(c.ip_version, IpVersion::V4);
        assert_eq!(c.tls, TlsMode::Required);
        assert_eq!(c.tls_failure_memory, HumanDuration::from_secs(600));
        assert_eq!(c.routes[0].domain, "b.test");
        assert_eq!(
            c.sandbox_dir.as_deref(),
            Some(std::path::Path::new("/var/tmp/tern-sandbox"))
        );
        assert!(toml::from_str::<DeliveryConfig>("nope = 1").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = DeliveryConfig {
            relay_host: Some("[x".into()),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "relay_host");
        let c = DeliveryConfig {
            retry_schedule: vec![],
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "retry_schedule");
        let c = DeliveryConfig {
            connections_per_domain: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "connections_per_domain");
        let c = DeliveryConfig {
            sandbox_dir: Some(PathBuf::new()),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "sandbox_dir");
    }

    #[test]
    fn printed_configuration_reads_back() {
        let c = DeliveryConfig {
            routes: vec![RouteConfig {
                domain: "b.test".into(),
                host: "[127.0.0.9]:25".into(),
            }],
            dns_servers: vec!["127.0.0.1:53".parse().unwrap()],
            delay_notice_after: Some(HumanDuration::from_secs(3600)),
            sandbox_dir: Some(PathBuf::from("/tmp/tern sandbox")),
            ..Default::default()
        };
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            delivery: DeliveryConfig,
        }
        let text = toml::to_string(&Wrap { delivery: c.clone() }).unwrap();
        let back: Wrap = toml::from_str(&text).unwrap();
        assert_eq!(back.delivery, c, "{text}");
        let text = toml::to_string(&Wrap {
            delivery: DeliveryConfig::default(),
        })
        .unwrap();
        assert!(text.contains("retry_schedule = [\"5m\""), "{text}");
        assert!(!text.contains("sandbox_dir"), "unset is left out: {text}");
        assert_eq!(
            toml::from_str::<Wrap>(&text).unwrap().delivery,
            DeliveryConfig::default()
        );
    }

    #[test]
    fn mta_sts_defaults_are_valid_and_as_documented() {
        let c = MtaStsConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.enabled, "MTA-STS is on by default");
        assert_eq!(c.fetch_timeout, HumanDuration::from_secs(60));
        assert_eq!(c.https_port, 443);
        assert_eq!(c.memory_ttl, HumanDuration::from_secs(60));
        assert_eq!(DeliveryConfig::default().mta_sts, c);
    }

    #[test]
    fn mta_sts_keys_parse_from_their_sub_table() {
        #[derive(Deserialize)]
        struct Wrap {
            delivery: DeliveryConfig,
        }
        let w: Wrap = toml::from_str(
            r#"
            [delivery]
            smtp_port = 2525
            [delivery.mta_sts]
            enabled = false
            fetch_timeout = "5s"
            https_port = 8443
            memory_ttl = "0s"
            "#,
        )
        .unwrap();
        let c = w.delivery;
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.mta_sts,
            MtaStsConfig {
                enabled: false,
                fetch_timeout: HumanDuration::from_secs(5),
                https_port: 8443,
                memory_ttl: HumanDuration::from_secs(0),
            }
        );
        let partial: DeliveryConfig = toml::from_str("[mta_sts]\nhttps_port = 4443\n").unwrap();
        assert_eq!(partial.mta_sts.https_port, 4443);
        assert!(partial.mta_sts.enabled, "keys left out keep their defaults");
        assert!(toml::from_str::<DeliveryConfig>("[mta_sts]\nenable = true\n").is_err());
    }

    #[test]
    fn mta_sts_keys_come_from_the_file_and_the_environment() {
        let vars = [
            ("TERN_DELIVERY__MTA_STS__ENABLED".to_string(), "false".to_string()),
            ("TERN_DELIVERY__MTA_STS__MEMORY_TTL".to_string(), "2m".to_string()),
        ];
        let c =
            crate::Config::from_toml_str("[delivery.mta_sts]\nhttps_port = 8443\n", "t.toml", vars).unwrap();
        assert!(!c.delivery.mta_sts.enabled);
        assert_eq!(c.delivery.mta_sts.memory_ttl, HumanDuration::from_secs(120));
        assert_eq!(c.delivery.mta_sts.https_port, 8443);
        let err = crate::Config::from_toml_str(
            "[delivery.mta_sts]\nfetch_timeout = \"0s\"\n",
            "t.toml",
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("delivery.mta_sts.fetch_timeout"),
            "{err}"
        );
    }

    #[test]
    fn bad_mta_sts_values_name_their_key() {
        for (bad, key) in [
            (
                MtaStsConfig {
                    fetch_timeout: HumanDuration::from_secs(0),
                    ..Default::default()
                },
                "mta_sts.fetch_timeout",
            ),
            (
                MtaStsConfig {
                    https_port: 0,
                    ..Default::default()
                },
                "mta_sts.https_port",
            ),
        ] {
            let c = DeliveryConfig {
                mta_sts: bad,
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().0, key);
        }
    }

    #[test]
    fn mta_sts_settings_print_and_read_back() {
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            delivery: DeliveryConfig,
        }
        let c = DeliveryConfig {
            routes: vec![RouteConfig {
                domain: "b.test".into(),
                host: "[127.0.0.9]:25".into(),
            }],
            mta_sts: MtaStsConfig {
                enabled: false,
                fetch_timeout: HumanDuration::from_secs(90),
                https_port: 8443,
                memory_ttl: HumanDuration::from_secs(5),
            },
            ..Default::default()
        };
        let text = toml::to_string(&Wrap { delivery: c.clone() }).unwrap();
        assert!(text.contains("[delivery.mta_sts]"), "{text}");
        let back: Wrap = toml::from_str(&text).unwrap();
        assert_eq!(back.delivery, c, "{text}");
    }

    fn reporting() -> TlsRptConfig {
        TlsRptConfig {
            enabled: true,
            organization_name: "Example Mail".into(),
            contact_info: "postmaster@example.com".into(),
            report_from: "tls-reports@example.com".into(),
            send_at: HumanDuration::from_secs(3600 + 15 * 60),
        }
    }

    #[test]
    fn tls_rpt_is_off_by_default_and_sends_at_half_past_midnight() {
        let c = TlsRptConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(!c.enabled, "TLS reporting is off by default");
        assert_eq!(c.send_at, HumanDuration::from_secs(30 * 60));
        assert!(c.organization_name.is_empty() && c.report_from.is_empty());
        assert_eq!(DeliveryConfig::default().tls_rpt, c);
    }

    #[test]
    fn tls_rpt_keys_parse_from_their_sub_table_and_the_environment() {
        #[derive(Deserialize)]
        struct Wrap {
            delivery: DeliveryConfig,
        }
        let w: Wrap = toml::from_str(
            r#"
            [delivery.tls_rpt]
            enabled = true
            organization_name = "Example Mail"
            contact_info = "postmaster@example.com"
            report_from = "tls-reports@example.com"
            send_at = "1h15m"
            "#,
        )
        .unwrap();
        assert_eq!(w.delivery.validate(), Ok(()));
        assert_eq!(w.delivery.tls_rpt, reporting());
        assert!(toml::from_str::<DeliveryConfig>("[tls_rpt]\nenable = true\n").is_err());
        let vars = [
            ("TERN_DELIVERY__TLS_RPT__ENABLED".to_string(), "true".to_string()),
            ("TERN_DELIVERY__TLS_RPT__SEND_AT".to_string(), "2h".to_string()),
        ];
        let c = crate::Config::from_toml_str(
            "[delivery.tls_rpt]\norganization_name = \"O\"\ncontact_info = \"c@o.example\"\n\
             report_from = \"r@o.example\"\n",
            "t.toml",
            vars,
        )
        .unwrap();
        assert!(c.delivery.tls_rpt.enabled);
        assert_eq!(c.delivery.tls_rpt.send_at, HumanDuration::from_secs(7200));
    }

    #[test]
    fn tls_rpt_needs_names_and_an_address_only_when_enabled() {
        let off = TlsRptConfig {
            report_from: "not an address".into(),
            ..Default::default()
        };
        assert_eq!(off.validate(), Ok(()), "nothing is required while it is off");
        for (bad, key) in [
            (
                TlsRptConfig {
                    organization_name: " ".into(),
                    ..reporting()
                },
                "tls_rpt.organization_name",
            ),
            (
                TlsRptConfig {
                    contact_info: String::new(),
                    ..reporting()
                },
                "tls_rpt.contact_info",
            ),
            (
                TlsRptConfig {
                    report_from: String::new(),
                    ..reporting()
                },
                "tls_rpt.report_from",
            ),
            (
                TlsRptConfig {
                    report_from: "tls-reports".into(),
                    ..reporting()
                },
                "tls_rpt.report_from",
            ),
            (
                TlsRptConfig {
                    organization_name: "Example\r\nBcc: x@y".into(),
                    ..reporting()
                },
                "tls_rpt.organization_name",
            ),
            (
                TlsRptConfig {
                    send_at: HumanDuration::from_secs(24 * 3600),
                    ..reporting()
                },
                "tls_rpt.send_at",
            ),
        ] {
            let c = DeliveryConfig {
                tls_rpt: bad,
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().0, key);
        }
        let err = crate::Config::from_toml_str("[delivery.tls_rpt]\nenabled = true\n", "t.toml", Vec::new())
            .unwrap_err();
        assert!(
            err.to_string().contains("delivery.tls_rpt.organization_name"),
            "{err}"
        );
    }

    #[test]
    fn tls_rpt_settings_print_and_read_back() {
        #[derive(Serialize, Deserialize)]
        struct Wrap {
            delivery: DeliveryConfig,
        }
        let c = DeliveryConfig {
            routes: vec![RouteConfig {
                domain: "b.test".into(),
                host: "[127.0.0.9]:25".into(),
            }],
            tls_rpt: reporting(),
            ..Default::default()
        };
        let text = toml::to_string(&Wrap { delivery: c.clone() }).unwrap();
        assert!(text.contains("[delivery.tls_rpt]"), "{text}");
        assert!(text.contains("send_at = \"1h15m\""), "{text}");
        let back: Wrap = toml::from_str(&text).unwrap();
        assert_eq!(back.delivery, c, "{text}");
        let text = toml::to_string(&Wrap {
            delivery: DeliveryConfig::default(),
        })
        .unwrap();
        assert_eq!(
            toml::from_str::<Wrap>(&text).unwrap().delivery.tls_rpt,
            TlsRptConfig::default(),
            "{text}"
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("[a.test]:587"),
            Some(("a.test".into(), Some(587)))
        );
        assert_eq!(split_host_port("a.test:25"), Some(("a.test".into(), Some(25))));
        assert_eq!(split_host_port("a.test"), Some(("a.test".into(), None)));
        assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), Some(25))));
        assert_eq!(split_host_port("[a.test]x"), None);
        assert_eq!(split_host_port("a.test:0"), None);
    }
}
