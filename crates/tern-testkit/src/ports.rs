//! Free loopback ports and readiness waits.
//!
//! Ports are picked at random from outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, the
//! ports it gives to outgoing connections and to a bind of port 0), at or above port 20000, and checked
//! free by binding them. Between that check and the peer's own bind the port is unowned: a kernel-chosen port
//! (as this module once used) could meanwhile become the local port of any outgoing connection on the machine,
//! and the tests make many (a `tern` the tests started once failed in CI with "Address already in use"); a port
//! outside the range is never chosen by the kernel. A process-wide set remembers every port handed
//! out, so two tests in the same test binary never get the same one. Another process picking the same port in
//! that short window is still possible; peers that fail to bind say so in their logs.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How many candidate ports to try before giving up.
const ATTEMPTS: usize = 200;
/// The lowest port handed out: below it sit the well-known and most registered services' ports.
const LOWEST_PORT: u16 = 20000;
/// The kernel's ephemeral range when `/proc/sys/net/ipv4/ip_local_port_range` cannot be read (Linux's default).
const DEFAULT_EPHEMERAL: RangeInclusive<u16> = 32768..=60999;

/// The ports the kernel picks by itself (for outgoing connections and binds of port 0).
fn ephemeral_range() -> RangeInclusive<u16> {
    let parsed = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            match (bounds.next(), bounds.next()) {
                (Some(Ok(low)), Some(Ok(high))) if low <= high => Some(low..=high),
                _ => None,
            }
        });
    parsed.unwrap_or(DEFAULT_EPHEMERAL)
}

/// Ports at or above [`LOWEST_PORT`] outside `ephemeral`, as ranges (empty when the ephemeral range covers
/// them all).
fn candidate_ranges(ephemeral: &RangeInclusive<u16>) -> Vec<RangeInclusive<u16>> {
    let mut ranges = Vec::new();
    if *ephemeral.start() > LOWEST_PORT {
        ranges.push(LOWEST_PORT..=ephemeral.start() - 1);
    }
    if *ephemeral.end() < u16::MAX {
        ranges.push((ephemeral.end() + 1).max(LOWEST_PORT)..=u16::MAX);
    }
    ranges
}

/// A random 64-bit number (std's per-instance random hash keys over a counter; no need for a crate).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The ports `p` such that both `p` and `p + offset` are candidates (see [`candidate_ranges`]), as ranges.
fn pair_ranges(ephemeral: &RangeInclusive<u16>, offset: u16) -> Vec<RangeInclusive<u16>> {
    let candidates = candidate_ranges(ephemeral);
    let mut pairs = Vec::new();
    for low in &candidates {
        for high in &candidates {
            // p in `low` and p + offset in `high`.
            let start = (*low.start()).max(high.start().saturating_sub(offset));
            let Some(end) = high.end().checked_sub(offset).map(|e| e.min(*low.end())) else {
                continue;
            };
            if start <= end {
                pairs.push(start..=end);
            }
        }
    }
    pairs
}

/// A port at random from `ranges`; `None` when they are empty.
fn pick_from(ranges: &[RangeInclusive<u16>]) -> Option<u16> {
    let size = |r: &RangeInclusive<u16>| u64::from(*r.end()) - u64::from(*r.start()) + 1;
    let total: u64 = ranges.iter().map(size).sum();
    if total == 0 {
        return None;
    }
    let mut pick = random() % total;
    for range in ranges {
        if pick < size(range) {
            // `pick` is below the range's size, so the sum stays within the range.
            return u16::try_from(pick).ok().map(|p| range.start() + p);
        }
        pick -= size(range);
    }
    None
}

/// A candidate port: at random from outside the kernel's ephemeral range, or, when nothing is outside it, one
/// the kernel picks.
fn candidate_port() -> Result<u16> {
    match pick_from(&candidate_ranges(&ephemeral_range())) {
        Some(port) => Ok(port),
        None => kernel_tcp_port(),
    }
}

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Records `port` as handed out; false if it already was.
fn claim(port: u16) -> bool {
    match handed_out().lock() {
        Ok(mut set) => set.insert(port),
        Err(poisoned) => poisoned.into_inner().insert(port),
    }
}

