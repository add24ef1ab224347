//! The conformance cases of the TLS-RPT counters ([`TlsReportStore`]): every store that implements them
//! must pass them. Each case gets a fresh, empty store from the caller's factory.
//!
//! ```text
//! let factory = Arc::new(|name: String| Box::pin(async move { make_store(&name).await }));
//! tern_queue::conformance::tls_report::run_all(factory).await;
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tern_core::time::now_ms;

use crate::QueueError;
use crate::sts::LockOutcome;
use crate::tls_report::{KEEP_AFTER_DAY, TlsReportStore, TlsSessionKey, utc_day};

/// Makes a fresh, empty store for the named case.
pub type Factory = Arc<dyn Fn(String) -> BoxFuture<'static, Arc<dyn TlsReportStore>> + Send + Sync>;

/// One case.
pub type Case = fn(Arc<dyn TlsReportStore>) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub fn cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as Case)),*]
        }
    };
}

cases!(
    tlsrpt_counters_read_back_per_day_and_domain,
    tlsrpt_many_workers_add_to_one_counter,
    tlsrpt_the_domains_of_a_day_are_listed_once_in_order,
    tlsrpt_a_report_is_marked_sent_once,
    tlsrpt_a_days_lock_has_one_owner_at_a_time,
    tlsrpt_a_days_lock_lapses_after_its_ttl,
    tlsrpt_a_day_past_its_keep_time_keeps_nothing,
    tlsrpt_bad_days_and_empty_domains_are_refused,
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

fn today() -> String {
    utc_day(now_ms())
}

fn yesterday() -> String {
    utc_day(now_ms() - DAY_MS)
}

/// An MTA-STS policy's lines.
fn sts_policy(domain: &str) -> Vec<String> {
    vec![
        "version: STSv1".into(),
        "mode: enforce".into(),
        format!("mx: *.{domain}"),
        "max_age: 86400".into(),
    ]
}

/// A successful session to `mx`.
fn success(domain: &str, mx: &str) -> TlsSessionKey {
    TlsSessionKey {
        policy_type: "sts".into(),
        policy_string: sts_policy(domain),
        mx_host: mx.into(),
        result_type: None,
        sending_mta_ip: "192.0.2.1".into(),
        receiving_ip: "198.51.100.25".into(),
        receiving_mx_helo: Some(mx.into()),
        failure_reason_code: None,
    }
}

/// A failed session to `mx`.
fn failure(domain: &str, mx: &str, result: &str) -> TlsSessionKey {
    TlsSessionKey {
        result_type: Some(result.into()),
        failure_reason_code: Some("X509_V_ERR_CERT_HAS_EXPIRED".into()),
        ..success(domain, mx)
    }
}

async fn add(s: &Arc<dyn TlsReportStore>, day: &str, domain: &str, key: &TlsSessionKey, n: u64) {
    s.tls_report_add(day, domain, key, n)
        .await
        .expect("tls_report_add");
}

async fn read(s: &Arc<dyn TlsReportStore>, day: &str, domain: &str) -> Vec<(TlsSessionKey, u64)> {
    s.tls_report_read(day, domain).await.expect("tls_report_read")
}

async fn domains(s: &Arc<dyn TlsReportStore>, day: &str) -> Vec<String> {
    s.tls_report_domains(day).await.expect("tls_report_domains")
}

async fn lock(s: &Arc<dyn TlsReportStore>, day: &str, owner: &str, ttl: Duration) -> LockOutcome {
    s.tls_report_try_lock(day, owner, ttl)
        .await
        .expect("tls_report_try_lock")
}

// ---------------------------------------------------------------------------------------------- cases

/// Counts add up per key, per domain (any case) and per day; they read back in key order with every field
/// as added (quotes, newlines and non-ASCII text included); a zero count adds nothing.
async fn tlsrpt_counters_read_back_per_day_and_domain(s: Arc<dyn TlsReportStore>) {
    let (day, other_day) = (today(), yesterday());
    assert!(read(&s, &day, "a.test").await.is_empty());
    let ok = success("a.test", "mx1.a.test");
    let expired = failure("a.test", "mx1.a.test", "certificate-expired");
    let odd = TlsSessionKey {
        policy_string: vec!["mode: \"testing\"\n".into(), "ünïcode: \\ ;,".into()],
        receiving_mx_helo: None,
        failure_reason_code: None,
        ..failure("a.test", "mx2.a.test", "starttls-not-supported")
    };
    add(&s, &day, "a.test", &ok, 5).await;
    add(&s, &day, "A.Test", &ok, 2).await;
    add(&s, &day, "a.test", &expired, 3).await;
    add(&s, &day, "a.test", &odd, 1).await;
    add(
        &s,
        &day,
        "a.test",
        &failure("a.test", "mx9.a.test", "validation-failure"),
        0,
    )
    .await;
    add(&s, &other_day, "a.test", &ok, 11).await;
    add(&s, &day, "b.test", &success("b.test", "mx.b.test"), 4).await;

    let mut want = vec![(ok.clone(), 7), (expired, 3), (odd, 1)];
    want.sort();
    assert_eq!(read(&s, &day, "a.test").await, want);
    assert_eq!(read(&s, &day, "A.TEST").await, want, "domains without case");
    assert_eq!(read(&s, &other_day, "a.test").await, [(ok, 11)], "per day");
    assert_eq!(
        read(&s, &day, "b.test").await,
        [(success("b.test", "mx.b.test"), 4)],
        "per domain"
    );
    assert!(read(&s, &day, "c.test").await.is_empty());
}

/// Many workers adding to one counter at once lose no count; a counter of another key beside it stays
/// apart.
async fn tlsrpt_many_workers_add_to_one_counter(s: Arc<dyn TlsReportStore>) {
    let day = today();
    let key = failure("busy.test", "mx.busy.test", "certificate-host-mismatch");
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (s, day, key) = (Arc::clone(&s), day.clone(), key.clone());
            tokio::spawn(async move {
                let ok = success("busy.test", &format!("mx{w}.busy.test"));
                for i in 0..25u64 {
                    add(&s, &day, "busy.test", &key, 1).await;
                    add(&s, &day, "busy.test", &ok, i % 2).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let got = read(&s, &day, "busy.test").await;
    assert_eq!(
        got.len(),
        9,
        "one failure counter and each worker's success counter"
    );
    let total: u64 = got.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 8 * 25 + 8 * 12);
    assert!(got.contains(&(key, 200)), "{got:?}");
    assert!(got.contains(&(success("busy.test", "mx3.busy.test"), 12)));
}

/// A day's domains are those with counters that day, lower-case, sorted, each once, whatever shard they
/// live in; another day has its own.
async fn tlsrpt_the_domains_of_a_day_are_listed_once_in_order(s: Arc<dyn TlsReportStore>) {
    let (day, other_day) = (today(), yesterday());
    assert!(domains(&s, &day).await.is_empty());
    let mut want = Vec::new();
    for i in (0..20).rev() {
        let domain = format!("d{i:02}.list.test");
        let key = success(&domain, &format!("mx.{domain}"));
        add(&s, &day, &domain.to_uppercase(), &key, 1).await;
        add(&s, &day, &domain, &key, 1).await;
        want.push(domain);
    }
    want.sort();
    add(&s, &other_day, "old.test", &success("old.test", "mx.old.test"), 1).await;
    add(&s, &day, "zero.test", &success("zero.test", "mx.zero.test"), 0).await;
    assert_eq!(domains(&s, &day).await, want);
    assert_eq!(domains(&s, &other_day).await, ["old.test"]);
    s.tls_report_sent(&day, "sent-only.test")
        .await
        .expect("tls_report_sent");
    assert_eq!(domains(&s, &day).await, want, "a sent mark is no counter");
}

/// The first call marks a report sent and says so; every later one, from any worker, says it was; the
/// mark is per domain and day and leaves the counters as they are.
async fn tlsrpt_a_report_is_marked_sent_once(s: Arc<dyn TlsReportStore>) {
    let (day, other_day) = (today(), yesterday());
    let key = success("sent.test", "mx.sent.test");
    add(&s, &day, "sent.test", &key, 3).await;
    let markers: Vec<_> = (0..6)
        .map(|_| {
            let (s, day) = (Arc::clone(&s), day.clone());
            tokio::spawn(async move {
                s.tls_report_sent(&day, "Sent.TEST")
                    .await
                    .expect("tls_report_sent")
            })
        })
        .collect();
    let mut firsts = 0;
    for m in markers {
        firsts += usize::from(m.await.expect("marker"));
    }
    assert_eq!(firsts, 1, "exactly one caller marks it");
    assert!(!s.tls_report_sent(&day, "sent.test").await.expect("sent again"));
    assert!(
        s.tls_report_sent(&other_day, "sent.test")
            .await
            .expect("another day")
    );
    assert!(
        s.tls_report_sent(&day, "other.test")
            .await
            .expect("another domain")
    );
    assert_eq!(read(&s, &day, "sent.test").await, [(key, 3)]);
}

/// One owner holds a day's report lock at a time: another is told who holds it; the holder may take it
/// again; another day's lock is separate.
async fn tlsrpt_a_days_lock_has_one_owner_at_a_time(s: Arc<dyn TlsReportStore>) {
    let (day, other_day) = (today(), yesterday());
    let ttl = Duration::from_secs(60);
    assert_eq!(lock(&s, &day, "node-1", ttl).await, LockOutcome::Acquired);
    assert_eq!(
        lock(&s, &day, "node-2", ttl).await,
        LockOutcome::HeldBy("node-1".into())
    );
    assert_eq!(
        lock(&s, &day, "node-1", ttl).await,
        LockOutcome::Acquired,
        "the holder takes it again"
    );
    assert_eq!(lock(&s, &other_day, "node-2", ttl).await, LockOutcome::Acquired);
    assert_eq!(
        lock(&s, &other_day, "node-1", ttl).await,
        LockOutcome::HeldBy("node-2".into())
    );
    assert!(domains(&s, &day).await.is_empty(), "a lock is no counter");
}

/// A lock whose time to live ran out is free for another owner (a node that died sending does not stop
/// the day's reports for good).
async fn tlsrpt_a_days_lock_lapses_after_its_ttl(s: Arc<dyn TlsReportStore>) {
    let day = today();
    let ttl = Duration::from_secs(1);
    assert_eq!(lock(&s, &day, "node-1", ttl).await, LockOutcome::Acquired);
    assert_eq!(
        lock(&s, &day, "node-2", ttl).await,
        LockOutcome::HeldBy("node-1".into())
    );
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_eq!(lock(&s, &day, "node-2", ttl).await, LockOutcome::Acquired);
}

/// A day whose keep time has passed (a week after it ended) keeps nothing: adding to it does nothing, it
/// reads as empty, and its report can no longer be marked sent. The oldest day still kept keeps counting.
async fn tlsrpt_a_day_past_its_keep_time_keeps_nothing(s: Arc<dyn TlsReportStore>) {
    let keep_days = KEEP_AFTER_DAY.as_secs() / (24 * 3600);
    let gone = utc_day(now_ms() - (keep_days + 2) * DAY_MS);
    let oldest = utc_day(now_ms() - keep_days * DAY_MS);
    let key = success("old.test", "mx.old.test");
    add(&s, &gone, "old.test", &key, 5).await;
    assert!(read(&s, &gone, "old.test").await.is_empty());
    assert!(domains(&s, &gone).await.is_empty());
    assert!(!s.tls_report_sent(&gone, "old.test").await.expect("sent"));
    add(&s, &oldest, "old.test", &key, 5).await;
    assert_eq!(read(&s, &oldest, "old.test").await, [(key, 5)]);
    assert_eq!(domains(&s, &oldest).await, ["old.test"]);
}

/// A day is `YYYY-MM-DD`, a real date; a policy domain is not empty.
async fn tlsrpt_bad_days_and_empty_domains_are_refused(s: Arc<dyn TlsReportStore>) {
    let key = success("bad.test", "mx.bad.test");
    for day in ["2024-13-01", "20240501", "2023-02-29", "", "today"] {
        let err = s.tls_report_add(day, "bad.test", &key, 1).await;
        assert!(
            matches!(err, Err(QueueError::InvalidMessage(_))),
            "{day:?}: {err:?}"
        );
        let err = s.tls_report_read(day, "bad.test").await;
        assert!(
            matches!(err, Err(QueueError::InvalidMessage(_))),
            "{day:?}: {err:?}"
        );
        let err = s.tls_report_domains(day).await;
        assert!(
            matches!(err, Err(QueueError::InvalidMessage(_))),
            "{day:?}: {err:?}"
        );
        let err = s.tls_report_sent(day, "bad.test").await;
        assert!(
            matches!(err, Err(QueueError::InvalidMessage(_))),
            "{day:?}: {err:?}"
        );
        let err = s.tls_report_try_lock(day, "node", Duration::from_secs(1)).await;
        assert!(
            matches!(err, Err(QueueError::InvalidMessage(_))),
            "{day:?}: {err:?}"
        );
    }
    let day = today();
    let err = s.tls_report_add(&day, "bad.test", &key, u64::MAX).await;
    assert!(matches!(err, Err(QueueError::InvalidMessage(_))), "{err:?}");
    let err = s.tls_report_add(&day, "", &key, 1).await;
    assert!(matches!(err, Err(QueueError::InvalidMessage(_))), "{err:?}");
    let err = s.tls_report_sent(&day, "").await;
    assert!(matches!(err, Err(QueueError::InvalidMessage(_))), "{err:?}");
    assert!(domains(&s, &day).await.is_empty());
}
