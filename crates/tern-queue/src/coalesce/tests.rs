//! The lanes' logic over a recording backend: which requests share a call, who gets which answer, when a
//! call is sent. (The wrapper over real Redis: `tests/coalesced.rs` and `tests/conformance_coalesced.rs`.)
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Mutex;

use tern_core::{Envelope, JobId, Recipient, ReversePath};
use tokio::sync::Semaphore;

use super::*;

/// One call the backend received.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    /// `enqueue_batch` with these messages' ids.
    Enqueue(Vec<MessageId>),
    /// `complete_batch` by this owner with these jobs.
    Complete(String, Vec<JobId>),
}

/// A backend that records its calls and lets each through only when the test opens its gate. Messages with
/// no recipients are invalid; a message tagged `panic` panics; jobs whose token is `stale` are not the
/// caller's. It uses no timer.
struct Recorder {
    calls: Mutex<Vec<Call>>,
    gate: Semaphore,
}

impl Recorder {
    fn open() -> Arc<Recorder> {
        Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            gate: Semaphore::new(Semaphore::MAX_PERMITS),
        })
    }

    fn closed() -> Arc<Recorder> {
        Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        })
    }

    fn let_through(&self, calls: usize) {
        self.gate.add_permits(calls);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    async fn enter(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
        self.gate.acquire().await.unwrap().forget();
    }
}

fn unused<T>() -> Result<T, QueueError> {
    Err(QueueError::Backend("not used by these tests".into()))
}

#[async_trait]
impl Queue for Recorder {
    async fn enqueue(&self, _: NewMessage) -> Result<EnqueueReceipt, QueueError> {
        unused()
    }

    async fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<EnqueueReceipt, QueueError>> {
        let ids = messages
            .iter()
            .map(|m| m.id.expect("tests name their messages"))
            .collect();
        self.enter(Call::Enqueue(ids)).await;
        assert!(
            !messages.iter().any(|m| m.tags.contains_key("panic")),
            "told to panic"
        );
        messages
            .into_iter()
            .map(|m| match (m.id, m.envelope.recipients.is_empty()) {
                (Some(id), false) => Ok(EnqueueReceipt {
                    message: id,
                    jobs: vec![(JobId::new(id, 0), "d.test".into())],
                    duplicate: false,
                }),
                _ => Err(QueueError::InvalidMessage("no recipients".into())),
            })
            .collect()
    }

    async fn claim_holding(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: &[SlotHold],
    ) -> Result<Option<Claim>, QueueError> {
        unused()
    }

    async fn claim_next(
        &self,
        _: &str,
        max_batch: usize,
        _: Duration,
        _: &[SlotHold],
    ) -> Result<ClaimOutcome, QueueError> {
        Ok(ClaimOutcome::Nothing {
            next_due_ms: Some(max_batch as u64),
        })
    }

    async fn wait_for_work(&self, _: Duration) -> Wakeup {
        Wakeup::Woken
    }

    async fn hold_slot(&self, _: &str, _: &str, _: Duration) -> Result<Option<SlotHold>, QueueError> {
        unused()
    }

    async fn drop_slot(&self, _: &SlotHold) -> Result<(), QueueError> {
        unused()
    }

    async fn complete(&self, _: &str, _: &JobLease, _: Outcome) -> Result<Completion, QueueError> {
        unused()
    }

    async fn complete_batch(
        &self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
    ) -> Vec<Result<Completion, QueueError>> {
        let ids = jobs.iter().map(|(lease, _)| lease.job).collect();
        self.enter(Call::Complete(owner.to_string(), ids)).await;
        jobs.into_iter()
            .map(|(lease, _)| match lease.token.as_str() {
                "stale" => Err(QueueError::NotOwner { job: lease.job }),
                _ => Ok(Completion::Finished),
            })
            .collect()
    }

    async fn extend(&self, _: &str, _: &JobLease, _: Duration) -> Result<u64, QueueError> {
        unused()
    }

    async fn release(&self, _: &str, _: &JobLease) -> Result<(), QueueError> {
        unused()
    }

    async fn reap(&self, now_ms: u64) -> Result<u64, QueueError> {
        Ok(now_ms)
    }

    async fn get_message(&self, _: MessageId) -> Result<Option<MessageInfo>, QueueError> {
        unused()
    }

    async fn read_body(&self, _: MessageId) -> Result<Option<bytes::Bytes>, QueueError> {
        unused()
    }

    async fn list(&self, _: &ListFilter, _: Option<Cursor>, _: usize) -> Result<Page<Job>, QueueError> {
        unused()
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        unused()
    }

    async fn domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError> {
        unused()
    }

