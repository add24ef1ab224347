//! One domain's jobs of a claim, delivered one after another over one connection at a time.
//!
//! First the **policy step** looks the domain's MTA-STS policy up (`worker/mta_sts.rs`): it decides which
//! hosts may be used, what their connections ask of TLS, and whether an idle connection may be reused.
//! TLS-RPT report mail skips it (RFC 8460 §3), and so does a domain an operator rerouted
//! (`worker/reroute.rs`): its one host is the route's, its connections pooled apart from the MX hosts'.
//! For each job: **open or reuse** a connection (the current one while it is usable and under
//! `messages_per_connection`; otherwise a new one, to the **next host** when the current one broke, the
//! domain routed on first need), **send** the message, and **record** the outcome (in the background while
//! the connection carries the next message; the last job's after every other, so that its completion
//! still frees the claim's slot). When another job follows on the connection, a message's **end of data is
//! held** and goes out in one write with the next job's commands (RFC 2920 §3.1): its reply comes first
//! among theirs, and its outcome is recorded then; a held message whose reply never comes (a 421, a
//! dropped connection) is deferred, not sent on to the next host, since its data may have reached the
//! server, and the job whose commands went with it goes to the next host. A host that fails mid-session
//! (421, dropped connection) before any recipient had a final answer leaves the message to the next host,
//! once per host. A reused connection found stale (its RSET fails, or the server closed it
//! after the last message) is replaced, once. After the last job, **keep or close**: the connection goes
//! idle keeping the domain's slot as a hold, or is closed.
//! A batch about to be deferred for the policy's sake while a message reaches its `max_age` has the policy
//! **re-checked** first, and is tried once more when it changed.
//!
//! With `delivery.sandbox_dir` set there is no routing and no connection: each job is **written** to a file
//! (`crate::sandbox`) and **recorded** with the replies that gives, as a transaction's would be.

use std::sync::Arc;

use tern_core::{Recipient, Shutdown};
use tern_queue::{ClaimedJob, DeliveryAttempt, Outcome, Route, SlotHold};
use tern_smtp::Reply;
use tern_telemetry::metrics::ConnectionKind;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use super::Inner;
use super::mta_sts::{NotApplied, StsApplied};
use super::pool::Connection;
use crate::route::{Host, RouteFailure};
use crate::sandbox::Sandbox;
use crate::smtp::{HeldMessage, NotStarted, RecipientReply, Sent, reply_line};

/// The pool key of every connection when everything goes to the relay.
const RELAY_POOL_KEY: &str = "#relay";

/// The delivery of one domain's share of a claim.
pub(super) struct DomainDelivery<'a> {
    inner: &'a Arc<Inner>,
    domain: &'a str,
    shutdown: &'a Shutdown,
    /// Where this destination's idle connections are pooled: the domain, the relay's key, or a reroute's
    /// key (its domain and target, so that connections to the MX hosts and to the route's host are never
    /// taken for one another when the route is set or removed).
    pool_key: String,
    /// The operator's reroute in force for the domain (`ternctl domain route`), read when the delivery
    /// began: its host replaces the MX hosts (and the relay).
    reroute: Option<Route>,
    /// The connection in use.
    connection: Option<Connection>,
    /// The domain slot kept for the connection after the claim's last job, to go idle with it.
    hold: Option<SlotHold>,
    /// The domain's hosts, routed on first need (a connection reused from the idle pool needs none).
    hosts: Option<Vec<Host>>,
    /// The host to connect to next (into `hosts`, wrapping).
    host_index: usize,
    /// The domain's MTA-STS policy, from the policy step (or why none applies).
    sts: StsApplied,
    /// The policy step runs (off for TLS-RPT report mail, which MTA-STS must not hold up).
    sts_step: bool,
    /// The connection may go idle after the last job (not when more of the claim's jobs follow).
    may_keep: bool,
    /// The last reply the batch was to take was the MTA-STS policy's (no matching MX, no verified TLS).
    policy_failed: bool,
    /// Outcomes being recorded while the connection carries the next message: the queue's round trip is
    /// off the SMTP session's path. Drained before the batch's last job, or any job not sent, is recorded,
    /// so that the claim's last completion (which frees its slot) is still the last.
    finishing: JoinSet<()>,
    /// The job sent last on the connection, whose end of data went out (or waits to go out) with the next
    /// job's commands: its outcome is recorded once the reply to it is read, with the next job's replies
    /// or, when nothing follows on the connection, by [`DomainDelivery::settle_held`].
    held: Option<(HeldMessage, AwaitingReply)>,
    /// The attempt as the events name it, for the connection of this id under the current policy: the same
    /// for every job the connection carries, and a few formatted strings to make.
    attempt_memo: Option<(u64, DeliveryAttempt, bool)>,
}

