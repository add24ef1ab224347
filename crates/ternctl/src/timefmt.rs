//! Wall-clock times in UTC for people (`2026-12-02 14:35:02`, `15:04 UTC`) and for flags (`--since
//! 2026-12-02T14:00Z`), without a date library: the civil-calendar conversions are Howard Hinnant's.

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// Year, month (1..=12) and day (1..=31) of the `days`th day after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // In range by construction: 1 <= m <= 12, 1 <= d <= 31.
    (y, u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

/// Days from 1970-01-01 to the given date (negative before it).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC date `YYYY-MM-DD` of `ms`.
pub fn date(ms: u64) -> String {
    let (y, m, d) = civil_from_days(i64::try_from(ms / DAY_MS).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The UTC time of day `HH:MM:SS` of `ms`.
fn time_of_day(ms: u64) -> String {
    let s = ms % DAY_MS / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// `2026-12-02 14:35:02` (UTC), or `-` for 0 (none).
pub fn stamp(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    format!("{} {}", date(ms), time_of_day(ms))
}

/// `14:35:02.123` (UTC): the time of day to the millisecond, for live streams.
pub fn clock(ms: u64) -> String {
    format!("{}.{:03}", time_of_day(ms), ms % 1000)
}

/// A point in time for people, relative to `now` as well: `15:04 UTC (in 1h)` today, `2026-12-03 15:04 UTC
/// (in 1d2h)` on another day.
pub fn at(ms: u64, now: u64) -> String {
    let hhmm = &time_of_day(ms)[..5];
    let day = if ms / DAY_MS == now / DAY_MS {
        String::new()
    } else {
        format!("{} ", date(ms))
    };
    format!("{day}{hhmm} UTC ({})", crate::commands::output::when(ms, now))
}

/// Parses a point in time: `YYYY-MM-DD` (midnight UTC), or `YYYY-MM-DDTHH:MM[:SS]` (`T` or a space) with an
/// optional `Z`, ` UTC` or `±HH:MM` offset (none: UTC). Returns Unix ms.
pub fn parse(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let bad = || format!("{text:?} is not a time like 2026-12-02, 2026-12-02T14:00Z or 2026-12-02 14:00");
    let num = |s: &str| -> Result<i64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    let (date_part, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], s[i + 1..].trim()),
        None => (s, ""),
    };
    let mut ymd = date_part.split('-');
    let (Some(y), Some(m), Some(d), None) = (ymd.next(), ymd.next(), ymd.next(), ymd.next()) else {
        return Err(bad());
    };
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    if y.to_string().len() != 4 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let (m, d) = (
        u32::try_from(m).map_err(|_| bad())?,
        u32::try_from(d).map_err(|_| bad())?,
    );
    let days = days_from_civil(y, m, d);
    // The day must exist (no 2026-02-30): it round-trips.
    if civil_from_days(days) != (y, m, d) {
        return Err(bad());
    }
    let mut secs = days * 86_400;
    if !rest.is_empty() {
        let (clock, offset) = split_offset(rest).ok_or_else(bad)?;
        let mut hms = clock.split(':');
        let h = num(hms.next().ok_or_else(bad)?)?;
        let min = num(hms.next().ok_or_else(bad)?)?;
        let sec = match hms.next() {
            Some(s) => num(s)?,
            None => 0,
        };
        if hms.next().is_some() || h > 23 || min > 59 || sec > 59 {
            return Err(bad());
        }
        secs += h * 3600 + min * 60 + sec - offset;
    }
    u64::try_from(secs)
        .map(|s| s * 1000)
        .map_err(|_| format!("{text:?} is before 1970"))
}

/// Splits `14:00Z`, `14:00 UTC`, `14:00+02:00` into the clock and the offset in seconds east of UTC.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(c) = s.strip_suffix(['Z', 'z']) {
        return Some((c, 0));
    }
    if let Some(c) = s.strip_suffix("UTC") {
        return Some((c.trim_end(), 0));
    }
    if let Some(i) = s.rfind(['+', '-']) {
        let (c, off) = (&s[..i], &s[i + 1..]);
        let (h, m) = off.split_once(':').unwrap_or((off, "0"));
        let h: i64 = h.parse().ok()?;
        let m: i64 = m.parse().ok()?;
        if h > 23 || m > 59 {
            return None;
        }
        let sign = if s.as_bytes()[i] == b'-' { -1 } else { 1 };
        return Some((c, sign * (h * 3600 + m * 60)));
    }
    Some((s, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_print_and_parse_back() {
        assert_eq!(stamp(0), "-");
        assert_eq!(stamp(1_795_872_409_000), "2026-11-28 13:26:49");
        assert_eq!(clock(1_795_872_409_042), "13:26:49.042");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(parse("2026-11-28T13:26:49Z"), Ok(1_795_872_409_000));
        assert_eq!(parse("2026-11-28 13:26:49"), Ok(1_795_872_409_000));
        assert_eq!(parse("2026-11-28T15:26:49+02:00"), Ok(1_795_872_409_000));
        assert_eq!(parse("2026-11-28 13:26 UTC"), Ok(1_795_872_360_000));
        assert_eq!(parse("2000-02-29"), Ok(951_782_400_000));
        for bad in [
            "2026-02-30",
            "yesterday",
            "2026-11-28T25:00",
            "26-11-28",
            "2026-11-28T13",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_point_in_time_says_the_clock_and_how_far() {
        let now = 1_795_872_409_000; // 2026-11-28 13:26:49
        assert_eq!(at(now + 3_600_000, now), "14:26 UTC (in 1h)");
        assert_eq!(at(now + 86_400_000, now), "2026-11-29 13:26 UTC (in 1d)");
    }
}
