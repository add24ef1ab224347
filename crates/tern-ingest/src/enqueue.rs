//! Writing a submission into the queue, and repeating a write whose outcome is unknown.
//!
//! A queue call that times out or loses its connection may have been applied by Redis all the same (a stalled
//! server applies the write when it resumes). Answering such a failure with "nothing was queued" is wrong:
//! the message is delivered, and the client's retry is delivered too. So both front doors enqueue through
//! [`enqueue`] / [`enqueue_batch`], which repeat the very same write, with the same message id, while the
//! client can still wait ([`EnqueueRetry::window`], `ingest.enqueue_retry_for`), backing off from 100 ms to
//! 2 s. A stall shorter than the window ends with one honest acknowledgement.
//!
//! The repeat is harmless because the queue remembers the message id for at least the window: a repeat
//! after the first write's jobs were materialised, even delivered and gone, creates nothing and is answered
//! as the first write was. The intake path (an idempotency key, or jobs in several shards) remembers it for
//! 24 hours; the fast path (no key, one shard) for the queue's `repeat_window`, which the binary sets to
//! `ingest.enqueue_retry_for` (the queue adds a call's time). So [`EnqueueRetry::prepare`] only gives a
//! message its id, and a message without a key keeps the fast path.
//!
//! [`EnqueueFailure::maybe_queued`] says whether any attempt may have been applied. Only the queue's
//! [`QueueError::NotSent`] (no connection could be had, so the call never left this process) proves that the
//! write was never sent; every other outage (a timeout, a dropped connection, a replica that did not
//! acknowledge, and in cluster mode even a refused connection, since the cluster client repeats a call by
//! itself) may have stored the message, and the answer must say so. A write refused outright (nothing listens
//! where the queue should be), with no doubtful attempt before it, is not repeated: the queue is plainly
//! down, "nothing was queued" is the truth, and the client is not kept waiting. A write that was not sent
//! because the queue accepted connections and then stalled (no connection could be set up in time) is
//! repeated like a doubtful one: nothing was sent, so repeating is safe, and a stall shorter than the window
//! then ends in a 250 instead of a refusal.

use std::time::{Duration, SystemTime};

use tern_config::IngestConfig;
use tern_core::{MessageId, Shutdown};
use tern_queue::{EnqueueReceipt, NewMessage, Queue, QueueError};
use tokio::time::Instant;
use tracing::{info, warn};

/// A prefix reserved for idempotency keys tern makes itself, refused in client keys. Ingest no longer gives
/// messages one (the queue recognises a repeated write by its message id), but the namespace stays tern's,
/// so that no key a client has used can ever collide with one tern makes.
pub const INTERNAL_KEY_PREFIX: &str = "tern:";

/// The first pause between two attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long ingest repeats a queue write whose outcome it does not know (`ingest.enqueue_retry_for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnqueueRetry {
    /// How long after the first attempt another may start. Zero: one attempt only.
    pub window: Duration,
}

impl Default for EnqueueRetry {
    /// The configuration's default (60 s).
    fn default() -> Self {
        EnqueueRetry::from_config(&IngestConfig::default())
    }
}

impl EnqueueRetry {
    /// The policy of the `[ingest]` section.
    pub fn from_config(config: &IngestConfig) -> Self {
        EnqueueRetry {
            window: config.enqueue_retry_for.get(),
        }
    }

    /// Makes `message` safe to write more than once: it gets an id if it has none, so that every attempt
    /// writes the same message and the queue recognises a repeat (see the module docs). Its idempotency key,
    /// if any, is the client's alone.
    pub fn prepare(&self, message: &mut NewMessage) {
        message.id.get_or_insert_with(MessageId::new);
    }
}

/// When to stop repeating besides the window: the client's own deadline, and a shutdown.
#[derive(Clone, Debug, Default)]
pub struct Bounds {
    /// No attempt starts after this instant, and one running at it is abandoned (and may have been applied).
    pub until: Option<Instant>,
    /// Once cancelled, no further attempt starts (the one running finishes).
    pub stop: Option<Shutdown>,
}

/// Why a message was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnqueueFailure {
    /// The last attempt's error.
    pub error: QueueError,
    /// Whether some attempt may have stored the message (see the module docs); `false` only when no attempt
    /// can have reached the queue.
    pub maybe_queued: bool,
    /// How many attempts were made.
    pub attempts: u32,
}

impl EnqueueFailure {
    /// The queue refused the message itself: repeating it cannot help.
    pub fn is_invalid(&self) -> bool {
        matches!(self.error, QueueError::InvalidMessage(_))
    }
}

/// Whether a failed call certainly stored nothing: the queue says it never sent it
/// ([`QueueError::NotSent`]), or it refused the message before writing anything. Every other error counts as
/// "may have been applied", whatever its text says.
pub fn certainly_not_applied(error: &QueueError) -> bool {
    matches!(
        error,
        QueueError::NotSent(_) | QueueError::InvalidMessage(_) | QueueError::Config(_)
    )
}

