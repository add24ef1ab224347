//! MTA-STS (RFC 8461) in delivery: a domain's policy step, what the policy asks of its hosts and
//! connections, and the TLS results a delivery hands to TLS reporting.
//!
//! Before routing a domain's jobs the worker looks the domain's policy up in the cluster-shared cache
//! ([`PolicyCache::lookup`], the domain in A-label form). Only mail that goes to the domain's own MX hosts
//! has a policy: not in sandbox mode, not through `relay_host`, a `[[delivery.routes]]` entry or to an
//! address literal (the operator chose those hosts), and not with `delivery.mta_sts.enabled` off. Then,
//! by the policy's mode ([`StsApplied`]):
//!
//! - **enforce**: only the MX hosts that match the policy's `mx` patterns are used; when none does, the
//!   batch is deferred with 4.7.5. Every connection requires TLS with a certificate valid for the MX name
//!   (SNI the MX name, TLS 1.2 or later, the web PKI roots plus `delivery.extra_ca_file`): STARTTLS not
//!   offered, refused or failing leaves the host unused, never falls back to plaintext (the opportunistic
//!   fallback memory is not consulted), and when no host is left the batch is deferred with 4.7.5 and a
//!   reply that names MTA-STS and why. An idle connection is reused only when it meets the same (verified
//!   TLS to a matching MX). Before a policy failure becomes final (a message at `max_age` expires), the
//!   TXT id is checked again ([`PolicyCache::recheck`]); a changed policy gets one more try at once.
//! - **testing**: delivery is opportunistic, as without a policy; a session to an MX that does not match,
//!   or without verified TLS, is a policy failure: logged, counted, and marked in the delivery event.
//! - **none** (or no policy): nothing changes.
//!
//! Every session to a looked-up domain's MX, and every failed policy fetch, is one TLS result
//! ([`TlsResult`]) handed to [`record_tls_result`]: the seam where TLS-RPT (RFC 8460) counting goes. Only
//! sessions under a policy (enforce or testing) and failed fetches are counted for reports; sessions
//! without one only feed the metric. A failure keeps what the attempt learnt before it failed: this
//! side's address (`sending-mta-ip`) and the name the MX gave in its greeting or EHLO reply
//! (`receiving-mx-helo`), from `connect.rs`'s `SessionFacts`.
//!
//! Every delivery event says whether MTA-STS applied, in its `tls` field:
//!
//! - `<TLS description or plaintext>; mta-sts=<mode>` for a session to a looked-up domain's MX (`none`:
//!   looked up, and no policy found), with `; mta-sts-failure=<result type>` after a testing failure;
//! - `<TLS description or plaintext>; mta-sts=not-applied (<reason>)` when the delivery had no policy step
//!   ([`NotApplied`]: MTA-STS disabled, the relay, a fixed route, an operator's reroute, an address
//!   literal, TLS-RPT report mail, the sandbox);
//! - `mta-sts=<mode>` or `mta-sts=not-applied (<reason>)` alone (with a testing failure's note, when the
//!   session had one) where the event names no server: a batch deferred or expired before any session, a
//!   message whose reused connection went stale twice before it started, sandbox deliveries (no session
//!   at all), and a session only tern replied to (the connection dropped before the server answered,
//!   content the server cannot take): its event must not name the MX, nor claim its TLS session
//!   (`crate::outcome`).
//!
//! TLS-RPT report mail (jobs tagged `tlsrpt`) has no policy step at all (RFC 8460 §3: it must get
//! through despite TLS failures, and is not reported on): see `worker.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::proto::rr::Name;
use tern_core::time::now_ms;
use tern_mta_sts::{ActivePolicy, Mode, PolicyCache, TlsRptResultType};
use tern_queue::{ClaimedJob, DeliveryAttempt, TlsReportStore, TlsSessionKey};
use tern_smtp::Reply;
use tern_telemetry::metrics::MtaStsMode;
use tracing::{debug, info, warn};

use super::Inner;
use super::connect::SessionFacts;
use super::tls_policy::TlsPolicy;
use crate::route::Host;
use crate::smtp::{CertificateProblem, ConnectError, SmtpClient};

