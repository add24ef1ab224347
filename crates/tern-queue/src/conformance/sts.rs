//! The conformance cases of the MTA-STS policy cache ([`PolicyStore`]): every store that implements it
//! must pass them. Each case gets a fresh, empty store from the caller's factory.
//!
//! ```text
//! let factory = Arc::new(|name: String| Box::pin(async move { make_store(&name).await }));
//! tern_queue::conformance::sts::run_all(factory).await;
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tern_core::time::now_ms;

use crate::QueueError;
use crate::sts::{LockOutcome, PolicyStore, StsEntry};

/// Makes a fresh, empty policy store for the named case.
pub type Factory = Arc<dyn Fn(String) -> BoxFuture<'static, Arc<dyn PolicyStore>> + Send + Sync>;

/// One case.
pub type Case = fn(Arc<dyn PolicyStore>) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub fn cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as Case)),*]
        }
    };
}

cases!(
    sts_a_put_entry_reads_back_in_any_case,
    sts_a_put_replaces_the_entry_and_its_error,
    sts_an_expired_policy_is_still_returned,
    sts_an_error_keeps_the_cached_policy,
    sts_an_error_without_an_entry_makes_one_without_a_policy,
    sts_evict_removes_the_entry_and_says_whether_there_was_one,
    sts_list_pages_in_domain_order,
    sts_a_lock_has_one_owner_at_a_time,
    sts_a_lock_lapses_after_its_ttl,
    sts_only_the_owner_unlocks,
    sts_an_empty_domain_is_refused,
);

/// Runs every case (four at a time), each on a fresh store, and panics listing the cases that failed.
pub async fn run_all(factory: Factory) {
    run_some(factory, |_| true).await;
}

/// Runs the cases whose name `select` accepts.
pub async fn run_some(factory: Factory, select: impl Fn(&str) -> bool) {
    let selected: Vec<_> = cases().into_iter().filter(|(n, _)| select(n)).collect();
    super::run_cases(move |name| factory(name), selected).await;
}

// ---------------------------------------------------------------------------------------------- helpers

const DAY_MS: u64 = 24 * 3600 * 1000;

/// An enforce policy's text (opaque to the store; any text would do).
fn policy_text(mx: &str) -> String {
    format!("version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 86400\n")
}

/// A freshly fetched entry of `domain`, valid for a day.
fn fetched(domain: &str, id: &str) -> StsEntry {
    let now = now_ms();
    StsEntry {
        domain: domain.to_string(),
        policy: policy_text(&format!("mx.{domain}")),
        policy_id: id.to_string(),
        fetched_at_ms: now,
        expires_at_ms: now + DAY_MS,
        last_error: None,
        last_error_at_ms: None,
    }
}

async fn get(s: &Arc<dyn PolicyStore>, domain: &str) -> Option<StsEntry> {
    s.sts_get(domain).await.expect("sts_get")
}

async fn put(s: &Arc<dyn PolicyStore>, entry: &StsEntry) {
    s.sts_put(entry).await.expect("sts_put");
}

async fn lock(s: &Arc<dyn PolicyStore>, domain: &str, owner: &str, ttl: Duration) -> LockOutcome {
    s.sts_try_lock(domain, owner, ttl).await.expect("sts_try_lock")
}

/// Every entry, read a page of `page` at a time.
async fn list_all(s: &Arc<dyn PolicyStore>, page: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let entries = s.sts_list(after.as_deref(), page).await.expect("sts_list");
        assert!(entries.len() <= page, "a page holds at most its limit");
        out.extend(entries.iter().map(|e| e.domain.clone()));
        if entries.len() < page {
            return out;
        }
        after = entries.last().map(|e| e.domain.clone());
    }
}

// ---------------------------------------------------------------------------------------------- cases

/// No entry reads as none; a put entry reads back whole, under any case of its domain, with its domain
/// lower-cased.
async fn sts_a_put_entry_reads_back_in_any_case(s: Arc<dyn PolicyStore>) {
    assert_eq!(get(&s, "example.test").await, None);
    let entry = fetched("Example.TEST", "20240101T000000");
    put(&s, &entry).await;
    let want = StsEntry {
        domain: "example.test".into(),
        ..entry
    };
    assert_eq!(get(&s, "example.test").await.as_ref(), Some(&want));
    assert_eq!(get(&s, "EXAMPLE.test").await.as_ref(), Some(&want));
    assert!(want.has_policy());
    assert_eq!(get(&s, "other.test").await, None, "entries are per domain");
}

