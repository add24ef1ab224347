//! The cache's decisions, pure: what a domain's cached state and a TXT answer call for ([`plan`]), and
//! what of the cached state applies ([`Known::applicable`]). No I/O, no clock: the caller passes the time.

use std::time::Duration;

use tern_queue::StsEntry;

use super::{ActivePolicy, CacheOptions, LookupOutcome};
use crate::discovery::TxtLookup;
use crate::policy::Mode;
use crate::txt::select_record;

/// What is known of a domain: its cached policy (expired or not, any mode) and when its last fetch failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Known {
    /// The cached policy, parsed.
    pub(super) policy: Option<ActivePolicy>,
    /// When the last fetch failed (Unix ms), until a policy is stored again.
    pub(super) last_error_at_ms: Option<u64>,
}

impl Known {
    /// What a store entry says; an entry whose policy no longer parses counts as having none (and is
    /// logged), so that it is fetched again.
    pub(super) fn from_entry(entry: Option<&StsEntry>) -> Known {
        let Some(entry) = entry else {
            return Known::default();
        };
        let policy = match ActivePolicy::from_entry(entry) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(domain = %entry.domain, policy_id = %entry.policy_id, error = %e,
                    "the stored MTA-STS policy does not parse; it is ignored and fetched again");
                None
            }
        };
        Known {
            policy,
            last_error_at_ms: entry.last_error_at_ms,
        }
    }

    /// The policy that applies at `now_ms`: the cached one while it applies ([`applies_at`]), unless its
    /// mode is `none` (which is no policy).
    pub(super) fn applicable(&self, now_ms: u64, options: &CacheOptions) -> Option<ActivePolicy> {
        self.policy
            .as_ref()
            .filter(|p| applies_at(p, now_ms, options))
            .and_then(|_| self.usable())
    }

    /// The cached policy whatever its age, unless its mode is `none`: what a lookup that fetched it
    /// applies (a policy fetched for a delivery applies to it, even one of `max_age` 0).
    pub(super) fn usable(&self) -> Option<ActivePolicy> {
        self.policy
            .as_ref()
            .filter(|p| p.policy.mode() != Mode::None)
            .cloned()
    }

    /// Whether the last fetch failed less than `retry_failed_after` before `now_ms`.
    pub(super) fn in_backoff(&self, now_ms: u64, options: &CacheOptions) -> bool {
        self.last_error_at_ms
            .is_some_and(|at| now_ms < at.saturating_add(millis(options.retry_failed_after)))
    }

    /// Whether the cached policy is `id`'s, unexpired, and close enough to its expiry to be refreshed.
    pub(super) fn due_for_refresh(&self, id: &str, now_ms: u64, options: &CacheOptions) -> bool {
        self.policy.as_ref().is_some_and(|p| {
            let window = options.refresh_window(p.policy.max_age_duration());
            p.id == id && !p.is_expired_at(now_ms) && now_ms.saturating_add(millis(window)) >= p.expires_at_ms
        })
    }
}

/// What to do for a domain after its TXT lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// Fetch nothing: what is cached applies (if unexpired), for the reason given.
    Keep(LookupOutcome),
    /// What is cached applies, and it is refreshed in the background (it expires soon).
    KeepAndRefresh {
        /// The policy id of the TXT record.
        id: String,
    },
    /// Fetch the policy now: nothing usable is cached for the id the TXT record announces.
    Fetch {
        /// The policy id of the TXT record.
        id: String,
    },
}

