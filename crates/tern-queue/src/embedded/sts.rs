//! The MTA-STS policy cache ([`PolicyStore`]) in the embedded store.
//!
//! Entries live in the state (`State::sts`) and on disk in the `sts` table; every change goes through the
//! writer like any other operation, so it is durable (group commit) before its caller hears back. Each
//! entry is kept until a day past the later of its expiry and its last write (as the Redis backend's key
//! TTL): a read no longer sees it after that, and the next write drops it for good.
//!
//! Refresh locks are kept in memory: every worker that could contend for one runs in this process (the
//! store allows one), so a lock need not outlive it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tern_core::time::now_ms;

use super::EmbeddedQueue;
use super::state::State;
use crate::QueueError;
use crate::sts::{LockOutcome, PolicyStore, StsEntry, keep_until_ms, stored_domain};

/// The most expired entries one write drops (the rest go with later writes; reads skip them anyway).
const PRUNE_CHUNK: usize = 256;

/// The cache's entries in memory.
#[derive(Debug, Default)]
pub(crate) struct StsCache {
    /// Domain → its entry and until when it is kept (Unix ms), in domain order (for listing).
    pub entries: BTreeMap<String, (StsEntry, u64)>,
    /// The entries by the time they go.
    ends: BTreeSet<(u64, String)>,
}

impl StsCache {
    /// Sets a domain's entry (its domain is the key) and its keep time.
    pub(crate) fn set(&mut self, entry: StsEntry, keep_until: u64) {
        let domain = entry.domain.clone();
        if let Some((_, old)) = self.entries.insert(domain.clone(), (entry, keep_until)) {
            self.ends.remove(&(old, domain.clone()));
        }
        self.ends.insert((keep_until, domain));
    }

    fn remove(&mut self, domain: &str) -> Option<(StsEntry, u64)> {
        let (entry, keep_until) = self.entries.remove(domain)?;
        self.ends.remove(&(keep_until, domain.to_string()));
        Some((entry, keep_until))
    }

    /// The entry of a domain, unless its keep time has passed.
    fn live(&self, domain: &str, now: u64) -> Option<&(StsEntry, u64)> {
        self.entries.get(domain).filter(|(_, keep)| *keep > now)
    }
}

impl State {
    /// Drops (a chunk of) the entries whose keep time has passed.
    fn sts_prune(&mut self, now: u64) {
        for _ in 0..PRUNE_CHUNK {
            let Some((keep, domain)) = self.sts.ends.first().cloned() else {
                return;
            };
            if keep > now {
                return;
            }
            self.sts.remove(&domain);
            self.changes.sts.insert(domain);
        }
    }

    pub(crate) fn sts_put(&mut self, entry: StsEntry, now: u64) {
        self.sts_prune(now);
        let keep = keep_until_ms(entry.expires_at_ms, now);
        self.changes.sts.insert(entry.domain.clone());
        self.sts.set(entry, keep);
    }

    pub(crate) fn sts_record_error(&mut self, domain: String, error: String, at_ms: u64, now: u64) {
        self.sts_prune(now);
        let (mut entry, kept) = match self.sts.live(&domain, now) {
            Some((entry, keep)) => (entry.clone(), *keep),
            None => (
                StsEntry {
                    domain: domain.clone(),
                    ..StsEntry::default()
                },
                0,
            ),
        };
        entry.last_error = Some(error);
        entry.last_error_at_ms = Some(at_ms);
        self.changes.sts.insert(domain);
        self.sts.set(entry, kept.max(keep_until_ms(at_ms, now)));
    }

    pub(crate) fn sts_evict(&mut self, domain: &str, now: u64) -> bool {
        let was = self.sts.live(domain, now).is_some();
        if self.sts.remove(domain).is_some() {
            self.changes.sts.insert(domain.to_string());
        }
        self.sts_prune(now);
        was
    }

    pub(crate) fn sts_get(&self, domain: &str, now: u64) -> Option<StsEntry> {
        self.sts.live(domain, now).map(|(entry, _)| entry.clone())
    }

    pub(crate) fn sts_list(&self, after: Option<&str>, limit: usize, now: u64) -> Vec<StsEntry> {
        use std::ops::Bound;
        let from = match after {
            Some(after) => Bound::Excluded(after.to_string()),
            None => Bound::Unbounded,
        };
        self.sts
            .entries
            .range((from, Bound::Unbounded))
            .filter(|(_, (_, keep))| *keep > now)
            .take(limit)
            .map(|(_, (entry, _))| entry.clone())
            .collect()
    }
}

/// The refresh locks: domain → owner and until when it holds the lock. The TLS-RPT report locks are the
/// same kind, one per day (`tls_report.rs`).
#[derive(Debug, Default)]
pub(crate) struct StsLocks(Mutex<HashMap<String, (String, Instant)>>);

impl StsLocks {
    pub(super) fn try_lock(&self, domain: String, owner: &str, ttl: Duration) -> LockOutcome {
        // A panic while the map was held leaves it whole (each change is one insert or remove).
        let mut locks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        locks.retain(|_, (_, until)| *until > now);
        if let Some((holder, _)) = locks.get(&domain)
            && holder != owner
        {
            return LockOutcome::HeldBy(holder.clone());
        }
        let until = now + ttl.max(Duration::from_millis(1));
        locks.insert(domain, (owner.to_string(), until));
        LockOutcome::Acquired
    }

    fn unlock(&self, domain: &str, owner: &str) {
        let mut locks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if locks.get(domain).is_some_and(|(holder, _)| holder == owner) {
            locks.remove(domain);
        }
    }
}

#[async_trait]
impl PolicyStore for EmbeddedQueue {
    async fn sts_get(&self, domain: &str) -> Result<Option<StsEntry>, QueueError> {
        let domain = stored_domain(domain)?;
        self.writer.run(move |s| s.sts_get(&domain, now_ms())).await
    }

