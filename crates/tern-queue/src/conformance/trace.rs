//! The conformance cases of the trace bus ([`TraceBus`]): every store that implements it must pass them.
//! Each case gets a fresh store from the caller's factory, on which no trace is open.
//!
//! ```text
//! let factory = Arc::new(|name: String| Box::pin(async move { make_store(&name).await }));
//! tern_queue::conformance::trace::run_all(factory).await;
//! ```
//!
//! A dropped trace's filter must be gone within [`GONE_WITHIN`]: a store may let a registration lapse
//! rather than remove it at once (the Redis backend removes it at once, and a lost removal lapses in 10 s).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tern_core::time::now_ms;

use crate::trace::{TraceBus, TraceFilter, TraceRecord, TraceSubscription};

/// Makes a fresh trace bus for the named case.
pub type Factory = Arc<dyn Fn(String) -> BoxFuture<'static, Arc<dyn TraceBus>> + Send + Sync>;

/// One case.
pub type Case = fn(Arc<dyn TraceBus>) -> BoxFuture<'static, ()>;

/// How soon a dropped trace's filter must be gone from [`TraceBus::trace_filters`].
pub const GONE_WITHIN: Duration = Duration::from_secs(15);

/// How long a published record may take to reach an open trace.
const ARRIVES_WITHIN: Duration = Duration::from_secs(5);

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub fn cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as Case)),*]
        }
    };
}

cases!(
    trace_no_filters_while_no_trace_is_open,
    trace_an_open_trace_shows_its_filter_until_dropped,
    trace_each_trace_receives_the_records_its_filter_passes,
    trace_a_trace_sees_nothing_published_before_it_opened,
    trace_a_slow_reader_loses_records_and_the_publisher_never_waits,
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

fn filter(domain: Option<&str>, mx: Option<&str>) -> TraceFilter {
    TraceFilter {
        domain: domain.map(str::to_string),
        mx: mx.map(str::to_string),
    }
}

/// A record of a delivery to `domain` through `mx` at `ip` (empty: not known yet); `text` tells records
/// apart.
fn record(domain: &str, mx: &str, ip: &str, text: &str) -> TraceRecord {
    TraceRecord {
        time_ms: now_ms(),
        worker: "worker-1".into(),
        session: "s1".into(),
        domain: domain.to_string(),
        mx: mx.to_string(),
        ip: ip.to_string(),
        kind: "recv".into(),
        text: text.to_string(),
    }
}

async fn filters(s: &Arc<dyn TraceBus>) -> HashSet<TraceFilter> {
    s.trace_filters()
        .await
        .expect("trace_filters")
        .into_iter()
        .collect()
}

async fn open(s: &Arc<dyn TraceBus>, f: &TraceFilter) -> TraceSubscription {
    s.open_trace(f.clone()).await.expect("open_trace")
}

async fn publish(s: &Arc<dyn TraceBus>, records: &[TraceRecord]) {
    s.publish_trace(records).await.expect("publish_trace");
}

/// The next record, which must come within [`ARRIVES_WITHIN`].
async fn next(sub: &mut TraceSubscription) -> TraceRecord {
    match tokio::time::timeout(ARRIVES_WITHIN, sub.next()).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("the trace closed"),
        Err(_) => panic!("no record within {ARRIVES_WITHIN:?}"),
    }
}

/// The texts of the records received up to and including the one whose text is `last`.
async fn texts_until(sub: &mut TraceSubscription, last: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let r = next(sub).await;
        out.push(r.text.clone());
        if r.text == last {
            return out;
        }
    }
}

