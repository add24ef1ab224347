//! Sending the daily TLS reports (TLS-RPT, RFC 8460): [`TlsReporter`].
//!
//! For one UTC day, [`TlsReporter::run_once`]:
//!
//! 1. takes the day's report lock in the queue's store ([`TlsReportStore::tls_report_try_lock`]); when
//!    another node holds it, does nothing (that node is sending). The lock is taken again before each
//!    domain, which keeps it for a long run and stops the run if it was lost;
//! 2. lists the policy domains with counters that day, and for each one:
//! 3. looks up `_smtp._tls.<domain>` TXT ([`TxtResolver`]) and selects its record
//!    ([`select_tlsrpt_record`]): none (or a failed lookup) skips the domain, unmarked;
//! 4. builds the report from the day's counters ([`build_report`]), gzips it;
//! 5. marks the domain's report sent ([`TlsReportStore::tls_report_sent`]); a domain already marked (an
//!    earlier run, any node) is skipped. The mark comes before the sending because the store can only
//!    test-and-mark (no read of the mark, no unmark): a run repeated the same day, or another node's, must
//!    not send twice, and a node that catches up after a restart must skip what was sent. So the mark is
//!    this node's claim on the report, and the URIs that fail for a reason that may pass are remembered
//!    in memory ([`DomainOutcome::retry_later`]) and offered the same report again by the day's later
//!    runs on this node (the daily task's retries, a forced run of the day);
//! 6. delivers the report to each `rua` URI, trying a failed one again ([`ReporterOptions::attempts`]):
//!    `mailto:` as a mail ([`build_report_mail`](crate::report::build_report_mail)) queued into tern's
//!    own queue ([`Queue::enqueue`], from the reporting address, with an idempotency key made of the report
//!    id and the address), DKIM-signed when the reporter has keys for the reporting address's domain
//!    ([`TlsReporter::with_dkim`]);
//!    `https:` as a POST of the gzip (`Content-Type: application/tlsrpt+gzip`) verified against the web PKI
//!    roots and the extra CA file.
//!
//! A day that is not over yet (a run forced for today) gets a partial report: its `date-range` ends when
//! its counters were read, it has an id of its own ([`partial_report_id`]), and nothing is marked sent, so
//! the regular run after midnight still sends the whole day's report ([`RunSummary::partial`]).
//!
//! It returns a [`RunSummary`]: per domain what happened, where the report went and what failed.
//! [`TlsReporter::spawn_daily`] runs it once a day, `send_at` after midnight UTC, for the day before
//! ([`schedule`]).

mod deliver;
mod https;
mod pending;
pub mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_core::time::now_ms;
use tern_core::{HumanDuration, Mailbox, Shutdown};
use tern_dkim::SharedSigners;
use tern_queue::tls_report::day_start_ms;
use tern_queue::{LockOutcome, Queue, QueueError, TlsReportStore};
use tracing::{debug, info, warn};

pub use https::PostError;

use crate::discovery::TxtLookup;
use crate::dns::{HickoryDns, TxtResolver};
use crate::fetch::SetupError;
use crate::report::{
    ReportUri, Submitter, build_partial_report, build_report, gzip, partial_report_filename,
    partial_report_id, report_filename, report_id, select_tlsrpt_record, tlsrpt_record_name,
};
use crate::resolve::HostResolver;
use deliver::Failure;
use pending::{Pending, Retry};

/// The deadline of one HTTPS POST of a report.
pub const DEFAULT_POST_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a report is offered to one URI.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The pause between two attempts at one URI.
pub const DEFAULT_RETRY_PAUSE: Duration = Duration::from_secs(10);
/// How long the day's lock is held: renewed before each domain, so a run only needs it per domain.
pub const LOCK_TTL: Duration = Duration::from_secs(600);
/// After a run that failed (the store unreachable) or left its day unfinished, when the daily task tries
/// that day again.
pub const RUN_RETRY: Duration = Duration::from_secs(300);
/// How many times a run that left its day unfinished is tried again for that day.
pub const RUN_RETRIES: u32 = 6;