/// A second put replaces the first entry whole: a new policy, and no error left from before.
async fn sts_a_put_replaces_the_entry_and_its_error(s: Arc<dyn PolicyStore>) {
    put(&s, &fetched("replace.test", "1")).await;
    s.sts_record_error("replace.test", "connection refused", now_ms())
        .await
        .expect("record error");
    let newer = StsEntry {
        policy: policy_text("*.replace.test"),
        ..fetched("replace.test", "2")
    };
    put(&s, &newer).await;
    let got = get(&s, "replace.test").await.expect("entry");
    assert_eq!(got, newer);
    assert_eq!((got.last_error, got.last_error_at_ms), (None, None));

    let with_error = StsEntry {
        last_error: Some("stored as given".into()),
        last_error_at_ms: Some(42),
        ..fetched("replace.test", "3")
    };
    put(&s, &with_error).await;
    assert_eq!(
        get(&s, "replace.test").await,
        Some(with_error),
        "a put stores the entry as given"
    );
}

/// Whether a policy still applies is the caller's decision: one past its expiry reads back as stored.
async fn sts_an_expired_policy_is_still_returned(s: Arc<dyn PolicyStore>) {
    let now = now_ms();
    let old = StsEntry {
        fetched_at_ms: now - 3 * DAY_MS,
        expires_at_ms: now - 2 * DAY_MS,
        ..fetched("expired.test", "old")
    };
    put(&s, &old).await;
    assert_eq!(get(&s, "expired.test").await, Some(old));
    assert_eq!(list_all(&s, 10).await, ["expired.test"]);
}

/// A failed fetch keeps the cached policy and records the error and its time; the next error replaces it.
async fn sts_an_error_keeps_the_cached_policy(s: Arc<dyn PolicyStore>) {
    let entry = fetched("keep.test", "7");
    put(&s, &entry).await;
    let at = now_ms();
    s.sts_record_error("KEEP.test", "HTTP 404", at)
        .await
        .expect("record error");
    let got = get(&s, "keep.test").await.expect("entry");
    assert_eq!(
        got,
        StsEntry {
            last_error: Some("HTTP 404".into()),
            last_error_at_ms: Some(at),
            ..entry.clone()
        }
    );
    s.sts_record_error("keep.test", "timed out", at + 1)
        .await
        .expect("record error");
    let got = get(&s, "keep.test").await.expect("entry");
    assert_eq!(got.last_error.as_deref(), Some("timed out"));
    assert_eq!(got.last_error_at_ms, Some(at + 1));
    assert_eq!((got.policy, got.policy_id), (entry.policy, entry.policy_id));
}

/// A failed fetch for a domain with no entry makes one that holds no policy, only the error; it is listed.
async fn sts_an_error_without_an_entry_makes_one_without_a_policy(s: Arc<dyn PolicyStore>) {
    let at = now_ms();
    s.sts_record_error("new.test", "no TXT record", at)
        .await
        .expect("record error");
    let got = get(&s, "new.test").await.expect("an entry");
    assert_eq!(
        got,
        StsEntry {
            domain: "new.test".into(),
            last_error: Some("no TXT record".into()),
            last_error_at_ms: Some(at),
            ..StsEntry::default()
        }
    );
    assert!(!got.has_policy());
    assert_eq!(list_all(&s, 10).await, ["new.test"]);
    let entry = fetched("new.test", "1");
    put(&s, &entry).await;
    assert_eq!(get(&s, "new.test").await, Some(entry), "a later fetch fills it");
}

/// Evict removes the entry (and its place in the listing), says whether there was one, and leaves the
/// domain's refresh lock alone.
async fn sts_evict_removes_the_entry_and_says_whether_there_was_one(s: Arc<dyn PolicyStore>) {
    put(&s, &fetched("evict.test", "1")).await;
    put(&s, &fetched("stay.test", "1")).await;
    let ttl = Duration::from_secs(60);
    assert_eq!(lock(&s, "evict.test", "w1", ttl).await, LockOutcome::Acquired);
    assert!(s.sts_evict("Evict.TEST").await.expect("evict"));
    assert_eq!(get(&s, "evict.test").await, None);
    assert!(
        !s.sts_evict("evict.test").await.expect("evict again"),
        "safe to repeat"
    );
    assert!(!s.sts_evict("never.test").await.expect("evict unknown"));
    assert_eq!(list_all(&s, 10).await, ["stay.test"]);
    assert_eq!(
        lock(&s, "evict.test", "w2", ttl).await,
        LockOutcome::HeldBy("w1".into())
    );
    put(&s, &fetched("evict.test", "2")).await;
    assert_eq!(
        list_all(&s, 10).await,
        ["evict.test", "stay.test"],
        "back after a put"
    );
}

