//! The queue in memory: every live job with the indexes the operations walk (schedules, the domain index,
//! leases, slots), and what changed since the last commit. The writer thread (`writer.rs`) owns it alone and
//! applies the operations to it one at a time, as Redis runs one function at a time; `store.rs` builds it
//! from disk at start and writes the changes of each batch in one transaction.
//!
//! The helpers here are those every operation shares (`ops/shared.lua`'s counterparts): placing a schedule
//! in the domain index, taking a job out of flight, putting it back on its schedule, removing it, events and
//! counters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use tern_core::{JobId, MessageId};

use super::history::{HistoryChanges, HistoryLog};
use super::record::{Flight, LiveJob};
use super::sts::StsCache;
use super::tls_report::{TlsReportChanges, TlsReports};
use crate::model::{BOUNCE_SCHEDULE, Event, EventKind, EventPos, JobState, Stats, Suspension};

/// How long per-minute counters are kept (minutes).
pub(crate) const MINUTES_KEPT: u64 = 120;

/// Jobs by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub queued: u64,
    pub deferred: u64,
    pub in_flight: u64,
    pub held: u64,
}

impl Counts {
    fn slot(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Queued => &mut self.queued,
            JobState::Deferred => &mut self.deferred,
            JobState::InFlight => &mut self.in_flight,
            JobState::Held => &mut self.held,
        }
    }

    /// One job moved from `from` to `to` (`None`: made or removed).
    pub(crate) fn moved(&mut self, from: Option<JobState>, to: Option<JobState>) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            let slot = self.slot(from);
            *slot = slot.saturating_sub(1);
        }
        if let Some(to) = to {
            *self.slot(to) += 1;
        }
    }
}

/// What changed since the last commit: what `store.rs` writes. Job records are written from their state at
/// the commit (a job changed many times in one batch is written once; one made and finished in the same
/// batch not at all).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Jobs whose record is to be written, or deleted when the job is gone.
    pub jobs: HashSet<JobId>,
    /// Message bodies to store (`Some`) or delete (`None`).
    pub bodies: HashMap<MessageId, Option<Bytes>>,
    /// Idempotency keys to store (`Some`: message and expiry) or delete.
    pub idempotency: HashMap<String, Option<(MessageId, u64)>>,
    /// Event entries to append: sequence number and events.
    pub events: Vec<(u64, Vec<Event>)>,
    /// Entries below this sequence number are to be dropped (the history is bounded).
    pub events_kept_from: Option<u64>,
    /// Suspensions to write (or delete when gone), and concurrency limits.
    pub suspensions: HashSet<String>,
    pub concurrency: HashSet<String>,
    /// The counters changed (totals and these minutes); minutes older than kept are deleted.
    pub stats: bool,
    pub minutes: HashSet<u64>,
    pub minutes_dropped: Vec<u64>,
    /// MTA-STS cache entries to write (or delete when gone), by domain.
    pub sts: HashSet<String>,
    /// TLS-RPT counters and sent marks to write (or delete when gone).
    pub tls_report: TlsReportChanges,
    /// What the history needs beside the batch's events (`history.rs`).
    pub history: HistoryChanges,
}

impl Changes {
    /// Whether anything is to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.bodies.is_empty()
            && self.idempotency.is_empty()
            && self.events.is_empty()
            && self.events_kept_from.is_none()
            && self.suspensions.is_empty()
            && self.concurrency.is_empty()
            && !self.stats
            && self.minutes.is_empty()
            && self.minutes_dropped.is_empty()
            && self.sts.is_empty()
            && self.tls_report.is_empty()
            && self.history.is_empty()
    }
}

/// What the state is made with (the queue's options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Claims per domain at once unless overridden.
    pub default_limit: u32,
    /// The most event entries kept.
    pub events_max: u64,
    /// How long a message made with its own id is remembered against repeats (ms; 0: not at all).
    pub repeat_window_ms: u64,
    /// How long a message's history is kept after its last event (ms; 0: none is kept).
    pub history_ms: u64,
}