/// How a [`TlsReporter`] reports (the `[delivery.tls_rpt]` settings and `delivery.extra_ca_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReporterOptions {
    /// The report's `organization-name`.
    pub organization_name: String,
    /// The report's `contact-info`.
    pub contact_info: String,
    /// The reporting address: From and envelope sender of report mails; its domain is the submitter.
    pub report_from: String,
    /// When the daily run starts, after midnight UTC (less than a day).
    pub send_at: Duration,
    /// This process's name in the day's lock (unique in the cluster).
    pub owner: String,
    /// The deadline of one HTTPS POST.
    pub post_timeout: Duration,
    /// How many times a report is offered to one URI (at least once).
    pub attempts: u32,
    /// The pause between two attempts at one URI.
    pub retry_pause: Duration,
    /// A PEM file of CA certificates trusted besides the web PKI roots, for `https:` URIs.
    pub extra_ca_file: Option<PathBuf>,
}

impl ReporterOptions {
    /// Options with the default timeout, attempts and pause.
    pub fn new(
        organization_name: impl Into<String>,
        contact_info: impl Into<String>,
        report_from: impl Into<String>,
        owner: impl Into<String>,
    ) -> Self {
        ReporterOptions {
            organization_name: organization_name.into(),
            contact_info: contact_info.into(),
            report_from: report_from.into(),
            send_at: Duration::from_secs(30 * 60),
            owner: owner.into(),
            post_timeout: DEFAULT_POST_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            retry_pause: DEFAULT_RETRY_PAUSE,
            extra_ca_file: None,
        }
    }
}

/// Why a reporter could not be made, or a run could not be done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReporterError {
    /// The reporting address is not an address.
    #[error("the reporting address {0:?} is not an address (local@domain)")]
    ReportFrom(String),
    /// The HTTPS client could not be built (the extra CA file).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The day is not `YYYY-MM-DD` (a real UTC date).
    #[error("a report day is YYYY-MM-DD (UTC), not {0:?}")]
    Day(String),
    /// The queue's store failed.
    #[error("the TLS report store: {0}")]
    Store(#[from] QueueError),
}

/// What became of one policy domain's report in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainStatus {
    /// Sent to at least one URI (and marked sent, unless the day is not over).
    Sent,
    /// No URI took it (every attempt failed). Marked sent all the same (unless the day is not over): the
    /// URIs in [`DomainOutcome::retry_later`] are offered it again by the day's later runs on this node.
    Undelivered,
    /// An earlier run (of any node) sent it.
    AlreadySent,
    /// The domain publishes no usable TLS-RPT record: it wants no report.
    NoRecord,
    /// The TXT lookup failed: a later run of the day tries again.
    LookupFailed,
    /// The report could not be made (no counters left, or a name that cannot go into a report).
    NotMade,
}

impl DomainStatus {
    /// The name the API and the logs use: `sent`, `undelivered`, `already-sent`, `no-record`,
    /// `lookup-failed`, `not-made`.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::Sent => "sent",
            DomainStatus::Undelivered => "undelivered",
            DomainStatus::AlreadySent => "already-sent",
            DomainStatus::NoRecord => "no-record",
            DomainStatus::LookupFailed => "lookup-failed",
            DomainStatus::NotMade => "not-made",
        }
    }
}

/// One policy domain in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainOutcome {
    /// The policy domain (lower-case).
    pub domain: String,
    /// What became of its report.
    pub status: DomainStatus,
    /// The URIs that took the report (`mailto:...`, `https://...`).
    pub sent_to: Vec<String>,
    /// What failed, one line each (a URI's last error prefixed with the URI, or why nothing was sent).
    pub errors: Vec<String>,
    /// The URIs that did not take the report for a reason that may pass (an unreachable collector, the
    /// queue's store down): this process keeps the report in memory and offers it to them again at the
    /// day's later runs (lost if it stops first). Empty for a partial report: the whole day's follows.
    pub retry_later: Vec<String>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// The day reported (`YYYY-MM-DD`).
    pub day: String,
    /// Another node holds the day's lock (from the start, or taken over during the run): its name. The
    /// run did nothing more then.
    pub held_by: Option<String>,
    /// Whether the run stopped early for a shutdown.
    pub stopped: bool,
    /// The day is not over (a run forced for today): the reports sent are partial, cut when their
    /// counters were read, and no domain was marked sent, so the regular report after midnight still
    /// covers the whole day.
    pub partial: bool,
    /// Each domain looked at, in domain order.
    pub domains: Vec<DomainOutcome>,
}