/// How close to its `max_age` a message counts as expiring at this attempt (the outcome is decided a
/// moment after the policy failure): the TXT id is checked again before such a failure.
const EXPIRY_MARGIN_MS: u64 = 60_000;

/// Why MTA-STS does not apply to a delivery (no policy step): the delivery events say
/// `mta-sts=not-applied (<reason>)`, so that they are told apart from a domain looked up without a policy
/// (`mta-sts=none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NotApplied {
    /// MTA-STS is off (`delivery.mta_sts.enabled = false`).
    Disabled,
    /// All mail goes through `delivery.relay_host`: the operator chose the host.
    Relayed,
    /// A `[[delivery.routes]]` entry sends the domain's mail to a fixed host.
    Routed,
    /// An operator rerouted the domain (`ternctl domain route`): the route's host replaces its MX hosts.
    Rerouted,
    /// The domain is an address literal: there is no MX host, nor policy domain.
    AddressLiteral,
    /// The domain is no domain name a policy could be looked up for.
    NotADomain,
    /// TLS-RPT report mail (RFC 8460 §3): it must get through despite TLS failures.
    ReportMail,
    /// `delivery.sandbox_dir`: the mail is written to files, with no connection at all.
    Sandbox,
}

impl NotApplied {
    /// The reason as the delivery events give it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            NotApplied::Disabled => "disabled",
            NotApplied::Relayed => "relayed",
            NotApplied::Routed => "routed",
            NotApplied::Rerouted => "rerouted",
            NotApplied::AddressLiteral => "address literal",
            NotApplied::NotADomain => "not a domain name",
            NotApplied::ReportMail => "report mail",
            NotApplied::Sandbox => "sandbox",
        }
    }
}

/// The MTA-STS policy a domain's delivery applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StsApplied {
    /// The policy domain (A-label, lower case), when the policy step looked it up; `Err`: why MTA-STS
    /// does not apply to this delivery.
    domain: Result<String, NotApplied>,
    /// The policy in force (`enforce` or `testing`); `None`: no policy.
    policy: Option<ActivePolicy>,
    /// Where the session results are counted for TLS-RPT (`delivery.tls_rpt.enabled`).
    reports: TlsReports,
}

/// The queue's TLS-RPT counters, when reporting is on. Compares equal always: it is where results go, not
/// part of what a delivery applies.
#[derive(Clone, Default)]
pub(crate) struct TlsReports(pub(crate) Option<Arc<dyn TlsReportStore>>);

impl PartialEq for TlsReports {
    fn eq(&self, _: &TlsReports) -> bool {
        true
    }
}

impl Eq for TlsReports {}

impl std::fmt::Debug for TlsReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TlsReports(on)"
        } else {
            "TlsReports(off)"
        })
    }
}

impl TlsReports {
    /// Counts one session result into today's (UTC) report of its policy domain, in the background: a
    /// count lost to a queue outage costs a line of a report, never mail. Only results under a policy
    /// (enforce or testing) and failed fetches count: a domain without a policy has nothing to report on.
    fn add(&self, r: &TlsResult<'_>) {
        let Some(store) = self.0.clone() else {
            return;
        };
        if !r.mx.is_empty() && mode_of(r.policy) == MtaStsMode::None {
            return;
        }
        let (policy_type, policy_string) = match r.policy {
            Some(p) => ("sts".to_string(), p.policy.to_lines()),
            None => ("no-policy-found".to_string(), Vec::new()),
        };
        let key = TlsSessionKey {
            policy_type,
            policy_string,
            mx_host: r.mx.to_string(),
            result_type: r.result.err().map(|t| t.as_str().to_string()),
            // Empty when no connection was made (no MX matched).
            sending_mta_ip: r.local_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            receiving_ip: r.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            // A failure's detail (RFC 8460 §4.3): successful sessions are counted without it.
            receiving_mx_helo: r.helo.filter(|_| r.result.is_err()).map(str::to_owned),
            failure_reason_code: r.reason.clone().filter(|_| r.result.is_err()),
        };
        let (day, domain) = (tern_queue::tls_report::utc_day(now_ms()), r.domain.to_string());
        tokio::spawn(async move {
            if let Err(e) = store.tls_report_add(&day, &domain, &key, 1).await {
                debug!(domain = %domain, error = %e, "TLS-RPT count not recorded");
            }
        });
    }
}

