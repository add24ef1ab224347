//! The cluster-shared policy cache ([`PolicyCache`]): policies live in the queue's store
//! ([`PolicyStore`]), one entry per policy domain, so that a policy one worker fetched serves every worker;
//! a short in-process memory sits in front of the store.
//!
//! How a delivery finds its domain's policy ([`PolicyCache::lookup`], RFC 8461 §5):
//!
//! 1. What this process read less than [`CacheOptions::memory_ttl`] ago is trusted as it is.
//! 2. Otherwise the store's entry is read and TXT `_mta-sts.<domain>` looked up. The cached id, unexpired:
//!    it applies (and within [`CacheOptions::refresh_window`] of its expiry it is refreshed in the
//!    background). Another id, or nothing usable cached: the policy is fetched now. No valid record, or a
//!    failed lookup: an unexpired cached policy still applies, and without one there is no policy.
//! 3. Every fetch, in the foreground or the background, runs under the domain's lock in the store
//!    ([`PolicyStore::sts_try_lock`], named by the worker's owner string), so one worker of the cluster
//!    fetches a domain at a time; tasks of one process share one fetch. A delivery uses what is cached
//!    while another worker fetches; with nothing usable cached it waits for that worker's result (at most
//!    [`CacheOptions::lock_wait`], polling the store), so that it does not go out without a policy.
//! 4. A failed fetch is recorded in the entry ([`PolicyStore::sts_record_error`]) and no worker fetches
//!    the domain again sooner than [`CacheOptions::retry_failed_after`] after it; the cached policy, while
//!    unexpired, keeps applying.
//!
//! A policy in mode `none` is cached like any other, and is no policy.

mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tern_queue::{LockOutcome, PolicyStore, QueueError, StsEntry};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use crate::discovery::{PolicySource, TxtLookup};
use crate::dns::{HickoryDns, TxtResolver};
use crate::fetch::{DEFAULT_FETCH_TIMEOUT, FetchError, FetchOptions, PolicyFetcher, SetupError, policy_host};
use crate::policy::{Mode, Policy, PolicyError};
use crate::tlsrpt::TlsRptResultType;
use crate::txt::{TxtError, record_name, select_record};
use plan::{Known, Plan, applies_at, millis, plan};

/// Default [`CacheOptions::memory_ttl`]: 60 s.
pub const DEFAULT_MEMORY_TTL: Duration = Duration::from_secs(60);
/// Default [`CacheOptions::refresh_before`]: an hour.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(3600);
/// Default [`CacheOptions::retry_failed_after`]: 5 minutes (the rule).
pub const DEFAULT_RETRY_FAILED_AFTER: Duration = Duration::from_secs(300);
/// How much longer than a fetch the refresh lock lasts ([`CacheOptions::for_fetch_timeout`]).
pub const LOCK_MARGIN: Duration = Duration::from_secs(30);
/// How often a lookup waiting for another worker's fetch reads the store again.
const LOCK_POLL: Duration = Duration::from_millis(250);
/// The most domains a process remembers; past it, what is older than the memory TTL is forgotten.
const MEMORY_LIMIT: usize = 100_000;

/// How the cache behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// How long a process trusts what it read (the store's entry and the TXT record) before reading
    /// again (default 60 s); zero: every lookup reads the store and DNS.
    pub memory_ttl: Duration,
    /// How long before its expiry a policy is refreshed in the background (default an hour). The window
    /// is at least a tenth of the policy's `max_age` and at most half of it
    /// ([`CacheOptions::refresh_window`]).
    pub refresh_before: Duration,
    /// No fetch of a domain (by any worker) sooner than this after its last failed fetch (default 5 min).
    pub retry_failed_after: Duration,
    /// The time to live of a domain's refresh lock; longer than a fetch may take (the fetch timeout), so
    /// that a lock never lapses under a fetch. Default: the default fetch timeout plus 30 s.
    pub lock_ttl: Duration,
    /// How long a lookup with nothing usable cached waits for another worker's fetch of the domain (it
    /// holds the lock) before going on without a policy; default: the fetch timeout.
    pub lock_wait: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions::for_fetch_timeout(DEFAULT_FETCH_TIMEOUT)
    }
}

