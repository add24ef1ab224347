//! The writer: one thread that owns the queue's state and applies every operation to it in turn, with
//! group commit.
//!
//! Callers send operations over a channel and await their own reply. The thread takes whatever is waiting
//! (up to [`MAX_BATCH`] operations), applies them one after another in memory, writes all their changes in
//! ONE transaction and syncs it once, then answers every caller of the batch. So no caller hears back
//! before what it did (and everything before it) is on disk, and many concurrent callers share one sync:
//! while a batch syncs, the next one gathers. A read answers after the batch it ran in is committed, so it
//! never shows what could still be lost.
//!
//! A failed commit (a disk error) fails the whole batch (`Unavailable`: it may or may not have happened) and
//! stops the writer: memory is ahead of the store by then, and claims answered since the last commit live
//! in memory only, so the one safe way on is a crash's: every later call fails until the queue is opened
//! again and reads the store back. A panic in an operation does the same.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::Database;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::state::State;
use super::store;
use crate::QueueError;

/// The most operations in one batch (one transaction, one sync).
pub(crate) const MAX_BATCH: usize = 1024;
/// Operations waiting for the writer before callers wait to send.
const CHANNEL: usize = 4096;
/// The most wakes kept for workers not waiting yet (each wakes one later wait at once).
pub(crate) const WAKE_CAP: usize = 8;

/// What the writer answers once the batch is committed (or failed).
type Reply = Box<dyn FnOnce(Result<(), QueueError>) + Send>;
/// An operation: applied to the state, it gives the reply to send after the commit.
type Operation = Box<dyn FnOnce(&mut State) -> Reply + Send>;

/// What the writer tells after each commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Committed {
    /// The sequence number of the next event entry (everything before it is on disk).
    pub events_next: u64,
    /// Batches written so far.
    pub commits: u64,
}

/// The handle callers use; dropping it stops the thread once the operations sent are done.
#[derive(Debug)]
pub(crate) struct Writer {
    sender: Option<mpsc::Sender<Operation>>,
    thread: Option<JoinHandle<()>>,
    committed: watch::Receiver<Committed>,
}

/// The writer is gone: nothing was sent (the call had no effect).
fn not_sent() -> QueueError {
    QueueError::NotSent("embedded queue store: the writer stopped".into())
}

/// The writer stopped after the call was sent: it may or may not have taken effect.
fn stopped() -> QueueError {
    QueueError::Unavailable("embedded queue store: the writer stopped".into())
}

impl Writer {
    /// Starts the writer thread on `state` (as loaded from `db`); wakes for waiting workers go to `wakes`.
    pub(crate) fn start(
        db: Arc<Database>,
        state: State,
        wakes: Arc<Semaphore>,
    ) -> Result<Writer, QueueError> {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        let (notify, committed) = watch::channel(Committed {
            events_next: state.events.next,
            commits: 0,
        });
        let thread = std::thread::Builder::new()
            .name("tern-queue-store".into())
            .spawn(move || run(&db, state, receiver, &notify, &wakes))
            .map_err(|e| {
                QueueError::Backend(format!("embedded queue store: cannot start its writer: {e}"))
            })?;
        Ok(Writer {
            sender: Some(sender),
            thread: Some(thread),
            committed,
        })
    }

    /// Runs `op` on the state in the writer; its value once its batch is committed.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        let operation: Operation = Box::new(move |state: &mut State| {
            let value = op(state);
            Box::new(move |committed: Result<(), QueueError>| {
                let _ = tx.send(committed.map(|()| value));
            })
        });
        let sender = self.sender.as_ref().ok_or_else(not_sent)?;
        sender.send(operation).await.map_err(|_| not_sent())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Follows the commits.
    pub(crate) fn committed(&self) -> watch::Receiver<Committed> {
        self.committed.clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The thread ends once the channel is closed and drained; waiting for it means the store's file and
        // lock are released when the queue is gone (so that it can be opened again at once).
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread's loop.
fn run(
    db: &Database,
    mut state: State,
    mut receiver: mpsc::Receiver<Operation>,
    notify: &watch::Sender<Committed>,
    wakes: &Semaphore,
) {
    let mut batch: Vec<Operation> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    let mut commits = 0u64;
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut panicked = false;
        for op in batch.drain(..) {
            if panicked {
                // Dropped unanswered: its caller hears that the writer stopped.
                continue;
            }
            // An operation that saw nothing uncommitted and changed nothing durable (a claim, a heartbeat, a
            // read, between writes) answers at once: there is nothing for it to wait for.
            let clean = state.changes.is_empty();
            match std::panic::catch_unwind(AssertUnwindSafe(|| op(&mut state))) {
                Ok(reply) if clean && state.changes.is_empty() => reply(Ok(())),
                Ok(reply) => replies.push(reply),
                Err(_) => panicked = true,
            }
        }
        let result = if panicked {
            Err(QueueError::Backend(
                "embedded queue store: an operation panicked".into(),
            ))
        } else {
            store::commit(db, &mut state).map(|wrote| commits += u64::from(wrote))
        };
        if let Err(e) = result {
            // Memory is now ahead of the store, and claims made since the last commit may have been answered:
            // the only safe way on is the way a crash takes. The writer stops (every call fails, nothing is
            // acknowledged), and the next open reads the store back.
            tracing::error!(error = %e, "embedded queue store: a batch was not committed; the queue stops until it is opened again");
            let failed = QueueError::Unavailable(format!("embedded queue store stopped: {e}"));
            for reply in replies.drain(..) {
                reply(Err(failed.clone()));
            }
            receiver.close();
            while receiver.try_recv().is_ok() {}
            return;
        }
        // What is committed is told first (event readers, the commit count), then the wakes, then each caller.
        notify.send_if_modified(|c| {
            let now = Committed {
                events_next: state.events.next,
                commits,
            };
            let changed = *c != now;
            *c = now;
            changed
        });
        let woken = std::mem::take(&mut state.wakes) as usize;
        let room = WAKE_CAP.saturating_sub(wakes.available_permits());
        if woken.min(room) > 0 {
            wakes.add_permits(woken.min(room));
        }
        for reply in replies.drain(..) {
            reply(Ok(()));
        }
    }
}
