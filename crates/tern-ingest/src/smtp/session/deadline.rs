//! The time limits of an SMTP session besides `idle_timeout` (pure).
//!
//! A client that sends one byte now and then is never idle, so the idle timeout alone lets it hold a session
//! (and a connection slot) for ever. Two more limits close that:
//!
//! * **A command line** (or a SASL response line) must be complete within `idle_timeout` of its first byte
//!   ([`LineClock`]).
//! * **A DATA or BDAT transfer** may take `idle_timeout` plus the time its octets take at
//!   [`MIN_TRANSFER_RATE`], counting only the octets received so far, up to the chunk's size (BDAT) or
//!   `max_message_size` (DATA) ([`TransferClock`]). A client as fast as the floor rate never meets it; one
//!   that trickles is cut off about `idle_timeout` after the transfer began, and no transfer lasts longer
//!   than `idle_timeout` plus its largest size at the floor rate.
//!
//! Either ends the session with `421 4.4.2`.

use std::time::{Duration, Instant};

/// The slowest transfer allowed beyond the `idle_timeout` of slack, in octets per second (32 kbit/s, below
/// any link a submission client uses).
pub(crate) const MIN_TRANSFER_RATE: u64 = 4096;

/// An instant the session must not wait past, and the text of the `421 4.4.2` sent then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline {
    /// When.
    pub(crate) at: Instant,
    /// The reply text.
    pub(crate) reason: &'static str,
}

/// When the line being received started (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LineClock {
    since: Option<Instant>,
}

impl LineClock {
    /// A line was completed (or refused): the next one starts its own clock.
    pub(crate) fn reset(&mut self) {
        self.since = None;
    }

    /// The deadline of the line being received before waiting for more input: none when no part of a line
    /// has arrived (`partial` false), else `limit` after the wait that first found it partial.
    pub(crate) fn deadline(&mut self, partial: bool, now: Instant, limit: Duration) -> Option<Deadline> {
        if !partial {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        Some(Deadline {
            at: since + limit,
            reason: "Command line not completed in time, closing connection",
        })
    }
}

/// The clock of one DATA or BDAT transfer (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TransferClock {
    start: Instant,
    slack: Duration,
    expected: u64,
    received: u64,
}

impl TransferClock {
    /// A transfer that began at `start`, with `slack` (the idle timeout) and at most `expected` octets
    /// earning more time.
    pub(crate) fn new(start: Instant, slack: Duration, expected: u64) -> TransferClock {
        TransferClock {
            start,
            slack,
            expected,
            received: 0,
        }
    }

    /// Counts `n` more octets received.
    pub(crate) fn received(&mut self, n: usize) {
        self.received = self.received.saturating_add(n as u64);
    }

    /// The instant by which the transfer must have ended, given what has been received.
    pub(crate) fn deadline(&self) -> Deadline {
        let earned = self.received.min(self.expected);
        let allowance = Duration::from_millis(earned.saturating_mul(1000) / MIN_TRANSFER_RATE);
        Deadline {
            at: self.start + self.slack.saturating_add(allowance),
            reason: "Data transfer too slow, closing connection",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(300);

    #[test]
    fn a_line_is_timed_from_the_wait_that_first_found_it_partial() {
        let t0 = Instant::now();
        let mut clock = LineClock::default();
        assert_eq!(clock.deadline(false, t0, IDLE), None);
        let first = clock.deadline(true, t0, IDLE).unwrap();
        assert_eq!(first.at, t0 + IDLE);
        // More bytes of the same line do not move it.
        let later = clock.deadline(true, t0 + Duration::from_secs(200), IDLE).unwrap();
        assert_eq!(later.at, t0 + IDLE);
        // The next line starts afresh.
        clock.reset();
        let next = clock.deadline(true, t0 + Duration::from_secs(250), IDLE).unwrap();
        assert_eq!(next.at, t0 + Duration::from_secs(250) + IDLE);
        assert_eq!(clock.deadline(false, t0, IDLE), None);
    }

    #[test]
    fn a_transfer_earns_time_by_its_octets_up_to_its_size() {
        let t0 = Instant::now();
        let mut clock = TransferClock::new(t0, IDLE, 1_000_000);
        assert_eq!(clock.deadline().at, t0 + IDLE);
        // A trickle earns next to nothing.
        for _ in 0..300 {
            clock.received(1);
        }
        assert!(clock.deadline().at < t0 + IDLE + Duration::from_millis(100));
        clock.received(409_600 - 300);
        assert_eq!(clock.deadline().at, t0 + IDLE + Duration::from_secs(100));
        // Past the expected size (a message over the limit being drained) nothing more is earned.
        clock.received(10_000_000);
        let most = t0 + IDLE + Duration::from_millis(1_000_000 * 1000 / MIN_TRANSFER_RATE);
        assert_eq!(clock.deadline().at, most);
    }
}