/// Why a session did not meet the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StsFailure {
    /// The TLS-RPT result type.
    pub(super) result_type: TlsRptResultType,
    /// A more precise reason (TLS-RPT `failure-reason-code`).
    pub(super) reason: String,
}

impl StsApplied {
    /// No MTA-STS for this delivery, for `reason`.
    pub(super) fn not_applied(reason: NotApplied) -> StsApplied {
        StsApplied {
            domain: Err(reason),
            policy: None,
            reports: TlsReports::default(),
        }
    }

    /// The policy step's result for the policy domain `domain`: `policy` (`None`: no policy).
    fn looked_up(domain: String, policy: Option<ActivePolicy>, reports: TlsReports) -> StsApplied {
        StsApplied {
            domain: Ok(domain),
            policy,
            reports,
        }
    }

    /// The mode, as the metric labels it.
    pub(super) fn mode(&self) -> MtaStsMode {
        mode_of(self.policy.as_ref())
    }

    /// Whether the policy is enforced: verified TLS to matching MX hosts, or no delivery.
    pub(super) fn enforce(&self) -> bool {
        self.mode() == MtaStsMode::Enforce
    }

    fn policy_id(&self) -> &str {
        self.policy.as_ref().map_or("", |p| p.id.as_str())
    }

    fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or("")
    }

    /// Whether the policy step looked the domain up: its sessions are TLS results (`record_session`).
    pub(super) fn looked_up_domain(&self) -> bool {
        self.domain.is_ok()
    }

    /// What the delivery events say of MTA-STS: `mta-sts=<mode>` for a looked-up domain, or
    /// `mta-sts=not-applied (<reason>)`.
    fn note(&self) -> String {
        match &self.domain {
            Ok(_) => format!("mta-sts={}", self.mode().as_str()),
            Err(reason) => format!("mta-sts=not-applied ({})", reason.as_str()),
        }
    }

    /// What a connection asks of TLS: `base` (from `delivery.tls`), but verified TLS with no plaintext
    /// fallback under an enforced policy, whatever `delivery.tls` says.
    pub(super) fn tls_policy(&self, base: TlsPolicy) -> TlsPolicy {
        if self.enforce() { TlsPolicy::REQUIRED } else { base }
    }

    /// The hosts this delivery may use: under an enforced policy those whose name matches the policy's
    /// patterns (in their order), and when none does the reply the batch is deferred with.
    pub(super) fn filter_hosts(&self, hosts: Vec<Host>) -> Result<Vec<Host>, Reply> {
        let Some(policy) = self.policy.as_ref().filter(|_| self.enforce()) else {
            return Ok(hosts);
        };
        let (kept, dropped): (Vec<Host>, Vec<Host>) =
            hosts.into_iter().partition(|h| policy.policy.matches_mx(&h.name));
        for h in &dropped {
            debug!(domain = self.domain(), mx = %h.name, policy_id = self.policy_id(),
                "MX host does not match the enforced MTA-STS policy: not used");
        }
        if !kept.is_empty() {
            return Ok(kept);
        }
        for h in &dropped {
            record_tls_result(
                &self.reports,
                &TlsResult {
                    domain: self.domain(),
                    policy: Some(policy),
                    mx: &h.name,
                    ip: None,
                    local_ip: None,
                    helo: None,
                    result: Err(TlsRptResultType::ValidationFailure),
                    reason: Some("mx-mismatch".into()),
                },
            );
        }
        let names: Vec<&str> = dropped.iter().map(|h| h.name.as_str()).collect();
        Err(Reply::new(
            451,
            "4.7.5",
            format!(
                "MTA-STS policy of {} (enforce, id {}) not met: no MX host matches its mx patterns ({}); \
                 MX: {}",
                self.domain(),
                self.policy_id(),
                policy.policy.mx().join(", "),
                names.join(", ")
            ),
        ))
    }

    /// Whether an idle connection opened earlier may carry this delivery's mail: always, except that an
    /// enforced policy wants verified TLS to a matching MX.
    pub(super) fn allows_reuse(&self, client: &SmtpClient) -> bool {
        !self.enforce() || self.check(client).is_ok()
    }

    /// Whether `client`'s session meets the policy: its MX matches, and TLS is in use with a certificate
    /// valid for the MX name. No policy: always.
    pub(super) fn check(&self, client: &SmtpClient) -> Result<(), StsFailure> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        if !policy.policy.matches_mx(client.server()) {
            return Err(StsFailure {
                result_type: TlsRptResultType::ValidationFailure,
                reason: "mx-mismatch".into(),
            });
        }
        if client.tls().is_none() {
            // A server that offers STARTTLS but is reached in plaintext: TLS failed with it (now, or
            // recently enough to be remembered).
            let (result_type, reason) = if client.capabilities().starttls {
                (TlsRptResultType::ValidationFailure, "starttls-failed")
            } else {
                (TlsRptResultType::StarttlsNotSupported, "starttls-not-offered")
            };
            return Err(StsFailure {
                result_type,
                reason: reason.into(),
            });
        }
        match client.certificate_problem() {
            None => Ok(()),
            Some(problem) => Err(StsFailure {
                result_type: result_type_of(problem),
                reason: reason_of(problem).into(),
            }),
        }
    }

    /// The reply a batch takes when no host took a connection (`e`, the last failure): under an enforced
    /// policy a TLS failure is the policy's (4.7.5, naming MTA-STS); `None` for anything else.
    pub(super) fn policy_reply(&self, e: &ConnectError) -> Option<Reply> {
        if !self.enforce() || failure_of(e).is_none() {
            return None;
        }
        Some(Reply::new(
            451,
            "4.7.5",
            format!(
                "MTA-STS policy of {} (enforce, id {}) not met: {e}",
                self.domain(),
                self.policy_id()
            ),
        ))
    }

    /// Whether `e` is a failure the enforced policy caused (kept over other failures as the batch's reply).
    pub(super) fn is_policy_error(&self, e: &ConnectError) -> bool {
        self.enforce() && failure_of(e).is_some()
    }

    /// The delivery event's `tls` field for a delivery over `client`: its TLS description (or
    /// `plaintext`), whether MTA-STS applied and its mode, and a testing failure. Always present, so that
    /// every delivery event says whether MTA-STS applied.
    pub(super) fn event_tls(&self, client: &SmtpClient) -> String {
        let tls = client.tls().unwrap_or("plaintext");
        let mut note = format!("{tls}; {}", self.note());
        // No policy (none found, or not applied): nothing to fail.
        if let Err(f) = self.check(client) {
            note.push_str(&format!("; mta-sts-failure={}", f.result_type));
        }
        note
    }

    /// The attempt a delivery without a session records (a batch deferred or expired before any session
    /// in `fail_all`, a message whose connection went stale twice before it started, a sandbox delivery):
    /// no server, and as its `tls` whether MTA-STS applied and its mode (`mta-sts=<mode>`,
    /// `mta-sts=not-applied (<reason>)`), so that every delivery event says it.
    pub(super) fn batch_attempt(&self) -> DeliveryAttempt {
        DeliveryAttempt {
            remote_mx: None,
            remote_ip: None,
            tls: Some(self.note()),
            dsn: None,
        }
    }

    /// Hands the TLS result of one session attempt (to `host` at `ip`) to [`record_tls_result`]: a session
    /// that opened, checked against the policy, or one that failed for TLS (not the network's failures,
    /// which are no TLS result). `facts`: what the attempt learnt before it opened or failed (this side's
    /// address, the MX's greeting name), for a failure's details.
    pub(super) fn record_session(
        &self,
        host: &Host,
        ip: IpAddr,
        opened: &Result<SmtpClient, ConnectError>,
        facts: Option<&SessionFacts>,
    ) {
        if !self.looked_up_domain() {
            return;
        }
        // A session that failed while opening (STARTTLS refused, a certificate that does not verify) is
        // gone: its TCP connection's address was noted before TLS was tried.
        let local_ip = opened
            .as_ref()
            .ok()
            .and_then(SmtpClient::local_addr)
            .map(|a| a.ip())
            .or_else(|| facts.and_then(SessionFacts::local_ip));
        let (result, reason) = match opened {
            Ok(client) => match self.check(client) {
                Ok(()) => (Ok(()), None),
                Err(f) => (Err(f.result_type), Some(f.reason)),
            },
            Err(e) => match failure_of(e) {
                Some(f) => (Err(f.result_type), Some(f.reason)),
                None => return,
            },
        };
        record_tls_result(
            &self.reports,
            &TlsResult {
                domain: self.domain(),
                policy: self.policy.as_ref(),
                mx: &host.name,
                ip: Some(ip),
                local_ip,
                helo: facts.and_then(SessionFacts::helo),
                result,
                reason,
            },
        );
    }
}