    async fn domain_depth(&self, _: &str) -> Result<DomainDepth, QueueError> {
        unused()
    }

    async fn retry_now(&self, _: &Target) -> Result<u64, QueueError> {
        unused()
    }

    async fn delete(&self, _: &Target) -> Result<u64, QueueError> {
        unused()
    }

    async fn bounce(&self, _: &Target, _: Option<&str>) -> Result<u64, QueueError> {
        unused()
    }

    async fn suspend(&self, _: &str, _: Option<u64>, _: &str) -> Result<(), QueueError> {
        unused()
    }

    async fn resume(&self, _: &str) -> Result<bool, QueueError> {
        unused()
    }

    async fn suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        unused()
    }

    async fn set_domain_concurrency(&self, _: &str, _: Option<u32>) -> Result<(), QueueError> {
        unused()
    }

    async fn read_events(
        &self,
        _: Option<&EventPos>,
        _: usize,
        _: Option<Duration>,
    ) -> Result<(Vec<Event>, EventPos), QueueError> {
        unused()
    }

    async fn events_end(&self) -> Result<EventPos, QueueError> {
        unused()
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        unused()
    }

    async fn recent_stats(&self, _: Duration) -> Result<Stats, QueueError> {
        unused()
    }
}

fn message(recipients: usize) -> NewMessage {
    let envelope = Envelope::new(
        ReversePath::Mailbox("s@a.test".parse().unwrap()),
        (0..recipients)
            .map(|i| Recipient::new(format!("r{i}@d.test").parse().unwrap()))
            .collect(),
    );
    let mut m = NewMessage::new(envelope, "Subject: x\r\n\r\nx\r\n");
    m.id = Some(MessageId::new());
    m
}

fn lease(token: &str) -> JobLease {
    JobLease {
        job: JobId::new(MessageId::new(), 0),
        domain: "d.test".into(),
        token: token.into(),
    }
}

fn wrap(inner: &Arc<Recorder>, options: CoalescingOptions) -> Arc<Coalescing> {
    Arc::new(Coalescing::new(inner.clone(), options))
}

/// Lets the runtime's other tasks run until `done` holds (no time passes: the tests' runtimes are
/// single-threaded, so yielding runs every task that can make progress).
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

fn waiting<R: Request>(lane: &Lane<R>) -> usize {
    lane.state().waiting.len()
}

fn spawn_enqueue(
    queue: &Arc<Coalescing>,
    m: NewMessage,
) -> tokio::task::JoinHandle<Result<EnqueueReceipt, QueueError>> {
    let queue = queue.clone();
    tokio::spawn(async move { queue.enqueue(m).await })
}

#[test]
fn a_lone_enqueue_is_sent_at_once_without_a_timer() {
    // A runtime with no time driver: any timer (a sleep, a timeout) in the wrapper would panic.
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let inner = Recorder::open();
        let queue = wrap(&inner, CoalescingOptions::default());
        let m = message(1);
        let id = m.id.unwrap();
        let receipt = queue.enqueue(m).await.expect("queued");
        assert_eq!(receipt.message, id);
        assert_eq!(inner.calls(), [Call::Enqueue(vec![id])]);
        // And once more, now that the lane has been used: still alone, still at once.
        let m = message(1);
        let id = m.id.unwrap();
        queue.enqueue(m).await.expect("queued");
        assert_eq!(inner.calls().last(), Some(&Call::Enqueue(vec![id])));
    });
}

#[tokio::test]
async fn callers_arriving_during_a_call_share_the_next_one() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    let first = message(1);
    let first_id = first.id.unwrap();
    let leader = spawn_enqueue(&queue, first);
    until("the first call reaches the backend", || inner.calls().len() == 1).await;
    let followers: Vec<NewMessage> = (0..20).map(|_| message(1)).collect();
    let ids: Vec<MessageId> = followers.iter().map(|m| m.id.unwrap()).collect();
    let handles: Vec<_> = followers.into_iter().map(|m| spawn_enqueue(&queue, m)).collect();
    until("every follower waits", || waiting(&queue.enqueues) == 20).await;
    assert_eq!(
        inner.calls().len(),
        1,
        "nothing more is sent while a call is in flight"
    );
    inner.let_through(2);
    assert_eq!(leader.await.unwrap().expect("queued").message, first_id);
    for (handle, id) in handles.into_iter().zip(&ids) {
        assert_eq!(
            handle.await.unwrap().expect("queued").message,
            *id,
            "its own receipt"
        );
    }
    assert_eq!(inner.calls(), [Call::Enqueue(vec![first_id]), Call::Enqueue(ids)]);
}