/// What recording a job's outcome needs besides its replies, kept while the replies are still to come.
struct AwaitingReply {
    /// Shared with the delivery loop rather than cloned: a job's clone is a dozen allocations.
    job: Arc<ClaimedJob>,
    attempt: Option<DeliveryAttempt>,
    dsn_passed_on: bool,
    /// The job's delivery span, which its record belongs to.
    span: tracing::Span,
}

impl<'a> DomainDelivery<'a> {
    /// A delivery to `domain` for `inner`, stopping at `shutdown`.
    pub(super) fn new(inner: &'a Arc<Inner>, domain: &'a str, shutdown: &'a Shutdown) -> DomainDelivery<'a> {
        let reroute = inner.reroutes.get(domain);
        let pool_key = match &reroute {
            Some(route) => format!("#route:{domain}:{}", route.target()),
            None if inner.cfg.relay_host.is_some() => RELAY_POOL_KEY.to_string(),
            None => domain.to_string(),
        };
        DomainDelivery {
            inner,
            domain,
            shutdown,
            pool_key,
            reroute,
            connection: None,
            hold: None,
            hosts: None,
            host_index: 0,
            // Until `deliver` runs the policy step.
            sts: StsApplied::not_applied(NotApplied::Disabled),
            sts_step: true,
            may_keep: true,
            policy_failed: false,
            finishing: JoinSet::new(),
            held: None,
            attempt_memo: None,
        }
    }

    /// Skips the MTA-STS policy step: the jobs go as without MTA-STS (no enforcement, no TLS results),
    /// for TLS-RPT report mail (RFC 8460 §3).
    pub(super) fn without_mta_sts(mut self) -> Self {
        self.sts_step = false;
        self
    }

    /// Closes the connection after the last job instead of keeping it idle: more of the claim's jobs
    /// follow in another delivery.
    pub(super) fn closing_at_end(mut self) -> Self {
        self.may_keep = false;
        self
    }

    /// Reads the reply to the held job's end of data, when one is held, and records its outcome (in the
    /// background, as for every job but a batch's last). Called before anything but the next job's
    /// commands would use the connection, and before the connection is given up.
    async fn settle_held(&mut self) {
        let Some((message, awaiting)) = self.held.take() else {
            return;
        };
        let replies = match self.connection.as_mut() {
            Some(connection) => connection.client.settle(message).await,
            None => message.lost(),
        };
        self.record_in_background(awaiting, replies.replies);
    }

    /// Records a job's outcome while the connection goes on with the next one.
    fn record_in_background(&mut self, awaiting: AwaitingReply, replies: Vec<(u32, RecipientReply)>) {
        let inner = Arc::clone(self.inner);
        let AwaitingReply {
            job,
            attempt,
            dsn_passed_on,
            span,
        } = awaiting;
        // Boxed: the recording is a future of about 2 KB, which the runtime would otherwise copy as it
        // creates, runs and ends the task, once per message.
        self.finishing.spawn(Box::pin(
            async move { inner.finish(&job, &replies, attempt, dsn_passed_on).await }.instrument(span),
        ));
    }

    /// Waits for the outcomes still being recorded.
    async fn drain_finishing(&mut self) {
        while self.finishing.join_next().await.is_some() {}
    }

    /// Delivers `jobs` in order, starting with the idle connection whose hold the claim took over
    /// (`took_hold`), or any idle one of the destination. On shutdown the jobs not started are released.
    /// With a sandbox, the jobs are written to files instead ([`Self::deliver_to_sandbox`]).
    pub(super) async fn deliver(mut self, jobs: Vec<ClaimedJob>, took_hold: Option<&str>) {
        if let Some(sandbox) = &self.inner.sandbox {
            self.deliver_to_sandbox(sandbox, jobs).await;
            return;
        }
        self.sts = if let Some(route) = &self.reroute {
            debug!(
                domain = self.domain, route = %route.target(),
                "domain rerouted by an operator: to the route's host, without MTA-STS"
            );
            self.inner.sts_not_applied(NotApplied::Rerouted)
        } else if self.sts_step {
            self.inner.sts_lookup(self.domain).await
        } else {
            debug!(
                domain = self.domain,
                "TLS-RPT report mail: no MTA-STS policy step"
            );
            self.inner.sts_not_applied(NotApplied::ReportMail)
        };
        self.connection = self.inner.take_idle(&self.pool_key, took_hold).await;
        if let Some(c) = self.connection.take_if(|c| !self.sts.allows_reuse(&c.client)) {
            debug!(
                domain = self.domain, mx = %c.client.server(),
                "idle connection not reused: the enforced MTA-STS policy wants verified TLS to a policy MX"
            );
            c.quit().await;
        }
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            if self.shutdown.is_cancelled() {
                self.settle_held().await;
                self.drain_finishing().await;
                self.release(job, jobs).await;
                break;
            }
            let last = jobs.as_slice().is_empty();
            let span = tern_telemetry::trace::delivery_span(&job.job);
            let job = Arc::new(job);
            let mut result = self.deliver_job(&job, last).instrument(span.clone()).await;
            if result.is_err() && self.recheck_policy(&job, jobs.as_slice()).await {
                result = self.deliver_job(&job, last).instrument(span).await;
            }
            if let Err(reply) = result {
                // No route, or no host took a connection: the rest of the batch would fare no better.
                self.settle_held().await;
                self.drain_finishing().await;
                let attempt = self.sts.batch_attempt();
                let job = Arc::unwrap_or_clone(job);
                self.inner.fail_all(job, jobs, &reply, Some(attempt)).await;
                return;
            }
        }
        self.drain_finishing().await;
        self.keep_or_close().await;
    }

