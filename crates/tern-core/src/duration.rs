//! Human durations such as `90s`, `5m`, `2h` and `5d`.
//!
//! Configuration and the CLI take durations in this form. A value is one or more `<number><unit>` groups
//! (`1h30m`), with units `ms`, `s`, `m`, `h`, `d` and `w`. Printing picks the largest units that represent the
//! value exactly, so that a parsed value prints back the way an operator would write it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A [`Duration`] that parses from and prints as a human duration (`"5m"`, `"1h30m"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

/// Why a human duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text was empty.
    #[error("empty duration")]
    Empty,
    /// A group had no number before its unit, or no unit after its number.
    #[error("invalid duration {0:?}: expected groups like 90s, 5m, 2h, 5d (units ms, s, m, h, d, w)")]
    Syntax(String),
    /// The unit is not one of `ms`, `s`, `m`, `h`, `d`, `w`.
    #[error("invalid duration {text:?}: unknown unit {unit:?} (units are ms, s, m, h, d, w)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// The value does not fit in a duration.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const UNITS: [(&str, u64); 6] = [
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let bytes = s.as_bytes();
        let mut total_ms: u64 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let num_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == num_start {
                return Err(DurationError::Syntax(text.to_string()));
            }
            let number: u64 = s[num_start..i]
                .parse()
                .map_err(|_| DurationError::Overflow(text.to_string()))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &s[unit_start..i];
            if unit.is_empty() {
                return Err(DurationError::Syntax(text.to_string()));
            }
            let unit_ms = UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(_, ms)| *ms)
                .ok_or_else(|| DurationError::UnknownUnit {
                    text: text.to_string(),
                    unit: unit.to_string(),
                })?;
            total_ms = number
                .checked_mul(unit_ms)
                .and_then(|v| total_ms.checked_add(v))
                .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
        }
        Ok(HumanDuration(Duration::from_millis(total_ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (name, unit_ms) in UNITS {
            if ms >= unit_ms {
                let n = ms / unit_ms;
                ms %= unit_ms;
                write!(f, "{n}{name}")?;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Duration {
        s.parse::<HumanDuration>().unwrap().0
    }

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("90s"), Duration::from_secs(90));
        assert_eq!(parse("5m"), Duration::from_secs(300));
        assert_eq!(parse("2h"), Duration::from_secs(7200));
        assert_eq!(parse("5d"), Duration::from_secs(5 * 86400));
        assert_eq!(parse("1w"), Duration::from_secs(7 * 86400));
        assert_eq!(parse("250ms"), Duration::from_millis(250));
    }

    #[test]
    fn parses_compound_and_surrounding_space() {
        assert_eq!(parse("1h30m"), Duration::from_secs(5400));
        assert_eq!(parse(" 2m5s "), Duration::from_secs(125));
    }

    #[test]
    fn prints_largest_exact_units() {
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "1m30s");
        assert_eq!(HumanDuration(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(HumanDuration(Duration::from_secs(5 * 86400)).to_string(), "5d");
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1s500ms");
        assert_eq!(HumanDuration(Duration::ZERO).to_string(), "0s");
    }

    #[test]
    fn rejects_missing_unit_number_and_unknown_unit() {
        assert_eq!("".parse::<HumanDuration>(), Err(DurationError::Empty));
        assert!(matches!(
            "90".parse::<HumanDuration>(),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            "m".parse::<HumanDuration>(),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            "5y".parse::<HumanDuration>(),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "-5m".parse::<HumanDuration>(),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(
            "5 m".parse::<HumanDuration>(),
            Err(DurationError::Syntax(_))
        ));
    }

    #[test]
    fn rejects_overflow_without_panicking() {
        assert!(matches!(
            "99999999999999999999w".parse::<HumanDuration>(),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            "9999999999999999w".parse::<HumanDuration>(),
            Err(DurationError::Overflow(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn print_then_parse_is_identity(ms in 0u64..(1u64 << 50)) {
            let d = HumanDuration(Duration::from_millis(ms));
            proptest::prop_assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }
    }
}
