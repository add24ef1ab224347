//! The cluster-shared policy cache with real peers: Redis as the store (redis-server), dnsmasq serving the
//! `_mta-sts` TXT record and the policy host's address (through [`HickoryDns`]), and an HTTPS policy
//! server that counts its requests. Each `PolicyCache` is one worker: its own memory, its own Redis
//! connection, the same store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use common::{Answer, DOMAIN, POLICY, Pki, PolicyServer, pki, response, text_plain};
use tern_mta_sts::{
    CacheError, CacheOptions, FetchError, FetchOptions, HickoryDns, LookupOutcome, MAX_POLICY_BYTES, Mode,
    PolicyCache, PolicyFetcher, TlsRptResultType, TxtLookup, TxtResolver,
};
use tern_queue::{PolicyStore, RedisQueue, RedisQueueOptions};
use tern_testkit::{Dnsmasq, RedisServer};

const NEW_POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx2.example.test\nmax_age: 86400\n";

/// dnsmasq announcing policy `id` for [`DOMAIN`], with the policy host on 127.0.0.1.
fn dns_with_id(id: &str) -> Dnsmasq {
    Dnsmasq::builder()
        .txt("_mta-sts.example.test", &format!("v=STSv1; id={id}"))
        .host("mta-sts.example.test", Ipv4Addr::LOCALHOST)
        .start()
        .expect("dnsmasq")
}

/// The worker's TXT resolver: hickory asking one dnsmasq, switchable to another at run time (dnsmasq
/// cannot change a record while it runs), so that the domain's TXT record can change under a worker.
struct SwitchableDns(RwLock<HickoryDns>);

impl SwitchableDns {
    fn new(server: &Dnsmasq) -> SwitchableDns {
        SwitchableDns(RwLock::new(HickoryDns::from_servers(&[server.addr()]).unwrap()))
    }

    fn point_at(&self, server: &Dnsmasq) {
        *self.0.write().unwrap() = HickoryDns::from_servers(&[server.addr()]).unwrap();
    }
}

#[async_trait]
impl TxtResolver for SwitchableDns {
    async fn lookup_txt(&self, name: &str) -> TxtLookup {
        let dns = self.0.read().unwrap().clone();
        dns.lookup_txt(name).await
    }
}

/// Redis, DNS and the policy server of one test.
struct World {
    redis: RedisServer,
    prefix: String,
    dns: Dnsmasq,
    pki: Pki,
    server: PolicyServer,
}

impl World {
    async fn start(policy: &str) -> World {
        let redis = RedisServer::start().expect("redis-server");
        let pki = pki();
        let server = PolicyServer::start(&pki.ca, &pki.cert, text_plain(policy)).await;
        World {
            redis,
            prefix: format!("sts-{}", std::process::id()),
            dns: dns_with_id("1"),
            pki,
            server,
        }
    }