/// The mode of `policy`, as the metric labels it (no policy: `none`).
fn mode_of(policy: Option<&ActivePolicy>) -> MtaStsMode {
    match policy.map(ActivePolicy::mode) {
        Some(Mode::Enforce) => MtaStsMode::Enforce,
        Some(Mode::Testing) => MtaStsMode::Testing,
        Some(Mode::None) | None => MtaStsMode::None,
    }
}

/// The TLS-RPT result of a failure to open a session, when TLS caused it.
fn failure_of(e: &ConnectError) -> Option<StsFailure> {
    let (result_type, reason) = match e {
        ConnectError::Certificate(problem, _) => (result_type_of(*problem), reason_of(*problem)),
        ConnectError::NoStartTls(_) => (TlsRptResultType::StarttlsNotSupported, "starttls-not-supported"),
        ConnectError::Tls(_) => (TlsRptResultType::ValidationFailure, "tls-failed"),
        ConnectError::Unreachable(_) | ConnectError::Rejected(_) | ConnectError::Wire(_) => return None,
    };
    Some(StsFailure {
        result_type,
        reason: reason.into(),
    })
}

fn result_type_of(problem: CertificateProblem) -> TlsRptResultType {
    match problem {
        CertificateProblem::NameMismatch => TlsRptResultType::CertificateHostMismatch,
        CertificateProblem::Expired => TlsRptResultType::CertificateExpired,
        CertificateProblem::NotTrusted => TlsRptResultType::CertificateNotTrusted,
        CertificateProblem::Invalid => TlsRptResultType::ValidationFailure,
    }
}