fn kernel_tcp_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to find a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A TCP port that is free on 127.0.0.1 and that this process has not handed out before.
///
/// The same port is free on every address of 127.0.0.0/8 unless something bound that exact address, so it also
/// serves the per-behaviour addresses such as `127.0.0.22`.
pub fn free_port() -> Result<u16> {
    for _ in 0..ATTEMPTS {
        let port = candidate_port()?;
        if tcp_free(port) && claim(port) {
            return Ok(port);
        }
    }
    bail!("no free TCP port on 127.0.0.1 after {ATTEMPTS} attempts")
}

/// A port free for both UDP and TCP on 127.0.0.1 (for DNS servers, which answer on both).
pub fn free_udp_tcp_port() -> Result<u16> {
    for _ in 0..ATTEMPTS {
        let port = candidate_port()?;
        if tcp_free(port) && udp_free(port) && claim(port) {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1 after {ATTEMPTS} attempts")
}

/// A TCP port `p` such that `p + offset` is free as well and fits in a `u16`; both are marked as handed out.
///
/// Redis Cluster uses `p + 10000` for its cluster bus, so [`crate::RedisCluster`] asks for `offset = 10000`.
/// Both ports lie outside the kernel's ephemeral range when some pair does (with Linux's default range, `p` in
/// 20000..=22767); otherwise the kernel picks `p`, as it did before ports were chosen outside the range.
pub fn free_port_pair(offset: u16) -> Result<u16> {
    // Both ports are bound by the peer, so both come from outside the ephemeral range; when no such pair
    // exists (a range that leaves little outside it), the kernel picks `p` as it would any port.
    let pairs = pair_ranges(&ephemeral_range(), offset);
    for _ in 0..ATTEMPTS {
        let port = match pick_from(&pairs) {
            Some(port) => port,
            None => kernel_tcp_port()?,
        };
        let Some(other) = port.checked_add(offset) else {
            continue;
        };
        // If `other` was handed out earlier, `port` stays claimed (harmless) and the loop tries again.
        if tcp_free(port) && tcp_free(other) && claim(port) && claim(other) {
            return Ok(port);
        }
    }
    bail!("no free TCP port pair (p, p+{offset}) on 127.0.0.1 after {ATTEMPTS} attempts")
}

/// Waits until a TCP connection to `addr` succeeds, polling every 25 ms for at most `timeout`.
///
/// The error names the address and how long it waited, and carries the last connection error.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match TcpStream::connect_timeout(&addr, Duration::from_millis(250)) {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            bail!("waited {timeout:?} for a TCP listener on {addr}; last error: {err}");
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Whether some socket on this machine is listening on TCP `addr` (or on the wildcard address at its port), read
/// from `/proc/net/tcp` and `/proc/net/tcp6`.
///
/// Unlike a probe connection this leaves no trace in the peer (no extra SMTP session in `smtp-sink`'s counters).
pub fn is_listening(addr: SocketAddr) -> Result<bool> {
    let (table, wanted, any) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!("{:08X}:{:04X}", u32::from_le_bytes(a.ip().octets()), a.port()),
            format!("00000000:{:04X}", a.port()),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o
                .chunks_exact(4)
                .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            (
                "/proc/net/tcp6",
                format!("{words}:{:04X}", a.port()),
                format!("{}:{:04X}", "0".repeat(32), a.port()),
            )
        }
    };
    let text = std::fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
    // Columns: sl local_address rem_address st ...; st 0A is LISTEN.
    Ok(text.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace().skip(1);
        let local = cols.next().unwrap_or_default();
        let state = cols.nth(1).unwrap_or_default();
        state == "0A" && (local == wanted || local == any)
    }))
}