/// The bounded event history: sequence numbers of the oldest entry kept and of the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EventLog {
    pub first: u64,
    pub next: u64,
}

/// The queue in memory.
#[derive(Debug)]
pub(crate) struct State {
    /// Every live job, in id order (ids start with a ULID: time order, for listing and the oldest message).
    pub jobs: BTreeMap<JobId, LiveJob>,
    /// Each schedule's waiting jobs by due time: a domain's, or `#bounce`.
    pub schedules: HashMap<String, BTreeSet<(u64, JobId)>>,
    /// The domain index: each schedule with waiting jobs by its earliest due time (a domain at its limit
    /// pushed back; suspended domains left out), then by when it got that place, so that equal times are
    /// served first come, first served: a domain just claimed goes behind every domain already due (the
    /// Redis backend gets there with a time 1 ms ahead, and turns across shards).
    pub domain_index: BTreeSet<(u64, u64, String)>,
    /// Each indexed schedule's place in `domain_index`.
    pub domain_score: HashMap<String, (u64, u64)>,
    /// The order the next place is given in.
    pub index_order: u64,
    /// Jobs in flight by lease deadline (what the reaper scans).
    pub inflight: BTreeSet<(u64, JobId)>,
    /// Each domain's slots: live claims (by claim id) and holds of idle connections (`h:<claim id>`), with
    /// their deadlines.
    pub slots: HashMap<String, HashMap<String, u64>>,
    /// Claim id → jobs of the claim still in flight (its slot is freed at 0).
    pub claims: HashMap<String, u64>,
    /// The last claim was held-first and took a hold over: the next one follows the domain index first (see
    /// `claim.rs`).
    pub took_hold_last: bool,
    /// Domain → concurrency override.
    pub concurrency: HashMap<String, u32>,
    /// Domain → suspension, and the suspensions with an end by their end.
    pub suspensions: BTreeMap<String, Suspension>,
    pub suspension_ends: BTreeSet<(u64, String)>,
    /// Domain → live jobs (waiting, held and in flight, bounced ones under their domain).
    pub domain_live: HashMap<String, u64>,
    /// Domain → its jobs held by an operator (off every schedule until unheld).
    pub held: HashMap<String, BTreeSet<JobId>>,
    pub counts: Counts,
    /// Message → its live jobs: the body goes with the last.
    pub messages: HashMap<MessageId, u32>,
    /// Idempotency key → first message and when the key expires (Unix ms), and the keys by expiry.
    pub idempotency: HashMap<String, (MessageId, u64)>,
    pub idempotency_ends: BTreeSet<(u64, String)>,
    /// Counters since the store was made, and per minute (Unix ms / 60000) for two hours.
    pub stats: Stats,
    pub minutes: BTreeMap<u64, Stats>,
    pub events: EventLog,
    /// The events of the entry being built (one entry per call, as a Redis function appends one).
    pub entry: Vec<Event>,
    /// The most event entries kept.
    pub events_max: u64,
    /// Claims (connections) per domain at once unless overridden.
    pub default_limit: u32,
    /// Messages made on request with their own id, and until when (Unix ms) a repeat of them makes nothing
    /// (a writer that did not learn the outcome sends the same message again); memory only, like the
    /// writers that repeat. The window (ms); 0: nothing is remembered.
    pub recent: HashMap<MessageId, u64>,
    pub recent_ends: BTreeSet<(u64, MessageId)>,
    pub repeat_window: u64,
    /// The clock of the operation being applied (Unix ms): whether a schedule is due for a wake.
    pub clock: u64,
    /// The MTA-STS policy cache (`sts.rs`).
    pub sts: StsCache,
    /// The TLS-RPT counters (`tls_report.rs`).
    pub tls_reports: TlsReports,
    /// The message history's retention and next pruning time (the history itself is on disk only).
    pub history: HistoryLog,
    /// Wakes for waiting workers given since the last commit (see `Queue::wait_for_work`).
    pub wakes: u32,
    pub changes: Changes,
}