#[tokio::test]
async fn a_shared_call_carries_at_most_max_batch_messages_and_bytes() {
    let inner = Recorder::closed();
    let options = CoalescingOptions {
        max_batch: 8,
        max_batch_bytes: 1000,
        ..CoalescingOptions::default()
    };
    let queue = wrap(&inner, options);
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let mut handles: Vec<_> = (0..10).map(|_| spawn_enqueue(&queue, message(1))).collect();
    until("ten wait", || waiting(&queue.enqueues) == 10).await;
    // Two of 600 bytes do not fit in 1000: each goes in a call of its own.
    for _ in 0..2 {
        let mut big = message(1);
        big.body = bytes::Bytes::from(vec![b'x'; 600]);
        handles.push(spawn_enqueue(&queue, big));
    }
    until("twelve wait", || waiting(&queue.enqueues) == 12).await;
    inner.let_through(usize::MAX >> 4);
    leader.await.unwrap().expect("queued");
    for h in handles {
        h.await.unwrap().expect("queued");
    }
    let sizes: Vec<usize> = inner
        .calls()
        .iter()
        .map(|c| match c {
            Call::Enqueue(ids) => ids.len(),
            Call::Complete(..) => 0,
        })
        .collect();
    // The leader alone; 8; the last 2 small ones with the first big one (18 + 600 bytes); the second big one.
    assert_eq!(sizes, [1, 8, 3, 1]);
}

#[tokio::test]
async fn a_request_as_big_as_a_shared_call_goes_straight_to_the_backend() {
    let inner = Recorder::closed();
    let options = CoalescingOptions {
        max_batch: 4,
        ..CoalescingOptions::default()
    };
    let queue = wrap(&inner, options);
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let batch = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.enqueue_batch((0..4).map(|_| message(1)).collect()).await })
    };
    until("the batch reaches the backend beside the call in flight", || {
        inner.calls().len() == 2
    })
    .await;
    assert_eq!(waiting(&queue.enqueues), 0);
    inner.let_through(2);
    leader.await.unwrap().expect("queued");
    assert!(batch.await.unwrap().iter().all(Result::is_ok));
}

#[tokio::test]
async fn an_invalid_message_fails_alone() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let good_before = spawn_enqueue(&queue, message(2));
    let bad = spawn_enqueue(&queue, message(0));
    let good_after = spawn_enqueue(&queue, message(1));
    until("three wait", || waiting(&queue.enqueues) == 3).await;
    inner.let_through(2);
    leader.await.unwrap().expect("queued");
    good_before
        .await
        .unwrap()
        .expect("its neighbour's error is not its own");
    assert!(matches!(bad.await.unwrap(), Err(QueueError::InvalidMessage(_))));
    good_after
        .await
        .unwrap()
        .expect("its neighbour's error is not its own");
    assert_eq!(inner.calls().len(), 2, "the three shared one call");
}

#[tokio::test]
async fn batches_are_gathered_whole_and_each_caller_gets_its_own_results_in_order() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let batch = vec![message(1), message(0), message(1)];
    let ids: Vec<MessageId> = batch.iter().map(|m| m.id.unwrap()).collect();
    let batched = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.enqueue_batch(batch).await })
    };
    let single = message(1);
    let single_id = single.id.unwrap();
    let single = spawn_enqueue(&queue, single);
    until("both wait", || waiting(&queue.enqueues) == 2).await;
    inner.let_through(2);
    leader.await.unwrap().expect("queued");
    let results = batched.await.unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().expect("queued").message, ids[0]);
    assert!(matches!(results[1], Err(QueueError::InvalidMessage(_))));
    assert_eq!(results[2].as_ref().expect("queued").message, ids[2]);
    assert_eq!(single.await.unwrap().expect("queued").message, single_id);
    assert_eq!(
        inner.calls()[1],
        Call::Enqueue(vec![ids[0], ids[1], ids[2], single_id])
    );
    assert!(queue.enqueue_batch(Vec::new()).await.is_empty());
    assert_eq!(inner.calls().len(), 2, "an empty batch is no call");
}

#[tokio::test]
async fn the_same_idempotency_key_or_message_id_never_shares_a_call() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let keyed = message(1).with_idempotency_key("k");
    let same_key = message(1).with_idempotency_key("k");
    let other = message(1);
    let mut same_id = message(1);
    same_id.id = other.id;
    let ids = [keyed.id.unwrap(), same_key.id.unwrap(), other.id.unwrap()];
    let handles: Vec<_> = [keyed, same_key, other, same_id]
        .into_iter()
        .map(|m| spawn_enqueue(&queue, m))
        .collect();
    until("four wait", || waiting(&queue.enqueues) == 4).await;
    inner.let_through(3);
    leader.await.unwrap().expect("queued");
    for h in handles {
        h.await.unwrap().expect("queued");
    }
    let calls = inner.calls();
    assert_eq!(calls[1], Call::Enqueue(vec![ids[0], ids[2]]));
    assert_eq!(calls[2], Call::Enqueue(vec![ids[1], ids[2]]));
    assert_eq!(calls.len(), 3);
}