    async fn sts_put(&self, entry: &StsEntry) -> Result<(), QueueError> {
        let entry = StsEntry {
            domain: stored_domain(&entry.domain)?,
            ..entry.clone()
        };
        self.writer.run(move |s| s.sts_put(entry, now_ms())).await
    }

    async fn sts_record_error(&self, domain: &str, error: &str, at_ms: u64) -> Result<(), QueueError> {
        let (domain, error) = (stored_domain(domain)?, error.to_string());
        self.writer
            .run(move |s| s.sts_record_error(domain, error, at_ms, now_ms()))
            .await
    }

    async fn sts_evict(&self, domain: &str) -> Result<bool, QueueError> {
        let domain = stored_domain(domain)?;
        self.writer.run(move |s| s.sts_evict(&domain, now_ms())).await
    }

    async fn sts_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StsEntry>, QueueError> {
        let after = after.map(str::to_ascii_lowercase);
        self.writer
            .run(move |s| s.sts_list(after.as_deref(), limit, now_ms()))
            .await
    }

    async fn sts_try_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, QueueError> {
        let domain = stored_domain(domain)?;
        Ok(self.sts_locks.try_lock(domain, owner, ttl))
    }

    async fn sts_unlock(&self, domain: &str, owner: &str) -> Result<(), QueueError> {
        let domain = stored_domain(domain)?;
        self.sts_locks.unlock(&domain, owner);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(domain: &str, expires_at_ms: u64) -> StsEntry {
        StsEntry {
            domain: domain.into(),
            policy: "p".into(),
            policy_id: "1".into(),
            fetched_at_ms: 1,
            expires_at_ms,
            ..StsEntry::default()
        }
    }

    #[test]
    fn entries_go_a_day_after_expiry_and_writes_drop_them() {
        let day = 24 * 3600 * 1000;
        let mut s = State::new(10, 10);
        s.sts_put(entry("a.test", 1_000), 0);
        s.sts_put(entry("b.test", 5_000), 0);
        assert!(s.sts_get("a.test", 1_000 + day - 1).is_some());
        assert!(s.sts_get("a.test", 1_000 + day).is_none(), "gone for reads");
        assert_eq!(s.sts_list(None, 10, 1_000 + day).len(), 1);
        s.changes = Default::default();
        s.sts_record_error("c.test".into(), "refused".into(), 2_000, 1_000 + day);
        assert!(!s.sts.entries.contains_key("a.test"), "dropped by the write");
        assert!(s.changes.sts.contains("a.test") && s.changes.sts.contains("c.test"));
        assert!(!s.sts_evict("a.test", 1_000 + day));
    }

    #[test]
    fn an_error_keeps_the_later_keep_time() {
        let day = 24 * 3600 * 1000;
        let mut s = State::new(10, 10);
        s.sts_put(entry("a.test", 10 * day), 0);
        s.sts_record_error("a.test".into(), "refused".into(), day, day);
        assert_eq!(s.sts.entries["a.test"].1, 11 * day);
        assert_eq!(s.sts_get("a.test", day).map(|e| e.policy), Some("p".into()));
    }

    #[tokio::test]
    async fn entries_outlive_a_reopen_and_locks_do_not() {
        use crate::embedded::EmbeddedQueueOptions;
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = EmbeddedQueueOptions {
            path: dir.path().to_path_buf(),
            ..Default::default()
        };
        let q = EmbeddedQueue::open(opts.clone()).expect("open");
        let kept = entry("kept.test", now_ms() + 3_600_000);
        q.sts_put(&kept).await.expect("put");
        q.sts_put(&entry("evicted.test", now_ms() + 3_600_000))
            .await
            .expect("put");
        q.sts_record_error("error.test", "refused", 5)
            .await
            .expect("record");
        assert!(q.sts_evict("evicted.test").await.expect("evict"));
        let ttl = Duration::from_secs(60);
        assert_eq!(
            q.sts_try_lock("kept.test", "w1", ttl).await.expect("lock"),
            LockOutcome::Acquired
        );
        drop(q);

        let q = EmbeddedQueue::open(opts).expect("reopen");
        assert_eq!(q.sts_get("kept.test").await.expect("get"), Some(kept));
        let listed: Vec<String> = q
            .sts_list(None, 10)
            .await
            .expect("list")
            .into_iter()
            .map(|e| e.domain)
            .collect();
        assert_eq!(listed, ["error.test", "kept.test"]);
        assert_eq!(
            q.sts_try_lock("kept.test", "w2", ttl).await.expect("lock"),
            LockOutcome::Acquired,
            "a lock belongs to its process"
        );
    }

    #[test]
    fn a_lock_is_held_by_one_owner_until_it_lapses() {
        let locks = StsLocks::default();
        let ttl = Duration::from_secs(60);
        assert_eq!(locks.try_lock("a.test".into(), "w1", ttl), LockOutcome::Acquired);
        assert_eq!(
            locks.try_lock("a.test".into(), "w2", ttl),
            LockOutcome::HeldBy("w1".into())
        );
        assert_eq!(locks.try_lock("a.test".into(), "w1", ttl), LockOutcome::Acquired);
        locks.unlock("a.test", "w2");
        assert_eq!(
            locks.try_lock("a.test".into(), "w2", ttl),
            LockOutcome::HeldBy("w1".into())
        );
        locks.unlock("a.test", "w1");
        assert_eq!(
            locks.try_lock("a.test".into(), "w2", Duration::ZERO),
            LockOutcome::Acquired
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(locks.try_lock("a.test".into(), "w3", ttl), LockOutcome::Acquired);
    }
}