impl RunSummary {
    /// How many domains were sent their report in this run.
    pub fn sent(&self) -> usize {
        self.domains
            .iter()
            .filter(|d| d.status == DomainStatus::Sent)
            .count()
    }
}

/// The shared parts of a reporter.
struct Inner {
    store: Arc<dyn TlsReportStore>,
    queue: Arc<dyn Queue>,
    txt: Arc<dyn TxtResolver>,
    poster: https::Poster,
    from: Mailbox,
    submitter: Submitter,
    options: ReporterOptions,
    /// The reports marked sent that some URI has yet to take.
    pending: Pending,
}

/// Sends the TLS reports of a day (see the module docs). Cheap to clone: every clone shares one store,
/// queue, resolver and HTTPS client.
#[derive(Clone)]
pub struct TlsReporter {
    inner: Arc<Inner>,
    /// The `[[dkim]]` keys report mails are signed with (those of the reporting address's domain).
    dkim: Option<Arc<SharedSigners>>,
    /// Cancelled at shutdown: a run stops between domains and between attempts.
    stop: Shutdown,
}

impl std::fmt::Debug for TlsReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReporter")
            .field("options", &self.inner.options)
            .field("dkim", &self.dkim.is_some())
            .finish_non_exhaustive()
    }
}

/// A report made, ready to deliver.
struct Made {
    day: String,
    domain: String,
    id: String,
    filename: String,
    gz: Bytes,
}

impl TlsReporter {
    /// A reporter over the counters in `store`, queueing report mails into `queue`, looking up TLS-RPT
    /// records through `txt` and collectors' addresses through `hosts`. Reads the extra CA file now.
    pub fn new(
        store: Arc<dyn TlsReportStore>,
        queue: Arc<dyn Queue>,
        txt: Arc<dyn TxtResolver>,
        hosts: Arc<dyn HostResolver>,
        options: ReporterOptions,
    ) -> Result<TlsReporter, ReporterError> {
        let from = Mailbox::parse(options.report_from.trim(), false)
            .map_err(|_| ReporterError::ReportFrom(options.report_from.clone()))?;
        let submitter = Submitter {
            organization_name: options.organization_name.clone(),
            contact_info: options.contact_info.clone(),
            domain: from.domain_for_routing(),
        };
        let poster = https::Poster::new(options.extra_ca_file.as_deref(), hosts, options.post_timeout)?;
        Ok(TlsReporter {
            inner: Arc::new(Inner {
                store,
                queue,
                txt,
                poster,
                from,
                submitter,
                options,
                pending: Pending::default(),
            }),
            dkim: None,
            stop: Shutdown::new(),
        })
    }

    /// The reporter signing its report mails with `keys` (RFC 8460 §3 wants them DKIM-signed): with every
    /// key of the reporting address's domain, or of its nearest parent with keys, as ingest signs mail from
    /// that domain. Without a key for it, report mails go unsigned. The keys in use at each mail are
    /// taken, so a reload of `keys` (SIGHUP) applies to the next report.
    pub fn with_dkim(mut self, keys: Arc<SharedSigners>) -> TlsReporter {
        let domain = self.inner.submitter.domain.clone();
        match keys.current().signing_domain(&domain) {
            Some(d) => info!(from_domain = %domain, signing_domain = %d, "TLS report mails are DKIM-signed"),
            None => info!(
                from_domain = %domain,
                "no [[dkim]] key for the reporting domain: TLS report mails go unsigned"
            ),
        }
        self.dkim = Some(keys);
        self
    }

    /// [`TlsReporter::new`] with one hickory resolver for the TXT records and the collectors' addresses.
    pub fn with_dns(
        store: Arc<dyn TlsReportStore>,
        queue: Arc<dyn Queue>,
        dns: HickoryDns,
        options: ReporterOptions,
    ) -> Result<TlsReporter, ReporterError> {
        let dns = Arc::new(dns);
        Self::new(store, queue, dns.clone(), dns, options)
    }

    /// The options the reporter was made with.
    pub fn options(&self) -> &ReporterOptions {
        &self.inner.options
    }

    /// The store the counters are read from.
    pub fn store(&self) -> &Arc<dyn TlsReportStore> {
        &self.inner.store
    }