#[tokio::test]
async fn completions_share_one_call_per_owner_and_get_their_own_answers() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    let complete = |owner: &'static str, lease: JobLease| {
        let queue = queue.clone();
        tokio::spawn(async move { queue.complete(owner, &lease, Outcome::delivered()).await })
    };
    let first = complete("w1", lease("t"));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let (a, b, c) = (lease("t1"), lease("stale"), lease("t2"));
    let ids = (a.job, b.job, c.job);
    let from_w1 = complete("w1", a);
    let stale = complete("w1", b);
    let from_w2 = complete("w2", c);
    let batch = {
        let queue = queue.clone();
        let jobs = vec![
            (lease("t3"), Outcome::delivered()),
            (lease("stale"), Outcome::delivered()),
        ];
        tokio::spawn(async move { queue.complete_batch("w2", jobs).await })
    };
    until("four wait", || waiting(&queue.completions) == 4).await;
    inner.let_through(3);
    assert_eq!(first.await.unwrap(), Ok(Completion::Finished));
    assert_eq!(from_w1.await.unwrap(), Ok(Completion::Finished));
    assert_eq!(stale.await.unwrap(), Err(QueueError::NotOwner { job: ids.1 }));
    assert_eq!(from_w2.await.unwrap(), Ok(Completion::Finished));
    let results = batch.await.unwrap();
    assert_eq!(results[0], Ok(Completion::Finished));
    assert!(matches!(results[1], Err(QueueError::NotOwner { .. })));
    let calls = inner.calls();
    assert_eq!(calls.len(), 3, "one call per owner: {calls:?}");
    assert_eq!(calls[1], Call::Complete("w1".into(), vec![ids.0, ids.1]));
    assert!(
        matches!(&calls[2], Call::Complete(owner, jobs) if owner == "w2" && jobs.len() == 3 && jobs[0] == ids.2)
    );
}

#[tokio::test(start_paused = true)]
async fn completions_wait_the_linger_then_go_in_one_call() {
    let inner = Recorder::open();
    // The clock stands still while tasks can run (it moves only when all of them wait).
    let linger = Duration::from_millis(300);
    let options = CoalescingOptions {
        completion_linger: linger,
        ..CoalescingOptions::default()
    };
    let queue = wrap(&inner, options);
    let complete = |lease: JobLease| {
        let queue = queue.clone();
        tokio::spawn(async move { queue.complete("w1", &lease, Outcome::delivered()).await })
    };
    let started = tokio::time::Instant::now();
    let (a, b) = (lease("t1"), lease("t2"));
    let ids = vec![a.job, b.job];
    let first = complete(a);
    until("the first completion waits", || waiting(&queue.completions) == 1).await;
    let second = complete(b);
    until("both wait", || waiting(&queue.completions) == 2).await;
    assert!(
        inner.calls().is_empty(),
        "nothing is sent before the linger is over"
    );
    assert_eq!(first.await.unwrap(), Ok(Completion::Finished));
    assert_eq!(second.await.unwrap(), Ok(Completion::Finished));
    assert!(started.elapsed() >= linger, "the call waited the linger");
    assert_eq!(inner.calls(), [Call::Complete("w1".into(), ids)]);
}

#[test]
fn enqueues_never_wait_the_completion_linger() {
    // A runtime with no time driver: a linger (a sleep) would panic.
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let inner = Recorder::open();
        let options = CoalescingOptions {
            completion_linger: Duration::from_secs(3600),
            ..CoalescingOptions::default()
        };
        let queue = wrap(&inner, options);
        let m = message(1);
        let id = m.id.unwrap();
        queue.enqueue(m).await.expect("queued");
        assert_eq!(inner.calls(), [Call::Enqueue(vec![id])]);
    });
}