fn reason_of(problem: CertificateProblem) -> &'static str {
    match problem {
        CertificateProblem::NameMismatch => "certificate-host-mismatch",
        CertificateProblem::Expired => "certificate-expired",
        CertificateProblem::NotTrusted => "certificate-not-trusted",
        CertificateProblem::Invalid => "certificate-invalid",
    }
}

/// One TLS result for a policy domain: what TLS-RPT (RFC 8460) counts, per UTC day, into the queue's
/// `TlsReportStore` (`TlsSessionKey`: policy type and lines, receiving MX, result type, addresses).
#[derive(Clone, Debug)]
pub(crate) struct TlsResult<'a> {
    /// The policy domain (A-label, lower case).
    pub(crate) domain: &'a str,
    /// The policy applied (`policy-type` `sts`, its lines the `policy-string`); `None`: no policy
    /// (`no-policy-found`).
    pub(crate) policy: Option<&'a ActivePolicy>,
    /// The receiving MX host name; empty for a failed policy fetch (no MX was tried).
    pub(crate) mx: &'a str,
    /// The receiving MX's address (`receiving-ip`), when one was tried.
    pub(crate) ip: Option<IpAddr>,
    /// This side's address of the session (`sending-mta-ip`), when a TCP connection was made (the session
    /// may have failed afterwards, in STARTTLS or its certificate check).
    pub(crate) local_ip: Option<IpAddr>,
    /// The name the receiving MX gave in its EHLO reply or greeting (`receiving-mx-helo`), when it greeted.
    pub(crate) helo: Option<&'a str>,
    /// A successful session, or the failure's `result-type`.
    pub(crate) result: Result<(), TlsRptResultType>,
    /// A more precise reason (`failure-reason-code`), for a failure.
    pub(crate) reason: Option<String>,
}