    /// Sends the reports of `day` (`YYYY-MM-DD`, UTC) that are not sent yet, if this node gets the day's
    /// lock, and offers again the reports of the day that some URI has yet to take. A day that is not over
    /// (today) gets partial reports and nothing is marked sent ([`RunSummary::partial`]). An error only
    /// when the day is malformed or the store fails; what failed for a domain is in its
    /// [`DomainOutcome`].
    pub async fn run_once(&self, day: &str) -> Result<RunSummary, ReporterError> {
        let Some(start) = day_start_ms(day) else {
            return Err(ReporterError::Day(day.to_owned()));
        };
        let now = now_ms();
        for (old, domain, uris) in self.inner.pending.prune(now) {
            warn!(
                day = %old, domain = %domain, uris = %uris.join(" "),
                "TLS report never taken by these URIs; its day is past reporting: given up"
            );
        }
        let mut summary = RunSummary {
            day: day.to_owned(),
            partial: start.saturating_add(schedule::DAY_MS) > now,
            ..RunSummary::default()
        };
        let domains = match self.lock(day).await? {
            Some(owner) => {
                info!(day, holder = %owner, "another node is sending this day's TLS reports");
                summary.held_by = Some(owner);
                return Ok(summary);
            }
            None => self.inner.store.tls_report_domains(day).await?,
        };
        debug!(
            day,
            domains = domains.len(),
            partial = summary.partial,
            "sending the day's TLS reports"
        );
        for (i, domain) in domains.iter().enumerate() {
            if self.stop.is_cancelled() {
                summary.stopped = true;
                break;
            }
            // Taken again before each domain: it keeps the lock through a long run, and a lock lost (the
            // run outlived it and another node took it) ends this run rather than racing the other.
            if i > 0
                && let Some(owner) = self.lock(day).await?
            {
                warn!(day, holder = %owner, "the TLS report lock was taken over; stopping this run");
                summary.held_by = Some(owner);
                break;
            }
            let outcome = self.report_domain(day, domain, summary.partial).await?;
            log_outcome(day, &outcome);
            summary.domains.push(outcome);
        }
        Ok(summary)
    }

    /// Takes the day's lock: `None` when this node holds it now, else the holder.
    async fn lock(&self, day: &str) -> Result<Option<String>, ReporterError> {
        let owner = &self.inner.options.owner;
        match self.inner.store.tls_report_try_lock(day, owner, LOCK_TTL).await? {
            LockOutcome::Acquired => Ok(None),
            LockOutcome::HeldBy(holder) => Ok(Some(holder)),
        }
    }

    /// One domain: record, report, mark (not for a partial report), delivery. A report this node marked
    /// and some URI has yet to take is offered to those URIs again instead.
    async fn report_domain(
        &self,
        day: &str,
        domain: &str,
        partial: bool,
    ) -> Result<DomainOutcome, ReporterError> {
        let mut outcome = DomainOutcome {
            domain: domain.to_owned(),
            status: DomainStatus::NoRecord,
            sent_to: Vec::new(),
            errors: Vec::new(),
            retry_later: Vec::new(),
        };
        if !partial && let Some(retry) = self.inner.pending.take(day, domain) {
            let Retry { made, uris } = retry;
            self.send(made, &uris, true, &mut outcome).await;
            return Ok(outcome);
        }
        let records = match self.inner.txt.lookup_txt(&tlsrpt_record_name(domain)).await {
            TxtLookup::Records(records) => records,
            TxtLookup::NotFound => {
                outcome.errors.push("no TLS-RPT TXT record".into());
                return Ok(outcome);
            }
            TxtLookup::Failed(e) => {
                outcome.status = DomainStatus::LookupFailed;
                outcome
                    .errors
                    .push(format!("looking up the TLS-RPT TXT record: {e}"));
                return Ok(outcome);
            }
        };
        let record = match select_tlsrpt_record(&records) {
            Ok(record) => record,
            Err(e) => {
                outcome.errors.push(e.to_string());
                return Ok(outcome);
            }
        };
        let made = match self.make(day, domain, partial).await? {
            Ok(made) => made,
            Err(why) => {
                outcome.status = DomainStatus::NotMade;
                outcome.errors.push(why);
                return Ok(outcome);
            }
        };
        // A day not over is not marked: its partial report is extra, the whole day's follows.
        if !partial && !self.inner.store.tls_report_sent(day, domain).await? {
            outcome.status = DomainStatus::AlreadySent;
            return Ok(outcome);
        }
        self.send(made, &record.rua, !partial, &mut outcome).await;
        Ok(outcome)
    }

