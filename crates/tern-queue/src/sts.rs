//! The cluster-wide MTA-STS policy cache (RFC 8461), kept in the queue's store: [`PolicyStore`].
//!
//! A policy fetched by one worker serves every worker, so it lives where the queue lives (Redis, or the
//! embedded store), one entry per policy domain. What a policy means is not the queue's business: the entry
//! holds it as opaque text (`tern-mta-sts` turns a policy into text and back), with its id, when it was
//! fetched and until when it applies, and the last fetch error. Beside the entries, a lock per domain with
//! a named owner and a time to live lets one worker of the cluster refresh a domain at a time.
//!
//! Every backend keeps the same rules (the conformance suite checks them):
//!
//! - Domains are matched without regard to case and stored lower-case: an entry comes back with its domain
//!   lower-cased.
//! - An entry is returned as stored, expired or not: whether a policy still applies is the caller's
//!   decision. It is kept at least until its `expires_at_ms`, and forgotten [`KEEP_AFTER_EXPIRY`] after
//!   the later of that time and its last write, so that the domains the cluster no longer sends to vanish.
//! - [`PolicyStore::sts_list`] pages through the entries in domain order.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// How long an entry is kept after the later of its `expires_at_ms` and its last write (24 hours): a domain
/// no one sends to any more vanishes, and clocks that differ a little (the caller's, and Redis's which
/// applies the key's expiry) never drop a policy before it expires.
pub const KEEP_AFTER_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// One policy domain's cache entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsEntry {
    /// The policy domain (stored lower-case).
    pub domain: String,
    /// The policy as text, opaque to the queue; empty when no policy was ever fetched (an entry made by
    /// [`PolicyStore::sts_record_error`] alone).
    pub policy: String,
    /// The policy's id (the `id=` of the TXT record it was fetched for); empty with no policy.
    pub policy_id: String,
    /// When the policy was fetched (Unix ms; 0 with no policy).
    pub fetched_at_ms: u64,
    /// Until when the policy applies: `fetched_at_ms` plus its `max_age` (Unix ms; 0 with no policy).
    pub expires_at_ms: u64,
    /// The last fetch error, until a policy is put again.
    pub last_error: Option<String>,
    /// When the last fetch error happened (Unix ms).
    pub last_error_at_ms: Option<u64>,
}

impl StsEntry {
    /// Whether the entry holds a policy (an entry made by recording an error alone holds none).
    pub fn has_policy(&self) -> bool {
        !self.policy.is_empty()
    }
}

/// What [`PolicyStore::sts_try_lock`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The caller holds the lock now (it was free, had lapsed, or was the caller's already: its time to live
    /// starts again).
    Acquired,
    /// Another owner holds the lock; its name.
    HeldBy(String),
}

/// The MTA-STS policy cache, shared by every node of the queue's store.
///
/// Every method is safe to call concurrently from many tasks and nodes, and safe to repeat after
/// [`QueueError::Unavailable`] (the call may or may not have taken effect).
#[async_trait]
pub trait PolicyStore: Send + Sync + Debug {
    /// The entry of `domain` (any case), expired or not; `None` when there is none.
    async fn sts_get(&self, domain: &str) -> Result<Option<StsEntry>, QueueError>;

    /// Stores `entry` in place of the domain's entry, error fields included: a freshly fetched policy is put
    /// with no error, which clears the last one. An empty domain is [`QueueError::InvalidMessage`].
    async fn sts_put(&self, entry: &StsEntry) -> Result<(), QueueError>;

    /// Records a failed fetch of `domain`'s policy at `at_ms` (Unix ms): the entry's policy, if any, is
    /// kept (a cached policy keeps applying until it expires); a domain without an entry gets one with no
    /// policy.
    async fn sts_record_error(&self, domain: &str, error: &str, at_ms: u64) -> Result<(), QueueError>;

    /// Removes the domain's entry; whether there was one. The refresh lock is left alone.
    async fn sts_evict(&self, domain: &str) -> Result<bool, QueueError>;

    /// Up to `limit` entries in domain order, starting after the domain `after` (`None`: from the first).
    /// The next page starts after the last domain of this one; fewer than `limit` entries means the end.
    async fn sts_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StsEntry>, QueueError>;

    /// Takes the refresh lock of `domain` for `owner` for `ttl` (at least a millisecond), unless another
    /// owner holds it: only one worker of the cluster refreshes a domain at a time. A lock whose time ran
    /// out is free; the holder taking it again starts its time anew.
    async fn sts_try_lock(&self, domain: &str, owner: &str, ttl: Duration)
    -> Result<LockOutcome, QueueError>;

    /// Frees the refresh lock of `domain` if `owner` holds it; a lock held by another owner (or none) is
    /// left as it is. Safe to repeat.
    async fn sts_unlock(&self, domain: &str, owner: &str) -> Result<(), QueueError>;
}

/// A domain as stored: lower-case, and not empty.
pub(crate) fn stored_domain(domain: &str) -> Result<String, QueueError> {
    if domain.is_empty() {
        return Err(QueueError::InvalidMessage(
            "an MTA-STS cache entry needs a domain".into(),
        ));
    }
    Ok(domain.to_ascii_lowercase())
}

/// Until when (Unix ms) an entry written at `now_ms` that applies until `expires_at_ms` is kept.
pub(crate) fn keep_until_ms(expires_at_ms: u64, now_ms: u64) -> u64 {
    let keep = u64::try_from(KEEP_AFTER_EXPIRY.as_millis()).unwrap_or(u64::MAX);
    expires_at_ms.max(now_ms).saturating_add(keep)
}

/// A lock's time to live in whole milliseconds, at least one.
pub(crate) fn lock_ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_stored_lower_case_and_never_empty() {
        assert_eq!(
            stored_domain("MX.Example.COM").ok().as_deref(),
            Some("mx.example.com")
        );
        assert!(matches!(stored_domain(""), Err(QueueError::InvalidMessage(_))));
    }

    #[test]
    fn an_entry_is_kept_a_day_past_its_expiry_or_its_write() {
        let day = 24 * 3600 * 1000;
        assert_eq!(keep_until_ms(5_000, 1_000), 5_000 + day);
        assert_eq!(keep_until_ms(0, 1_000), 1_000 + day, "no policy: from the write");
        assert_eq!(keep_until_ms(u64::MAX, 0), u64::MAX);
        assert_eq!(lock_ttl_ms(Duration::ZERO), 1);
        assert_eq!(lock_ttl_ms(Duration::from_millis(1500)), 1500);
    }
}
