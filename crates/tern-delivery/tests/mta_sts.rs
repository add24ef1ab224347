//! MTA-STS enforcement in delivery, with real peers: redis-server as the queue and the policy store,
//! dnsmasq serving the MX, A and `_mta-sts` TXT records, an HTTPS policy server with a test CA, and a
//! receiving SMTP server that offers STARTTLS with a certificate for its MX name (or no STARTTLS).
//!
//! Where a test changes the domain's TXT record under a running worker, the cache asks a second dnsmasq
//! from then on (dnsmasq cannot change a record while it runs): [`SwitchableTxt`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::fake_mx::{Behaviour, FakeMx};
use common::policy_server::PolicyServer;
use common::*;
use tern_core::HumanDuration;
use tern_delivery::Worker;
use tern_mta_sts::{
    CacheOptions, FetchOptions, HickoryDns, PolicyCache, PolicyFetcher, TxtLookup, TxtResolver,
};
use tern_queue::{
    EventKind, PolicyStore, Queue, RedisQueue, RedisQueueOptions, TlsReportStore, TlsSessionKey,
};
use tern_testkit::{Dnsmasq, DnsmasqBuilder, RedisServer, ServerCert, TestCa, free_port};

static PREFIX: AtomicU32 = AtomicU32::new(0);

/// A policy: `mode`, and the one `mx` pattern.
fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// What the receiving MX offers.
enum Receiver {
    /// STARTTLS with a certificate for these names, from the test CA.
    StartTls(&'static [&'static str]),
    /// No STARTTLS.
    Plain,
    /// STARTTLS as [`Receiver::StartTls`], but the connection is closed at MAIL without a reply.
    ClosesAtMail(&'static [&'static str]),
}

/// One test's domain and peers.
struct Setup {
    domain: &'static str,
    /// The domain's one MX, at 127.0.0.`last`.
    mx_name: &'static str,
    last: u8,
    /// The policy served from `mta-sts.<domain>`, if any.
    policy: Option<String>,
    /// The TXT record announces the policy (id 1) from the start; otherwise only after
    /// [`World::announce_new_id`].
    announced: bool,
    /// The cache asks [`SwitchableTxt`] for TXT records (otherwise it is wired as in production, with
    /// `PolicyCache::with_dns`), so that [`World::announce_new_id`] works.
    switchable: bool,
    receiver: Receiver,
    /// The cache's memory TTL (default 60 s).
    memory_ttl: Option<Duration>,
    /// `delivery.max_age` (default 5 days).
    max_age: Option<Duration>,
    /// `delivery.messages_per_connection` (default 100).
    messages_per_connection: Option<u32>,
}

impl Setup {
    fn new(domain: &'static str, mx_name: &'static str, last: u8, receiver: Receiver) -> Setup {
        Setup {
            domain,
            mx_name,
            last,
            policy: None,
            announced: true,
            switchable: false,
            receiver,
            memory_ttl: None,
            max_age: None,
            messages_per_connection: None,
        }
    }

    fn policy(mut self, text: String) -> Setup {
        self.policy = Some(text);
        self
    }
}

/// The cache's TXT resolver: hickory asking one dnsmasq, switchable to another while the worker runs.
struct SwitchableTxt(RwLock<HickoryDns>);

impl TxtResolver for SwitchableTxt {
    // What `#[async_trait]` makes of `async fn lookup_txt(&self, name: &str) -> TxtLookup`.
    fn lookup_txt<'a, 'b, 'c>(&'a self, name: &'b str) -> Pin<Box<dyn Future<Output = TxtLookup> + Send + 'c>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        let dns = self.0.read().unwrap().clone();
        Box::pin(async move { dns.lookup_txt(name).await })
    }
}

/// What a receiving MX that offers what `receiver` says does, its certificate from `ca`.
fn behaviour(ca: &TestCa, receiver: Receiver) -> Behaviour {
    let tls: Option<ServerCert> = match receiver {
        Receiver::StartTls(names) | Receiver::ClosesAtMail(names) => Some(ca.issue(names).unwrap()),
        Receiver::Plain => None,
    };
    Behaviour {
        tls,
        close_at_mail: matches!(receiver, Receiver::ClosesAtMail(_)),
        ..Default::default()
    }
}