    /// Offers `made` to each of `uris`, into `outcome`; with `keep`, remembers it for the URIs that failed
    /// for a reason that may pass, to offer it to them again at a later run.
    async fn send(&self, made: Made, uris: &[ReportUri], keep: bool, outcome: &mut DomainOutcome) {
        let mut again = Vec::new();
        for uri in uris {
            let text = uri_text(uri);
            match self.deliver(&made, uri).await {
                Ok(()) => outcome.sent_to.push(text),
                Err(Failure { text: e, retry }) => {
                    outcome.errors.push(format!("{text}: {e}"));
                    if keep && retry {
                        outcome.retry_later.push(text);
                        again.push(uri.clone());
                    }
                }
            }
        }
        outcome.status = if outcome.sent_to.is_empty() {
            DomainStatus::Undelivered
        } else {
            DomainStatus::Sent
        };
        self.inner.pending.put(made, again);
    }

    /// The domain's report of `day`, gzipped; the inner error says why none could be made. A `partial`
    /// report is cut now: its range ends now, its id and file name say so.
    async fn make(
        &self,
        day: &str,
        domain: &str,
        partial: bool,
    ) -> Result<Result<Made, String>, ReporterError> {
        let counters = self.inner.store.tls_report_read(day, domain).await?;
        if counters.is_empty() {
            return Ok(Err("no counters for the day".into()));
        }
        let submitter = &self.inner.submitter;
        // The counters were read now: a partial report covers the day until now (at most its end, for a
        // run that went past midnight).
        let until = day_start_ms(day).map(|start| {
            let end = (start + schedule::DAY_MS) / 1000 - 1;
            (now_ms() / 1000).min(end)
        });
        let made = match until.filter(|_| partial) {
            None => {
                let id = report_id(day, domain, &submitter.domain);
                build_report(submitter, day, domain, &id, &counters).and_then(|report| {
                    let filename = report_filename(&submitter.domain, domain, day, None)?;
                    Ok((id, filename, report))
                })
            }
            Some(until) => {
                let id = partial_report_id(until, domain, &submitter.domain);
                build_partial_report(submitter, day, until, domain, &id, &counters).and_then(|report| {
                    let filename = partial_report_filename(&submitter.domain, domain, day, until, None)?;
                    Ok((id, filename, report))
                })
            }
        }
        .and_then(|(id, filename, report)| {
            let gz = gzip(&report.to_json()?)?;
            Ok(Made {
                day: day.to_owned(),
                domain: domain.to_owned(),
                id,
                filename,
                gz: Bytes::from(gz),
            })
        });
        Ok(made.map_err(|e| e.to_string()))
    }

    /// Runs the reports every day, `send_at` after midnight UTC, for the day before, until `shutdown`;
    /// a process started after today's send time runs at once for yesterday. A run that fails (the store
    /// unreachable) is tried again [`RUN_RETRY`] later; one that left its day unfinished
    /// ([`schedule::unfinished`]) too, at most [`RUN_RETRIES`] times; both for the same day, until the
    /// next day's run is due. A run under way when `shutdown` comes stops between domains.
    pub fn spawn_daily(mut self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        self.stop = shutdown.clone();
        tokio::spawn(async move {
            let send_at = self.inner.options.send_at;
            // The regular run whose day is being reported (retries keep it), and when to run next.
            let mut slot = schedule::first_run_ms(now_ms(), send_at);
            let mut run_at = slot;
            let mut retries = 0;
            info!(
                send_at = %HumanDuration(send_at), first_run_ms = run_at,
                first_day = %schedule::report_day(run_at),
                "TLS reports: sending each day's reports the next day"
            );
            loop {
                if !sleep_until(run_at, &shutdown).await {
                    // What no later run of this process will offer again: say so, it is lost.
                    for (day, domain, uris) in self.inner.pending.prune(u64::MAX) {
                        warn!(
                            day = %day, domain = %domain, uris = %uris.join(" "),
                            "stopping with a TLS report these URIs never took: not sent to them"
                        );
                    }
                    return;
                }
                let day = schedule::report_day(slot);
                let retry = match self.run_once(&day).await {
                    Ok(summary) => {
                        let unfinished = schedule::unfinished(&summary);
                        info!(
                            day = %day, domains = summary.domains.len(), sent = summary.sent(),
                            held_by = summary.held_by.as_deref().unwrap_or(""), unfinished,
                            "TLS report run done"
                        );
                        (unfinished && retries < RUN_RETRIES).then_some(RUN_RETRY)
                    }
                    Err(e) => {
                        warn!(day = %day, error = %e, "TLS report run failed");
                        Some(RUN_RETRY)
                    }
                };
                let (at, same_day) = schedule::after_run(slot, now_ms(), retry, send_at);
                run_at = at;
                if same_day {
                    retries += 1;
                } else {
                    slot = at;
                    retries = 0;
                }
            }
        })
    }
}