impl State {
    /// An empty queue with `settings`.
    pub(crate) fn with(settings: Settings) -> State {
        let mut state = State::new(settings.default_limit, settings.events_max);
        state.repeat_window = settings.repeat_window_ms;
        state.history.retention = settings.history_ms;
        state
    }

    /// An empty queue.
    pub(crate) fn new(default_limit: u32, events_max: u64) -> State {
        State {
            jobs: BTreeMap::new(),
            schedules: HashMap::new(),
            domain_index: BTreeSet::new(),
            domain_score: HashMap::new(),
            index_order: 0,
            inflight: BTreeSet::new(),
            slots: HashMap::new(),
            claims: HashMap::new(),
            took_hold_last: false,
            concurrency: HashMap::new(),
            suspensions: BTreeMap::new(),
            suspension_ends: BTreeSet::new(),
            domain_live: HashMap::new(),
            held: HashMap::new(),
            counts: Counts::default(),
            messages: HashMap::new(),
            idempotency: HashMap::new(),
            idempotency_ends: BTreeSet::new(),
            stats: Stats::default(),
            minutes: BTreeMap::new(),
            // Entry 0 is never written: position 0 is before every entry.
            events: EventLog { first: 1, next: 1 },
            entry: Vec::new(),
            events_max: events_max.max(1),
            default_limit,
            recent: HashMap::new(),
            recent_ends: BTreeSet::new(),
            repeat_window: 0,
            clock: 0,
            sts: StsCache::default(),
            tls_reports: TlsReports::default(),
            history: HistoryLog::default(),
            wakes: 0,
            changes: Changes::default(),
        }
    }

    // ------------------------------------------------------------------------------------ schedules, index

    /// Whether deliveries to `schedule` are suspended (the bounce schedule never is).
    pub(crate) fn suspended(&self, schedule: &str) -> bool {
        schedule != BOUNCE_SCHEDULE && self.suspensions.contains_key(schedule)
    }

    /// The earliest due time of a schedule's waiting jobs.
    pub(crate) fn earliest_due(&self, schedule: &str) -> Option<u64> {
        self.schedules
            .get(schedule)
            .and_then(|s| s.first())
            .map(|(due, _)| *due)
    }

    /// Places `schedule` in the domain index at `score`, behind the schedules already there at that time.
    pub(crate) fn index_set(&mut self, schedule: &str, score: u64) {
        self.index_order += 1;
        let place = (score, self.index_order);
        if let Some((old, order)) = self.domain_score.insert(schedule.to_string(), place) {
            self.domain_index.remove(&(old, order, schedule.to_string()));
        }
        self.domain_index
            .insert((score, self.index_order, schedule.to_string()));
    }

    pub(crate) fn index_remove(&mut self, schedule: &str) {
        if let Some((old, order)) = self.domain_score.remove(schedule) {
            self.domain_index.remove(&(old, order, schedule.to_string()));
        }
    }

    /// A schedule's time in the domain index.
    pub(crate) fn index_score(&self, schedule: &str) -> Option<u64> {
        self.domain_score.get(schedule).map(|(score, _)| *score)
    }

    /// A job of `schedule` is due at `due`: the schedule must be found in the index by then (only ever
    /// moved earlier, as `ZADD LT`). Whether its place changed (it was not there, or comes earlier now).
    pub(crate) fn index_add(&mut self, schedule: &str, due: u64) -> bool {
        if self.suspended(schedule) {
            return false;
        }
        match self.index_score(schedule) {
            Some(score) if score <= due => false,
            _ => {
                self.index_set(schedule, due);
                true
            }
        }
    }

    /// Whether `schedule` has a free concurrency slot (lapsed slots count as taken: a claim drops them).
    pub(crate) fn has_free_slot(&self, schedule: &str) -> bool {
        if schedule == BOUNCE_SCHEDULE {
            return true;
        }
        let limit = self
            .concurrency
            .get(schedule)
            .copied()
            .unwrap_or(self.default_limit) as usize;
        self.slots.get(schedule).map_or(0, |s| s.len()) < limit
    }

