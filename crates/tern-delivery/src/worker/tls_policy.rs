//! What a connection asks of TLS ([`TlsPolicy`]), and the hosts whose STARTTLS recently failed
//! ([`TlsFailures`]).
//!
//! Opportunistic TLS (RFC 7435) encrypts when it can and sends in plaintext when it cannot: when STARTTLS is
//! not offered, is refused, or fails (the command, the handshake, or EHLO over the new TLS session), the
//! message goes over a new plaintext connection to the same host, as Postfix's `may` level and KumoMTA's
//! `Opportunistic` do. The failure is remembered for the host (its name and address) for
//! `delivery.tls_failure_memory`, so the next connections to it go plaintext without trying TLS again. A
//! policy that requires TLS (`tls = "required"`; an MTA-STS `enforce` policy will be one more) never falls
//! back: without verified TLS the host is not used and the message is deferred.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_config::sections::TlsMode;

use super::lock;

/// What a connection to one host asks of TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TlsPolicy {
    /// STARTTLS is used when the server offers it.
    pub(crate) starttls: bool,
    /// The certificate must verify against the host name (otherwise any certificate will do).
    pub(crate) verify: bool,
    /// TLS is a condition of delivery: a server that does not offer it, refuses it or fails it is not used.
    pub(crate) required: bool,
    /// When STARTTLS fails, the message goes over a new plaintext connection to the same host, and the host
    /// is remembered as one to reach in plaintext for a while.
    pub(crate) plaintext_fallback: bool,
}

impl TlsPolicy {
    /// `tls = "disabled"`: never STARTTLS.
    pub(crate) const DISABLED: TlsPolicy = TlsPolicy {
        starttls: false,
        verify: false,
        required: false,
        plaintext_fallback: false,
    };

    /// `tls = "opportunistic"` towards an MX host (RFC 7435): STARTTLS when offered, any certificate,
    /// plaintext when TLS cannot be had.
    pub(crate) const OPPORTUNISTIC: TlsPolicy = TlsPolicy {
        starttls: true,
        verify: false,
        required: false,
        plaintext_fallback: true,
    };

    /// `tls = "opportunistic"` towards the relay: STARTTLS when offered, and then verified (credentials may
    /// follow), so a handshake that fails (a certificate that does not verify among the causes) is not
    /// papered over with plaintext: the relay is a configured peer, and its TLS failing is for the operator
    /// to see.
    pub(crate) const VERIFIED_WHEN_OFFERED: TlsPolicy = TlsPolicy {
        starttls: true,
        verify: true,
        required: false,
        plaintext_fallback: false,
    };

    /// `tls = "required"`, and what an MTA-STS `enforce` policy will be: verified TLS or no delivery, never
    /// plaintext.
    pub(crate) const REQUIRED: TlsPolicy = TlsPolicy {
        starttls: true,
        verify: true,
        required: true,
        plaintext_fallback: false,
    };

    /// The policy for a host under `delivery.tls = mode`; `relay` when the host is `relay_host`.
    pub(crate) fn for_host(mode: TlsMode, relay: bool) -> TlsPolicy {
        match (mode, relay) {
            (TlsMode::Disabled, _) => TlsPolicy::DISABLED,
            (TlsMode::Required, _) => TlsPolicy::REQUIRED,
            (TlsMode::Opportunistic, false) => TlsPolicy::OPPORTUNISTIC,
            (TlsMode::Opportunistic, true) => TlsPolicy::VERIFIED_WHEN_OFFERED,
        }
    }
}

/// The hosts whose STARTTLS failed recently, by host name and address, each until when it is reached in
/// plaintext without trying TLS. Per worker process and in memory: a restarted worker tries TLS again,
/// which costs one failed handshake per host.
pub(crate) struct TlsFailures {
    memory: Duration,
    until: Mutex<HashMap<(String, SocketAddr), Instant>>,
}

impl TlsFailures {
    /// Remembers each failure for `memory` (zero: not at all; TLS is tried, and fails, every time).
    pub(crate) fn new(memory: Duration) -> TlsFailures {
        TlsFailures {
            memory,
            until: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that STARTTLS failed with `host` at `addr` at `now`. Lapsed entries are dropped meanwhile, so the
    /// map holds only the hosts that failed within the last `memory`.
    pub(crate) fn remember(&self, host: &str, addr: SocketAddr, now: Instant) {
        if self.memory.is_zero() {
            return;
        }
        let mut until = lock(&self.until);
        until.retain(|_, t| *t > now);
        until.insert((host.to_ascii_lowercase(), addr), now + self.memory);
    }

    /// Whether STARTTLS failed with `host` at `addr` less than `memory` before `now`.
    pub(crate) fn remembers(&self, host: &str, addr: SocketAddr, now: Instant) -> bool {
        lock(&self.until)
            .get(&(host.to_ascii_lowercase(), addr))
            .is_some_and(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_opportunistic_tls_to_an_mx_falls_back_to_plaintext() {
        let mx = TlsPolicy::for_host(TlsMode::Opportunistic, false);
        assert!(mx.starttls && mx.plaintext_fallback && !mx.verify && !mx.required);
        for policy in [
            TlsPolicy::for_host(TlsMode::Required, false),
            TlsPolicy::for_host(TlsMode::Required, true),
            TlsPolicy::for_host(TlsMode::Opportunistic, true),
        ] {
            assert!(policy.starttls && policy.verify, "{policy:?}");
            assert!(!policy.plaintext_fallback, "{policy:?}");
        }
        assert!(TlsPolicy::for_host(TlsMode::Required, true).required);
        assert!(!TlsPolicy::for_host(TlsMode::Disabled, false).starttls);
    }

    #[test]
    fn a_failure_is_remembered_per_host_for_its_time() {
        let failures = TlsFailures::new(Duration::from_secs(3600));
        let addr: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:25".parse().unwrap();
        let t0 = Instant::now();
        assert!(!failures.remembers("mx.b.test", addr, t0));
        failures.remember("MX.b.test", addr, t0);
        assert!(failures.remembers("mx.b.test", addr, t0 + Duration::from_secs(3599)));
        assert!(!failures.remembers("mx.b.test", other, t0));
        assert!(!failures.remembers("mx2.b.test", addr, t0));
        assert!(!failures.remembers("mx.b.test", addr, t0 + Duration::from_secs(3600)));
        // A later failure elsewhere drops the lapsed entry.
        failures.remember("mx2.b.test", other, t0 + Duration::from_secs(7200));
        assert_eq!(lock(&failures.until).len(), 1);
    }

    #[test]
    fn a_zero_memory_remembers_nothing() {
        let failures = TlsFailures::new(Duration::ZERO);
        let addr: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let now = Instant::now();
        failures.remember("mx.b.test", addr, now);
        assert!(!failures.remembers("mx.b.test", addr, now));
    }
}
