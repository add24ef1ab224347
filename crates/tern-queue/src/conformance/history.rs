//! The conformance cases of the message history ([`HistoryStore`]): every store that implements it must
//! pass them. Each case gets a fresh, empty store from the caller's factory, as its queue and its history
//! (the same store: what the queue does shows in the history), keeping history for the retention the case
//! asks for: [`DEFAULT_RETENTION`] but for the cases of a zero retention and of a retention that runs out.
//!
//! ```text
//! let factory: history::Factory = Arc::new(|name: String, retention: Duration| {
//!     Box::pin(async move {
//!         let store = Arc::new(make_store(&name, retention).await);
//!         history::Stores { queue: store.clone(), history: store }
//!     })
//! });
//! tern_queue::conformance::history::run_all(factory).await;
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tern_core::time::now_ms;
use tern_core::{Envelope, MessageId, ReversePath};

use super::{claim, claim_lease, deliver, message, rcpt};
use crate::Queue;
use crate::history::{DEFAULT_RETENTION, FinalOutcome, HistoryQuery, HistoryStore};
use crate::model::*;

/// One store, seen as its queue and as its history.
#[derive(Clone)]
pub struct Stores {
    /// The store's queue.
    pub queue: Arc<dyn Queue>,
    /// The same store's history.
    pub history: Arc<dyn HistoryStore>,
}

/// Makes a fresh, empty store for the named case that keeps history for the given retention
/// (`queue.history`; zero keeps none).
pub type Factory = Arc<dyn Fn(String, Duration) -> BoxFuture<'static, Stores> + Send + Sync>;

/// One case.
pub type Case = fn(Stores) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub fn cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as Case)),*]
        }
    };
}

cases!(
    history_a_delivered_message_reads_back_after_it_left_the_queue,
    history_a_bounced_message_has_its_dsn_id,
    history_a_deleted_message_reads_as_deleted,
    history_keeps_every_job_event,
    history_a_message_of_many_domains_merges_its_jobs,
    history_ids_list_newest_first_from_a_time_and_before_an_id,
    history_find_looks_by_recipient_sender_and_tag,
    history_a_zero_retention_keeps_none,
    history_is_forgotten_after_its_retention,
    history_an_action_that_skips_a_job_keeps_its_history,
);

/// The retention the case's store keeps history for.
pub fn retention_for(case: &str) -> Duration {
    match case {
        "history_a_zero_retention_keeps_none" => Duration::ZERO,
        "history_is_forgotten_after_its_retention" => SHORT_RETENTION,
        _ => DEFAULT_RETENTION,
    }
}

/// Runs every case (four at a time), each on a fresh store, and panics listing the cases that failed.
pub async fn run_all(factory: Factory) {
    run_some(factory, |_| true).await;
}

/// Runs the cases whose name `select` accepts.
pub async fn run_some(factory: Factory, select: impl Fn(&str) -> bool) {
    let selected: Vec<_> = cases().into_iter().filter(|(n, _)| select(n)).collect();
    super::run_cases(
        move |name| {
            let retention = retention_for(&name);
            factory(name, retention)
        },
        selected,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------- helpers

/// The retention of `history_is_forgotten_after_its_retention`.
const SHORT_RETENTION: Duration = Duration::from_secs(2);

fn attempt(dsn: Option<&str>) -> DeliveryAttempt {
    DeliveryAttempt {
        remote_mx: Some("mx1.dest.test".into()),
        remote_ip: Some("192.0.2.25".into()),
        tls: Some("TLSv1.3 TLS_AES_256_GCM_SHA384".into()),
        dsn: dsn.map(str::to_string),
    }
}

async fn events(s: &Stores, id: MessageId) -> Vec<Event> {
    s.history.history_events(id).await.expect("history_events")
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

/// Every id with history, newest first, `page` at a time.
async fn all_ids(s: &Stores, since_ms: u64, page: usize) -> Vec<MessageId> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let ids = s
            .history
            .history_ids(since_ms, before, page)
            .await
            .expect("history_ids");
        assert!(ids.len() <= page, "a page holds at most its limit");
        out.extend(&ids);
        if ids.len() < page {
            return out;
        }
        before = ids.last().copied();
    }
}

/// A message with its own id, made at `ms`.
fn message_at(ms: u64, rcpts: &[&str]) -> NewMessage {
    let mut m = message(rcpts);
    m.id = Some(MessageId::at(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)));
    m
}