#[tokio::test]
async fn a_full_call_of_completions_ends_the_linger() {
    let inner = Recorder::open();
    let options = CoalescingOptions {
        max_batch: 2,
        completion_linger: Duration::from_secs(3600),
        ..CoalescingOptions::default()
    };
    let queue = wrap(&inner, options);
    let complete = |lease: JobLease| {
        let queue = queue.clone();
        tokio::spawn(async move { queue.complete("w1", &lease, Outcome::delivered()).await })
    };
    let (a, b) = (lease("t1"), lease("t2"));
    let ids = vec![a.job, b.job];
    let first = complete(a);
    until("the first completion waits", || waiting(&queue.completions) == 1).await;
    let second = complete(b);
    let (first, second) = tokio::time::timeout(Duration::from_secs(30), async {
        (first.await.unwrap(), second.await.unwrap())
    })
    .await
    .expect("the full call went without waiting the hour's linger");
    assert_eq!(first, Ok(Completion::Finished));
    assert_eq!(second, Ok(Completion::Finished));
    assert_eq!(inner.calls(), [Call::Complete("w1".into(), ids)]);
    // A request of max_batch jobs on its own goes straight to the backend.
    let jobs = vec![
        (lease("t3"), Outcome::delivered()),
        (lease("t4"), Outcome::delivered()),
    ];
    let results = queue.complete_batch("w1", jobs).await;
    assert_eq!(results, [Ok(Completion::Finished), Ok(Completion::Finished)]);
    assert_eq!(inner.calls().len(), 2);
}

#[tokio::test]
async fn a_caller_that_gives_up_cancels_nobody_else() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    // The leader gives up while its call is in flight: the call goes on, for the others behind it too.
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let follower = spawn_enqueue(&queue, message(1));
    let quitter = message(1);
    let quitter_id = quitter.id.unwrap();
    let quitter = spawn_enqueue(&queue, quitter);
    until("two wait", || waiting(&queue.enqueues) == 2).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    // One that gives up before its call is sent is not sent.
    quitter.abort();
    let _ = quitter.await;
    inner.let_through(2);
    follower.await.unwrap().expect("queued");
    let calls = inner.calls();
    assert_eq!(calls.len(), 2);
    assert!(matches!(&calls[1], Call::Enqueue(ids) if ids.len() == 1 && ids[0] != quitter_id));
}

#[tokio::test]
async fn a_full_lane_makes_callers_wait_for_room() {
    let inner = Recorder::closed();
    let options = CoalescingOptions {
        max_pending: 3,
        ..CoalescingOptions::default()
    };
    let queue = wrap(&inner, options);
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let mut handles: Vec<_> = (0..4).map(|_| spawn_enqueue(&queue, message(1))).collect();
    until("the lane is full", || waiting(&queue.enqueues) == 2).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        waiting(&queue.enqueues),
        2,
        "one in flight and two waiting fill a lane of three"
    );
    // A batch bigger than the lane waits for it to be empty, then goes alone.
    let batch = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.enqueue_batch((0..5).map(|_| message(1)).collect()).await })
    };
    inner.let_through(usize::MAX >> 4);
    leader.await.unwrap().expect("queued");
    for h in handles.drain(..) {
        h.await.unwrap().expect("queued");
    }
    assert!(batch.await.unwrap().iter().all(Result::is_ok));
    let calls = inner.calls();
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, Call::Enqueue(ids) if ids.len() == 5)),
        "{calls:?}"
    );
    assert_eq!(
        queue.enqueues.room.available_permits(),
        3,
        "all room is given back"
    );
}

#[tokio::test]
async fn a_panicking_backend_fails_its_call_and_the_lane_goes_on() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    let leader = spawn_enqueue(&queue, message(1));
    until("the first call is in flight", || inner.calls().len() == 1).await;
    let doomed = spawn_enqueue(&queue, message(1).with_tag("panic", "1"));
    let neighbour = spawn_enqueue(&queue, message(1));
    until("two wait", || waiting(&queue.enqueues) == 2).await;
    inner.let_through(usize::MAX >> 4);
    leader.await.unwrap().expect("queued");
    assert!(matches!(doomed.await.unwrap(), Err(QueueError::Backend(_))));
    assert!(matches!(neighbour.await.unwrap(), Err(QueueError::Backend(_))));
    queue.enqueue(message(1)).await.expect("the lane still works");
}

#[tokio::test]
async fn other_methods_go_straight_to_the_backend() {
    let inner = Recorder::closed();
    let queue = wrap(&inner, CoalescingOptions::default());
    assert_eq!(queue.reap(42).await, Ok(42));
    // Methods with a default in the trait too: the backend's own answer, not the default's.
    assert_eq!(
        queue.wait_for_work(Duration::from_secs(3600)).await,
        Wakeup::Woken
    );
    assert!(matches!(
        queue.claim_next("w1", 7, Duration::from_secs(1), &[]).await,
        Ok(ClaimOutcome::Nothing { next_due_ms: Some(7) })
    ));
    assert!(inner.calls().is_empty());
}