/// A running test: its peers, the queue and a worker with the policy cache.
struct World {
    _dir: tempfile::TempDir,
    /// The test CA (the policy host's and the receiver's certificates).
    ca: TestCa,
    policy_server: Option<PolicyServer>,
    _dns: Dnsmasq,
    /// The same records, with the TXT record announcing id 2.
    dns_next: Dnsmasq,
    txt: Arc<SwitchableTxt>,
    _redis: RedisServer,
    mx: FakeMx,
    queue: Arc<dyn Queue>,
    /// The TLS-RPT counters the worker adds to.
    reports: Arc<dyn TlsReportStore>,
    worker: RunningWorker,
}

impl World {
    async fn start(setup: Setup) -> World {
        let Setup {
            domain,
            mx_name,
            last,
            ..
        } = setup;
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new().unwrap();
        let ca_file: PathBuf = ca.write_to(dir.path()).unwrap();
        let policy_host = format!("mta-sts.{domain}");
        let records = || {
            Dnsmasq::builder()
                .mx(domain, mx_name, 10)
                .host(mx_name, ip(last))
                .host(&policy_host, Ipv4Addr::LOCALHOST)
        };
        let announce =
            |b: DnsmasqBuilder, id: u32| b.txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id}"));
        let first = if setup.policy.is_some() && setup.announced {
            announce(records(), 1)
        } else {
            records()
        };
        let dns = first.start().expect("dnsmasq");
        let dns_next = announce(records(), 2).start().expect("dnsmasq");
        let policy_server = match &setup.policy {
            Some(text) => Some(PolicyServer::start(&ca, &ca.issue(&[&policy_host]).unwrap(), text).await),
            None => None,
        };
        let port = free_port().unwrap();
        let mx = FakeMx::start(sa(last, port), behaviour(&ca, setup.receiver)).await;