// ---------------------------------------------------------------------------------------------- cases

/// A delivered message keeps its history after it left the queue: queued (with the envelope sender and
/// the tags) and delivered (with the MX, IP, TLS and reply), read as delivered. A message from the null
/// sender has the sender `""`.
async fn history_a_delivered_message_reads_back_after_it_left_the_queue(s: Stores) {
    let q = &s.queue;
    let r = q
        .enqueue(message(&["Rcpt@dest.test"]).with_tag("tenant", "t1"))
        .await
        .expect("enqueue");
    let queued = events(&s, r.message).await;
    assert_eq!(
        kinds(&queued),
        vec![EventKind::Queued],
        "a queued message has history"
    );
    let c = claim(q, "w", 10).await.expect("work");
    let done = q
        .complete(
            "w",
            &c.jobs[0].lease,
            Outcome::delivered()
                .with_reply("250 2.0.0 queued as 4711")
                .with_attempt(attempt(None)),
        )
        .await
        .expect("complete");
    assert_eq!(done, Completion::Finished);
    assert!(
        q.get_message(r.message).await.expect("get").is_none(),
        "gone from the queue"
    );
    let history = events(&s, r.message).await;
    assert_eq!(kinds(&history), vec![EventKind::Queued, EventKind::Delivered]);
    let (queued, delivered) = (&history[0], &history[1]);
    assert_eq!(queued.sender.as_deref(), Some("sender@origin.test"));
    assert_eq!(queued.tags.get("tenant").map(String::as_str), Some("t1"));
    assert_eq!(queued.recipients, vec!["Rcpt@dest.test".to_string()]);
    assert_eq!(queued.message, Some(r.message));
    assert_eq!(queued.job, Some(r.jobs[0].0));
    assert_eq!(queued.domain, "dest.test");
    assert_eq!(delivered.job, Some(r.jobs[0].0));
    assert_eq!(delivered.remote_mx.as_deref(), Some("mx1.dest.test"));
    assert_eq!(delivered.remote_ip.as_deref(), Some("192.0.2.25"));
    assert_eq!(delivered.tls.as_deref(), Some("TLSv1.3 TLS_AES_256_GCM_SHA384"));
    assert_eq!(delivered.reply.as_deref(), Some("250 2.0.0 queued as 4711"));
    assert_eq!(delivered.attempt, 1);
    assert_eq!(delivered.dsn, None);
    assert!(queued.time_ms <= delivered.time_ms);
    let h = s
        .history
        .message_history(r.message)
        .await
        .expect("message_history")
        .expect("kept");
    assert_eq!(h.outcome, Some(FinalOutcome::Delivered));
    assert_eq!(h.finished_ms, Some(delivered.time_ms));
    assert_eq!(h.sender.as_deref(), Some("sender@origin.test"));
    assert_eq!(h.accepted_ms, r.message.timestamp_ms());
    assert_eq!(h.recipients.len(), 1);
    assert_eq!(h.recipients[0].reply.as_deref(), Some("250 2.0.0 queued as 4711"));
    // The null sender.
    let null = Envelope::new(ReversePath::Null, vec![rcpt("x@dest.test")]);
    let r = q
        .enqueue(NewMessage::new(null, &b"Subject: dsn\r\n\r\n"[..]))
        .await
        .expect("enqueue");
    let history = events(&s, r.message).await;
    assert_eq!(history[0].sender.as_deref(), Some(""));
    // An unknown message has none.
    assert!(events(&s, MessageId::new()).await.is_empty());
    assert!(
        s.history
            .message_history(MessageId::new())
            .await
            .expect("message_history")
            .is_none()
    );
}