    /// After the batch failed for the MTA-STS policy's sake: when that failure would be final for one of
    /// its jobs (`job`, `rest`), the policy is re-checked (RFC 8461 §5.1), and when it changed, the new
    /// one applies and the caller tries again (`true`).
    async fn recheck_policy(&mut self, job: &ClaimedJob, rest: &[ClaimedJob]) -> bool {
        if !std::mem::take(&mut self.policy_failed) {
            return false;
        }
        let jobs: Vec<&ClaimedJob> = std::iter::once(job).chain(rest).collect();
        let Some(sts) = self.inner.sts_recheck(&self.sts, &jobs).await else {
            return false;
        };
        self.sts = sts;
        self.attempt_memo = None;
        self.hosts = None;
        self.host_index = 0;
        true
    }

    /// Gives `first` and the jobs after it back to the queue, unstarted (shutdown).
    async fn release(&self, first: ClaimedJob, rest: impl Iterator<Item = ClaimedJob>) {
        for job in std::iter::once(first).chain(rest) {
            self.inner.release(&job).await;
        }
    }

    /// Sandbox delivery: each job's message is written to a file instead of being routed and sent, and its
    /// replies (success, or a 451 when the write failed) are recorded as a transaction's would be, with no
    /// server named. On shutdown the jobs not started are released.
    async fn deliver_to_sandbox(&self, sandbox: &Sandbox, jobs: Vec<ClaimedJob>) {
        // No server named, but the events say that MTA-STS did not apply.
        let attempt = StsApplied::not_applied(NotApplied::Sandbox).batch_attempt();
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            if self.shutdown.is_cancelled() {
                self.release(job, jobs).await;
                return;
            }
            let span = tern_telemetry::trace::delivery_span(&job.job);
            async {
                if job.job.pending().next().is_none() {
                    self.inner.complete(&job, Outcome::delivered()).await;
                    return;
                }
                let replies = sandbox.deliver(&job).await;
                self.inner
                    .finish(&job, &replies, Some(attempt.clone()), false)
                    .await;
            }
            .instrument(span)
            .await;
        }
    }

    /// One job, to its recorded outcome. `Err` is the reply the whole batch takes: the domain has no
    /// route, or no host took a connection.
    async fn deliver_job(&mut self, job: &Arc<ClaimedJob>, last: bool) -> Result<(), Reply> {
        let pending: Vec<(u32, &Recipient)> = job.job.pending().map(|(i, r)| (i, &r.recipient)).collect();
        if pending.is_empty() {
            if last {
                // Every other completion comes first: the batch's last one frees its slot.
                self.settle_held().await;
                self.drain_finishing().await;
            }
            self.inner.complete(job, Outcome::delivered()).await;
            return Ok(());
        }
        let mut tries = 0;
        let mut other_hosts_tried = 0usize;
        loop {
            tries += 1;
            self.open_or_reuse().await?;
            match self.send(job, &pending, last).await {
                // Its outcome is recorded once the reply to its end of data is read.
                Ok(None) => return Ok(()),
                Ok(Some(replies)) => {
                    if self.host_failed(&replies) && self.another_host_left(other_hosts_tried).await {
                        other_hosts_tried += 1;
                        let mx = self.connection.as_ref().map_or("-", |c| c.client.server());
                        let reply = replies
                            .first()
                            .map(|(_, r)| reply_line(r.reply()))
                            .unwrap_or_default();
                        info!(
                            message_id = %job.job.id.message, domain = self.domain, mx, reply,
                            "host failed mid-session, trying the next host"
                        );
                        continue;
                    }
                    self.record(job, &replies, last).await;
                    return Ok(());
                }
                Err(NotStarted) => {
                    // A reused connection went stale (the peer closed it while it was idle): open a new one
                    // and try again (once). It is dropped here, not left as broken: that would count as a
                    // host failure and send the next connection to the next MX.
                    self.connection = None;
                    if tries >= 2 {
                        if last {
                            self.drain_finishing().await;
                        }
                        let (replies, attempt) = lost_before_start(&self.sts, &pending);
                        self.inner.finish(job, &replies, attempt, false).await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Makes sure a connection is open: the current one while it can take another message, otherwise a new
    /// one (the current one is closed, or, when it broke, left for the next host).
    async fn open_or_reuse(&mut self) -> Result<(), Reply> {
        let limit = self.inner.cfg.messages_per_connection;
        if self.connection.as_ref().is_some_and(|c| c.reusable(limit)) {
            tern_telemetry::metrics().connection(ConnectionKind::Reused);
            return Ok(());
        }
        self.settle_held().await;
        if let Some(old) = self.connection.take() {
            if old.client.is_usable() {
                // Boxed, as connecting below: a job's future would otherwise carry the QUIT's state.
                Box::pin(old.quit()).await;
            } else {
                self.next_host();
            }
        }
        self.route().await?;
        let hosts = self.hosts.as_deref().unwrap_or_default();
        // Boxed: connecting (DNS, TCP, TLS, EHLO) is the largest state of a job's future, and only a new
        // connection needs it; unboxed, every job's future would carry and copy it.
        match Box::pin(
            self.inner
                .connect_any(self.domain, hosts, self.host_index, &self.sts),
        )
        .await
        {
            Ok((connection, index)) => {
                self.host_index = index;
                self.connection = Some(connection);
                Ok(())
            }
            Err(e) => {
                let policy_reply = self.sts.policy_reply(&e);
                self.policy_failed = policy_reply.is_some();
                let reply = policy_reply.unwrap_or_else(|| e.reply());
                warn!(
                    domain = self.domain, reply = %reply_line(&reply),
                    "no host took a connection: the whole batch is deferred"
                );
                Err(reply)
            }
        }
    }

    /// A 421 or a dropped connection: the next connection goes to the next host.
    fn next_host(&mut self) {
        self.host_index += 1;
    }

    /// Looks the domain's hosts up, unless that was done, keeping those the MTA-STS policy allows. `Err`
    /// is the reply the whole batch takes.
    async fn route(&mut self) -> Result<(), Reply> {
        if self.hosts.is_some() {
            return Ok(());
        }
        let routed = match self.lookup_hosts().await {
            Ok(hosts) => hosts,
            Err(failure) => {
                let reply = failure.reply();
                warn!(
                    domain = self.domain, reply = %reply_line(&reply),
                    "no route: the whole batch takes this reply"
                );
                return Err(reply);
            }
        };
        match self.sts.filter_hosts(routed) {
            Ok(hosts) => {
                self.hosts = Some(hosts);
                Ok(())
            }
            Err(reply) => {
                self.policy_failed = true;
                warn!(
                    domain = self.domain, reply = %reply_line(&reply),
                    "no MX host allowed by the MTA-STS policy: the whole batch takes this reply"
                );
                Err(reply)
            }
        }
    }

    /// The domain's hosts: the reroute's host when an operator rerouted the domain, otherwise as the router
    /// says (relay, fixed route, MX records).
    async fn lookup_hosts(&self) -> Result<Vec<Host>, RouteFailure> {
        match &self.reroute {
            Some(route) => self.inner.router.route_to(route).await,
            None => self.inner.router.route(self.domain).await,
        }
    }

    /// Sends the job's message to its pending recipients on the current connection, counting the
    /// transactions it took against the connection's reuse limit. The held job's end of data goes first,
    /// with this job's commands, and its outcome is recorded once its reply is read. Unless this job is
    /// the batch's `last` or the connection's, its own end of data is held in turn: `None`.
    async fn send(
        &mut self,
        job: &Arc<ClaimedJob>,
        pending: &[(u32, &Recipient)],
        last: bool,
    ) -> Result<Option<Vec<(u32, RecipientReply)>>, NotStarted> {
        let (previous, awaiting) = self.held.take().unzip();
        let Some(connection) = self.connection.as_mut() else {
            if let (Some(message), Some(awaiting)) = (previous, awaiting) {
                self.record_in_background(awaiting, message.lost().replies);
            }
            return Err(NotStarted);
        };
        if let Some(trace) = &connection.trace {
            trace.set_domain(self.domain);
        }
        let limit = self.inner.cfg.messages_per_connection;
        let hold_end = !last && connection.transactions + 1 < limit && !self.shutdown.is_cancelled();
        let (settled, sent) = crate::telemetry::transaction(connection.client.send_message_after(
            previous,
            &job.job.envelope,
            pending,
            &job.body,
            hold_end,
        ))
        .await;
        if let Ok(sent) = &sent {
            connection.transactions += sent.transactions();
        }
        if let (Some(replies), Some(awaiting)) = (settled, awaiting) {
            if self.host_failed(&replies.replies) {
                // The host went away after the previous message's data (a 421, a dropped connection):
                // this message, not started, goes to the next host, as a message the host failed would.
                self.next_host();
            }
            self.record_in_background(awaiting, replies.replies);
        }
        match sent? {
            Sent::Done(replies) => Ok(Some(replies.replies)),
            Sent::Held(message) => {
                let (attempt, dsn_passed_on) = self.attempt();
                let awaiting = AwaitingReply {
                    job: Arc::clone(job),
                    attempt,
                    dsn_passed_on,
                    span: tracing::Span::current(),
                };
                self.held = Some((message, awaiting));
                Ok(None)
            }
        }
    }

    /// The attempt on the current connection, as its events name it, and whether the server reports
    /// successes itself (it offered DSN, so NOTIFY went on with each RCPT, RFC 3461). Made once per
    /// connection and policy; none without a connection.
    fn attempt(&mut self) -> (Option<DeliveryAttempt>, bool) {
        let Some(connection) = self.connection.as_ref() else {
            return (None, false);
        };
        if let Some((id, attempt, dsn_passed_on)) = &self.attempt_memo
            && *id == connection.id
        {
            return (Some(attempt.clone()), *dsn_passed_on);
        }
        let client = &connection.client;
        let attempt = DeliveryAttempt {
            remote_mx: Some(client.server().to_string()),
            remote_ip: Some(client.addr().ip().to_string()),
            tls: Some(self.sts.event_tls(client)),
            dsn: None,
        };
        let dsn_passed_on = client.capabilities().dsn;
        self.attempt_memo = Some((connection.id, attempt.clone(), dsn_passed_on));
        (Some(attempt), dsn_passed_on)
    }

    /// The host went away (421, dropped connection) before any recipient had a final answer.
    fn host_failed(&self, replies: &[(u32, RecipientReply)]) -> bool {
        self.connection.as_ref().is_some_and(|c| !c.client.is_usable())
            && replies.iter().all(|(_, r)| r.reply().is_transient())
    }

    /// Whether a host is left for a message that has tried `tried` other hosts. A connection from the idle
    /// pool came without routing: the hosts are learnt now.
    async fn another_host_left(&mut self, tried: usize) -> bool {
        if self.hosts.is_none() {
            let routed = self.lookup_hosts().await.ok();
            self.hosts = routed.and_then(|hosts| self.sts.filter_hosts(hosts).ok());
        }
        tried + 1 < self.hosts.as_ref().map_or(0, Vec::len)
    }

    /// Whether the current connection can be kept for more messages.
    fn keepable(&self) -> bool {
        let limit = self.inner.cfg.messages_per_connection;
        self.may_keep
            && self.connection.as_ref().is_some_and(|c| c.reusable(limit))
            && !self.shutdown.is_cancelled()
    }

    /// Records the job's replies. Completing the claim's last job frees the domain's connection slot for
    /// another worker: a connection that stays open keeps the slot as a hold first, and one that will not
    /// be kept (or cannot keep the slot) is closed first, so that connections never outnumber the domain's
    /// slots (`connections_per_domain`).
    async fn record(&mut self, job: &Arc<ClaimedJob>, replies: &[(u32, RecipientReply)], last: bool) {
        let (attempt, dsn_passed_on) = self.attempt();
        if !last {
            let awaiting = AwaitingReply {
                job: Arc::clone(job),
                attempt,
                dsn_passed_on,
                span: tracing::Span::current(),
            };
            self.record_in_background(awaiting, replies.to_vec());
            return;
        }
        self.settle_held().await;
        self.drain_finishing().await;
        if self.keepable() {
            self.hold = self.inner.hold_for_idle(job).await;
        }
        if self.hold.is_none()
            && let Some(connection) = self.connection.take()
        {
            Box::pin(connection.quit()).await;
        }
        self.inner.finish(job, replies, attempt, dsn_passed_on).await;
    }

    /// After the batch: the connection goes idle with its hold, or it is closed and the hold given back.
    async fn keep_or_close(mut self) {
        self.settle_held().await;
        self.drain_finishing().await;
        if self.hold.is_some()
            && self.keepable()
            && let Some(connection) = self.connection.take()
        {
            self.inner.put_idle(&self.pool_key, connection, self.hold.take());
            return;
        }
        if let Some(connection) = self.connection.take() {
            connection.quit().await;
        }
        if let Some(hold) = self.hold.take() {
            self.inner.drop_hold(&hold).await;
        }
    }
}

/// The replies and the attempt of a message whose connection went stale twice before it started: tern's
/// own 451 for each pending recipient, and the batch's attempt, which names no server (none replied) but
/// says whether MTA-STS applied, as every delivery event does.
fn lost_before_start(
    sts: &StsApplied,
    pending: &[(u32, &Recipient)],
) -> (Vec<(u32, RecipientReply)>, Option<DeliveryAttempt>) {
    let reply = Reply::new(451, "4.4.2", "connection lost before the transaction");
    let replies = pending
        .iter()
        .map(|(i, _)| (*i, RecipientReply::Local(reply.clone())))
        .collect();
    (replies, Some(sts.batch_attempt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // No network test reaches this path: the second try always opens a new connection, which sends no
    // RSET before its first transaction, so it cannot be found stale.
    #[test]
    fn a_message_whose_connection_went_stale_twice_says_whether_mta_sts_applied() {
        let rcpts: Vec<Recipient> = ["r1@b.test", "r2@b.test"]
            .iter()
            .map(|a| Recipient::new(a.parse().unwrap()))
            .collect();
        let pending: Vec<(u32, &Recipient)> = vec![(0, &rcpts[0]), (3, &rcpts[1])];
        let sts = StsApplied::not_applied(NotApplied::Relayed);
        let (replies, attempt) = lost_before_start(&sts, &pending);
        let attempt = attempt.expect("an attempt that says whether MTA-STS applied");
        assert_eq!(
            attempt.tls.as_deref(),
            Some("mta-sts=not-applied (relayed)"),
            "{attempt:?}"
        );
        assert_eq!((attempt.remote_mx, attempt.remote_ip), (None, None));
        let keys: Vec<u32> = replies.iter().map(|(i, _)| *i).collect();
        assert_eq!(keys, [0, 3]);
        for (_, r) in &replies {
            assert!(!r.is_remote(), "{r:?}");
            assert_eq!(
                reply_line(r.reply()),
                "451 4.4.2 connection lost before the transaction"
            );
        }
    }
}