/// `receipt` as the answer to the client's one request: a repeat that finds the message's own earlier
/// attempt (stored after all, its idempotency key now taken by it) is no duplicate of anything the client
/// sent, so the flag is cleared (its `jobs` stay empty: the earlier attempt made them).
fn own_write_found(mut receipt: EnqueueReceipt, id: Option<MessageId>, attempts: u32) -> EnqueueReceipt {
    if attempts > 1 && receipt.duplicate && Some(receipt.message) == id {
        receipt.duplicate = false;
    }
    receipt
}

/// Whether a failed call is worth repeating: an outage. Any other error would come back the same.
fn is_retryable(error: &QueueError) -> bool {
    error.is_unavailable()
}

/// The pause after `backoff`, with ±25% jitter so that many sessions do not return in step.
fn jittered(backoff: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // 0.75 to 1.25 of the backoff.
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    backoff.mul_f64(factor)
}

/// One attempt's budget: the time left, `None` for the first attempt (which the queue bounds itself).
fn attempt_budget(attempt: u32, until: Instant) -> Option<Duration> {
    (attempt > 1).then(|| until.saturating_duration_since(Instant::now()))
}

/// Runs `call`, cut off after `budget` if one is given; a cut-off call is an outage that may have applied.
async fn bounded<T>(
    budget: Option<Duration>,
    call: impl Future<Output = T>,
    timed_out: impl FnOnce() -> T,
) -> T {
    match budget {
        None => call.await,
        Some(b) => tokio::time::timeout(b, call)
            .await
            .unwrap_or_else(|_| timed_out()),
    }
}

/// The instant after which no attempt starts.
fn deadline(retry: &EnqueueRetry, bounds: &Bounds, start: Instant) -> Instant {
    let own = start + retry.window;
    bounds.until.map_or(own, |u| u.min(own))
}

/// Waits `pause` unless `stop` is cancelled first; whether the wait ran its course.
async fn pause(pause: Duration, stop: Option<&Shutdown>) -> bool {
    match stop {
        Some(token) => tokio::select! {
            () = token.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        },
        None => {
            tokio::time::sleep(pause).await;
            true
        }
    }
}

fn timed_out_error() -> QueueError {
    QueueError::Unavailable("the queue did not answer before the submission's deadline".into())
}

