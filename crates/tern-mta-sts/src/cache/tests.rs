//! The cache's logic over the embedded store, with a TXT resolver and a policy source answering from
//! memory (the integration tests use Redis, dnsmasq and an HTTPS server).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tern_queue::{EmbeddedQueue, EmbeddedQueueOptions};

use super::*;

/// A TXT resolver answering a settable record, counting its lookups.
#[derive(Default)]
struct Txt {
    answer: Mutex<Option<TxtLookup>>,
    lookups: AtomicUsize,
}

impl Txt {
    fn set(&self, answer: TxtLookup) {
        *lock(&self.answer) = Some(answer);
    }

    fn id(&self, id: &str) {
        self.set(TxtLookup::Records(vec![format!("v=STSv1; id={id}")]));
    }
}

#[async_trait]
impl TxtResolver for Txt {
    async fn lookup_txt(&self, _name: &str) -> TxtLookup {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        lock(&self.answer).clone().unwrap_or(TxtLookup::NotFound)
    }
}

/// A policy source answering a settable result after a delay, counting its fetches.
struct Source {
    answer: Mutex<Result<Policy, FetchError>>,
    delay: Duration,
    fetches: AtomicUsize,
}

impl Source {
    fn new(delay: Duration) -> Source {
        Source {
            answer: Mutex::new(Ok(policy(Mode::Enforce, 86_400))),
            delay,
            fetches: AtomicUsize::new(0),
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl PolicySource for Source {
    async fn fetch_policy(&self, _domain: &str) -> Result<Policy, FetchError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        lock(&self.answer).clone()
    }
}

fn policy(mode: Mode, max_age: u32) -> Policy {
    let mx = if mode == Mode::None {
        vec![]
    } else {
        vec!["mx.example.test".to_owned()]
    };
    Policy::new(mode, mx, max_age).unwrap()
}

struct Setup {
    store: Arc<EmbeddedQueue>,
    txt: Arc<Txt>,
    source: Arc<Source>,
    _dir: tempfile::TempDir,
}

fn setup(delay: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedQueue::open(EmbeddedQueueOptions {
        path: dir.path().to_owned(),
        cache_bytes: 1 << 20,
        ..Default::default()
    })
    .unwrap();
    Setup {
        store: Arc::new(store),
        txt: Arc::new(Txt::default()),
        source: Arc::new(Source::new(delay)),
        _dir: dir,
    }
}

impl Setup {
    fn cache(&self, owner: &str, options: CacheOptions) -> PolicyCache {
        PolicyCache::new(
            self.store.clone(),
            self.source.clone(),
            self.txt.clone(),
            owner.into(),
            options,
        )
    }
}

fn no_memory() -> CacheOptions {
    CacheOptions {
        memory_ttl: Duration::ZERO,
        ..CacheOptions::default()
    }
}

#[tokio::test]
async fn tasks_of_one_process_share_one_fetch() {
    let s = setup(Duration::from_millis(200));
    s.txt.id("one");
    let cache = s.cache("w1", no_memory());
    let lookups = (0..8).map(|_| {
        let c = cache.clone();
        tokio::spawn(async move { c.lookup("Example.TEST.").await })
    });
    let mut fetched = 0;
    for l in lookups {
        let l = l.await.unwrap();
        assert_eq!(l.active.as_ref().map(|p| p.id.as_str()), Some("one"));
        fetched += usize::from(l.outcome == LookupOutcome::Fetched);
    }
    assert_eq!(s.source.fetches(), 1);
    assert_eq!(fetched, 1, "the others found the stored policy");
    let entry = cache.get("example.test").await.unwrap().unwrap();
    assert_eq!(entry.domain, "example.test");
    assert_eq!(entry.policy_id, "one");
    assert!(lock(&cache.inner.flights).is_empty(), "flights are cleaned up");
}

#[tokio::test]
async fn memory_answers_within_its_ttl_without_dns_or_store() {
    let s = setup(Duration::ZERO);
    s.txt.id("one");
    let cache = s.cache(
        "w1",
        CacheOptions {
            memory_ttl: Duration::from_secs(3600),
            ..CacheOptions::default()
        },
    );
    let first = cache.lookup("example.test").await;
    assert!(!first.from_memory);
    let second = cache.lookup("example.test").await;
    assert!(second.from_memory);
    assert_eq!(second.active, first.active);
    assert_eq!(s.txt.lookups.load(Ordering::SeqCst), 1);
    // recheck goes past the memory.
    s.txt.id("two");
    let rechecked = cache.recheck("example.test").await.unwrap();
    assert_eq!(rechecked.id, "two");
    assert_eq!(s.source.fetches(), 2);
}

/// Stores a policy of a day's max_age for `id`, fetched 23.5 hours ago: within its refresh window.
async fn store_aging_policy(s: &Setup, id: &str) -> ActivePolicy {
    let fetched_at_ms = now_ms() - 23 * 3_600_000 - 1_800_000;
    let active = ActivePolicy {
        domain: "example.test".into(),
        id: id.into(),
        policy: policy(Mode::Enforce, 86_400),
        fetched_at_ms,
        expires_at_ms: fetched_at_ms + 86_400_000,
    };
    s.store.sts_put(&active.to_entry()).await.unwrap();
    active
}

async fn wait_for_entry(cache: &PolicyCache, what: &str, done: impl Fn(&StsEntry) -> bool) -> StsEntry {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(entry) = cache.get("example.test").await.unwrap()
            && done(&entry)
        {
            return entry;
        }
        assert!(Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_policy_close_to_expiry_is_refreshed_in_the_background() {
    let s = setup(Duration::ZERO);
    s.txt.id("one");
    let aging = store_aging_policy(&s, "one").await;
    let cache = s.cache("w1", no_memory());
    let l = cache.lookup("example.test").await;
    assert_eq!(l.outcome, LookupOutcome::Current);
    assert_eq!(
        l.active.as_ref(),
        Some(&aging),
        "the cached policy applies meanwhile"
    );
    let entry = wait_for_entry(&cache, "the background refresh", |e| {
        e.fetched_at_ms > aging.fetched_at_ms
    })
    .await;
    assert_eq!(entry.policy_id, "one");
    assert_eq!(s.source.fetches(), 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_policy_and_waits_before_the_next() {
    let s = setup(Duration::ZERO);
    s.txt.id("one");
    let aging = store_aging_policy(&s, "one").await;
    *lock(&s.source.answer) = Err(FetchError::Status {
        host: "mta-sts.example.test".into(),
        status: 500,
    });
    let cache = s.cache("w1", no_memory());
    assert_eq!(cache.policy_for("example.test").await.as_ref(), Some(&aging));
    let entry = wait_for_entry(&cache, "the failed refresh", |e| e.last_error.is_some()).await;
    assert!(entry.has_policy(), "the policy stays beside the error");
    for _ in 0..3 {
        let l = cache.lookup("example.test").await;
        assert_eq!(l.outcome, LookupOutcome::Current);
        assert_eq!(l.active.as_ref(), Some(&aging));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.source.fetches(), 1, "refreshed again within the retry time");
}

#[tokio::test]
async fn a_txt_record_gone_keeps_the_cached_policy_and_none_cached_is_no_policy() {
    let s = setup(Duration::ZERO);
    let cache = s.cache("w1", no_memory());
    assert_eq!(
        cache.lookup("example.test").await,
        PolicyLookup {
            active: None,
            outcome: LookupOutcome::NoRecord(TxtError::NoRecord),
            from_memory: false
        }
    );
    s.txt.id("one");
    assert!(cache.policy_for("example.test").await.is_some());
    s.txt.set(TxtLookup::NotFound);
    assert!(cache.policy_for("example.test").await.is_some());
    s.txt.set(TxtLookup::Failed("SERVFAIL".into()));
    let l = cache.lookup("example.test").await;
    assert_eq!(l.outcome, LookupOutcome::LookupFailed("SERVFAIL".into()));
    assert!(l.active.is_some());
    assert_eq!(s.source.fetches(), 1);
}

#[tokio::test]
async fn refresh_fetches_whatever_is_cached_and_reports_failures() {
    let s = setup(Duration::ZERO);
    let cache = s.cache("w1", CacheOptions::default());
    assert_eq!(
        cache.refresh("example.test").await,
        Err(CacheError::NoRecord(TxtError::NoRecord))
    );
    s.txt.id("one");
    let entry = cache.refresh("example.test").await.unwrap();
    assert_eq!(entry.policy_id, "one");
    assert_eq!(cache.get("example.test").await.unwrap(), Some(entry.clone()));
    let again = cache.refresh("example.test").await.unwrap();
    assert_eq!(s.source.fetches(), 2, "a refresh fetches even a current policy");
    assert!(again.fetched_at_ms >= entry.fetched_at_ms);

    let error = FetchError::Status {
        host: "mta-sts.example.test".into(),
        status: 404,
    };
    *lock(&s.source.answer) = Err(error.clone());
    assert_eq!(cache.refresh("example.test").await, Err(CacheError::Fetch(error)));
    let stored = cache.get("example.test").await.unwrap().unwrap();
    assert!(stored.has_policy());
    assert!(stored.last_error.as_deref().unwrap().contains("404"));

    s.store
        .sts_try_lock("example.test", "w2", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.refresh("example.test").await,
        Err(CacheError::Locked { owner: "w2".into() })
    );
    assert!(cache.evict("EXAMPLE.test").await.unwrap());
    assert_eq!(cache.get("example.test").await.unwrap(), None);
    assert_eq!(cache.list(None, 10).await.unwrap(), vec![]);
    assert_eq!(cache.get("").await, Err(CacheError::InvalidDomain(String::new())));
}

#[tokio::test]
async fn an_empty_domain_has_no_policy() {
    let s = setup(Duration::ZERO);
    let cache = s.cache("w1", no_memory());
    assert_eq!(cache.lookup(".").await.outcome, LookupOutcome::InvalidDomain);
    assert_eq!(s.txt.lookups.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_nothing_cached_a_lookup_waits_for_the_lock_holders_policy() {
    let s = setup(Duration::ZERO);
    s.txt.id("one");
    s.store
        .sts_try_lock("example.test", "w2", Duration::from_secs(60))
        .await
        .unwrap();
    let holder = {
        let store = s.store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = now_ms();
            let active = ActivePolicy {
                domain: "example.test".into(),
                id: "one".into(),
                policy: policy(Mode::Enforce, 86_400),
                fetched_at_ms: now,
                expires_at_ms: now + 86_400_000,
            };
            store.sts_put(&active.to_entry()).await.unwrap();
            active
        })
    };
    let cache = s.cache("w1", no_memory());
    let l = cache.lookup("example.test").await;
    let stored = holder.await.unwrap();
    assert_eq!(l.outcome, LookupOutcome::Locked("w2".into()));
    assert_eq!(l.active, Some(stored), "the holder's policy applies");
    assert_eq!(s.source.fetches(), 0, "this worker fetched nothing");
}

#[tokio::test]
async fn a_lookup_waiting_for_the_lock_holder_fetches_itself_once_the_lock_is_free() {
    let s = setup(Duration::ZERO);
    s.txt.id("one");
    s.store
        .sts_try_lock("example.test", "w2", Duration::from_secs(60))
        .await
        .unwrap();
    let store = s.store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.sts_unlock("example.test", "w2").await.unwrap();
    });
    let cache = s.cache("w1", no_memory());
    let l = cache.lookup("example.test").await;
    assert_eq!(l.outcome, LookupOutcome::Fetched);
    assert_eq!(l.active.map(|p| p.id), Some("one".to_owned()));
}

#[tokio::test]
async fn a_policy_of_max_age_zero_applies_to_the_lookup_that_fetched_it_and_stays_in_memory() {
    let s = setup(Duration::ZERO);
    s.txt.id("one");
    *lock(&s.source.answer) = Ok(policy(Mode::Enforce, 0));
    let cache = s.cache(
        "w1",
        CacheOptions {
            memory_ttl: Duration::from_secs(3600),
            ..CacheOptions::default()
        },
    );
    let first = cache.lookup("example.test").await;
    assert_eq!(first.outcome, LookupOutcome::Fetched);
    assert!(first.active.is_some(), "it applies to this delivery");
    let second = cache.lookup("example.test").await;
    assert!(second.from_memory);
    assert_eq!(second.active, first.active);
    assert_eq!(s.source.fetches(), 1, "not fetched on every lookup");

    // Without memory, it still applies to the delivery it was fetched for.
    let bare = s.cache("w2", no_memory());
    s.txt.id("two");
    let l = bare.lookup("example.test").await;
    assert_eq!(l.outcome, LookupOutcome::Fetched);
    assert_eq!(l.active.map(|p| p.id), Some("two".to_owned()));
}

#[tokio::test]
async fn a_fetch_failure_counts_for_tls_rpt_once_not_again_from_memory() {
    let s = setup(Duration::ZERO);
    s.txt.id("one");
    *lock(&s.source.answer) = Err(FetchError::Status {
        host: "mta-sts.example.test".into(),
        status: 500,
    });
    let cache = s.cache(
        "w1",
        CacheOptions {
            memory_ttl: Duration::from_secs(3600),
            ..CacheOptions::default()
        },
    );
    let first = cache.lookup("example.test").await;
    assert_eq!(
        first.tls_rpt_failure(),
        Some(TlsRptResultType::StsPolicyFetchError)
    );
    let again = cache.lookup("example.test").await;
    assert!(again.from_memory);
    assert!(matches!(again.outcome, LookupOutcome::FetchFailed(_)));
    assert_eq!(again.tls_rpt_failure(), None);
}

#[test]
fn tasks_wait_for_a_shared_fetch_as_long_as_it_may_take() {
    let options = CacheOptions::for_fetch_timeout(Duration::from_secs(60));
    // The fetching task may wait lock_wait for another worker's lock, then fetch for up to lock_ttl.
    assert!(options.flight_wait() >= options.lock_wait + options.lock_ttl);
    assert_eq!(options.flight_wait(), Duration::from_secs(60 + 90 + 30));
}

/// The task that fetches first waits for another worker's lock (almost `lock_wait`), then fetches (almost
/// `lock_ttl`): longer than `lock_ttl` in all. A second task of the process, which shares that fetch,
/// still gets its policy instead of giving up and going on without one.
#[tokio::test]
async fn a_task_sharing_a_fetch_that_first_waited_for_the_lock_gets_its_policy() {
    let s = setup(Duration::from_millis(2500));
    s.txt.id("one");
    s.store
        .sts_try_lock("example.test", "w2", Duration::from_secs(60))
        .await
        .unwrap();
    let store = s.store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        store.sts_unlock("example.test", "w2").await.unwrap();
    });
    let cache = s.cache(
        "w1",
        CacheOptions {
            lock_wait: Duration::from_millis(1500),
            lock_ttl: Duration::from_secs(3),
            ..no_memory()
        },
    );
    let started = Instant::now();
    let lookups: Vec<_> = (0..2)
        .map(|_| {
            let c = cache.clone();
            tokio::spawn(async move { c.lookup("example.test").await })
        })
        .collect();
    for l in lookups {
        let l = l.await.unwrap();
        assert_eq!(
            l.active.as_ref().map(|p| p.id.as_str()),
            Some("one"),
            "{:?}",
            l.outcome
        );
    }
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the fetch took longer than lock_ttl: {:?}",
        started.elapsed()
    );
    assert_eq!(s.source.fetches(), 1);
}