    /// A new connection to the shared store, as another worker process would have.
    async fn store(&self) -> Arc<RedisQueue> {
        let opts = RedisQueueOptions {
            url: self.redis.url(),
            key_prefix: self.prefix.clone(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        Arc::new(RedisQueue::connect(opts).await.expect("connect to redis"))
    }

    /// A worker: its own store connection and memory, finding the policy host through dnsmasq and
    /// looking up TXT records through `txt`.
    async fn worker_with(
        &self,
        owner: &str,
        options: CacheOptions,
        txt: Arc<dyn TxtResolver>,
    ) -> PolicyCache {
        let hosts = HickoryDns::from_servers(&[self.dns.addr()]).unwrap();
        let fetcher = PolicyFetcher::new(self.fetch_options(), Arc::new(hosts)).unwrap();
        PolicyCache::new(self.store().await, Arc::new(fetcher), txt, owner.into(), options)
    }

    /// A worker whose TXT lookups ask this world's dnsmasq: the production wiring.
    async fn worker(&self, owner: &str, options: CacheOptions) -> PolicyCache {
        let dns = HickoryDns::from_servers(&[self.dns.addr()]).unwrap();
        PolicyCache::with_dns(
            self.store().await,
            dns,
            self.fetch_options(),
            owner.into(),
            options,
        )
        .unwrap()
    }

    fn fetch_options(&self) -> FetchOptions {
        FetchOptions {
            timeout: Duration::from_secs(10),
            https_port: self.server.port,
            extra_ca_file: Some(self.pki.ca_file()),
        }
    }
}

/// Every lookup reads the store and DNS (no in-process memory), so each step of a test is seen at once.
fn no_memory() -> CacheOptions {
    CacheOptions {
        memory_ttl: Duration::ZERO,
        ..CacheOptions::default()
    }
}

#[tokio::test]
async fn a_policy_one_worker_fetched_serves_a_second_worker_without_another_request() {
    let world = World::start(POLICY).await;
    let first = world.worker("worker-1", CacheOptions::default()).await;
    let policy = first.policy_for("Example.Test").await.expect("a policy");
    assert_eq!(policy.mode(), Mode::Enforce);
    assert_eq!(policy.id, "1");
    assert!(policy.policy.matches_mx("mx.example.test"));
    assert_eq!(world.server.requests(), 1);

    let second = world.worker("worker-2", CacheOptions::default()).await;
    let found = second.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::Current);
    assert!(!found.from_memory);
    assert_eq!(found.active.as_ref(), Some(&policy));
    assert_eq!(world.server.requests(), 1, "the second worker fetched again");

    let entry = second.get(DOMAIN).await.unwrap().expect("the stored entry");
    assert_eq!(entry.domain, DOMAIN);
    assert_eq!(entry.policy_id, "1");
    assert_eq!(entry.expires_at_ms, entry.fetched_at_ms + 604_800_000);
    assert_eq!(entry.last_error, None);
}

#[tokio::test]
async fn a_new_txt_id_makes_the_worker_fetch_again() {
    let world = World::start(POLICY).await;
    let txt = Arc::new(SwitchableDns::new(&world.dns));
    let worker = world.worker_with("worker-1", no_memory(), txt.clone()).await;
    assert_eq!(worker.policy_for(DOMAIN).await.unwrap().id, "1");
    assert_eq!(worker.lookup(DOMAIN).await.outcome, LookupOutcome::Current);
    assert_eq!(world.server.requests(), 1);

    let changed = dns_with_id("2");
    txt.point_at(&changed);
    world.server.set_answer(text_plain(NEW_POLICY));
    let found = worker.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::Fetched);
    let policy = found.active.unwrap();
    assert_eq!(policy.id, "2");
    assert_eq!(policy.policy.mx(), ["mx2.example.test"]);
    assert_eq!(world.server.requests(), 2);
    assert_eq!(worker.get(DOMAIN).await.unwrap().unwrap().policy_id, "2");
}

#[tokio::test]
async fn a_recheck_looks_past_the_memory_for_a_new_id() {
    let world = World::start(POLICY).await;
    let txt = Arc::new(SwitchableDns::new(&world.dns));
    let hour = CacheOptions {
        memory_ttl: Duration::from_secs(3600),
        ..CacheOptions::default()
    };
    let worker = world.worker_with("worker-1", hour, txt.clone()).await;
    assert_eq!(worker.policy_for(DOMAIN).await.unwrap().id, "1");

    let changed = dns_with_id("2");
    txt.point_at(&changed);
    world.server.set_answer(text_plain(NEW_POLICY));
    let remembered = worker.lookup(DOMAIN).await;
    assert!(remembered.from_memory);
    assert_eq!(remembered.active.unwrap().id, "1");
    assert_eq!(world.server.requests(), 1);

    let rechecked = worker.recheck(DOMAIN).await.expect("a policy");
    assert_eq!(rechecked.id, "2");
    assert!(rechecked.policy.matches_mx("mx2.example.test"));
    assert_eq!(world.server.requests(), 2);
    assert_eq!(worker.policy_for(DOMAIN).await.unwrap().id, "2");
}

#[tokio::test]
async fn with_the_policy_server_down_the_cached_policy_still_applies() {
    let mut world = World::start(POLICY).await;
    let txt = Arc::new(SwitchableDns::new(&world.dns));
    let worker = world.worker_with("worker-1", no_memory(), txt.clone()).await;
    let cached = worker.policy_for(DOMAIN).await.expect("a policy");

    world.server.stop().await;
    let changed = dns_with_id("2");
    txt.point_at(&changed);
    let found = worker.lookup(DOMAIN).await;
    assert!(
        matches!(
            found.outcome,
            LookupOutcome::FetchFailed(FetchError::Connect { .. })
        ),
        "{:?}",
        found.outcome
    );
    assert_eq!(
        found.tls_rpt_failure(),
        Some(TlsRptResultType::StsPolicyFetchError)
    );
    assert_eq!(
        found.active.as_ref(),
        Some(&cached),
        "the cached policy still applies"
    );

    let entry = worker.get(DOMAIN).await.unwrap().unwrap();
    assert_eq!(entry.policy_id, "1", "the cached policy is kept beside the error");
    assert!(entry.last_error.is_some() && entry.last_error_at_ms.is_some());

    // Another worker, within the retry time, applies it too and does not try again.
    let other = world.worker_with("worker-2", no_memory(), txt.clone()).await;
    let found = other.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::RetryLater);
    assert_eq!(found.active.as_ref(), Some(&cached));
}