/// Every TLS result of a delivery to a looked-up domain comes here, once per session attempt (and once per
/// failed policy fetch): it is counted for TLS-RPT (`reports`, when reporting is on and a policy applies or
/// the fetch failed), logged, and counted
/// in `tern_mta_sts_total` (mode, and whether the session met the policy; a session without a policy
/// always does).
pub(crate) fn record_tls_result(reports: &TlsReports, r: &TlsResult<'_>) {
    reports.add(r);
    let policy_id = r.policy.map_or("", |p| p.id.as_str());
    let mode = mode_of(r.policy);
    let ip = r.ip.map(|ip| ip.to_string()).unwrap_or_default();
    let reason = r.reason.as_deref().unwrap_or("");
    if r.mx.is_empty() {
        // A failed fetch: the cache logged it; the cached policy (if any) still applies.
        let result_type = r.result.err().map_or("", TlsRptResultType::as_str);
        debug!(
            domain = r.domain,
            policy_id, result_type, "MTA-STS policy discovery failure"
        );
        return;
    }
    let failure = r.result.err().filter(|_| mode != MtaStsMode::None);
    tern_telemetry::metrics().mta_sts(mode, failure.is_none());
    match failure {
        None => debug!(
            domain = r.domain,
            mx = r.mx,
            ip,
            policy_id,
            mode = mode.as_str(),
            "MTA-STS check passed"
        ),
        Some(result_type) if mode == MtaStsMode::Enforce => warn!(
            domain = r.domain, mx = r.mx, ip, policy_id, mode = mode.as_str(), result_type = %result_type,
            reason, "MTA-STS policy failure: the host is not used (enforce)"
        ),
        Some(result_type) => warn!(
            domain = r.domain, mx = r.mx, ip, policy_id, mode = mode.as_str(), result_type = %result_type,
            reason, "MTA-STS policy failure: delivering anyway (testing)"
        ),
    }
}

/// The policy domain of a recipient domain: A-label form (IDNA for a U-label domain), lower case, no
/// final dot; `None` when it is empty or not a domain name.
pub(super) fn policy_domain(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.');
    if d.is_empty() {
        return None;
    }
    if d.is_ascii() {
        return Some(d.to_ascii_lowercase());
    }
    let name = Name::from_utf8(d).ok()?;
    Some(name.to_ascii().trim_end_matches('.').to_ascii_lowercase())
}

impl Inner {
    /// The MTA-STS policy step: the policy a delivery to `domain` applies (not applied when MTA-STS is
    /// off or the mail does not go to the domain's MX hosts).
    pub(super) async fn sts_lookup(&self, domain: &str) -> StsApplied {
        let (cache, domain) = match self.sts_target(domain) {
            Ok(target) => target,
            Err(reason) => return StsApplied::not_applied(reason),
        };
        let lookup = cache.lookup(&domain).await;
        if let Some(result_type) = lookup.tls_rpt_failure() {
            record_tls_result(
                &self.tls_reports,
                &TlsResult {
                    domain: &domain,
                    policy: lookup.active.as_ref(),
                    mx: "",
                    ip: None,
                    local_ip: None,
                    helo: None,
                    result: Err(result_type),
                    reason: None,
                },
            );
        }
        let applied = StsApplied::looked_up(domain, lookup.active, self.tls_reports.clone());
        debug!(
            domain = applied.domain(),
            mode = applied.mode().as_str(),
            policy_id = applied.policy_id(),
            from_memory = lookup.from_memory,
            "MTA-STS policy step"
        );
        applied
    }