/// Listing pages through every entry once, in domain order, a page after the last domain of the one
/// before; an error-only entry is listed too, and an evicted one is not.
async fn sts_list_pages_in_domain_order(s: Arc<dyn PolicyStore>) {
    assert!(s.sts_list(None, 10).await.expect("list").is_empty());
    let mut want = BTreeSet::new();
    for i in 0..23 {
        let domain = format!("d{i:02}.list.test");
        if i % 5 == 0 {
            s.sts_record_error(&domain.to_uppercase(), "refused", now_ms())
                .await
                .expect("record error");
        } else {
            put(&s, &fetched(&domain.to_uppercase(), "1")).await;
        }
        want.insert(domain);
    }
    for gone in ["d03.list.test", "d10.list.test"] {
        assert!(s.sts_evict(gone).await.expect("evict"));
        want.remove(gone);
    }
    let want: Vec<String> = want.into_iter().collect();
    assert_eq!(list_all(&s, 10).await, want, "pages of 10");
    assert_eq!(list_all(&s, 1).await, want, "pages of 1");
    assert_eq!(list_all(&s, 100).await, want, "one page");

    let first = s.sts_list(None, 5).await.expect("list");
    assert_eq!(first.len(), 5);
    assert_eq!(
        first[0],
        get(&s, &first[0].domain).await.expect("entry"),
        "whole entries"
    );
    let after_gap = s.sts_list(Some("d10"), 3).await.expect("list");
    let domains: Vec<&str> = after_gap.iter().map(|e| e.domain.as_str()).collect();
    assert_eq!(
        domains,
        ["d11.list.test", "d12.list.test", "d13.list.test"],
        "after need not be a domain"
    );
    let upper = s.sts_list(Some("D11.LIST.TEST"), 1).await.expect("list");
    assert_eq!(upper[0].domain, "d12.list.test", "after is matched without case");
    assert!(
        s.sts_list(Some("d22.list.test"), 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(s.sts_list(None, 0).await.expect("list").is_empty());
}

/// One owner holds a domain's lock at a time: another is told who holds it; the holder may take it again;
/// other domains' locks are separate; the domain's case does not matter.
async fn sts_a_lock_has_one_owner_at_a_time(s: Arc<dyn PolicyStore>) {
    let ttl = Duration::from_secs(60);
    assert_eq!(
        lock(&s, "lock.test", "worker-1", ttl).await,
        LockOutcome::Acquired
    );
    assert_eq!(
        lock(&s, "LOCK.test", "worker-2", ttl).await,
        LockOutcome::HeldBy("worker-1".into())
    );
    assert_eq!(
        lock(&s, "lock.test", "worker-1", ttl).await,
        LockOutcome::Acquired,
        "the holder takes it again"
    );
    assert_eq!(
        lock(&s, "other.test", "worker-2", ttl).await,
        LockOutcome::Acquired
    );
    assert_eq!(
        lock(&s, "other.test", "worker-1", ttl).await,
        LockOutcome::HeldBy("worker-2".into())
    );
    assert_eq!(get(&s, "lock.test").await, None, "a lock is no entry");
    assert!(s.sts_list(None, 10).await.expect("list").is_empty());
}

/// A lock whose time to live ran out is free for another owner (a worker that died holding it does not
/// block the domain's refresh for good).
async fn sts_a_lock_lapses_after_its_ttl(s: Arc<dyn PolicyStore>) {
    let ttl = Duration::from_secs(1);
    assert_eq!(lock(&s, "lapse.test", "w1", ttl).await, LockOutcome::Acquired);
    assert_eq!(
        lock(&s, "lapse.test", "w2", ttl).await,
        LockOutcome::HeldBy("w1".into())
    );
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_eq!(lock(&s, "lapse.test", "w2", ttl).await, LockOutcome::Acquired);
    assert_eq!(
        lock(&s, "lapse.test", "w1", Duration::from_secs(60)).await,
        LockOutcome::HeldBy("w2".into())
    );
}

/// Only the holder frees a lock: another owner's unlock changes nothing; unlocking a free lock is harmless.
async fn sts_only_the_owner_unlocks(s: Arc<dyn PolicyStore>) {
    let ttl = Duration::from_secs(60);
    s.sts_unlock("unlock.test", "w1")
        .await
        .expect("unlock a free lock");
    assert_eq!(lock(&s, "unlock.test", "w1", ttl).await, LockOutcome::Acquired);
    s.sts_unlock("unlock.test", "w2")
        .await
        .expect("unlock by another");
    assert_eq!(
        lock(&s, "unlock.test", "w2", ttl).await,
        LockOutcome::HeldBy("w1".into())
    );
    s.sts_unlock("UNLOCK.test", "w1")
        .await
        .expect("unlock by the owner");
    assert_eq!(lock(&s, "unlock.test", "w2", ttl).await, LockOutcome::Acquired);
    s.sts_unlock("unlock.test", "w2").await.expect("unlock");
    s.sts_unlock("unlock.test", "w2").await.expect("unlock again");
    assert_eq!(lock(&s, "unlock.test", "w3", ttl).await, LockOutcome::Acquired);
}

/// An entry needs a domain.
async fn sts_an_empty_domain_is_refused(s: Arc<dyn PolicyStore>) {
    let err = s.sts_put(&fetched("", "1")).await;
    assert!(matches!(err, Err(QueueError::InvalidMessage(_))), "{err:?}");
    let err = s.sts_record_error("", "x", now_ms()).await;
    assert!(matches!(err, Err(QueueError::InvalidMessage(_))), "{err:?}");
    assert!(s.sts_list(None, 10).await.expect("list").is_empty());
}