impl CacheOptions {
    /// The defaults, with a lock that outlives a fetch of `fetch_timeout` by [`LOCK_MARGIN`].
    pub fn for_fetch_timeout(fetch_timeout: Duration) -> Self {
        CacheOptions {
            memory_ttl: DEFAULT_MEMORY_TTL,
            refresh_before: DEFAULT_REFRESH_BEFORE,
            retry_failed_after: DEFAULT_RETRY_FAILED_AFTER,
            lock_ttl: fetch_timeout.saturating_add(LOCK_MARGIN),
            lock_wait: fetch_timeout,
        }
    }

    /// How long before its expiry a policy of `max_age` is refreshed: `refresh_before`, but at least a
    /// tenth of `max_age` (a year's policy is refreshed weeks ahead) and at most half of it (a policy of a
    /// few minutes is not refreshed on every lookup).
    pub fn refresh_window(&self, max_age: Duration) -> Duration {
        self.refresh_before.max(max_age / 10).min(max_age / 2)
    }

    /// How long a task waits for another task of this process that is fetching the same domain (they
    /// share its fetch). That task may first wait up to `lock_wait` for another worker's lock, then fetch
    /// for up to `lock_ttl` (the fetch's own bound), with the store's round trips around both
    /// ([`LOCK_MARGIN`]): waiting less would give up on a fetch still in time, and the waiter would go on
    /// without a policy while the fetch it waited for succeeds.
    pub fn flight_wait(&self) -> Duration {
        self.lock_wait
            .saturating_add(self.lock_ttl)
            .saturating_add(LOCK_MARGIN)
    }
}

/// A cached policy, parsed: what a delivery to its domain applies while it is unexpired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivePolicy {
    /// The policy domain, lower-case.
    pub domain: String,
    /// The policy id (the TXT record's `id=` it was fetched for).
    pub id: String,
    /// The policy.
    pub policy: Policy,
    /// When it was fetched (Unix ms).
    pub fetched_at_ms: u64,
    /// Until when it applies: `fetched_at_ms` plus its `max_age` (Unix ms).
    pub expires_at_ms: u64,
}

impl ActivePolicy {
    /// The policy of a store entry; `None` when the entry holds none (only an error).
    pub fn from_entry(entry: &StsEntry) -> Result<Option<ActivePolicy>, PolicyError> {
        if !entry.has_policy() {
            return Ok(None);
        }
        Ok(Some(ActivePolicy {
            domain: entry.domain.to_ascii_lowercase(),
            id: entry.policy_id.clone(),
            policy: Policy::parse(&entry.policy)?,
            fetched_at_ms: entry.fetched_at_ms,
            expires_at_ms: entry.expires_at_ms,
        }))
    }

    /// The store entry for this policy, with no error.
    pub fn to_entry(&self) -> StsEntry {
        StsEntry {
            domain: self.domain.clone(),
            policy: self.policy.to_text(),
            policy_id: self.id.clone(),
            fetched_at_ms: self.fetched_at_ms,
            expires_at_ms: self.expires_at_ms,
            last_error: None,
            last_error_at_ms: None,
        }
    }

    /// The policy's mode.
    pub fn mode(&self) -> Mode {
        self.policy.mode()
    }

    /// Whether the policy has expired at `now_ms` (Unix ms).
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// How a lookup came to its answer: for logs, metrics and TLS-RPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupOutcome {
    /// The TXT record's id is the cached policy's: nothing was fetched.
    Current,
    /// The policy was fetched now and stored.
    Fetched,
    /// Fetching the policy failed now (an unexpired cached policy still applies). Its TLS-RPT result
    /// type is [`FetchError::result_type`].
    FetchFailed(FetchError),
    /// A fetch was due, but the domain's last fetch failed less than `retry_failed_after` ago.
    RetryLater,
    /// A fetch was due, but another worker (this owner) is fetching the domain: what is cached applies
    /// meanwhile. With nothing usable cached, the lookup first waited (up to
    /// [`CacheOptions::lock_wait`]) for that worker to store its result.
    Locked(String),
    /// The domain publishes no valid MTA-STS TXT record (an unexpired cached policy still applies).
    NoRecord(TxtError),
    /// The TXT lookup failed (an unexpired cached policy still applies).
    LookupFailed(String),
    /// The domain is empty.
    InvalidDomain,
}

/// A lookup's answer: the policy that applies and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLookup {
    /// The policy to apply; `None`: no policy (none found, expired, or mode `none`).
    pub active: Option<ActivePolicy>,
    /// How the answer was found (when `from_memory`, how it was found when this process read it).
    pub outcome: LookupOutcome,
    /// Whether the answer came from the process's memory without reading the store or DNS.
    pub from_memory: bool,
}