    /// Before a policy failure of `applied` becomes final for one of `jobs` (it is at its `max_age`), the
    /// TXT id is checked again (RFC 8461 §5.1): the policy that applies then, when it differs. `None`:
    /// no job expires now, or the policy is the same, and the failure stands.
    pub(super) async fn sts_recheck(&self, applied: &StsApplied, jobs: &[&ClaimedJob]) -> Option<StsApplied> {
        let domain = applied.domain.as_deref().ok()?;
        let cache = self.mta_sts.as_ref()?;
        let max_age = u64::try_from(self.retry.max_age().as_millis()).unwrap_or(u64::MAX);
        let now = now_ms().saturating_add(EXPIRY_MARGIN_MS);
        if !jobs
            .iter()
            .any(|j| now >= j.job.first_queued_ms.saturating_add(max_age))
        {
            return None;
        }
        let policy = cache.recheck(domain).await;
        let same =
            policy.as_ref().map(|p| (&p.id, p.mode())) == applied.policy.as_ref().map(|p| (&p.id, p.mode()));
        info!(
            domain,
            policy_id = applied.policy_id(),
            changed = !same,
            "MTA-STS policy re-checked before a final failure"
        );
        (!same).then(|| StsApplied::looked_up(domain.to_owned(), policy, self.tls_reports.clone()))
    }

    /// No policy step for a delivery, for `reason`; but when MTA-STS is off, that is the reason.
    pub(super) fn sts_not_applied(&self, reason: NotApplied) -> StsApplied {
        StsApplied::not_applied(if self.mta_sts.is_some() {
            reason
        } else {
            NotApplied::Disabled
        })
    }

    /// The cache and the policy domain, when MTA-STS applies to mail for `domain`; otherwise why not.
    fn sts_target(&self, domain: &str) -> Result<(&PolicyCache, String), NotApplied> {
        let cache = self.mta_sts.as_ref().ok_or(NotApplied::Disabled)?;
        if !self.router.routes_by_mx(domain) {
            // The router's reasons, in its order: the relay, an address literal, a fixed route.
            return Err(if self.cfg.relay_host.is_some() {
                NotApplied::Relayed
            } else if domain.trim_start().starts_with('[') {
                NotApplied::AddressLiteral
            } else {
                NotApplied::Routed
            });
        }
        match policy_domain(domain) {
            Some(d) => Ok((cache, d)),
            None => {
                warn!(domain, "not a domain name: no MTA-STS policy applies");
                Err(NotApplied::NotADomain)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_mta_sts::Policy;

    fn applied(mode: Mode, mx: &[&str]) -> StsApplied {
        let policy = Policy::new(mode, mx.iter().map(|m| m.to_string()).collect(), 86400).unwrap();
        StsApplied::looked_up(
            "b.test".into(),
            Some(ActivePolicy {
                domain: "b.test".into(),
                id: "id1".into(),
                policy,
                fetched_at_ms: 0,
                expires_at_ms: u64::MAX,
            }),
            TlsReports::default(),
        )
    }

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            addrs: vec!["127.0.0.1:25".parse().unwrap()],
            implicit_tls: false,
            relay: false,
        }
    }

    #[test]
    fn a_rerouted_domain_has_no_policy_and_its_events_say_so() {
        let sts = StsApplied::not_applied(NotApplied::Rerouted);
        assert_eq!(sts.mode(), MtaStsMode::None);
        assert!(!sts.looked_up_domain());
        assert_eq!(sts.tls_policy(TlsPolicy::OPPORTUNISTIC), TlsPolicy::OPPORTUNISTIC);
        assert_eq!(
            sts.filter_hosts(vec![host("relay.ops.test")]).map(|h| h.len()),
            Ok(1)
        );
        let attempt = sts.batch_attempt();
        assert_eq!(attempt.tls.as_deref(), Some("mta-sts=not-applied (rerouted)"));
        assert_eq!((attempt.remote_mx, attempt.remote_ip), (None, None));
    }

    #[test]
    fn events_tell_a_domain_without_a_policy_from_one_mta_sts_did_not_apply_to() {
        let none = StsApplied::looked_up("b.test".into(), None, TlsReports::default());
        assert!(none.looked_up_domain());
        assert_eq!(none.batch_attempt().tls.as_deref(), Some("mta-sts=none"));
        assert_eq!(
            applied(Mode::Testing, &["mx1.b.test"])
                .batch_attempt()
                .tls
                .as_deref(),
            Some("mta-sts=testing")
        );
        for (reason, text) in [
            (NotApplied::Disabled, "mta-sts=not-applied (disabled)"),
            (NotApplied::Relayed, "mta-sts=not-applied (relayed)"),
            (NotApplied::Routed, "mta-sts=not-applied (routed)"),
            (
                NotApplied::AddressLiteral,
                "mta-sts=not-applied (address literal)",
            ),
            (NotApplied::ReportMail, "mta-sts=not-applied (report mail)"),
            (NotApplied::Sandbox, "mta-sts=not-applied (sandbox)"),
        ] {
            let sts = StsApplied::not_applied(reason);
            assert_eq!(sts.batch_attempt().tls.as_deref(), Some(text));
            assert_eq!(sts.mode(), MtaStsMode::None);
        }
    }

    #[test]
    fn policy_domains_are_a_labels_in_lower_case() {
        assert_eq!(policy_domain("B.Test.").as_deref(), Some("b.test"));
        assert_eq!(
            policy_domain("bücher.test").as_deref(),
            Some("xn--bcher-kva.test")
        );
        assert_eq!(policy_domain(" "), None);
    }

    #[test]
    fn enforce_keeps_only_matching_hosts_and_defers_with_4_7_5_when_none_match() {
        let sts = applied(Mode::Enforce, &["mx1.b.test", "*.backup.b.test"]);
        let kept = sts
            .filter_hosts(vec![
                host("mx0.b.test"),
                host("MX1.b.test"),
                host("x.backup.b.test"),
            ])
            .unwrap();
        let names: Vec<&str> = kept.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["MX1.b.test", "x.backup.b.test"]);
        let reply = sts.filter_hosts(vec![host("evil.test")]).unwrap_err();
        assert_eq!(
            (reply.code, reply.enhanced.map(|e| e.to_string())),
            (451, Some("4.7.5".into()))
        );
        assert!(reply.text().contains("MTA-STS"), "{reply:?}");
    }