/// Polls `probe` every `interval` until it returns `Ok(true)`, for at most `timeout`.
///
/// `Ok(false)` means "not yet". An `Err` from the probe is fatal and returned at once (for example "the process
/// exited"), with `what` as context. On time-out the error says `what` was awaited and for how long.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if probe().with_context(|| format!("while waiting for {what}"))? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("waited {timeout:?} for {what}; it did not happen");
        }
        thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        TcpListener::bind((Ipv4Addr::LOCALHOST, a)).unwrap();
        let u = free_udp_tcp_port().unwrap();
        UdpSocket::bind((Ipv4Addr::LOCALHOST, u)).unwrap();
        TcpListener::bind((Ipv4Addr::LOCALHOST, u)).unwrap();
        let p = free_port_pair(10000).unwrap();
        assert!(u32::from(p) + 10000 <= 65535);
        TcpListener::bind((Ipv4Addr::LOCALHOST, p + 10000)).unwrap();
    }

    #[test]
    fn free_ports_are_never_ones_the_kernel_picks_for_outgoing_connections() {
        let ephemeral = ephemeral_range();
        if candidate_ranges(&ephemeral).is_empty() || pair_ranges(&ephemeral, 10000).is_empty() {
            // Nothing (or no pair) outside this machine's range: the kernel picks, as the functions say.
            eprintln!("the ephemeral range {ephemeral:?} leaves no candidates; nothing to check");
            return;
        }
        for _ in 0..200 {
            let port = free_port().unwrap();
            assert!(port >= LOWEST_PORT, "{port}");
            assert!(
                !ephemeral.contains(&port),
                "{port} is in the ephemeral range {ephemeral:?}"
            );
        }
        let dns = free_udp_tcp_port().unwrap();
        assert!(!ephemeral.contains(&dns), "{dns}");
        let pair = free_port_pair(10000).unwrap();
        assert!(
            !ephemeral.contains(&pair) && !ephemeral.contains(&(pair + 10000)),
            "{pair}"
        );
    }

    #[test]
    fn candidate_ranges_leave_out_the_ephemeral_range_and_low_ports() {
        assert_eq!(
            candidate_ranges(&(32768..=60999)),
            vec![20000..=32767, 61000..=65535]
        );
        assert_eq!(
            candidate_ranges(&(1024..=65535)),
            Vec::<RangeInclusive<u16>>::new()
        );
        assert_eq!(candidate_ranges(&(10000..=30000)), vec![30001..=65535]);
        assert_eq!(candidate_ranges(&(40000..=65535)), vec![20000..=39999]);
    }

    #[test]
    fn pair_ranges_keep_both_ports_outside_the_ephemeral_range() {
        // Only p in 20000..=22767 has p + 10000 below the default range; above it, p + 10000 overflows.
        assert_eq!(pair_ranges(&(32768..=60999), 10000), vec![20000..=22767]);
        // A range that leaves only 65001..=65535: no pair, the caller falls back to the kernel.
        assert_eq!(
            pair_ranges(&(1024..=65000), 10000),
            Vec::<RangeInclusive<u16>>::new()
        );
        assert_eq!(pair_ranges(&(10000..=30000), 10000), vec![30001..=55535]);
        // p below the range with p + offset above it, or both above it.
        assert_eq!(
            pair_ranges(&(30000..=35000), 10000),
            vec![25001..=29999, 35001..=55535]
        );
        for (ephemeral, offset) in [(32768..=60999, 10000), (30000..=35000, 10000), (40000..=50000, 1)] {
            for range in pair_ranges(&ephemeral, offset) {
                for p in [*range.start(), *range.end()] {
                    assert!(!ephemeral.contains(&p) && p >= LOWEST_PORT, "{p}");
                    let other = p.checked_add(offset).expect("fits");
                    assert!(!ephemeral.contains(&other), "{p} + {offset}");
                }
            }
        }
        assert_eq!(pick_from(&[]), None);
        assert_eq!(pick_from(&[7..=7]), Some(7));
    }

    #[test]
    fn is_listening_reads_proc_net_tcp() {
        let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 23), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(is_listening(addr).unwrap());
        drop(listener);
        assert!(!is_listening(addr).unwrap());
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        assert!(is_listening(v6.local_addr().unwrap()).unwrap());
    }

    #[test]
    fn wait_for_tcp_times_out_with_the_address() {
        let port = free_port().unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let err = wait_for_tcp(addr, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