/// Decides what a domain's TXT answer calls for (RFC 8461 §5), given what is cached.
///
/// - A failed lookup or no valid record fetches nothing: an unexpired cached policy still applies (a
///   record removed does not remove a policy), and without one there is no policy.
/// - The cached id, unexpired: nothing to fetch, unless the policy is within its refresh window, when it is
///   refreshed in the background.
/// - Another id, or nothing usable cached: fetch, unless the last fetch failed less than
///   `retry_failed_after` ago (and `ignore_backoff` is false).
pub(super) fn plan(
    known: &Known,
    txt: &TxtLookup,
    now_ms: u64,
    options: &CacheOptions,
    ignore_backoff: bool,
) -> Plan {
    let record = match txt {
        TxtLookup::Failed(reason) => return Plan::Keep(LookupOutcome::LookupFailed(reason.clone())),
        TxtLookup::NotFound => select_record(&[]),
        TxtLookup::Records(records) => select_record(records),
    };
    let id = match record {
        Ok(r) => r.id().to_owned(),
        Err(e) => return Plan::Keep(LookupOutcome::NoRecord(e)),
    };
    let backoff = !ignore_backoff && known.in_backoff(now_ms, options);
    let current = known
        .policy
        .as_ref()
        .is_some_and(|p| p.id == id && applies_at(p, now_ms, options));
    if current {
        if !backoff && known.due_for_refresh(&id, now_ms, options) {
            Plan::KeepAndRefresh { id }
        } else {
            Plan::Keep(LookupOutcome::Current)
        }
    } else if backoff {
        Plan::Keep(LookupOutcome::RetryLater)
    } else {
        Plan::Fetch { id }
    }
}

/// Whether a cached policy still applies at `now_ms`: until its expiry, but at least
/// [`CacheOptions::memory_ttl`] after it was fetched, so that a policy of a tiny `max_age` (even 0) is
/// applied and not fetched again on every lookup.
pub(super) fn applies_at(p: &ActivePolicy, now_ms: u64, options: &CacheOptions) -> bool {
    let until = p
        .expires_at_ms
        .max(p.fetched_at_ms.saturating_add(millis(options.memory_ttl)));
    now_ms < until
}

