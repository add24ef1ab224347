//! The trace bus ([`TraceBus`]) of the embedded store: in memory, as every worker and the control plane of
//! an embedded store run in its one process.
//!
//! A [`Bus`] per open store: the filters of the open traces (by a number each), and a broadcast channel of
//! the published records. Each open trace has a task that takes the records from the broadcast, keeps those
//! that pass its filter, and hands them to its reader through a bounded channel ([`TRACE_BUFFER`]); a
//! reader that falls behind loses records (the broadcast's lag, or a full channel), the publisher never
//! waits. The task holds the trace's registration: dropping the subscription aborts it, which removes the
//! filter; until the task has stopped, the filter no longer counts anyway (its reader's channel is closed).
//!
//! The bus is a field of its [`EmbeddedQueue`]: it lives and goes with the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc};

use super::EmbeddedQueue;
use crate::QueueError;
use crate::trace::{TraceBus, TraceFilter, TraceRecord, TraceSubscription, record_passes};

/// The records a trace holds for its reader; more are dropped until the reader catches up.
pub(crate) const TRACE_BUFFER: usize = 1024;
/// The published records the broadcast keeps for traces that have not taken them yet.
const BROADCAST: usize = 4096;

/// One store's traces.
#[derive(Debug)]
pub(crate) struct Bus {
    /// The open traces' filters, by trace number, with the channel to each trace's reader: a trace whose
    /// reader is gone (its subscription dropped, its task not yet stopped) no longer counts.
    filters: Mutex<HashMap<u64, (TraceFilter, mpsc::Sender<TraceRecord>)>>,
    next: AtomicU64,
    records: broadcast::Sender<Arc<TraceRecord>>,
}

impl Bus {
    pub(crate) fn new() -> Bus {
        Bus {
            filters: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            records: broadcast::channel(BROADCAST).0,
        }
    }

    fn filters(&self) -> Vec<TraceFilter> {
        // A panic while the map was held leaves it whole (each change is one insert or remove).
        let mut filters = self.filters.lock().unwrap_or_else(PoisonError::into_inner);
        filters.retain(|_, (_, reader)| !reader.is_closed());
        let mut out: Vec<TraceFilter> = Vec::with_capacity(filters.len());
        for (f, _) in filters.values() {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }

    fn register(self: &Arc<Self>, filter: TraceFilter, reader: mpsc::Sender<TraceRecord>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (filter, reader));
        Registration {
            bus: Arc::clone(self),
            id,
        }
    }
}

/// An open trace's filter, removed from its bus when dropped.
struct Registration {
    bus: Arc<Bus>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.bus
            .filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl EmbeddedQueue {
    /// This store's bus.
    fn bus(&self) -> Arc<Bus> {
        Arc::clone(&self.traces)
    }
}

/// An open trace's task: forwards the records that pass `filter`, until its reader or the bus goes.
async fn forward(
    _registration: Registration,
    filter: TraceFilter,
    mut published: broadcast::Receiver<Arc<TraceRecord>>,
    reader: mpsc::Sender<TraceRecord>,
) {
    let mut dropped = 0u64;
    loop {
        let record = tokio::select! {
            _ = reader.closed() => break,
            r = published.recv() => r,
        };
        let record = match record {
            Ok(record) => record,
            Err(RecvError::Lagged(n)) => {
                dropped += n;
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        if !record_passes(&filter, &record) {
            continue;
        }
        match reader.try_send(TraceRecord::clone(&record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => dropped += 1,
            Err(TrySendError::Closed(_)) => break,
        }
    }
    if dropped > 0 {
        tracing::info!(
            dropped,
            "trace ended; records were dropped while its reader was behind"
        );
    }
}

#[async_trait]
impl TraceBus for EmbeddedQueue {
    async fn trace_filters(&self) -> Result<Vec<TraceFilter>, QueueError> {
        Ok(self.bus().filters())
    }

    async fn publish_trace(&self, records: &[TraceRecord]) -> Result<(), QueueError> {
        let bus = self.bus();
        for record in records {
            // No trace open: the record is dropped, as the bus promises.
            if bus.records.send(Arc::new(record.clone())).is_err() {
                break;
            }
        }
        Ok(())
    }

    async fn open_trace(&self, filter: TraceFilter) -> Result<TraceSubscription, QueueError> {
        let bus = self.bus();
        // Subscribed before registered: a worker that sees the filter publishes to a listening trace.
        let published = bus.records.subscribe();
        let (records, reader) = mpsc::channel(TRACE_BUFFER);
        let registration = bus.register(filter.clone(), records.clone());
        let task = tokio::spawn(forward(registration, filter, published, records));
        Ok(TraceSubscription::new(reader, Some(task.abort_handle())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedQueueOptions;

    fn open(dir: &std::path::Path) -> EmbeddedQueue {
        EmbeddedQueue::open(EmbeddedQueueOptions {
            path: dir.to_path_buf(),
            ..Default::default()
        })
        .expect("open")
    }

    #[tokio::test]
    async fn each_store_has_its_own_bus_and_a_closed_store_leaves_none_behind() {
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (qa, qb) = (open(a.path()), open(b.path()));
        let sub = qa.open_trace(TraceFilter::default()).await.expect("open");
        assert_eq!(qa.trace_filters().await.expect("filters").len(), 1);
        assert!(
            qb.trace_filters().await.expect("filters").is_empty(),
            "another store's bus"
        );
        drop(sub);
        assert!(
            qa.trace_filters().await.expect("filters").is_empty(),
            "removed at once"
        );
        let bus = Arc::downgrade(&qa.bus());
        drop(qa);
        // The writer thread lets the database go as it stops; the next lookup prunes the entry.
        for _ in 0..100 {
            qb.bus();
            if bus.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the closed store's bus was kept");
    }
}