#[tokio::test]
async fn a_failed_fetch_is_not_tried_again_by_any_worker_within_the_retry_time() {
    let world = World::start(POLICY).await;
    world.server.set_answer(response(
        "404 Not Found",
        &[("Content-Type", "text/plain")],
        "none here",
    ));
    let retry = Duration::from_secs(2);
    let options = CacheOptions {
        retry_failed_after: retry,
        ..no_memory()
    };
    let first = world.worker("worker-1", options.clone()).await;
    let found = first.lookup(DOMAIN).await;
    assert!(
        matches!(
            found.outcome,
            LookupOutcome::FetchFailed(FetchError::Status { status: 404, .. })
        ),
        "{:?}",
        found.outcome
    );
    assert_eq!(found.active, None);
    assert_eq!(world.server.requests(), 1);

    let second = world.worker("worker-2", options.clone()).await;
    for worker in [&first, &second] {
        let found = worker.lookup(DOMAIN).await;
        assert_eq!(found.outcome, LookupOutcome::RetryLater);
        assert_eq!(found.active, None);
    }
    assert_eq!(world.server.requests(), 1, "tried again within the retry time");

    // Once the retry time has passed since the recorded failure, the next lookup fetches.
    world.server.set_answer(text_plain(POLICY));
    let failed_at = first
        .get(DOMAIN)
        .await
        .unwrap()
        .unwrap()
        .last_error_at_ms
        .unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    while now() < failed_at + retry.as_millis() as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = second.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::Fetched);
    assert_eq!(found.active.unwrap().mode(), Mode::Enforce);
    assert_eq!(world.server.requests(), 2);
    let entry = first.get(DOMAIN).await.unwrap().unwrap();
    assert_eq!(entry.last_error, None, "a stored policy clears the error");
}

/// A body of `len` bytes that would be a valid policy but for its size.
fn oversized_policy(len: usize) -> String {
    let mut body = POLICY.to_owned();
    body.push_str("pad: ");
    body.push_str(&"a".repeat(len - body.len() - 2));
    body.push_str("\r\n");
    body
}

/// A redirect, a wrong content type and a body over 64 KiB each leave the domain with no policy, as a
/// 404 does: the failed fetch is recorded (no worker fetches again within the retry time) and no policy
/// is cached.
#[tokio::test]
async fn a_redirect_a_wrong_content_type_or_an_oversized_body_leaves_the_domain_with_no_policy() {
    let world = World::start(POLICY).await;
    let location = format!(
        "https://mta-sts.example.test:{}/.well-known/mta-sts.txt",
        world.server.port
    );
    type Expected = fn(&FetchError) -> bool;
    let cases: [(&str, Answer, Expected); 3] = [
        (
            "a redirect",
            response(
                "301 Moved Permanently",
                &[("Location", &location), ("Content-Type", "text/plain")],
                POLICY,
            ),
            |e| matches!(e, FetchError::Redirect { status: 301, .. }),
        ),
        (
            "a wrong content type",
            response("200 OK", &[("Content-Type", "text/html")], POLICY),
            |e| matches!(e, FetchError::ContentType { .. }),
        ),
        (
            "a body over 64 KiB",
            text_plain(&oversized_policy(MAX_POLICY_BYTES + 1)),
            |e| matches!(e, FetchError::TooLarge { .. }),
        ),
    ];
    for (n, (what, answer, expected)) in cases.into_iter().enumerate() {
        world.server.set_answer(answer);
        let first = world.worker("worker-1", no_memory()).await;
        let found = first.lookup(DOMAIN).await;
        match &found.outcome {
            LookupOutcome::FetchFailed(e) => assert!(expected(e), "{what}: {e:?}"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(found.active, None, "{what}");
        assert!(found.tls_rpt_failure().is_some(), "{what}");
        assert_eq!(
            world.server.requests(),
            n + 1,
            "{what}: one request, nothing followed"
        );

        let entry = first.get(DOMAIN).await.unwrap().expect("the failure is recorded");
        assert!(!entry.has_policy(), "{what}: {entry:?}");
        assert!(entry.last_error.is_some(), "{what}: {entry:?}");
        // Another worker finds no policy either, and does not fetch again within the retry time.
        let second = world.worker("worker-2", no_memory()).await;
        let found = second.lookup(DOMAIN).await;
        assert_eq!(found.outcome, LookupOutcome::RetryLater, "{what}");
        assert_eq!(found.active, None, "{what}");
        assert_eq!(second.policy_for(DOMAIN).await, None, "{what}");
        assert_eq!(world.server.requests(), n + 1, "{what}");
        assert!(first.evict(DOMAIN).await.unwrap());
    }
}

#[tokio::test]
async fn a_policy_in_mode_none_is_cached_and_is_no_policy() {
    let world = World::start("version: STSv1\nmode: none\nmax_age: 86400\n").await;
    let first = world.worker("worker-1", no_memory()).await;
    let found = first.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::Fetched);
    assert_eq!(found.active, None);
    let entry = first.get(DOMAIN).await.unwrap().unwrap();
    assert!(entry.policy.contains("mode: none"), "{}", entry.policy);

    let second = world.worker("worker-2", no_memory()).await;
    let found = second.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::Current);
    assert_eq!(found.active, None);
    assert_eq!(world.server.requests(), 1);
}