/// A message that failed after a deferral: queued, deferred, failed with the DSN's id; read as bounced.
async fn history_a_bounced_message_has_its_dsn_id(s: Stores) {
    let q = &s.queue;
    let r = q.enqueue(message(&["a@dest.test"])).await.expect("enqueue");
    let c = claim(q, "w", 10).await.expect("work");
    q.complete("w", &c.jobs[0].lease, Outcome::defer(now_ms(), "451 4.2.0 busy"))
        .await
        .expect("defer");
    let c = claim(q, "w", 10).await.expect("due again");
    q.complete(
        "w",
        &c.jobs[0].lease,
        Outcome::fail("550 5.1.1 unknown user").with_attempt(attempt(Some("01DSNBOUNCE"))),
    )
    .await
    .expect("fail");
    let history = events(&s, r.message).await;
    assert_eq!(
        kinds(&history),
        vec![EventKind::Queued, EventKind::Deferred, EventKind::Failed]
    );
    assert_eq!(history[1].reply.as_deref(), Some("451 4.2.0 busy"));
    assert_eq!(history[1].dsn, None);
    let failed = &history[2];
    assert_eq!(failed.dsn.as_deref(), Some("01DSNBOUNCE"));
    assert_eq!(failed.reply.as_deref(), Some("550 5.1.1 unknown user"));
    assert_eq!(failed.attempt, 2);
    let h = s
        .history
        .message_history(r.message)
        .await
        .expect("message_history")
        .expect("kept");
    assert_eq!(h.outcome, Some(FinalOutcome::Bounced));
    assert_eq!(h.dsns, vec!["01DSNBOUNCE".to_string()]);
}

/// A message an operator held, then deleted: queued, held, deleted; read as deleted.
async fn history_a_deleted_message_reads_as_deleted(s: Stores) {
    let q = &s.queue;
    let r = q
        .enqueue(message(&["a@dest.test", "b@dest.test"]))
        .await
        .expect("enqueue");
    assert_eq!(q.hold(&Target::Message(r.message)).await.expect("hold"), 1);
    assert_eq!(q.delete(&Target::Message(r.message)).await.expect("delete"), 1);
    let history = events(&s, r.message).await;
    assert_eq!(
        kinds(&history),
        vec![EventKind::Queued, EventKind::Held, EventKind::Deleted]
    );
    assert_eq!(history[2].recipients.len(), 2);
    let h = s
        .history
        .message_history(r.message)
        .await
        .expect("message_history")
        .expect("kept");
    assert_eq!(h.outcome, Some(FinalOutcome::Deleted));
    assert!(h.finished_ms.is_some());
}