impl PolicyLookup {
    /// The TLS-RPT failure to record for the policy domain: a fetch that failed now. A failure remembered
    /// from an earlier lookup was recorded then, and is not counted again.
    pub fn tls_rpt_failure(&self) -> Option<TlsRptResultType> {
        match &self.outcome {
            LookupOutcome::FetchFailed(e) if !self.from_memory => Some(e.result_type()),
            _ => None,
        }
    }
}

/// Why a control-plane call of the cache failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The domain is empty.
    #[error("{0:?} is not a policy domain")]
    InvalidDomain(String),
    /// The store failed.
    #[error("the MTA-STS policy store: {0}")]
    Store(#[from] QueueError),
    /// Looking up the TXT record failed.
    #[error("looking up the MTA-STS TXT record failed: {0}")]
    Dns(String),
    /// The domain publishes no valid MTA-STS TXT record, so there is no policy to fetch.
    #[error("no MTA-STS policy is announced: {0}")]
    NoRecord(TxtError),
    /// Another owner holds the domain's refresh lock (it is fetching now).
    #[error("{owner} is fetching the policy now")]
    Locked {
        /// The lock's owner.
        owner: String,
    },
    /// The fetch failed (and was recorded in the entry).
    #[error("fetching the policy failed: {0}")]
    Fetch(FetchError),
}

/// What this process remembers of a domain.
#[derive(Clone, Debug)]
struct Remembered {
    known: Known,
    outcome: LookupOutcome,
    checked_at: Instant,
}

/// The result of one fetch.
struct Fetch {
    known: Known,
    outcome: LookupOutcome,
    /// Why the result could not be stored, if it could not.
    store_error: Option<QueueError>,
}

