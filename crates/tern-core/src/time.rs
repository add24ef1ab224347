//! Wall-clock times as Unix milliseconds, the form the queue stores and sorts by.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch for `t` (0 for times before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The time `ms` Unix milliseconds denote.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_round_trips() {
        let t = from_unix_ms(1_790_000_000_123);
        assert_eq!(unix_ms(t), 1_790_000_000_123);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
