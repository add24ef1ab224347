//! Connection counting: `ingest.max_connections` overall and `ingest.max_connections_per_ip` per client
//! address. A connection holds a [`ConnPermit`] for its life; dropping it gives the slot back.
//!
//! The counts are per process (each ingest node enforces its own limits).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts open connections against the two limits.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// `max_connections`.
    Total,
    /// `max_connections_per_ip`.
    PerIp,
}

impl LimitExceeded {
    /// The name of the limit, as logged: `max_connections` or `max_connections_per_ip`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitExceeded::Total => "max_connections",
            LimitExceeded::PerIp => "max_connections_per_ip",
        }
    }
}

/// One counted connection; dropping it releases the slot.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// A limiter allowing `max_total` connections, at most `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            state: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `ip`, or says which limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, LimitExceeded> {
        let ip = ip.to_canonical();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.total >= self.max_total {
            return Err(LimitExceeded::Total);
        }
        let n = s.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        *n += 1;
        s.total += 1;
        Ok(ConnPermit {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Open connections in total.
    pub fn total(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_and_slots_come_back_on_drop() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), LimitExceeded::PerIp);
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), LimitExceeded::Total);
        drop(p1);
        assert_eq!(l.total(), 2);
        let _p4 = l.try_acquire("::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), LimitExceeded::Total);
    }
}