/// Enqueues one message, repeating the write (same id) after an outage while `retry` and `bounds` allow.
/// The message should have been through [`EnqueueRetry::prepare`] (this does it again, harmlessly).
pub async fn enqueue(
    queue: &dyn Queue,
    mut message: NewMessage,
    retry: &EnqueueRetry,
    bounds: &Bounds,
) -> Result<EnqueueReceipt, EnqueueFailure> {
    retry.prepare(&mut message);
    let id = message.id.map(|i| i.to_string()).unwrap_or_default();
    let start = Instant::now();
    let until = deadline(retry, bounds, start);
    let mut backoff = FIRST_BACKOFF;
    let mut maybe_queued = false;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let budget = attempt_budget(attempts, until);
        let result = bounded(budget, queue.enqueue(message.clone()), || Err(timed_out_error())).await;
        let error = match result {
            Ok(receipt) => {
                if attempts > 1 {
                    info!(message_id = %id, attempts, "queue write confirmed after repeating it");
                }
                return Ok(own_write_found(receipt, message.id, attempts));
            }
            Err(e) => e,
        };
        maybe_queued |= !certainly_not_applied(&error);
        let wait = jittered(backoff);
        let stopped = bounds.stop.as_ref().is_some_and(Shutdown::is_cancelled);
        let plainly_down = !maybe_queued && error.is_refused();
        if !is_retryable(&error) || plainly_down || stopped || Instant::now() + wait >= until {
            return Err(EnqueueFailure {
                error,
                maybe_queued,
                attempts,
            });
        }
        warn!(message_id = %id, attempts, error = %error, maybe_queued, "queue write failed; repeating it");
        if !pause(wait, bounds.stop.as_ref()).await {
            return Err(EnqueueFailure {
                error,
                maybe_queued,
                attempts,
            });
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// [`enqueue`] for many messages: one `enqueue_batch` call, then repeats of the messages that failed with an
/// outage, together, while `retry` and `bounds` allow. One result per message, in order.
pub async fn enqueue_batch(
    queue: &dyn Queue,
    mut messages: Vec<NewMessage>,
    retry: &EnqueueRetry,
    bounds: &Bounds,
) -> Vec<Result<EnqueueReceipt, EnqueueFailure>> {
    for m in &mut messages {
        retry.prepare(m);
    }
    let n = messages.len();
    let mut results: Vec<Option<Result<EnqueueReceipt, EnqueueFailure>>> = vec![None; n];
    let mut maybe_queued = vec![false; n];
    let mut pending: Vec<usize> = (0..n).collect();
    let start = Instant::now();
    let until = deadline(retry, bounds, start);
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    while !pending.is_empty() {
        attempts += 1;
        let batch: Vec<NewMessage> = pending.iter().map(|&i| messages[i].clone()).collect();
        let budget = attempt_budget(attempts, until);
        let outcomes = bounded(budget, queue.enqueue_batch(batch), || {
            vec![Err(timed_out_error()); pending.len()]
        })
        .await;
        let wait = jittered(backoff);
        let stopped = bounds.stop.as_ref().is_some_and(Shutdown::is_cancelled);
        let last = stopped || Instant::now() + wait >= until;
        let mut again = Vec::new();
        for (pos, &i) in pending.iter().enumerate() {
            let outcome = outcomes
                .get(pos)
                .cloned()
                .unwrap_or_else(|| Err(QueueError::Backend("no result for the message".into())));
            match outcome {
                Ok(receipt) => results[i] = Some(Ok(own_write_found(receipt, messages[i].id, attempts))),
                Err(error) => {
                    maybe_queued[i] |= !certainly_not_applied(&error);
                    let plainly_down = !maybe_queued[i] && error.is_refused();
                    if is_retryable(&error) && !plainly_down && !last {
                        again.push(i);
                    } else {
                        results[i] = Some(Err(EnqueueFailure {
                            error,
                            maybe_queued: maybe_queued[i],
                            attempts,
                        }));
                    }
                }
            }
        }
        pending = again;
        if pending.is_empty() {
            break;
        }
        warn!(
            messages = pending.len(),
            attempts, "queue write of a batch failed; repeating it"
        );
        if !pause(wait, bounds.stop.as_ref()).await {
            for &i in &pending {
                results[i] = Some(Err(EnqueueFailure {
                    error: QueueError::Unavailable("stopped while repeating the write".into()),
                    maybe_queued: maybe_queued[i],
                    attempts,
                }));
            }
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(EnqueueFailure {
                    error: QueueError::Backend("no result for the message".into()),
                    maybe_queued: true,
                    attempts,
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::{Envelope, Recipient, ReversePath};

    fn message() -> NewMessage {
        let env = Envelope::new(
            ReversePath::Null,
            vec![Recipient::new("r@example.test".parse().unwrap())],
        );
        NewMessage::new(env, b"Subject: x\r\n\r\nx\r\n".to_vec())
    }

    #[test]
    fn only_a_call_the_queue_never_sent_proves_that_nothing_was_queued() {
        let certain = [
            QueueError::NotSent("redis: Connection refused (os error 111)".into()),
            QueueError::NotSent("redis: no connection (Wait timeout)".into()),
            QueueError::InvalidMessage("no recipients".into()),
        ];
        for e in &certain {
            assert!(certainly_not_applied(e), "{e}");
        }
        // The cluster client's last error after its own repeats: an earlier try may have been applied.
        let uncertain = [
            QueueError::Unavailable("redis: Connection refused (os error 111)".into()),
            QueueError::Unavailable("redis: no connection (Wait timeout)".into()),
            QueueError::Unavailable("redis: timed out".into()),
            QueueError::Unavailable("redis did not answer within 7s".into()),
            QueueError::Unavailable("redis: broken pipe".into()),
            QueueError::Unavailable("only 0 of 1 replicas acknowledged the write".into()),
            QueueError::Backend("unexpected intake reply".into()),
            QueueError::Corrupt("x".into()),
        ];
        for e in &uncertain {
            assert!(!certainly_not_applied(e), "{e}");
        }
    }

    #[test]
    fn a_repeat_that_finds_its_own_write_is_no_duplicate_but_another_messages_key_is() {
        let own = MessageId::new();
        let receipt = |message| EnqueueReceipt {
            message,
            jobs: Vec::new(),
            duplicate: true,
        };
        assert!(!own_write_found(receipt(own), Some(own), 2).duplicate);
        // The client's key names another message: nothing of this one was queued.
        assert!(own_write_found(receipt(MessageId::new()), Some(own), 2).duplicate);
        // The first attempt: whatever the queue says stands.
        assert!(own_write_found(receipt(own), Some(own), 1).duplicate);
    }

    #[test]
    fn prepare_gives_an_id_and_no_key_so_a_message_keeps_the_fast_path() {
        let on = EnqueueRetry {
            window: Duration::from_secs(60),
        };
        let mut m = message();
        on.prepare(&mut m);
        let id = m.id.expect("an id");
        assert_eq!(m.idempotency_key, None);
        on.prepare(&mut m);
        assert_eq!(m.id, Some(id), "a repeat keeps the id");
        let mut own = message().with_idempotency_key("client-key");
        on.prepare(&mut own);
        assert_eq!(own.idempotency_key.as_deref(), Some("client-key"));
        let off = EnqueueRetry {
            window: Duration::ZERO,
        };
        let mut m = message();
        off.prepare(&mut m);
        assert!(m.id.is_some());
        assert_eq!(m.idempotency_key, None);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(1000));
            assert!(
                j >= Duration::from_millis(750) && j <= Duration::from_millis(1250),
                "{j:?}"
            );
        }
    }
}