        let redis = RedisServer::start().unwrap();
        let store = Arc::new(
            RedisQueue::connect(RedisQueueOptions {
                url: redis.url(),
                key_prefix: format!("sts{}", PREFIX.fetch_add(1, Ordering::Relaxed)),
                lease: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(2),
                response_timeout: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .expect("connect to redis"),
        );
        let queue: Arc<dyn Queue> = store.clone();
        let reports: Arc<dyn TlsReportStore> = store.clone();
        let policies: Arc<dyn PolicyStore> = store;
        let fetch = FetchOptions {
            timeout: Duration::from_secs(10),
            https_port: policy_server.as_ref().map_or(443, |s| s.port),
            extra_ca_file: Some(ca_file.clone()),
        };
        let mut options = CacheOptions::default();
        if let Some(ttl) = setup.memory_ttl {
            options.memory_ttl = ttl;
        }
        let hickory = HickoryDns::from_servers(&[dns.addr()]).unwrap();
        let txt = Arc::new(SwitchableTxt(RwLock::new(hickory.clone())));
        let cache = if setup.switchable {
            let fetcher = PolicyFetcher::new(fetch, Arc::new(hickory)).unwrap();
            PolicyCache::new(policies, Arc::new(fetcher), txt.clone(), "w1".into(), options)
        } else {
            PolicyCache::with_dns(policies, hickory, fetch, "w1".into(), options).unwrap()
        };

        let mut cfg = config(&dns, port);
        cfg.extra_ca_file = Some(ca_file);
        if let Some(max_age) = setup.max_age {
            cfg.max_age = HumanDuration(max_age);
        }
        if let Some(n) = setup.messages_per_connection {
            cfg.messages_per_connection = n;
        }
        let worker = Worker::new(&cfg, queue.clone(), "w1")
            .expect("worker")
            .with_lease(Duration::from_secs(30))
            .with_mta_sts(Some(cache))
            .with_tls_reports(Some(reports.clone()));
        let token = tokio_util::sync::CancellationToken::new();
        let t = token.clone();
        let handle = tokio::spawn(async move { worker.run(t).await });
        World {
            _dir: dir,
            ca,
            policy_server,
            _dns: dns,
            dns_next,
            txt,
            _redis: redis,
            mx,
            queue,
            reports,
            worker: RunningWorker {
                token,
                handle: Some(handle),
            },
        }
    }

    /// The domain's TXT record announces policy id 2 from now on (to a cache built with
    /// `Setup::switchable`).
    fn announce_new_id(&self) {
        *self.txt.0.write().unwrap() = HickoryDns::from_servers(&[self.dns_next.addr()]).unwrap();
    }

    /// The receiving MX offers what `receiver` says from now on: a new server at the same address (the
    /// old one's sessions go on until they end).
    async fn replace_receiver(&mut self, receiver: Receiver) {
        let addr = self.mx.addr;
        self.mx.stop().await;
        self.mx = FakeMx::start(addr, behaviour(&self.ca, receiver)).await;
    }

    async fn stop(self) {
        self.worker.stop().await;
    }
}

/// The first event of `kind` for `recipient`, waiting up to [`WAIT`] for it.
async fn wait_event_for(queue: &Arc<dyn Queue>, kind: EventKind, recipient: &str) -> tern_queue::Event {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = events_of(queue, kind)
            .await
            .into_iter()
            .find(|e| e.recipients.iter().any(|r| r == recipient));
        if let Some(e) = found {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind:?} event for {recipient}: {:?}",
            events(queue).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The TLS-RPT counter of a `result_type` failure for `domain`, once counted.
async fn tls_report_failure(w: &World, domain: &str, result_type: &str) -> TlsSessionKey {
    let day = tern_queue::tls_report::utc_day(tern_core::time::now_ms());
    for _ in 0..100 {
        let rows = w.reports.tls_report_read(&day, domain).await.unwrap();
        if let Some((key, _)) = rows
            .into_iter()
            .find(|(k, _)| k.result_type.as_deref() == Some(result_type))
        {
            return key;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {result_type} counted for {domain}");
}

/// Today's TLS-RPT counters of `domain` once they hold `n` sessions (the worker adds them in the
/// background).
async fn tls_report_counts(w: &World, domain: &str, n: u64) -> Vec<(TlsSessionKey, u64)> {
    let day = tern_queue::tls_report::utc_day(tern_core::time::now_ms());
    for _ in 0..100 {
        let rows = w.reports.tls_report_read(&day, domain).await.unwrap();
        if rows.iter().map(|(_, c)| c).sum::<u64>() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} TLS-RPT counts for {domain}");
}

/// The event (a deferral before any session) names the enforced policy's mode, and no server.
fn assert_enforce_mode(e: &tern_queue::Event) {
    assert!(
        e.tls.as_deref().unwrap_or("").ends_with("mta-sts=enforce"),
        "{e:?}"
    );
    assert_eq!(e.remote_mx, None, "{e:?}");
}

/// Today's TLS-RPT counters of `domain`, after the background counts of a finished delivery have had
/// time to land.
async fn tls_report_settled(w: &World, domain: &str) -> Vec<(TlsSessionKey, u64)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let day = tern_queue::tls_report::utc_day(tern_core::time::now_ms());
    w.reports.tls_report_read(&day, domain).await.unwrap()
}

/// The events of `kind` so far.
async fn events_of(queue: &Arc<dyn Queue>, kind: EventKind) -> Vec<tern_queue::Event> {
    events(queue)
        .await
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enforce_policy_whose_mx_matches_delivers_over_verified_tls() {
    let w = World::start(
        Setup::new(
            "enf.test",
            "mx.enf.test",
            81,
            Receiver::StartTls(&["mx.enf.test"]),
        )
        .policy(policy("enforce", "mx.enf.test")),
    )
    .await;
    send(&w.queue, "s@a.test", &["r@enf.test"]).await;
    let e = wait_event(&w.queue, EventKind::Delivered).await;
    let tls = e.tls.clone().unwrap_or_default();
    assert!(tls.contains(" verified"), "{e:?}");
    assert!(tls.ends_with("; mta-sts=enforce"), "{e:?}");
    assert_eq!(e.remote_mx.as_deref(), Some("mx.enf.test"));
    let messages = w.mx.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].tls);
    // Counted for TLS-RPT: one successful session under the sts policy, to that MX.
    let rows = tls_report_counts(&w, "enf.test", 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (key, count) = &rows[0];
    assert_eq!(
        (key.policy_type.as_str(), key.result_type.as_deref(), *count),
        ("sts", None, 1)
    );
    assert_eq!(key.mx_host, "mx.enf.test");
    assert!(key.policy_string.iter().any(|l| l == "mode: enforce"), "{key:?}");
    assert!(key.sending_mta_ip.starts_with("127.0.0."), "{key:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enforce_policy_whose_mx_does_not_match_defers_with_4_7_5_and_delivers_nothing() {
    let w = World::start(
        Setup::new(
            "nomatch.test",
            "mx.elsewhere.test",
            82,
            Receiver::StartTls(&["mx.elsewhere.test"]),
        )
        .policy(policy("enforce", "mx.nomatch.test")),
    )
    .await;
    send(&w.queue, "s@a.test", &["r@nomatch.test"]).await;
    let e = wait_event(&w.queue, EventKind::Deferred).await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(reply.starts_with("451 4.7.5 "), "{e:?}");
    assert_enforce_mode(&e);
    assert!(
        reply.contains("MTA-STS") && reply.contains("no MX host matches"),
        "{e:?}"
    );
    // Not delivered, and not even connected to.
    let seen = w.mx.seen.lock().unwrap().sessions;
    assert_eq!(seen, 0);
    assert!(w.mx.messages().is_empty());
    let counts = w.queue.counts().await.unwrap();
    assert_eq!(counts.total, 1, "{counts:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enforce_policy_with_a_receiver_without_starttls_defers_with_4_7_5_never_in_plaintext() {
    let w = World::start(
        Setup::new("plain.test", "mx.plain.test", 83, Receiver::Plain)
            .policy(policy("enforce", "mx.plain.test")),
    )
    .await;
    send(&w.queue, "s@a.test", &["r@plain.test"]).await;
    let e = wait_event(&w.queue, EventKind::Deferred).await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(reply.starts_with("451 4.7.5 "), "{e:?}");
    assert_enforce_mode(&e);
    assert!(reply.contains("MTA-STS") && reply.contains("STARTTLS"), "{e:?}");
    assert!(w.mx.messages().is_empty());
    assert!(
        !w.mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        w.mx.commands()
    );
    // The failure's details name the sending address and the MX's EHLO name, although the session
    // never opened.
    let key = tls_report_failure(&w, "plain.test", "starttls-not-supported").await;
    assert!(key.sending_mta_ip.starts_with("127.0.0."), "{key:?}");
    assert_eq!(key.receiving_ip, "127.0.0.83", "{key:?}");
    assert_eq!(key.receiving_mx_helo.as_deref(), Some("fake.test"), "{key:?}");
    assert_eq!(key.mx_host, "mx.plain.test", "{key:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enforce_policy_with_a_certificate_for_another_name_defers_with_4_7_5_never_in_plaintext() {
    let w = World::start(
        Setup::new(
            "badcert.test",
            "mx.badcert.test",
            84,
            Receiver::StartTls(&["other.name.test"]),
        )
        .policy(policy("enforce", "mx.badcert.test")),
    )
    .await;
    send(&w.queue, "s@a.test", &["r@badcert.test"]).await;
    let e = wait_event(&w.queue, EventKind::Deferred).await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(reply.starts_with("451 4.7.5 "), "{e:?}");
    assert_enforce_mode(&e);
    assert!(reply.contains("MTA-STS"), "{e:?}");
    assert!(w.mx.messages().is_empty());
    assert!(
        !w.mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        w.mx.commands()
    );
    // The handshake failed: the details still name the sending address and the MX's EHLO name.
    let key = tls_report_failure(&w, "badcert.test", "certificate-host-mismatch").await;
    assert!(key.sending_mta_ip.starts_with("127.0.0."), "{key:?}");
    assert_eq!(key.receiving_ip, "127.0.0.84", "{key:?}");
    assert_eq!(key.receiving_mx_helo.as_deref(), Some("fake.test"), "{key:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_testing_policy_whose_mx_does_not_match_delivers_and_records_the_policy_failure() {
    let w = World::start(
        Setup::new(
            "tst.test",
            "mx.tst.test",
            85,
            Receiver::StartTls(&["mx.tst.test"]),
        )
        .policy(policy("testing", "mx.elsewhere.test")),
    )
    .await;
    send(&w.queue, "s@a.test", &["r@tst.test"]).await;
    let e = wait_event(&w.queue, EventKind::Delivered).await;
    let tls = e.tls.clone().unwrap_or_default();
    assert!(
        tls.ends_with("; mta-sts=testing; mta-sts-failure=validation-failure"),
        "{e:?}"
    );
    assert_eq!(w.mx.messages().len(), 1);
    // Counted for TLS-RPT as a failure of its type, with the receiving MX and address.
    let rows = tls_report_counts(&w, "tst.test", 1).await;
    let (key, count) = &rows[0];
    assert_eq!(key.result_type.as_deref(), Some("validation-failure"), "{rows:?}");
    assert_eq!((key.mx_host.as_str(), *count), ("mx.tst.test", 1));
    assert!(!key.receiving_ip.is_empty(), "{key:?}");
    assert!(key.sending_mta_ip.starts_with("127.0.0."), "{key:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_without_a_policy_is_delivered_as_before_and_says_so() {
    let w = World::start(Setup::new(
        "nopolicy.test",
        "mx.nopolicy.test",
        86,
        Receiver::StartTls(&["mx.nopolicy.test"]),
    ))
    .await;
    send(&w.queue, "s@a.test", &["r@nopolicy.test"]).await;
    let e = wait_event(&w.queue, EventKind::Delivered).await;
    let tls = e.tls.clone().unwrap_or_default();
    assert!(
        tls.contains(" verified") && tls.ends_with("; mta-sts=none"),
        "{e:?}"
    );
    assert_eq!(w.mx.messages().len(), 1);
    // No policy: nothing to report on, so nothing is counted for TLS-RPT.
    let rows = tls_report_settled(&w, "nopolicy.test").await;
    assert!(rows.is_empty(), "{rows:?}");
    w.stop().await;
}

/// TLS-RPT report mail (tagged `tlsrpt`) must get through despite TLS and policy failures (RFC 8460 §3):
/// it goes to the MX that the enforced policy does not allow, and is not counted, while ordinary mail to
/// the same domain waits with 4.7.5.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_report_mail_is_delivered_despite_an_enforced_policy_that_defers_other_mail() {
    let w = World::start(
        Setup::new(
            "rpt.test",
            "mx.elsewhere.test",
            89,
            Receiver::StartTls(&["mx.elsewhere.test"]),
        )
        .policy(policy("enforce", "mx.rpt.test")),
    )
    .await;
    let report = tern_queue::NewMessage::new(envelope("s@a.test", &["tlsrpt@rpt.test"]), BODY.to_vec())
        .with_tag("tlsrpt", "x");
    w.queue.enqueue(report).await.unwrap();
    send(&w.queue, "s@a.test", &["r@rpt.test"]).await;
    let delivered = wait_event(&w.queue, EventKind::Delivered).await;
    assert_eq!(delivered.remote_mx.as_deref(), Some("mx.elsewhere.test"));
    assert_eq!(delivered.tags.get("tlsrpt").map(String::as_str), Some("x"));
    assert!(
        delivered
            .tls
            .as_deref()
            .unwrap_or("")
            .ends_with("; mta-sts=not-applied (report mail)"),
        "{delivered:?}"
    );
    let deferred = wait_event(&w.queue, EventKind::Deferred).await;
    assert!(
        deferred.reply.as_deref().unwrap_or("").starts_with("451 4.7.5 "),
        "{deferred:?}"
    );
    assert!(!deferred.tags.contains_key("tlsrpt"), "{deferred:?}");
    assert_enforce_mode(&deferred);
    let messages = w.mx.messages();
    assert_eq!(messages.len(), 1, "only the report went");
    // Only the ordinary mail's policy failure is counted: the report's session is not.
    let rows = tls_report_settled(&w, "rpt.test").await;
    assert!(
        rows.iter()
            .all(|(k, _)| k.result_type.as_deref() == Some("validation-failure")),
        "{rows:?}"
    );
    w.stop().await;
}

/// An idle connection opened under no policy, with TLS whose certificate does not verify, is not reused
/// once the domain's policy is enforced: the next message needs verified TLS, which this receiver cannot
/// give, so it waits (4.7.5) instead of going over the idle connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_without_verified_tls_is_not_reused_once_the_policy_is_enforced() {
    let mut setup = Setup::new(
        "pool.test",
        "mx.pool.test",
        87,
        Receiver::StartTls(&["other.name.test"]),
    )
    .policy(policy("enforce", "mx.pool.test"));
    setup.announced = false;
    setup.switchable = true;
    setup.memory_ttl = Some(Duration::ZERO);
    let w = World::start(setup).await;
    send(&w.queue, "s@a.test", &["r1@pool.test"]).await;
    let e = wait_event(&w.queue, EventKind::Delivered).await;
    assert!(
        e.tls
            .as_deref()
            .unwrap_or("")
            .ends_with(" unverified; mta-sts=none"),
        "{e:?}"
    );
    // The connection is idle now (kept for 5 s); the policy appears.
    w.announce_new_id();
    send(&w.queue, "s@a.test", &["r2@pool.test"]).await;
    let e = wait_event(&w.queue, EventKind::Deferred).await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(
        reply.starts_with("451 4.7.5 ") && reply.contains("MTA-STS"),
        "{e:?}"
    );
    assert_enforce_mode(&e);
    assert_eq!(w.mx.messages().len(), 1, "only the first message went");
    assert!(
        w.mx.seen.lock().unwrap().sessions >= 2,
        "a new connection was tried"
    );
    assert_eq!(w.policy_server.as_ref().unwrap().requests(), 1);
    w.stop().await;
}

/// A message that would expire on a policy failure has the policy re-checked first (RFC 8461 §5.1): the
/// TXT id changed and the new policy allows the MX, so it is delivered, although this worker's memory
/// (60 s) still held the old policy and the message is past its `max_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_failure_at_max_age_rechecks_the_policy_and_delivers_under_the_new_one() {
    let mut setup = Setup::new("re.test", "mx.re.test", 88, Receiver::StartTls(&["mx.re.test"]))
        .policy(policy("enforce", "mx.old.test"));
    setup.max_age = Some(Duration::from_secs(3));
    setup.switchable = true;
    let w = World::start(setup).await;
    send(&w.queue, "s@a.test", &["r@re.test"]).await;
    let e = wait_event(&w.queue, EventKind::Deferred).await;
    assert!(
        e.reply.as_deref().unwrap_or("").starts_with("451 4.7.5 "),
        "{e:?}"
    );
    assert_enforce_mode(&e);
    w.policy_server
        .as_ref()
        .unwrap()
        .set_policy(&policy("enforce", "mx.re.test"));
    w.announce_new_id();
    let e = wait_event(&w.queue, EventKind::Delivered).await;
    assert!(
        e.tls
            .as_deref()
            .unwrap_or("")
            .ends_with(" verified; mta-sts=enforce"),
        "{e:?}"
    );
    assert!(events_of(&w.queue, EventKind::Expired).await.is_empty());
    assert_eq!(w.mx.messages().len(), 1);
    w.stop().await;
}

/// A plaintext session to a domain looked up without a policy says so: the event names the lookup's
/// result (`mta-sts=none`), which tells it apart from mail MTA-STS did not apply to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plaintext_delivery_to_a_domain_without_a_policy_says_mta_sts_none() {
    let w = World::start(Setup::new(
        "plainnone.test",
        "mx.plainnone.test",
        91,
        Receiver::Plain,
    ))
    .await;
    send(&w.queue, "s@a.test", &["r@plainnone.test"]).await;
    let e = wait_event(&w.queue, EventKind::Delivered).await;
    assert_eq!(e.tls.as_deref(), Some("plaintext; mta-sts=none"), "{e:?}");
    assert_eq!(e.remote_mx.as_deref(), Some("mx.plainnone.test"));
    assert!(!w.mx.messages()[0].tls);
    w.stop().await;
}

/// A session under an enforced policy that breaks before the server answered (the MX closes the
/// connection at MAIL): tern's own 451 names no server and claims no TLS session, but the event still says
/// the policy's mode (issue #17).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_broken_before_any_reply_still_names_the_mta_sts_mode() {
    let w = World::start(
        Setup::new(
            "broken.test",
            "mx.broken.test",
            93,
            Receiver::ClosesAtMail(&["mx.broken.test"]),
        )
        .policy(policy("enforce", "mx.broken.test")),
    )
    .await;
    send(&w.queue, "s@a.test", &["r@broken.test"]).await;
    let e = wait_event(&w.queue, EventKind::Deferred).await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(reply.starts_with("451 4.4.2"), "{e:?}");
    assert_eq!(e.tls.as_deref(), Some("mta-sts=enforce"), "{e:?}");
    assert_eq!((e.remote_mx, e.remote_ip), (None, None));
    // The session was verified TLS to the policy's MX: MAIL went out, over TLS.
    assert!(
        w.mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        w.mx.commands()
    );
    assert!(w.mx.messages().is_empty());
    w.stop().await;
}

/// With the policy server down and a valid cached policy, the cached policy is still enforced. The first
/// delivery fetches the enforce policy; then the policy server stops, and each lookup reads the store and
/// DNS (no memory): with the TXT id unchanged, a receiver without STARTTLS gets nothing (4.7.5, never
/// plaintext). Then a new id is announced (the fetch fails: the server is down) and the receiver offers
/// STARTTLS with a certificate for the MX name: the message goes over verified TLS under the cached
/// policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_policy_server_down_the_cached_policy_is_still_enforced() {
    let mut setup = Setup::new(
        "down.test",
        "mx.down.test",
        90,
        Receiver::StartTls(&["mx.down.test"]),
    )
    .policy(policy("enforce", "mx.down.test"));
    setup.memory_ttl = Some(Duration::ZERO);
    setup.switchable = true;
    // No idle connection outlives a message: the next one opens a session to the receiver of the time.
    setup.messages_per_connection = Some(1);
    let mut w = World::start(setup).await;
    send(&w.queue, "s@a.test", &["r1@down.test"]).await;
    let e = wait_event_for(&w.queue, EventKind::Delivered, "r1@down.test").await;
    let tls = e.tls.clone().unwrap_or_default();
    assert!(tls.ends_with(" verified; mta-sts=enforce"), "{e:?}");
    assert_eq!(w.policy_server.as_ref().unwrap().requests(), 1);

    w.policy_server.as_mut().unwrap().stop().await;
    w.replace_receiver(Receiver::Plain).await;
    send(&w.queue, "s@a.test", &["r2@down.test"]).await;
    let e = wait_event_for(&w.queue, EventKind::Deferred, "r2@down.test").await;
    let reply = e.reply.clone().unwrap_or_default();
    assert!(
        reply.starts_with("451 4.7.5 ") && reply.contains("MTA-STS") && reply.contains("STARTTLS"),
        "{e:?}"
    );
    assert_enforce_mode(&e);
    assert!(w.mx.messages().is_empty());
    assert!(
        !w.mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        w.mx.commands()
    );

    w.announce_new_id();
    w.replace_receiver(Receiver::StartTls(&["mx.down.test"])).await;
    let e = wait_event_for(&w.queue, EventKind::Delivered, "r2@down.test").await;
    let tls = e.tls.clone().unwrap_or_default();
    assert!(tls.ends_with(" verified; mta-sts=enforce"), "{e:?}");
    let messages = w.mx.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].tls);
    // The failed fetch of the new id was counted for TLS-RPT, beside the sessions.
    let key = tls_report_failure(&w, "down.test", "sts-policy-fetch-error").await;
    assert_eq!(key.mx_host, "", "{key:?}");
    w.stop().await;
}
