//! What a connection asks of TLS ([`TlsPolicy`]), and the hosts whose STARTTLS recently failed
//! ([`TlsFailures`]).
//!
//! Opportunistic TLS (RFC 7435) encrypts when it can and sends in plaintext when it cannot: when STARTTLS is
//! not offered, is refused, or fails (the command, the handshake, or EHLO over the new TLS session), the
//! message goes over a new plaintext connection to the same host, as Postfix's `may` level and KumoMTA's
//! `Opportunistic` do. A failure of TLS itself (an alert, a certificate rustls refuses, bytes that are no
//! TLS, a handshake that stalls, EHLO refused over TLS) is remembered for the host (its name and address)
//! for `delivery.tls_failure_memory`, so the next connections to it go plaintext without trying TLS again;
//! the connection failing during STARTTLS (no reply, a reset, the peer closing, bytes sent before the
//! handshake) is not, as one on-path event must not make a host plaintext-only for that long. The memory
//! holds at most 10 000 hosts, the oldest going first. A policy that requires TLS (`tls = "required"`, and
//! every host of a domain with an enforced MTA-STS policy: `worker/mta_sts.rs`) never falls back, and the
//! memory does not apply to it: without verified TLS the host is not used and the message is deferred.

use std::collections::{HashMap, VecDeque};
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

    /// `tls = "required"`, and every host under an enforced MTA-STS policy: verified TLS or no delivery,
    /// never plaintext.
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

/// The most hosts remembered at once. Past it the oldest entry goes: that host only tries TLS again.
const MAX_REMEMBERED: usize = 10_000;

/// The hosts whose TLS failed recently, by host name and address, each until when it is reached in
/// plaintext without trying TLS. Per worker process and in memory: a restarted worker tries TLS again,
/// which costs one failed handshake per host. Only failures of TLS itself are noted (see
/// `worker::connect::secure`): a reset or a timeout is no reason to give up on a host's TLS.
pub(crate) struct TlsFailures {
    memory: Duration,
    cap: usize,
    state: Mutex<Remembered>,
}

/// The entries, and the same in the order they were noted.
#[derive(Default)]
struct Remembered {
    /// Until when each host is reached in plaintext.
    until: HashMap<(String, SocketAddr), Instant>,
    /// Every entry lasts `memory`, so the order they were noted in is the order they lapse in: the lapsed
    /// ones, and past the cap the oldest, are dropped from the front without scanning the map.
    order: VecDeque<((String, SocketAddr), Instant)>,
}

impl Remembered {
    /// Drops the oldest entry (from the map too, unless the host was noted again since).
    fn drop_oldest(&mut self) {
        if let Some((key, until)) = self.order.pop_front()
            && self.until.get(&key) == Some(&until)
        {
            self.until.remove(&key);
        }
    }
}

impl TlsFailures {
    /// Remembers each failure for `memory` (zero: not at all; TLS is tried, and fails, every time).
    pub(crate) fn new(memory: Duration) -> TlsFailures {
        TlsFailures::with_cap(memory, MAX_REMEMBERED)
    }

    fn with_cap(memory: Duration, cap: usize) -> TlsFailures {
        TlsFailures {
            memory,
            cap: cap.max(1),
            state: Mutex::new(Remembered::default()),
        }
    }

    /// Notes that TLS failed with `host` at `addr` at `now`. Lapsed entries are dropped meanwhile, and the
    /// oldest past [`MAX_REMEMBERED`].
    pub(crate) fn remember(&self, host: &str, addr: SocketAddr, now: Instant) {
        if self.memory.is_zero() {
            return;
        }
        let key = (host.to_ascii_lowercase(), addr);
        let until = now + self.memory;
        let mut state = lock(&self.state);
        while state.order.front().is_some_and(|(_, t)| *t <= now) || state.order.len() >= self.cap {
            state.drop_oldest();
        }
        state.until.insert(key.clone(), until);
        state.order.push_back((key, until));
    }

    /// Whether TLS failed with `host` at `addr` less than `memory` before `now`.
    pub(crate) fn remembers(&self, host: &str, addr: SocketAddr, now: Instant) -> bool {
        lock(&self.state)
            .until
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
        assert_eq!(lock(&failures.state).until.len(), 1);
        assert_eq!(lock(&failures.state).order.len(), 1);
    }

    #[test]
    fn the_memory_is_bounded_and_gives_up_the_oldest_first() {
        let failures = TlsFailures::with_cap(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        let addr = |i: u8| SocketAddr::from(([127, 0, 0, i], 25));
        for i in 1..=5u8 {
            failures.remember("mx.b.test", addr(i), t0 + Duration::from_secs(u64::from(i)));
        }
        let state = lock(&failures.state);
        assert_eq!((state.until.len(), state.order.len()), (3, 3));
        drop(state);
        let now = t0 + Duration::from_secs(10);
        assert!(!failures.remembers("mx.b.test", addr(1), now));
        assert!(!failures.remembers("mx.b.test", addr(2), now));
        assert!((3..=5).all(|i| failures.remembers("mx.b.test", addr(i), now)));
        // A host noted again keeps its newer entry when its older one leaves the front.
        let failures = TlsFailures::with_cap(Duration::from_secs(3600), 3);
        failures.remember("a.b.test", addr(1), t0);
        failures.remember("b.b.test", addr(1), t0);
        failures.remember("a.b.test", addr(1), t0 + Duration::from_secs(1));
        failures.remember("c.b.test", addr(1), t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(3);
        assert!(failures.remembers("a.b.test", addr(1), now));
        assert!(failures.remembers("b.b.test", addr(1), now));
        assert!(failures.remembers("c.b.test", addr(1), now));
        assert_eq!(lock(&failures.state).until.len(), 3);
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