/// A duration in whole milliseconds, saturating.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::txt::TxtError;

    const DAY_MS: u64 = 86_400_000;
    const NOW: u64 = 1_700_000_000_000;

    fn options() -> CacheOptions {
        CacheOptions::default()
    }

    fn cached(id: &str, mode: Mode, fetched_at_ms: u64, max_age: u32) -> Known {
        let mx = if mode == Mode::None {
            vec![]
        } else {
            vec!["mx.example.test".to_owned()]
        };
        let policy = Policy::new(mode, mx, max_age).unwrap();
        Known {
            policy: Some(ActivePolicy {
                domain: "example.test".into(),
                id: id.into(),
                fetched_at_ms,
                expires_at_ms: fetched_at_ms + u64::from(max_age) * 1000,
                policy,
            }),
            last_error_at_ms: None,
        }
    }

    fn txt(id: &str) -> TxtLookup {
        TxtLookup::Records(vec![format!("v=STSv1; id={id}")])
    }

    #[test]
    fn nothing_cached_and_a_record_fetches() {
        assert_eq!(
            plan(&Known::default(), &txt("a"), NOW, &options(), false),
            Plan::Fetch { id: "a".into() }
        );
    }

    #[test]
    fn the_cached_id_fetches_nothing_until_the_refresh_window() {
        let fresh = cached("a", Mode::Enforce, NOW - 1000, 86_400);
        assert_eq!(
            plan(&fresh, &txt("a"), NOW, &options(), false),
            Plan::Keep(LookupOutcome::Current)
        );
        // Fetched 23.5 hours ago with a day's max_age: within the refresh window (a tenth of max_age).
        let old = cached("a", Mode::Enforce, NOW - DAY_MS + 1_800_000, 86_400);
        assert_eq!(
            plan(&old, &txt("a"), NOW, &options(), false),
            Plan::KeepAndRefresh { id: "a".into() }
        );
    }

    #[test]
    fn a_failed_fetch_delays_the_refresh_and_the_fetch_of_a_new_id() {
        let mut old = cached("a", Mode::Enforce, NOW - DAY_MS + 1_800_000, 86_400);
        old.last_error_at_ms = Some(NOW - 60_000);
        assert_eq!(
            plan(&old, &txt("a"), NOW, &options(), false),
            Plan::Keep(LookupOutcome::Current)
        );
        assert_eq!(
            plan(&old, &txt("b"), NOW, &options(), false),
            Plan::Keep(LookupOutcome::RetryLater)
        );
        assert_eq!(
            plan(&old, &txt("b"), NOW, &options(), true),
            Plan::Fetch { id: "b".into() },
            "a recheck does not wait"
        );
        // Five minutes after the failure, it is tried again.
        old.last_error_at_ms = Some(NOW - 300_000);
        assert_eq!(
            plan(&old, &txt("b"), NOW, &options(), false),
            Plan::Fetch { id: "b".into() }
        );
    }

    #[test]
    fn another_id_or_an_expired_policy_fetches() {
        let fresh = cached("a", Mode::Enforce, NOW - 1000, 86_400);
        assert_eq!(
            plan(&fresh, &txt("b"), NOW, &options(), false),
            Plan::Fetch { id: "b".into() }
        );
        let expired = cached("a", Mode::Enforce, NOW - 2 * DAY_MS, 86_400);
        assert_eq!(
            plan(&expired, &txt("a"), NOW, &options(), false),
            Plan::Fetch { id: "a".into() }
        );
        assert_eq!(expired.applicable(NOW, &options()), None);
    }

    #[test]
    fn no_record_or_a_failed_lookup_keeps_what_is_cached() {
        let fresh = cached("a", Mode::Enforce, NOW - 1000, 86_400);
        for (answer, outcome) in [
            (TxtLookup::NotFound, LookupOutcome::NoRecord(TxtError::NoRecord)),
            (
                TxtLookup::Records(vec!["v=STSv1; id=a".into(), "v=STSv1; id=b".into()]),
                LookupOutcome::NoRecord(TxtError::Multiple(2)),
            ),
            (
                TxtLookup::Failed("SERVFAIL".into()),
                LookupOutcome::LookupFailed("SERVFAIL".into()),
            ),
        ] {
            assert_eq!(
                plan(&fresh, &answer, NOW, &options(), false),
                Plan::Keep(outcome.clone())
            );
            assert_eq!(
                plan(&Known::default(), &answer, NOW, &options(), false),
                Plan::Keep(outcome)
            );
        }
        assert!(
            fresh.applicable(NOW, &options()).is_some(),
            "the cached policy still applies"
        );
    }

    #[test]
    fn mode_none_is_cached_but_never_applies() {
        let none = cached("a", Mode::None, NOW - 1000, 86_400);
        assert_eq!(none.applicable(NOW, &options()), None);
        assert_eq!(
            plan(&none, &txt("a"), NOW, &options(), false),
            Plan::Keep(LookupOutcome::Current)
        );
    }

    #[test]
    fn a_policy_of_max_age_zero_applies_for_the_memory_ttl_after_its_fetch() {
        let zero = cached("a", Mode::Enforce, NOW - 1000, 0);
        assert!(zero.usable().is_some());
        assert!(zero.applicable(NOW, &options()).is_some());
        assert_eq!(
            plan(&zero, &txt("a"), NOW, &options(), false),
            Plan::Keep(LookupOutcome::Current),
            "not fetched again within the memory ttl"
        );
        let later = NOW + millis(options().memory_ttl);
        assert_eq!(zero.applicable(later, &options()), None);
        assert_eq!(
            plan(&zero, &txt("a"), later, &options(), false),
            Plan::Fetch { id: "a".into() }
        );
    }

    #[test]
    fn the_refresh_window_is_a_tenth_of_max_age_at_least_and_half_at_most() {
        let o = CacheOptions {
            refresh_before: Duration::from_secs(3600),
            ..options()
        };
        let day = Duration::from_secs(86_400);
        assert_eq!(o.refresh_window(day), Duration::from_secs(8640));
        assert_eq!(
            o.refresh_window(day / 24),
            Duration::from_secs(1800),
            "an hour's policy"
        );
        assert_eq!(
            o.refresh_window(Duration::from_secs(20 * 3600)),
            Duration::from_secs(7200)
        );
        let short = CacheOptions {
            refresh_before: Duration::from_secs(60),
            ..options()
        };
        assert_eq!(
            short.refresh_window(Duration::from_secs(100)),
            Duration::from_secs(50)
        );
        assert_eq!(short.refresh_window(Duration::ZERO), Duration::ZERO);
    }
}
