//! Live SMTP traces (`ternctl trace`): the SMTP conversations of matching deliveries, published on the
//! queue's [`TraceBus`] as they happen.
//!
//! The worker reads the filters of the traces open in the cluster every [`FILTER_POLL`] into a snapshot.
//! While no one traces (the usual case) the snapshot is empty and a connection costs one flag check per
//! transcript entry. Every connection gets a [`TraceSession`]: a transcript hook (`smtp/transcript.rs`,
//! so AUTH payloads are already masked and message data is only its size) that turns each entry whose
//! delivery matches a filter (domain, MX host or IP) into a [`TraceRecord`], adding `connect`, `error` and
//! `close` records of its own. Records go through a bounded channel to one publisher task, which sends
//! them to the bus in small batches: delivery never waits for the bus, and when the channel is full the
//! record is dropped.
//!
//! A connection whose delivery a trace starts to match while it is open is traced from then on (it had no
//! `connect` record then); one that carries several domains' mail (the relay) is matched against the
//! domain of the message it carries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tern_core::Shutdown;
use tern_core::time::now_ms;
use tern_queue::{TraceBus, TraceFilter, TraceRecord};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::smtp::{Transcript, TranscriptEntry};

/// How often the filters of the open traces are read.
pub(crate) const FILTER_POLL: Duration = Duration::from_secs(1);
/// How many records wait for the publisher at most; more are dropped.
const CHANNEL: usize = 4096;
/// The most records published in one call.
const BATCH: usize = 128;
/// The longest a read of the filters, or a publication, may take.
const BUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The worker's side of the trace bus: the filters in force and the records on their way.
pub(crate) struct Tracer {
    bus: Arc<dyn TraceBus>,
    /// The worker's owner name, on every record.
    owner: String,
    /// Someone traces: the snapshot below is not empty.
    active: AtomicBool,
    filters: RwLock<Arc<Vec<TraceFilter>>>,
    records: mpsc::Sender<TraceRecord>,
    /// Taken by the publisher task when the worker runs.
    pending: Mutex<Option<mpsc::Receiver<TraceRecord>>>,
    /// Sessions made, for their ids.
    sessions: AtomicU64,
    /// Records dropped because the channel was full.
    dropped: AtomicU64,
}

impl Tracer {
    /// A tracer publishing on `bus` as `owner`.
    pub(crate) fn new(bus: Arc<dyn TraceBus>, owner: &str) -> Tracer {
        let (records, pending) = mpsc::channel(CHANNEL);
        Tracer {
            bus,
            owner: owner.to_string(),
            active: AtomicBool::new(false),
            filters: RwLock::default(),
            records,
            pending: Mutex::new(Some(pending)),
            sessions: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether anyone traces at all.
    fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether a delivery to `domain` through `mx` at `ip` matches an open trace.
    fn matches(&self, domain: &str, mx: &str, ip: &str) -> bool {
        let filters = self
            .filters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        filters.iter().any(|f| f.matches(domain, Some(mx), Some(ip)))
    }

    fn set_filters(&self, filters: Vec<TraceFilter>) {
        let on = !filters.is_empty();
        let was = self.active.swap(on, Ordering::Relaxed);
        if on != was {
            info!(
                traces = filters.len(),
                "live SMTP trace {}",
                if on { "started" } else { "ended" }
            );
        }
        *self
            .filters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(filters);
    }

    /// A session for a connection to `mx` at `addr`, for mail to `domain`.
    pub(crate) fn session(
        self: &Arc<Self>,
        domain: &str,
        mx: &str,
        addr: std::net::SocketAddr,
    ) -> TraceSession {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        TraceSession {
            tracer: Arc::clone(self),
            id: format!("{}/{n}", self.owner),
            domain: Mutex::new(domain.to_string()),
            mx: mx.to_string(),
            ip: addr.ip().to_string(),
            port: addr.port(),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a record for the publisher; dropped when the channel is full.
    fn push(&self, record: TraceRecord) {
        if self.records.try_send(record).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                debug!(
                    dropped = n + 1,
                    "trace records dropped: the bus is slower than the sessions"
                );
            }
        }
    }

    /// Reads the filters of the open traces every [`FILTER_POLL`] until `shutdown`; a failed read keeps
    /// the last ones.
    pub(crate) async fn poll_filters(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            match tokio::time::timeout(BUS_TIMEOUT, self.bus.trace_filters()).await {
                Ok(Ok(filters)) => self.set_filters(filters),
                Ok(Err(e)) => debug!(error = %e, "reading the trace filters failed"),
                Err(_) => debug!("reading the trace filters timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(FILTER_POLL) => {}
            }
        }
    }

    /// Publishes the queued records in batches of at most [`BATCH`] until `shutdown` (then what is queued
    /// goes out in one last batch). A batch the bus refuses is dropped: a trace is best effort.
    pub(crate) async fn publish(self: Arc<Self>, shutdown: Shutdown) {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut pending) = taken else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                n = pending.recv_many(&mut batch, BATCH) => n == 0,
            };
            if stopping {
                // What is queued already goes out (the last sessions' `close` records), in one batch.
                while let Ok(r) = pending.try_recv() {
                    batch.push(r);
                }
            }
            if !batch.is_empty() {
                match tokio::time::timeout(BUS_TIMEOUT, self.bus.publish_trace(&batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(error = %e, records = batch.len(), "publishing trace records failed")
                    }
                    Err(_) => debug!(records = batch.len(), "publishing trace records timed out"),
                }
                batch.clear();
            }
            if stopping {
                break;
            }
        }
        // Handed back, so that a worker run again (tests) publishes again.
        *self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pending);
    }
}