    /// Whether an idle connection of this process holds a live slot of `schedule`: only it can claim the
    /// domain when every slot is taken (the Redis backend wakes that holder's own waiter; here every waiter
    /// is of this process).
    pub(crate) fn has_live_hold(&self, schedule: &str) -> bool {
        self.slots.get(schedule).is_some_and(|slots| {
            slots
                .iter()
                .any(|(member, until)| member.starts_with("h:") && *until > self.clock)
        })
    }

    /// A slot of `schedule` may be free now: into the index at its earliest due job (no earlier than now,
    /// behind the domains already due: a domain whose claim just ended keeps its turn), and, when the slot
    /// was freed indeed (`freed`: not taken over by a hold, nor lapsed) and that job is due, one waiting
    /// worker woken (a claim that skipped the domain at its limit is waiting for this).
    pub(crate) fn slot_freed(&mut self, schedule: &str, freed: bool) {
        if let Some(first) = self.earliest_due(schedule)
            && !self.suspended(schedule)
        {
            self.index_add(schedule, first.max(self.clock));
            if freed && first <= self.clock {
                self.wakes += 1;
            }
        }
    }

    /// Recomputes a schedule's place in the index from its earliest due job, never below `floor`.
    pub(crate) fn reindex(&mut self, schedule: &str, floor: Option<u64>) {
        match self.earliest_due(schedule) {
            Some(first) if !self.suspended(schedule) => {
                self.index_set(schedule, floor.map_or(first, |f| first.max(f)));
            }
            _ => self.index_remove(schedule),
        }
    }

    /// Puts a job on a schedule at `due`; whether the schedule's place in the index changed.
    pub(crate) fn schedule_job(&mut self, schedule: &str, id: JobId, due: u64) -> bool {
        self.schedules
            .entry(schedule.to_string())
            .or_default()
            .insert((due, id));
        self.index_add(schedule, due)
    }

    /// Takes a job off a schedule; whether it was there.
    pub(crate) fn unschedule(&mut self, schedule: &str, id: JobId, due: u64) -> bool {
        let Some(set) = self.schedules.get_mut(schedule) else {
            return false;
        };
        let was = set.remove(&(due, id));
        if set.is_empty() {
            self.schedules.remove(schedule);
        }
        was
    }

    // ------------------------------------------------------------------------------------------- leases

    /// `count` jobs of claim `claim` (taken from `schedule`) left flight; the last one frees its slot.
    pub(crate) fn claim_done(&mut self, claim: &str, schedule: &str, count: u64) {
        let Some(left) = self.claims.get_mut(claim) else {
            return;
        };
        *left = left.saturating_sub(count);
        if *left > 0 {
            return;
        }
        self.claims.remove(claim);
        // The slot is freed, unless a hold took it over or it lapsed and went.
        let mut freed = false;
        if let Some(slots) = self.slots.get_mut(schedule) {
            freed = slots.remove(claim).is_some();
            if slots.is_empty() {
                self.slots.remove(schedule);
            }
        }
        self.slot_freed(schedule, freed);
    }

    /// Takes a job out of flight (its lease, its place among leases, its claim's count).
    pub(crate) fn unlease(&mut self, id: JobId) -> Option<Flight> {
        let live = self.jobs.get_mut(&id)?;
        let flight = live.flight.take()?;
        let waiting = live.record.waiting_state();
        self.counts.moved(Some(JobState::InFlight), Some(waiting));
        self.inflight.remove(&(flight.lease_until, id));
        self.claim_done(&flight.token, &flight.schedule, 1);
        Some(flight)
    }

    /// Puts a job that is not in flight back on its schedule at `due`.
    pub(crate) fn requeue(&mut self, id: JobId, due: u64) {
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        live.record.next = due;
        let schedule = live.record.schedule().to_string();
        self.changes.jobs.insert(id);
        self.schedule_job(&schedule, id, due);
    }