/// The cluster-shared MTA-STS policy cache. Cheap to clone: clones share the memory.
#[derive(Clone)]
pub struct PolicyCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PolicyStore>,
    source: Arc<dyn PolicySource>,
    txt: Arc<dyn TxtResolver>,
    owner: String,
    options: CacheOptions,
    memory: Mutex<HashMap<String, Remembered>>,
    /// One async mutex per domain being fetched in this process: its tasks share one fetch.
    flights: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache")
            .field("owner", &self.inner.owner)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl PolicyCache {
    /// A cache over `store`, fetching from `source` and discovering ids through `txt`. `owner` names this
    /// worker in the store's refresh locks: unique in the cluster (for example host name and pid).
    pub fn new(
        store: Arc<dyn PolicyStore>,
        source: Arc<dyn PolicySource>,
        txt: Arc<dyn TxtResolver>,
        owner: String,
        options: CacheOptions,
    ) -> PolicyCache {
        PolicyCache {
            inner: Arc::new(Inner {
                store,
                source,
                txt,
                owner,
                options,
                memory: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The production wiring: policies fetched by a [`PolicyFetcher`] with `fetch` that finds policy
    /// hosts through `dns`, TXT records looked up through `dns` too. Fails only when `fetch.extra_ca_file`
    /// cannot be read.
    pub fn with_dns(
        store: Arc<dyn PolicyStore>,
        dns: HickoryDns,
        fetch: FetchOptions,
        owner: String,
        options: CacheOptions,
    ) -> Result<PolicyCache, SetupError> {
        let fetcher = PolicyFetcher::new(fetch, Arc::new(dns.clone()))?;
        Ok(PolicyCache::new(
            store,
            Arc::new(fetcher),
            Arc::new(dns),
            owner,
            options,
        ))
    }

    /// The options.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.options
    }

    /// The owner name this cache takes refresh locks under.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The policy that applies to a delivery to `domain` now: `None` is no policy (none found, expired,
    /// or mode `none`). See [`PolicyCache::lookup`].
    pub async fn policy_for(&self, domain: &str) -> Option<ActivePolicy> {
        self.lookup(domain).await.active
    }

    /// The policy that applies to a delivery to `domain` now, with how it was found. `domain` is the
    /// policy domain in A-label form (any case; a final dot is ignored).
    pub async fn lookup(&self, domain: &str) -> PolicyLookup {
        let Some(domain) = normalize(domain) else {
            return invalid_domain();
        };
        if let Some(hit) = self.remembered(&domain, now_ms()) {
            return hit;
        }
        self.discover(&domain, false).await
    }

    /// Before failing a delivery for good for policy reasons (RFC 8461 §5.1): reads the store and the TXT
    /// record again, past the memory, and fetches now if the id differs from the cached one, even within
    /// `retry_failed_after` of a failed fetch (unless another task failed while this one waited for the
    /// lock). Returns what applies then.
    pub async fn recheck(&self, domain: &str) -> Option<ActivePolicy> {
        let domain = normalize(domain)?;
        self.discover(&domain, true).await.active
    }

    /// For the control plane: looks up the TXT id and fetches the policy now, under the domain's lock,
    /// whatever is cached and whenever the last fetch failed; stores it and returns the stored entry. A
    /// failed fetch is recorded in the entry and returned as [`CacheError::Fetch`].
    pub async fn refresh(&self, domain: &str) -> Result<StsEntry, CacheError> {
        let domain = normalize(domain).ok_or_else(|| CacheError::InvalidDomain(domain.to_owned()))?;
        let id = match self.inner.txt.lookup_txt(&record_name(&domain)).await {
            TxtLookup::Failed(reason) => return Err(CacheError::Dns(reason)),
            TxtLookup::NotFound => select_record(&[]),
            TxtLookup::Records(records) => select_record(&records),
        }
        .map_err(CacheError::NoRecord)?
        .id()
        .to_owned();
        let flight = self.flight(&domain);
        let guard = tokio::time::timeout(self.inner.options.flight_wait(), flight.clone().lock_owned()).await;
        let result = match guard {
            Ok(_guard) => self.refresh_locked(&domain, &id).await,
            Err(_) => Err(CacheError::Locked {
                owner: self.inner.owner.clone(),
            }),
        };
        self.land(&domain, flight);
        result
    }

    /// The domain's entry, straight from the store (expired or not).
    pub async fn get(&self, domain: &str) -> Result<Option<StsEntry>, CacheError> {
        let domain = normalize(domain).ok_or_else(|| CacheError::InvalidDomain(domain.to_owned()))?;
        Ok(self.inner.store.sts_get(&domain).await?)
    }

    /// Up to `limit` entries in domain order after the domain `after` (`None`: from the first); fewer
    /// than `limit` means the end.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StsEntry>, CacheError> {
        let after = after.map(|a| a.trim_end_matches('.').to_ascii_lowercase());
        Ok(self.inner.store.sts_list(after.as_deref(), limit).await?)
    }

    /// Removes the domain's entry from the store and from this process's memory; whether the store had
    /// one. Other workers forget it within their memory TTL.
    pub async fn evict(&self, domain: &str) -> Result<bool, CacheError> {
        let domain = normalize(domain).ok_or_else(|| CacheError::InvalidDomain(domain.to_owned()))?;
        let had = self.inner.store.sts_evict(&domain).await?;
        lock(&self.inner.memory).remove(&domain);
        info!(domain = %domain, had_entry = had, "evicted the MTA-STS policy");
        Ok(had)
    }

    /// What this process read of `domain` less than the memory TTL ago, unless its policy has expired.
    fn remembered(&self, domain: &str, now_ms: u64) -> Option<PolicyLookup> {
        let memory = lock(&self.inner.memory);
        let r = memory.get(domain)?;
        let options = &self.inner.options;
        let fresh = r.checked_at.elapsed() < options.memory_ttl;
        let expired = r
            .known
            .policy
            .as_ref()
            .is_some_and(|p| !applies_at(p, now_ms, options));
        (fresh && !expired).then(|| PolicyLookup {
            active: r.known.applicable(now_ms, options),
            outcome: r.outcome.clone(),
            from_memory: true,
        })
    }

    /// Remembers what was found of `domain`, and answers with it.
    fn finish(&self, domain: &str, known: Known, outcome: LookupOutcome) -> PolicyLookup {
        let active = match outcome {
            // Fetched for this lookup: it applies to this delivery whatever its max_age.
            LookupOutcome::Fetched => known.usable(),
            _ => known.applicable(now_ms(), &self.inner.options),
        };
        // Another worker's fetch ends soon: the next lookup should see its result, not this stopgap.
        if !matches!(outcome, LookupOutcome::Locked(_)) {
            self.remember(domain, known, outcome.clone());
        }
        PolicyLookup {
            active,
            outcome,
            from_memory: false,
        }
    }

    fn remember(&self, domain: &str, known: Known, outcome: LookupOutcome) {
        let mut memory = lock(&self.inner.memory);
        if memory.len() >= MEMORY_LIMIT && !memory.contains_key(domain) {
            let ttl = self.inner.options.memory_ttl;
            memory.retain(|_, r| r.checked_at.elapsed() < ttl);
            if memory.len() >= MEMORY_LIMIT {
                memory.clear();
            }
        }
        memory.insert(
            domain.to_owned(),
            Remembered {
                known,
                outcome,
                checked_at: Instant::now(),
            },
        );
    }

    /// Reads the store's entry; when the store fails, what this process last read (however old).
    async fn read_known(&self, domain: &str) -> Known {
        match self.inner.store.sts_get(domain).await {
            Ok(entry) => Known::from_entry(entry.as_ref()),
            Err(e) => {
                warn!(domain, error = %e, "reading the MTA-STS policy store failed; using this process's copy");
                lock(&self.inner.memory)
                    .get(domain)
                    .map(|r| r.known.clone())
                    .unwrap_or_default()
            }
        }
    }

    /// The store, the TXT record, and a fetch when one is due.
    async fn discover(&self, domain: &str, recheck: bool) -> PolicyLookup {
        let known = self.read_known(domain).await;
        let txt = self.inner.txt.lookup_txt(&record_name(domain)).await;
        match plan(&known, &txt, now_ms(), &self.inner.options, recheck) {
            Plan::Keep(outcome) => {
                log_kept(domain, &known, &outcome);
                self.finish(domain, known, outcome)
            }
            Plan::KeepAndRefresh { id } => {
                self.spawn_refresh(domain, id);
                self.finish(domain, known, LookupOutcome::Current)
            }
            Plan::Fetch { .. } => {
                let trigger = if recheck { "recheck" } else { "delivery" };
                let (known, outcome) = self.fetch_shared(domain, known, &txt, recheck, trigger).await;
                self.finish(domain, known, outcome)
            }
        }
    }

    /// Fetches for a delivery: one fetch per domain in this process (the others wait for it, at most
    /// [`CacheOptions::flight_wait`], which covers the fetching task's worst case), under the cluster lock.
    async fn fetch_shared(
        &self,
        domain: &str,
        known: Known,
        txt: &TxtLookup,
        recheck: bool,
        trigger: &'static str,
    ) -> (Known, LookupOutcome) {
        let flight = self.flight(domain);
        let waited =
            tokio::time::timeout(self.inner.options.flight_wait(), flight.clone().lock_owned()).await;
        let result = match waited {
            Ok(_guard) => self.fetch_locked(domain, known, txt, recheck, trigger).await,
            Err(_) => (known, LookupOutcome::Locked(self.inner.owner.clone())),
        };
        self.land(domain, flight);
        result
    }

    /// Under this process's flight for `domain`: takes the cluster lock, reads the store again (another
    /// worker may have fetched, or failed, meanwhile), and fetches if that still is due.
    async fn fetch_locked(
        &self,
        domain: &str,
        before: Known,
        txt: &TxtLookup,
        recheck: bool,
        trigger: &'static str,
    ) -> (Known, LookupOutcome) {
        let inner = &self.inner;
        let locked = match self.lock_or_wait(domain, &before).await {
            Ok(None) => true,
            Ok(Some((known, owner))) => return (known, LookupOutcome::Locked(owner)),
            Err(e) => {
                // No store, no lock: fetch anyway, so that deliveries get the policy; the store cannot
                // take the result either, so this process keeps it in memory.
                warn!(domain, error = %e, "taking the MTA-STS refresh lock failed; fetching without it");
                false
            }
        };
        let known = if locked {
            self.read_known(domain).await
        } else {
            before.clone()
        };
        // A recheck skips the retry wait, unless a fetch failed while it waited for the locks.
        let recheck = recheck && known.last_error_at_ms == before.last_error_at_ms;
        let result = match plan(&known, txt, now_ms(), &inner.options, recheck) {
            Plan::Fetch { id } => {
                let f = self.fetch_and_store(domain, &id, known, trigger).await;
                (f.known, f.outcome)
            }
            // Another worker fetched this id while this one waited.
            Plan::KeepAndRefresh { .. } => (known, LookupOutcome::Current),
            Plan::Keep(outcome) => (known, outcome),
        };
        if locked {
            self.unlock(domain).await;
        }
        result
    }

    /// Takes the cluster lock of `domain` (`Ok(None)`). While another worker holds it: with a usable
    /// policy in `before`, answers at once with it and the holder; with none, reads the store every
    /// [`LOCK_POLL`] until the entry changes (the holder stored its result), the lock is free (taken then),
    /// or [`CacheOptions::lock_wait`] has passed, and answers with what is stored then.
    async fn lock_or_wait(
        &self,
        domain: &str,
        before: &Known,
    ) -> Result<Option<(Known, String)>, QueueError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.options.lock_wait;
        let mut waited = false;
        loop {
            let owner = match inner
                .store
                .sts_try_lock(domain, &inner.owner, inner.options.lock_ttl)
                .await?
            {
                LockOutcome::Acquired => return Ok(None),
                LockOutcome::HeldBy(owner) => owner,
            };
            if before.applicable(now_ms(), &inner.options).is_some() {
                debug!(domain, owner = %owner, "another worker is fetching the MTA-STS policy; using what is cached");
                return Ok(Some((before.clone(), owner)));
            }
            if !waited {
                debug!(domain, owner = %owner, "another worker is fetching the MTA-STS policy; waiting for it");
                waited = true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(domain, owner = %owner,
                    "another worker's MTA-STS fetch did not end in time; going on without a policy");
                return Ok(Some((before.clone(), owner)));
            }
            tokio::time::sleep(left.min(LOCK_POLL)).await;
            let known = self.read_known(domain).await;
            if known != *before {
                return Ok(Some((known, owner)));
            }
        }
    }

    /// Fetches `domain`'s policy for the TXT id `id` and stores the result: the policy, or the error
    /// beside the cached policy. Logs one line either way.
    async fn fetch_and_store(&self, domain: &str, id: &str, known: Known, trigger: &'static str) -> Fetch {
        let inner = &self.inner;
        // The fetcher has its own deadline; this one only guards the lock against a source without one.
        let after = inner.options.lock_ttl;
        let result = match tokio::time::timeout(after, inner.source.fetch_policy(domain)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout {
                host: policy_host(domain).unwrap_or_else(|_| domain.to_owned()),
                after,
            }),
        };
        let now = now_ms();
        match result {
            Ok(policy) => {
                let active = ActivePolicy {
                    domain: domain.to_owned(),
                    id: id.to_owned(),
                    fetched_at_ms: now,
                    expires_at_ms: now.saturating_add(millis(policy.max_age_duration())),
                    policy,
                };
                let store_error = inner.store.sts_put(&active.to_entry()).await.err();
                info!(domain, policy_id = id, mode = %active.mode(), max_age = active.policy.max_age(),
                    trigger, stored = store_error.is_none(), "fetched the MTA-STS policy");
                if let Some(e) = &store_error {
                    warn!(domain, policy_id = id, error = %e,
                        "storing the MTA-STS policy failed; it applies in this process only");
                }
                Fetch {
                    known: Known {
                        policy: Some(active),
                        last_error_at_ms: None,
                    },
                    outcome: LookupOutcome::Fetched,
                    store_error,
                }
            }
            Err(error) => {
                let keeps = known.applicable(now, &inner.options).is_some();
                warn!(domain, policy_id = id, error = %error, result_type = %error.result_type(), trigger,
                    cached_policy_applies = keeps, "fetching the MTA-STS policy failed");
                let store_error = inner
                    .store
                    .sts_record_error(domain, &error.to_string(), now)
                    .await
                    .err();
                if let Some(e) = &store_error {
                    warn!(domain, error = %e, "recording the failed MTA-STS fetch failed");
                }
                Fetch {
                    known: Known {
                        policy: known.policy,
                        last_error_at_ms: Some(now),
                    },
                    outcome: LookupOutcome::FetchFailed(error),
                    store_error,
                }
            }
        }
    }

    /// Starts a background refresh of `domain`'s policy for `id`, unless a task of this process is
    /// fetching the domain already.
    fn spawn_refresh(&self, domain: &str, id: String) {
        let flight = self.flight(domain);
        let Ok(guard) = flight.clone().try_lock_owned() else {
            self.land(domain, flight);
            return;
        };
        let cache = self.clone();
        let domain = domain.to_owned();
        tokio::spawn(async move {
            cache.refresh_in_background(&domain, &id).await;
            drop(guard);
            cache.land(&domain, flight);
        });
    }

    /// The background refresh: under the cluster lock, and only if no one refreshed (or failed to)
    /// while it was waiting.
    async fn refresh_in_background(&self, domain: &str, id: &str) {
        let inner = &self.inner;
        match inner
            .store
            .sts_try_lock(domain, &inner.owner, inner.options.lock_ttl)
            .await
        {
            Ok(LockOutcome::Acquired) => {}
            Ok(LockOutcome::HeldBy(owner)) => {
                debug!(domain, owner = %owner, "another worker is refreshing the MTA-STS policy");
                return;
            }
            Err(e) => {
                warn!(domain, error = %e, "taking the MTA-STS refresh lock failed; not refreshing now");
                return;
            }
        }
        let known = self.read_known(domain).await;
        let now = now_ms();
        if known.due_for_refresh(id, now, &inner.options) && !known.in_backoff(now, &inner.options) {
            let f = self.fetch_and_store(domain, id, known, "refresh").await;
            self.remember(domain, f.known, LookupOutcome::Current);
        }
        self.unlock(domain).await;
    }

    /// [`PolicyCache::refresh`] under this process's flight for the domain.
    async fn refresh_locked(&self, domain: &str, id: &str) -> Result<StsEntry, CacheError> {
        let inner = &self.inner;
        match inner
            .store
            .sts_try_lock(domain, &inner.owner, inner.options.lock_ttl)
            .await?
        {
            LockOutcome::Acquired => {}
            LockOutcome::HeldBy(owner) => return Err(CacheError::Locked { owner }),
        }
        let known = self.read_known(domain).await;
        let f = self.fetch_and_store(domain, id, known, "control").await;
        self.unlock(domain).await;
        let entry = f.known.policy.as_ref().map(ActivePolicy::to_entry);
        let outcome = f.outcome.clone();
        self.remember(domain, f.known, outcome);
        match (f.outcome, f.store_error, entry) {
            (LookupOutcome::FetchFailed(e), _, _) => Err(CacheError::Fetch(e)),
            (_, Some(e), _) => Err(CacheError::Store(e)),
            (_, None, Some(entry)) => Ok(entry),
            // A fetch that succeeded always leaves a policy.
            (outcome, None, None) => Err(CacheError::Store(QueueError::Backend(format!(
                "no policy after the fetch ({outcome:?})"
            )))),
        }
    }

    async fn unlock(&self, domain: &str) {
        if let Err(e) = self.inner.store.sts_unlock(domain, &self.inner.owner).await {
            // The lock lapses by itself after lock_ttl.
            warn!(domain, error = %e, "releasing the MTA-STS refresh lock failed");
        }
    }

    /// This process's flight mutex for `domain` (made if missing).
    fn flight(&self, domain: &str) -> Arc<AsyncMutex<()>> {
        lock(&self.inner.flights)
            .entry(domain.to_owned())
            .or_default()
            .clone()
    }

    /// Gives back a flight mutex taken with [`PolicyCache::flight`]; the last user removes it.
    fn land(&self, domain: &str, flight: Arc<AsyncMutex<()>>) {
        let mut flights = lock(&self.inner.flights);
        // The map's reference and this one: no one else holds or waits for it (clones are made under
        // the map's lock, so none can appear now).
        if Arc::strong_count(&flight) <= 2 {
            flights.remove(domain);
        }
    }
}

fn log_kept(domain: &str, known: &Known, outcome: &LookupOutcome) {
    let policy_id = known.policy.as_ref().map_or("", |p| p.id.as_str());
    match outcome {
        LookupOutcome::LookupFailed(reason) => {
            warn!(domain, policy_id, error = %reason, "the MTA-STS TXT lookup failed; keeping what is cached")
        }
        LookupOutcome::NoRecord(e) => debug!(domain, policy_id, error = %e, "no MTA-STS TXT record"),
        LookupOutcome::RetryLater => {
            debug!(
                domain,
                policy_id, "the last MTA-STS fetch failed recently; not fetching yet"
            )
        }
        _ => debug!(domain, policy_id, "the cached MTA-STS policy is current"),
    }
}

fn invalid_domain() -> PolicyLookup {
    PolicyLookup {
        active: None,
        outcome: LookupOutcome::InvalidDomain,
        from_memory: false,
    }
}

/// A policy domain as cached: lower-case, without a final dot; `None` when empty.
fn normalize(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!d.is_empty()).then_some(d)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a map that is still consistent (every update is one call).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Now, in Unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

#[cfg(test)]
mod tests;