/// One connection's trace: a transcript hook, plus its own `connect`, `error` and `close` records. The
/// `close` record is written when the session is dropped, whatever ended it.
pub(crate) struct TraceSession {
    tracer: Arc<Tracer>,
    id: String,
    /// The domain of the mail the connection carries now.
    domain: Mutex<String>,
    mx: String,
    ip: String,
    port: u16,
    closed: AtomicBool,
}

impl TraceSession {
    /// The connection now carries mail for `domain` (a relay connection carries several domains' mail).
    pub(crate) fn set_domain(&self, domain: &str) {
        let mut d = self
            .domain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *d != domain {
            *d = domain.to_string();
        }
    }

    /// The `connect` record: the host, its address and port, and `how` (e.g. a reconnection).
    pub(crate) fn connect(&self, how: &str) {
        let sep = if how.is_empty() { "" } else { " " };
        self.emit(
            "connect",
            format!("{} [{}]:{}{sep}{how}", self.mx, self.ip, self.port),
        );
    }

    /// An `error` record: why the connection failed or was given up.
    pub(crate) fn error(&self, text: &str) {
        self.emit("error", text.to_string());
    }

    /// The `close` record, once.
    pub(crate) fn close(&self, text: &str) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            self.emit("close", text.to_string());
        }
    }

    /// A record of `kind` with `text`, when someone traces this delivery.
    fn emit(&self, kind: &str, text: String) {
        if !self.tracer.active() {
            return;
        }
        let domain = self
            .domain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !self.tracer.matches(&domain, &self.mx, &self.ip) {
            return;
        }
        self.tracer.push(TraceRecord {
            time_ms: now_ms(),
            worker: self.tracer.owner.clone(),
            session: self.id.clone(),
            domain,
            mx: self.mx.clone(),
            ip: self.ip.clone(),
            kind: kind.to_string(),
            text,
        });
    }
}

impl Transcript for TraceSession {
    fn record(&self, entry: TranscriptEntry<'_>) {
        // The cheap check first: no formatting at all while no one traces.
        if !self.tracer.active() {
            return;
        }
        match entry {
            TranscriptEntry::Command(line) => self.emit("send", line.to_string()),
            TranscriptEntry::Body { octets } => self.emit("send", format!("<message data: {octets} octets>")),
            // One record per reply line, as the server sent them (`250-PIPELINING`, `250 SIZE`).
            TranscriptEntry::Reply(reply) => {
                let wire = reply.to_bytes();
                for line in String::from_utf8_lossy(&wire)
                    .split("\r\n")
                    .filter(|l| !l.is_empty())
                {
                    self.emit("recv", line.to_string());
                }
            }
            TranscriptEntry::Tls(description) => self.emit("tls", description.to_string()),
            TranscriptEntry::Error(what) => self.emit("error", what.to_string()),
        }
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        self.close("connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::CommandLine;

    #[derive(Debug, Default)]
    struct NoBus;

    #[async_trait::async_trait]
    impl TraceBus for NoBus {
        async fn trace_filters(&self) -> Result<Vec<TraceFilter>, tern_queue::QueueError> {
            Ok(Vec::new())
        }
        async fn publish_trace(&self, _: &[TraceRecord]) -> Result<(), tern_queue::QueueError> {
            Ok(())
        }
        async fn open_trace(
            &self,
            _: TraceFilter,
        ) -> Result<tern_queue::TraceSubscription, tern_queue::QueueError> {
            Err(tern_queue::QueueError::Backend("none".into()))
        }
    }

    fn drain(tracer: &Tracer) -> Vec<TraceRecord> {
        let mut rx = tracer.pending.lock().unwrap().take().unwrap();
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        *tracer.pending.lock().unwrap() = Some(rx);
        out
    }

    #[test]
    fn nothing_is_recorded_while_no_one_traces_and_matching_sessions_are_recorded_once_someone_does() {
        let tracer = Arc::new(Tracer::new(Arc::new(NoBus), "w1"));
        let addr = "192.0.2.1:25".parse().unwrap();
        let session = tracer.session("b.test", "mx.b.test", addr);
        session.connect("");
        let ehlo = tern_smtp::Command::Ehlo("tern".into());
        session.record(TranscriptEntry::Command(CommandLine::command(&ehlo)));
        assert!(drain(&tracer).is_empty());

        tracer.set_filters(vec![TraceFilter {
            domain: Some("B.test".into()),
            mx: None,
        }]);
        let other = tracer.session("c.test", "mx.c.test", addr);
        other.record(TranscriptEntry::Command(CommandLine::command(&ehlo)));
        session.connect("");
        session.record(TranscriptEntry::Body { octets: 12 });
        let reply = tern_smtp::Reply::new(250, None, "mx.b.test").line("PIPELINING");
        session.record(TranscriptEntry::Reply(&reply));
        drop(session);
        let got: Vec<(String, String)> = drain(&tracer).into_iter().map(|r| (r.kind, r.text)).collect();
        let want: Vec<(String, String)> = [
            ("connect", "mx.b.test [192.0.2.1]:25"),
            ("send", "<message data: 12 octets>"),
            ("recv", "250-mx.b.test"),
            ("recv", "250 PIPELINING"),
            ("close", "connection closed"),
        ]
        .iter()
        .map(|(k, t)| (k.to_string(), t.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