    /// Removes a job (finished, or deleted by an operator); its message's body goes with the message's last
    /// job.
    pub(crate) fn remove_job(&mut self, id: JobId) {
        if self.jobs.get(&id).is_some_and(|j| j.flight.is_some()) {
            self.unlease(id);
        }
        let Some(live) = self.jobs.remove(&id) else {
            return;
        };
        if live.record.held {
            self.held_remove(&live.record.domain, id);
        }
        self.changes.jobs.insert(id);
        self.counts.moved(Some(live.state()), None);
        let schedule = live.record.schedule().to_string();
        if self.unschedule(&schedule, id, live.record.next) {
            self.reindex(&schedule, None);
        }
        let domain = &live.record.domain;
        if let Some(n) = self.domain_live.get_mut(domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.domain_live.remove(domain);
            }
        }
        self.drop_body_ref(id.message);
    }

    /// Adds a held job to its domain's held jobs.
    pub(crate) fn held_add(&mut self, domain: &str, id: JobId) {
        self.held.entry(domain.to_string()).or_default().insert(id);
    }

    /// Takes a job out of its domain's held jobs.
    pub(crate) fn held_remove(&mut self, domain: &str, id: JobId) {
        if let Some(held) = self.held.get_mut(domain) {
            held.remove(&id);
            if held.is_empty() {
                self.held.remove(domain);
            }
        }
    }

    /// One job of the message fewer; the last one takes the body along.
    fn drop_body_ref(&mut self, message: MessageId) {
        let Some(live) = self.messages.get_mut(&message) else {
            return;
        };
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.messages.remove(&message);
            self.changes.bodies.insert(message, None);
        }
    }

    // ----------------------------------------------------------------------------------- events, counters

    /// Adds an event to the entry being built.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &mut self,
        kind: EventKind,
        now: u64,
        job: Option<JobId>,
        domain: &str,
        recipients: Vec<String>,
        reply: Option<String>,
        attempt: u32,
    ) -> &mut Event {
        let tags = job
            .and_then(|id| self.jobs.get(&id))
            .map(|j| j.record.tags.clone())
            .unwrap_or_default();
        self.entry.push(Event {
            kind,
            time_ms: now,
            message: job.map(|j| j.message),
            job,
            domain: domain.to_string(),
            recipients,
            reply: reply.filter(|r| !r.is_empty()),
            attempt,
            tags,
            remote_mx: None,
            remote_ip: None,
            tls: None,
            sender: None,
            dsn: None,
            id: String::new(),
            position: EventPos::default(),
        });
        let at = self.entry.len() - 1;
        &mut self.entry[at]
    }

    /// One event of a job about its pending recipients (retried, released, lease-expired, deleted, bounced),
    /// as an entry of its own.
    pub(crate) fn job_event(&mut self, kind: EventKind, now: u64, id: JobId) {
        let Some(live) = self.jobs.get(&id) else {
            return;
        };
        let (domain, pending, attempts) = (
            live.record.domain.clone(),
            live.record.pending_addresses(),
            live.record.attempts,
        );
        self.close_entry();
        self.event(kind, now, Some(id), &domain, pending, None, attempts);
        self.close_entry();
    }

    /// Ends the entry being built: it gets the next sequence number, and the oldest entries beyond the
    /// bound are dropped.
    pub(crate) fn close_entry(&mut self) {
        if self.entry.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.entry);
        let seq = self.events.next;
        self.events.next += 1;
        self.changes.events.push((seq, events));
        if self.events.next - self.events.first > self.events_max {
            self.events.first = self.events.next - self.events_max;
            self.changes.events_kept_from = Some(self.events.first);
        }
    }

    /// Counts `n` under the counter `name` (see [`Stats::add`]), in the totals and in `now`'s minute.
    pub(crate) fn stat(&mut self, now: u64, name: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.stats.add(name, n);
        let minute = now / 60_000;
        self.minutes.entry(minute).or_default().add(name, n);
        self.changes.stats = true;
        self.changes.minutes.insert(minute);
        while let Some((&oldest, _)) = self.minutes.first_key_value() {
            if oldest + MINUTES_KEPT > minute {
                break;
            }
            self.minutes.remove(&oldest);
            self.changes.minutes.remove(&oldest);
            self.changes.minutes_dropped.push(oldest);
        }
    }

    // ---------------------------------------------------------------------------------------- admission

    /// Adds a live job (made by an enqueue, or read at start) to every index; `flight` must be `None`. A
    /// held job goes on no schedule. Whether its schedule's place in the domain index changed.
    pub(crate) fn admit(&mut self, id: JobId, live: LiveJob) -> bool {
        let schedule = live.record.schedule().to_string();
        let due = live.record.next;
        let held = live.record.held;
        if held {
            self.held_add(&live.record.domain, id);
        }
        *self.domain_live.entry(live.record.domain.clone()).or_default() += 1;
        *self.messages.entry(id.message).or_default() += 1;
        self.counts.moved(None, Some(live.state()));
        self.jobs.insert(id, live);
        !held && self.schedule_job(&schedule, id, due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_move_between_states() {
        let mut c = Counts::default();
        c.moved(None, Some(JobState::Queued));
        c.moved(Some(JobState::Queued), Some(JobState::InFlight));
        c.moved(Some(JobState::InFlight), Some(JobState::Deferred));
        assert_eq!((c.queued, c.deferred, c.in_flight), (0, 1, 0));
        c.moved(Some(JobState::Deferred), None);
        c.moved(Some(JobState::Deferred), None);
        assert_eq!(c, Counts::default(), "never below zero");
    }

    #[test]
    fn the_index_only_moves_earlier_on_add_and_leaves_suspended_domains_out() {
        let mut s = State::new(10, 100);
        s.index_add("a.test", 50);
        s.index_add("a.test", 70);
        assert_eq!(s.index_score("a.test"), Some(50));
        s.index_add("a.test", 20);
        assert_eq!(
            s.domain_index.first().map(|(t, _, d)| (*t, d.as_str())),
            Some((20, "a.test"))
        );
        s.index_set("z.test", 20);
        s.index_set("b.test", 20);
        let order: Vec<&str> = s.domain_index.iter().map(|(_, _, d)| d.as_str()).collect();
        assert_eq!(
            order,
            ["a.test", "z.test", "b.test"],
            "equal times: first come, first served"
        );
        s.index_remove("z.test");
        s.index_remove("b.test");
        s.suspensions.insert(
            "b.test".into(),
            Suspension {
                domain: "b.test".into(),
                reason: String::new(),
                since_ms: 0,
                until_ms: None,
            },
        );
        s.index_add("b.test", 1);
        assert!(!s.domain_score.contains_key("b.test"));
        s.reindex("a.test", None);
        assert!(s.domain_index.is_empty(), "an empty schedule leaves the index");
        assert_eq!(s.domain_index.len(), s.domain_score.len());
    }

    #[test]
    fn the_event_history_keeps_the_newest_entries() {
        let mut s = State::new(10, 3);
        for i in 0..5 {
            s.event(EventKind::Suspended, i, None, "d.test", Vec::new(), None, 0);
            s.close_entry();
        }
        assert_eq!((s.events.first, s.events.next), (3, 6));
        assert_eq!(s.changes.events.len(), 5);
        assert_eq!(s.changes.events_kept_from, Some(3));
        s.close_entry();
        assert_eq!(s.events.next, 6, "an empty entry is not written");
    }

    #[test]
    fn per_minute_counters_are_kept_two_hours() {
        let mut s = State::new(10, 3);
        s.stat(0, "delivered", 2);
        s.stat(60_000, "delivered", 1);
        assert_eq!(s.stats.delivered, 3);
        s.stat(MINUTES_KEPT * 60_000, "failed", 1);
        assert_eq!(s.minutes.keys().copied().collect::<Vec<_>>(), [1, MINUTES_KEPT]);
        assert_eq!(s.changes.minutes_dropped, [0]);
    }
}