/// Every job event is kept, in order: queued, retried, released, lease-expired, held, unheld, bounced, and
/// the failure of the admin bounce with its DSN.
async fn history_keeps_every_job_event(s: Stores) {
    let q = &s.queue;
    let r = q
        .enqueue(message(&["a@dest.test"]).not_before(now_ms() + 3_600_000))
        .await
        .expect("enqueue");
    let job = Target::Job(r.jobs[0].0);
    assert_eq!(q.retry_now(&job).await.expect("retry"), 1);
    let c = claim(q, "w", 10).await.expect("due");
    q.release("w", &c.jobs[0].lease).await.expect("release");
    let _lost = claim_lease(q, "w", 10, Duration::from_millis(200))
        .await
        .expect("due again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.reap(now_ms()).await.expect("reap"), 1);
    assert_eq!(q.hold(&job).await.expect("hold"), 1);
    assert_eq!(q.unhold(&job).await.expect("unhold"), 1);
    assert_eq!(q.bounce(&job, Some("on request")).await.expect("bounce"), 1);
    let c = claim(q, "w", 10).await.expect("the bounce");
    assert_eq!(c.domain, BOUNCE_SCHEDULE);
    q.complete(
        "w",
        &c.jobs[0].lease,
        Outcome::fail("5.0.0 bounced by the operator").with_attempt(DeliveryAttempt {
            dsn: Some("01DSNADMIN".into()),
            ..Default::default()
        }),
    )
    .await
    .expect("complete");
    let history = events(&s, r.message).await;
    assert_eq!(
        kinds(&history),
        vec![
            EventKind::Queued,
            EventKind::Retried,
            EventKind::Released,
            EventKind::LeaseExpired,
            EventKind::Held,
            EventKind::Unheld,
            EventKind::Bounced,
            EventKind::Failed,
        ]
    );
    assert!(history.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    assert!(history.iter().all(|e| e.job == Some(r.jobs[0].0)));
    assert_eq!(history[7].dsn.as_deref(), Some("01DSNADMIN"));
    let h = s
        .history
        .message_history(r.message)
        .await
        .expect("message_history")
        .expect("kept");
    assert_eq!(h.outcome, Some(FinalOutcome::Bounced));
}

/// The jobs of a message of several domains (on different shards, where a store has them) make one
/// history, oldest first: still in the queue while one job is, then mixed.
async fn history_a_message_of_many_domains_merges_its_jobs(s: Stores) {
    let q = &s.queue;
    let domains = ["one.test", "two.test", "three.test", "four.test"];
    let rcpts: Vec<String> = domains.iter().map(|d| format!("r@{d}")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let r = q.enqueue(message(&rcpts)).await.expect("enqueue");
    assert_eq!(r.jobs.len(), 4);
    assert_eq!(
        q.hold(&Target::Domain("four.test".into())).await.expect("hold"),
        1
    );
    while let Some(c) = claim(q, "w", 10).await {
        for j in c.jobs {
            let outcome = match j.job.domain.as_str() {
                "three.test" => Outcome::expire("4.4.7 too old").with_attempt(attempt(Some("01DSNEXP"))),
                _ => Outcome::delivered().with_attempt(attempt(None)),
            };
            q.complete("w", &j.lease, outcome).await.expect("complete");
        }
    }
    let h = s
        .history
        .message_history(r.message)
        .await
        .expect("message_history")
        .expect("kept");
    assert_eq!(h.outcome, None, "four.test is still in the queue");
    assert_eq!(h.recipients.len(), 4);
    assert_eq!(
        q.delete(&Target::Domain("four.test".into()))
            .await
            .expect("delete"),
        1
    );
    let history = events(&s, r.message).await;
    assert!(
        history.windows(2).all(|w| w[0].time_ms <= w[1].time_ms),
        "oldest first: {history:?}"
    );
    for (job, domain) in &r.jobs {
        let of_job: Vec<&Event> = history.iter().filter(|e| e.job == Some(*job)).collect();
        assert_eq!(of_job[0].kind, EventKind::Queued, "{domain}");
        assert_eq!(of_job[0].domain, *domain);
        assert_eq!(of_job[0].sender.as_deref(), Some("sender@origin.test"));
    }
    let count = |kind: EventKind| history.iter().filter(|e| e.kind == kind).count();
    assert_eq!(
        (
            count(EventKind::Queued),
            count(EventKind::Delivered),
            count(EventKind::Expired),
            count(EventKind::Held),
            count(EventKind::Deleted)
        ),
        (4, 2, 1, 1, 1)
    );
    let h = s
        .history
        .message_history(r.message)
        .await
        .expect("message_history")
        .expect("kept");
    assert_eq!(h.outcome, Some(FinalOutcome::Mixed));
    assert_eq!(h.dsns, vec!["01DSNEXP".to_string()]);
    let by_domain = |d: &str| {
        h.recipients
            .iter()
            .find(|r| r.domain == d)
            .and_then(|r| r.outcome)
    };
    assert_eq!(by_domain("one.test"), Some(FinalOutcome::Delivered));
    assert_eq!(by_domain("three.test"), Some(FinalOutcome::Expired));
    assert_eq!(by_domain("four.test"), Some(FinalOutcome::Deleted));
}

/// `history_ids` lists messages newest first by the time in their ids, from a time on (inclusive) and
/// strictly before an id; paging with the last id of a page visits each once.
async fn history_ids_list_newest_first_from_a_time_and_before_an_id(s: Stores) {
    let q = &s.queue;
    let base = now_ms() - 60_000;
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let r = q
            .enqueue(message_at(base + i * 1_000, &[&format!("r{i}@dest.test")]))
            .await
            .expect("enqueue");
        ids.push(r.message);
    }
    // Finished messages are listed as well as queued ones.
    let c = claim(q, "w", 3).await.expect("work");
    for j in &c.jobs {
        deliver(q, "w", &j.lease).await;
    }
    let newest_first: Vec<MessageId> = ids.iter().rev().copied().collect();
    assert_eq!(all_ids(&s, 0, 100).await, newest_first);
    assert_eq!(all_ids(&s, 0, 2).await, newest_first, "paged by 2");
    assert_eq!(all_ids(&s, 0, 7).await, newest_first, "a full last page");
    // From a time on: the message made at that very time is in.
    assert_eq!(all_ids(&s, base + 4_000, 100).await, newest_first[..3].to_vec());
    assert_eq!(all_ids(&s, base + 3_500, 2).await, newest_first[..3].to_vec());
    // Strictly before an id.
    let before = s
        .history
        .history_ids(0, Some(ids[4]), 2)
        .await
        .expect("history_ids");
    assert_eq!(before, vec![ids[3], ids[2]]);
    let none = s
        .history
        .history_ids(base + 5_000, Some(ids[4]), 10)
        .await
        .expect("history_ids");
    assert!(none.is_empty(), "{none:?}");
    assert!(
        s.history
            .history_ids(now_ms() + 60_000, None, 10)
            .await
            .expect("history_ids")
            .is_empty()
    );
}

/// The shared search (`HistoryStore::find`) over a store's history: by recipient, sender and tag.
async fn history_find_looks_by_recipient_sender_and_tag(s: Stores) {
    let q = &s.queue;
    let base = now_ms() - 10_000;
    let a = q
        .enqueue(message_at(base, &["alice@dest.test"]).with_tag("tenant", "t1"))
        .await
        .expect("enqueue")
        .message;
    let b = q
        .enqueue(message_at(base + 1_000, &["bob@dest.test"]).with_tag("tenant", "t2"))
        .await
        .expect("enqueue")
        .message;
    let find = |query: HistoryQuery| {
        let history = Arc::clone(&s.history);
        async move {
            let (found, complete) = history.find(&query, 10).await.expect("find");
            assert!(complete);
            found.into_iter().map(|h| h.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        find(HistoryQuery {
            recipient: Some("ALICE@dest.test".into()),
            ..Default::default()
        })
        .await,
        vec![a]
    );
    assert_eq!(
        find(HistoryQuery {
            sender: Some("Sender@Origin.test".into()),
            ..Default::default()
        })
        .await,
        vec![b, a]
    );
    assert_eq!(
        find(HistoryQuery {
            tag: Some(("tenant".into(), Some("t2".into()))),
            ..Default::default()
        })
        .await,
        vec![b]
    );
    assert_eq!(
        find(HistoryQuery {
            since_ms: base + 500,
            ..Default::default()
        })
        .await,
        vec![b]
    );
}

/// A store whose retention is zero keeps no history at all.
async fn history_a_zero_retention_keeps_none(s: Stores) {
    let q = &s.queue;
    let r = q.enqueue(message(&["a@dest.test"])).await.expect("enqueue");
    let c = claim(q, "w", 10).await.expect("work");
    deliver(q, "w", &c.jobs[0].lease).await;
    assert!(events(&s, r.message).await.is_empty());
    assert!(all_ids(&s, 0, 10).await.is_empty());
    assert!(
        s.history
            .message_history(r.message)
            .await
            .expect("message_history")
            .is_none()
    );
}

/// An operator action that skips a job (the release of a job not held, the hold of a job in flight) leaves
/// its history whole: the `queued` record, with the sender, is still there after the delivery.
async fn history_an_action_that_skips_a_job_keeps_its_history(s: Stores) {
    let q = &s.queue;
    let r = q.enqueue(message(&["a@dest.test"])).await.expect("enqueue");
    let target = crate::Target::Message(r.message);
    assert_eq!(q.unhold(&target).await.expect("unhold"), 0);
    let c = claim(q, "w", 10).await.expect("work");
    assert_eq!(q.hold(&target).await.expect("hold"), 0);
    deliver(q, "w", &c.jobs[0].lease).await;
    let history = events(&s, r.message).await;
    assert_eq!(kinds(&history), vec![EventKind::Queued, EventKind::Delivered]);
    assert!(history[0].sender.is_some(), "{:?}", history[0]);
}

/// A message's history is kept for the retention after its last event (here a short one), then forgotten:
/// by the time a reaper pass ran after it, it is neither read nor listed.
async fn history_is_forgotten_after_its_retention(s: Stores) {
    let q = &s.queue;
    let r = q.enqueue(message(&["a@dest.test"])).await.expect("enqueue");
    let c = claim(q, "w", 10).await.expect("work");
    deliver(q, "w", &c.jobs[0].lease).await;
    assert_eq!(
        kinds(&events(&s, r.message).await),
        vec![EventKind::Queued, EventKind::Delivered]
    );
    assert_eq!(all_ids(&s, 0, 10).await, vec![r.message]);
    // Forgotten within twice the retention (see the module docs of `crate::history`).
    tokio::time::sleep(SHORT_RETENTION * 2 + Duration::from_millis(500)).await;
    q.reap(now_ms()).await.expect("reap");
    assert!(events(&s, r.message).await.is_empty(), "forgotten");
    assert!(all_ids(&s, 0, 10).await.is_empty());
    // A message queued since keeps its own.
    let fresh = q.enqueue(message(&["b@dest.test"])).await.expect("enqueue");
    assert_eq!(all_ids(&s, 0, 10).await, vec![fresh.message]);
}