    #[test]
    fn testing_and_no_policy_keep_every_host_and_the_configured_tls() {
        for sts in [
            applied(Mode::Testing, &["mx1.b.test"]),
            StsApplied::not_applied(NotApplied::Disabled),
        ] {
            let kept = sts.filter_hosts(vec![host("other.test")]).unwrap();
            assert_eq!(kept.len(), 1);
            assert_eq!(sts.tls_policy(TlsPolicy::OPPORTUNISTIC), TlsPolicy::OPPORTUNISTIC);
        }
        let enforce = applied(Mode::Enforce, &["mx1.b.test"]);
        assert_eq!(enforce.tls_policy(TlsPolicy::OPPORTUNISTIC), TlsPolicy::REQUIRED);
        assert_eq!(enforce.tls_policy(TlsPolicy::DISABLED), TlsPolicy::REQUIRED);
    }

    #[test]
    fn tls_failures_under_enforce_become_mta_sts_replies_and_network_failures_do_not() {
        let sts = applied(Mode::Enforce, &["mx1.b.test"]);
        let cert = ConnectError::Certificate(CertificateProblem::NameMismatch, "bad name".into());
        let reply = sts.policy_reply(&cert).unwrap();
        assert_eq!(reply.code, 451);
        assert!(
            reply
                .text()
                .contains("MTA-STS policy of b.test (enforce, id id1)"),
            "{reply:?}"
        );
        assert!(sts.policy_reply(&ConnectError::NoStartTls("no".into())).is_some());
        assert!(
            sts.policy_reply(&ConnectError::Unreachable("down".into()))
                .is_none()
        );
        let testing = applied(Mode::Testing, &["mx1.b.test"]);
        assert!(testing.policy_reply(&cert).is_none());
        assert_eq!(
            failure_of(&cert).map(|f| f.result_type),
            Some(TlsRptResultType::CertificateHostMismatch)
        );
    }
}