/// Waits (up to [`GONE_WITHIN`]) until the open filters are `want`.
async fn filters_become(s: &Arc<dyn TraceBus>, want: &[TraceFilter]) {
    let want: HashSet<TraceFilter> = want.iter().cloned().collect();
    let started = Instant::now();
    loop {
        let got = filters(s).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < GONE_WITHIN,
            "filters still {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------- cases

/// With no trace open there is no filter (a worker records nothing), and publishing is harmless.
async fn trace_no_filters_while_no_trace_is_open(s: Arc<dyn TraceBus>) {
    assert!(filters(&s).await.is_empty());
    publish(&s, &[]).await;
    publish(&s, &[record("example.test", "", "", "nobody listens")]).await;
    assert!(filters(&s).await.is_empty());
}

/// An open trace's filter is listed as soon as it is open, and is gone once the trace is dropped; other
/// traces stay.
async fn trace_an_open_trace_shows_its_filter_until_dropped(s: Arc<dyn TraceBus>) {
    let by_domain = filter(Some("example.test"), None);
    let by_mx = filter(None, Some("mx1.example.test"));
    let first = open(&s, &by_domain).await;
    assert_eq!(filters(&s).await, HashSet::from([by_domain.clone()]));
    let second = open(&s, &by_mx).await;
    assert_eq!(
        filters(&s).await,
        HashSet::from([by_domain.clone(), by_mx.clone()])
    );
    let everything = open(&s, &TraceFilter::default()).await;
    assert!(filters(&s).await.contains(&TraceFilter::default()));
    drop(first);
    filters_become(&s, &[by_mx.clone(), TraceFilter::default()]).await;
    drop(everything);
    drop(second);
    filters_become(&s, &[]).await;
}

/// Each open trace receives, in order, the records its filter passes (domain without regard to case; MX host
/// or IP address, a record before the connection passing an MX filter), and no others.
async fn trace_each_trace_receives_the_records_its_filter_passes(s: Arc<dyn TraceBus>) {
    let mut by_domain = open(&s, &filter(Some("MATCH.test"), None)).await;
    let mut by_mx = open(&s, &filter(None, Some("mx1.match.test."))).await;
    let mut by_ip = open(&s, &filter(Some("match.test"), Some("192.0.2.9"))).await;
    publish(&s, &[record("other.test", "mx1.match.test", "192.0.2.1", "r1")]).await;
    publish(
        &s,
        &[
            record("match.test", "", "", "r2"),
            record("Match.Test", "mx2.match.test", "192.0.2.2", "r3"),
            record("match.test", "MX1.match.test", "192.0.2.1", "r4"),
        ],
    )
    .await;
    publish(&s, &[record("other.test", "", "", "r5")]).await;
    publish(&s, &[record("match.test", "mx9.example.net", "192.0.2.9", "r6")]).await;
    publish(&s, &[record("match.test", "mx1.match.test", "192.0.2.9", "end")]).await;
    assert_eq!(
        texts_until(&mut by_domain, "end").await,
        ["r2", "r3", "r4", "r6", "end"]
    );
    assert_eq!(
        texts_until(&mut by_mx, "end").await,
        ["r1", "r2", "r4", "r5", "end"]
    );
    assert_eq!(texts_until(&mut by_ip, "end").await, ["r2", "r6", "end"]);
    let whole = record("match.test", "mx1.match.test", "192.0.2.1", "whole");
    publish(&s, std::slice::from_ref(&whole)).await;
    assert_eq!(next(&mut by_domain).await, whole, "a record arrives whole");
}

/// A trace shows what happens while it is open: records published before are not kept for it.
async fn trace_a_trace_sees_nothing_published_before_it_opened(s: Arc<dyn TraceBus>) {
    publish(&s, &[record("early.test", "", "", "before")]).await;
    let mut sub = open(&s, &TraceFilter::default()).await;
    publish(&s, &[record("early.test", "", "", "after")]).await;
    assert_eq!(next(&mut sub).await.text, "after");
}

/// A trace whose reader does not keep up loses records rather than hold up the publisher; what it keeps
/// arrives in order, once, and the trace goes on working once the reader catches up.
async fn trace_a_slow_reader_loses_records_and_the_publisher_never_waits(s: Arc<dyn TraceBus>) {
    const RECORDS: usize = 5_000;
    let mut sub = open(&s, &filter(Some("flood.test"), None)).await;
    let started = Instant::now();
    for batch in 0..10 {
        let records: Vec<TraceRecord> = (0..RECORDS / 10)
            .map(|i| {
                record(
                    "flood.test",
                    "",
                    "",
                    &format!("{:05}", batch * (RECORDS / 10) + i),
                )
            })
            .collect();
        publish(&s, &records).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "publishing to an unread trace took {:?}",
        started.elapsed()
    );
    let mut got = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        got.push(r.text);
    }
    assert!(!got.is_empty(), "the trace kept nothing");
    assert!(got.len() <= RECORDS, "{} records", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order and once each");
    publish(&s, &[record("flood.test", "", "", "caught up")]).await;
    assert_eq!(next(&mut sub).await.text, "caught up");
}