#[tokio::test]
async fn while_another_worker_holds_the_lock_nothing_is_fetched() {
    let world = World::start(POLICY).await;
    let store = world.store().await;
    let minute = Duration::from_secs(60);
    store.sts_try_lock(DOMAIN, "worker-9", minute).await.unwrap();

    let txt = Arc::new(SwitchableDns::new(&world.dns));
    // The holder stores nothing: the lookup waits for it only this long.
    let options = CacheOptions {
        lock_wait: Duration::from_millis(300),
        ..no_memory()
    };
    let worker = world.worker_with("worker-1", options, txt.clone()).await;
    let found = worker.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::Locked("worker-9".into()));
    assert_eq!(found.active, None, "nothing cached: no policy for now");
    assert_eq!(
        worker.refresh(DOMAIN).await,
        Err(CacheError::Locked {
            owner: "worker-9".into()
        })
    );
    assert_eq!(world.server.requests(), 0);

    store.sts_unlock(DOMAIN, "worker-9").await.unwrap();
    let cached = worker
        .policy_for(DOMAIN)
        .await
        .expect("fetched once the lock is free");
    assert_eq!(world.server.requests(), 1);

    // With a policy cached and a new id announced, the lock holder's fetch is awaited in the store: the
    // cached policy applies meanwhile.
    store.sts_try_lock(DOMAIN, "worker-9", minute).await.unwrap();
    let changed = dns_with_id("2");
    txt.point_at(&changed);
    let found = worker.lookup(DOMAIN).await;
    assert_eq!(found.outcome, LookupOutcome::Locked("worker-9".into()));
    assert_eq!(found.active.as_ref(), Some(&cached));
    assert_eq!(world.server.requests(), 1);
}

#[tokio::test]
async fn without_a_valid_txt_record_there_is_no_policy_and_nothing_is_fetched() {
    let world = World::start(POLICY).await;
    let bad = Dnsmasq::builder()
        .txt("_mta-sts.example.test", "v=STSv1; id=not-alphanumeric")
        .host("mta-sts.example.test", Ipv4Addr::LOCALHOST)
        .start()
        .expect("dnsmasq");
    let none = Dnsmasq::builder()
        .host("mta-sts.example.test", Ipv4Addr::LOCALHOST)
        .start()
        .expect("dnsmasq");
    for server in [&bad, &none] {
        let txt = Arc::new(SwitchableDns::new(server));
        let worker = world.worker_with("worker-1", no_memory(), txt).await;
        let found = worker.lookup(DOMAIN).await;
        assert!(
            matches!(found.outcome, LookupOutcome::NoRecord(_)),
            "{:?}",
            found.outcome
        );
        assert_eq!(found.active, None);
        assert!(matches!(
            worker.refresh(DOMAIN).await,
            Err(CacheError::NoRecord(_))
        ));
    }
    assert_eq!(world.server.requests(), 0);
}

#[tokio::test]
async fn the_control_plane_refreshes_lists_and_evicts() {
    let world = World::start(POLICY).await;
    let worker = world.worker("control", CacheOptions::default()).await;
    let entry = worker.refresh(DOMAIN).await.unwrap();
    assert_eq!(entry.policy_id, "1");
    assert_eq!(world.server.requests(), 1);
    assert_eq!(worker.get(DOMAIN).await.unwrap(), Some(entry.clone()));
    let again = worker.refresh(DOMAIN).await.unwrap();
    assert_eq!(
        world.server.requests(),
        2,
        "a refresh fetches even a current policy"
    );
    assert_eq!(worker.list(None, 10).await.unwrap(), vec![again]);

    world
        .server
        .set_answer(text_plain("version: STSv1\nmode: enforce\nmax_age: 1\n"));
    let err = worker.refresh(DOMAIN).await.unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch(FetchError::Invalid { .. })),
        "{err:?}"
    );
    let kept = worker.get(DOMAIN).await.unwrap().unwrap();
    assert!(kept.has_policy() && kept.last_error.is_some());

    assert!(worker.evict(DOMAIN).await.unwrap());
    assert_eq!(worker.get(DOMAIN).await.unwrap(), None);
    assert!(!worker.evict(DOMAIN).await.unwrap());
    world.server.set_answer(text_plain(POLICY));
    let other = world.worker("worker-1", no_memory()).await;
    assert_eq!(other.lookup(DOMAIN).await.outcome, LookupOutcome::Fetched);
    assert_eq!(world.server.requests(), 4);
}