/// A URI as the summary shows it: `mailto:<address>` or the URL.
fn uri_text(uri: &ReportUri) -> String {
    match uri {
        ReportUri::Mailto(address) => format!("mailto:{address}"),
        ReportUri::Https(url) => url.clone(),
    }
}

fn log_outcome(day: &str, o: &DomainOutcome) {
    let (sent_to, errors) = (o.sent_to.join(" "), o.errors.join("; "));
    let retry_later = o.retry_later.join(" ");
    match o.status {
        DomainStatus::Sent if o.errors.is_empty() => {
            info!(day, domain = %o.domain, sent_to = %sent_to, "TLS report sent")
        }
        DomainStatus::Sent | DomainStatus::Undelivered | DomainStatus::NotMade => warn!(
            day, domain = %o.domain, status = o.status.as_str(), sent_to = %sent_to, errors = %errors,
            retry_later = %retry_later, "TLS report not sent everywhere"
        ),
        DomainStatus::LookupFailed => {
            warn!(day, domain = %o.domain, error = %errors, "TLS report skipped: the TXT lookup failed")
        }
        DomainStatus::NoRecord => {
            info!(day, domain = %o.domain, reason = %errors, "TLS report skipped: the domain wants none")
        }
        DomainStatus::AlreadySent => debug!(day, domain = %o.domain, "TLS report already sent"),
    }
}

/// Sleeps until the wall clock reads `at_ms` (Unix ms); `false` when `shutdown` came first. Sleeps at most
/// an hour at a time, so that a clock stepped meanwhile (or a suspended machine) is noticed.
async fn sleep_until(at_ms: u64, shutdown: &Shutdown) -> bool {
    const MAX_SLEEP: u64 = 3_600_000;
    loop {
        let now = now_ms();
        if now >= at_ms {
            return !shutdown.is_cancelled();
        }
        let nap = Duration::from_millis((at_ms - now).min(MAX_SLEEP));
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(nap) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_print_with_their_scheme() {
        assert_eq!(uri_text(&ReportUri::Mailto("r@c.test".into())), "mailto:r@c.test");
        assert_eq!(
            uri_text(&ReportUri::Https("https://c.test/r".into())),
            "https://c.test/r"
        );
    }

    #[test]
    fn statuses_have_stable_names() {
        let all = [
            (DomainStatus::Sent, "sent"),
            (DomainStatus::Undelivered, "undelivered"),
            (DomainStatus::AlreadySent, "already-sent"),
            (DomainStatus::NoRecord, "no-record"),
            (DomainStatus::LookupFailed, "lookup-failed"),
            (DomainStatus::NotMade, "not-made"),
        ];
        for (status, name) in all {
            assert_eq!(status.as_str(), name);
        }
    }

    #[tokio::test]
    async fn sleeping_until_a_past_time_returns_at_once_and_a_shutdown_ends_a_sleep() {
        let stop = Shutdown::new();
        assert!(sleep_until(0, &stop).await);
        let far = now_ms() + 10 * 3_600_000;
        let sleeper = tokio::spawn({
            let stop = stop.clone();
            async move { sleep_until(far, &stop).await }
        });
        stop.cancel();
        assert!(!sleeper.await.unwrap());
    }
}
