//! Queue model to protobuf and back: jobs, events, suspensions, filters and errors.

use std::collections::HashSet;
use std::time::Duration;

use tern_core::{JobId, MessageId};
use tern_proto::v1 as pb;
use tern_queue::{Event, Job, JobState, ListFilter, QueueError, RecipientStatus, Suspension};
use tonic::Status;

/// A queue error as a gRPC status: `UNAVAILABLE` for an outage, `NOT_FOUND`, `INVALID_ARGUMENT`, and
/// `INTERNAL` for the rest.
pub fn queue_status(e: QueueError) -> Status {
    match e {
        QueueError::Unavailable(m) => Status::unavailable(format!("queue unavailable: {m}")),
        QueueError::NotSent(_) => Status::unavailable(e.to_string()),
        QueueError::NotFound(m) => Status::not_found(m),
        QueueError::InvalidMessage(m) => Status::invalid_argument(m),
        other => Status::internal(other.to_string()),
    }
}

/// An `INVALID_ARGUMENT` status naming `field`.
pub fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// A message id or a job id, as given by an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyId {
    /// A whole message.
    Message(MessageId),
    /// One job of a message.
    Job(JobId),
}

impl AnyId {
    /// Parses `s`; the error names `field`.
    pub fn parse(field: &str, s: &str) -> Result<AnyId, Status> {
        let s = s.trim();
        if s.contains('.') {
            s.parse().map(AnyId::Job).map_err(|e| invalid(field, e))
        } else {
            s.parse().map(AnyId::Message).map_err(|e| invalid(field, e))
        }
    }

    /// The message the id belongs to.
    pub fn message(self) -> MessageId {
        match self {
            AnyId::Message(m) => m,
            AnyId::Job(j) => j.message,
        }
    }
}

/// A tag filter: `key=value` or `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagFilter {
    key: String,
    value: Option<String>,
}

impl TagFilter {
    /// Parses `key=value` or `key`; `None` for an empty text; the error names `field`.
    pub fn parse(field: &str, s: &str) -> Result<Option<TagFilter>, Status> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (s, None),
        };
        if key.is_empty() {
            return Err(invalid(field, format!("{s:?} is not key=value or key")));
        }
        Ok(Some(TagFilter {
            key: key.to_string(),
            value,
        }))
    }

    /// The tag's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value asked for; `None`: any value.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// Whether `tags` pass.
    pub fn matches(&self, tags: &std::collections::BTreeMap<String, String>) -> bool {
        match (tags.get(&self.key), &self.value) {
            (Some(v), Some(want)) => v == want,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// A checked [`pb::MessageFilter`]: the part the queue filters on, and the rest applied here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Domain, state, sender and recipient, for [`tern_queue::Queue::list`].
    pub list: ListFilter,
    /// Minimum attempts.
    pub min_attempts: u32,
    /// Only jobs first queued at least this long ago.
    pub older_than: Option<Duration>,
    /// Tag.
    pub tag: Option<TagFilter>,
    /// How jobs of suspended domains are treated: `Some(true)` keeps only waiting jobs of suspended domains
    /// (the shown state `suspended`), `Some(false)` leaves them out (the states `queued` and `deferred`
    /// mean jobs that can go), `None` does not look.
    pub suspended: Option<bool>,
}

impl Filter {
    /// Checks `f`; errors are `INVALID_ARGUMENT` naming the field (`filter.state`, `filter.tag`, ...).
    pub fn from_proto(f: Option<&pb::MessageFilter>) -> Result<Filter, Status> {
        let Some(f) = f else {
            return Ok(Filter::default());
        };
        let nonempty = |s: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        };
        let domain = nonempty(&f.domain).map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        if let Some(d) = &domain
            && (d.contains(['@', ' ', '#', '/']) || d.is_empty())
        {
            return Err(invalid("filter.domain", format!("{d:?} is not a domain")));
        }
        let (state, suspended) = match nonempty(&f.state).map(|s| s.to_ascii_lowercase()) {
            Some(s) if s == SUSPENDED => (None, Some(true)),
            Some(s) => {
                let state = s.parse::<JobState>().map_err(|e| {
                    invalid(
                        "filter.state",
                        format!("{e} (queued, deferred, inflight, held or suspended)"),
                    )
                })?;
                let waiting = matches!(state, JobState::Queued | JobState::Deferred);
                (Some(state), waiting.then_some(false))
            }
            None => (None, None),
        };
        let sender = nonempty(&f.sender).map(|s| s.trim_matches(['<', '>']).to_string());
        let recipient = nonempty(&f.recipient).map(|s| s.trim_matches(['<', '>']).to_string());
        Ok(Filter {
            list: ListFilter {
                domain,
                state,
                sender,
                recipient,
            },
            min_attempts: f.min_attempts,
            older_than: (f.older_than_seconds > 0).then(|| Duration::from_secs(f.older_than_seconds)),
            tag: TagFilter::parse("filter.tag", &f.tag)?,
            suspended,
        })
    }

    /// Whether the filter is just a domain (the queue can then act on the domain as a whole).
    pub fn is_domain_only(&self) -> bool {
        self.list.domain.is_some()
            && self.list.state.is_none()
            && self.list.sender.is_none()
            && self.list.recipient.is_none()
            && self.min_attempts == 0
            && self.older_than.is_none()
            && self.tag.is_none()
            && self.suspended.is_none()
    }

    /// Whether the filter selects nothing in particular (every job).
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `job` passes the filters the queue does not apply (`now_ms`: the current time; `suspended`:
    /// the domains suspended now).
    pub fn matches_rest(&self, job: &Job, now_ms: u64, suspended: &HashSet<String>) -> bool {
        if let Some(want) = self.suspended
            && is_suspended(job, suspended) != want
        {
            return false;
        }
        if job.attempts < self.min_attempts {
            return false;
        }
        if let Some(age) = self.older_than {
            let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            if now_ms.saturating_sub(job.first_queued_ms) < age_ms {
                return false;
            }
        }
        self.tag.as_ref().is_none_or(|t| t.matches(&job.tags))
    }
}

/// The state shown for waiting jobs of a suspended domain: they are not due, whatever their due time says.
pub const SUSPENDED: &str = "suspended";

/// Whether `job` waits on a suspended domain (a job in flight or held is what it is).
pub fn is_suspended(job: &Job, suspended: &HashSet<String>) -> bool {
    matches!(job.state, JobState::Queued | JobState::Deferred)
        && !job.admin_bounce
        && suspended.contains(&job.domain)
}

/// A job as listed, its state shown as `suspended` when it waits on a suspended domain.
pub fn job_summary_in(job: &Job, suspended: &HashSet<String>) -> pb::JobSummary {
    let mut summary = job_summary(job);
    if is_suspended(job, suspended) {
        summary.state = SUSPENDED.to_string();
    }
    summary
}

/// A job as listed.
pub fn job_summary(job: &Job) -> pb::JobSummary {
    pb::JobSummary {
        job_id: job.id.to_string(),
        message_id: job.id.message.to_string(),
        domain: job.domain.clone(),
        sender: sender_text(&job.envelope.sender),
        recipients: job
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect(),
        state: job.state.as_str().to_string(),
        attempts: job.attempts,
        first_queued_ms: job.first_queued_ms,
        next_attempt_ms: job.next_attempt_ms,
        last_error: job.last_error.clone().unwrap_or_default(),
        tags: job.tags.clone().into_iter().collect(),
        admin_bounce: job.admin_bounce,
    }
}

/// A job with its recipients, as shown by GetMessage.
pub fn job_detail(job: &Job, suspended: &HashSet<String>) -> pb::JobDetail {
    pb::JobDetail {
        job: Some(job_summary_in(job, suspended)),
        recipients: job
            .recipients
            .iter()
            .map(|r| pb::RecipientDetail {
                address: r.recipient.address.to_string(),
                status: match r.status {
                    RecipientStatus::Pending => "pending",
                    RecipientStatus::Delivered => "delivered",
                    RecipientStatus::Failed => "failed",
                }
                .to_string(),
                reply: r.reply.clone().unwrap_or_default(),
            })
            .collect(),
        owner: job.owner.clone().unwrap_or_default(),
        lease_until_ms: job.lease_until_ms.unwrap_or(0),
    }
}

/// A suspension.
pub fn suspension(s: &Suspension) -> pb::Suspension {
    pb::Suspension {
        domain: s.domain.clone(),
        reason: s.reason.clone(),
        since_ms: s.since_ms,
        until_ms: s.until_ms.unwrap_or(0),
    }
}

/// An event as streamed by Watch, with the position to resume from after it.
pub fn event(e: &Event, position: String) -> pb::QueueEvent {
    pb::QueueEvent {
        kind: e.kind.as_str().to_string(),
        time_ms: e.time_ms,
        message_id: e.message.map(|m| m.to_string()).unwrap_or_default(),
        job_id: e.job.map(|j| j.to_string()).unwrap_or_default(),
        domain: e.domain.clone(),
        recipients: e.recipients.clone(),
        reply: e.reply.clone().unwrap_or_default(),
        attempt: e.attempt,
        tags: e.tags.clone().into_iter().collect(),
        remote_mx: e.remote_mx.clone().unwrap_or_default(),
        remote_ip: e.remote_ip.clone().unwrap_or_default(),
        tls: e.tls.clone().unwrap_or_default(),
        id: e.id.clone(),
        position,
        dsn_id: e.dsn.clone().unwrap_or_default(),
    }
}

/// An event of a message's history, as shown by GetMessage.
pub fn attempt(e: &Event) -> pb::Attempt {
    pb::Attempt {
        time_ms: e.time_ms,
        job_id: e.job.map(|j| j.to_string()).unwrap_or_default(),
        kind: e.kind.as_str().to_string(),
        recipients: e.recipients.clone(),
        remote_mx: e.remote_mx.clone().unwrap_or_default(),
        remote_ip: e.remote_ip.clone().unwrap_or_default(),
        reply: e.reply.clone().unwrap_or_default(),
        tls: e.tls.as_deref().is_some_and(was_tls),
        tls_details: e.tls.clone().unwrap_or_default(),
        attempt: e.attempt,
        dsn_id: e.dsn.clone().unwrap_or_default(),
    }
}

/// The sender as people and scripts read addresses: the mailbox without angle brackets, like the recipients;
/// the null reverse-path (a bounce) as `<>`.
pub fn sender_text(sender: &tern_core::ReversePath) -> String {
    match sender {
        tern_core::ReversePath::Null => "<>".to_string(),
        tern_core::ReversePath::Mailbox(m) => m.to_string(),
    }
}

/// Whether an event's `tls` text describes a TLS session. Every delivery event's text names MTA-STS, so a
/// plaintext session (`plaintext; mta-sts=...`) and an outcome without a session (`mta-sts=...` alone: a
/// deferral before any connection, a sandbox delivery) carry text too, and were not TLS.
fn was_tls(text: &str) -> bool {
    !text.is_empty() && !text.starts_with("plaintext") && !text.starts_with("mta-sts=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tls_session_counts_as_tls() {
        assert!(was_tls(
            "TLSv1_3 TLS13_AES_256_GCM_SHA384 verified; mta-sts=enforce"
        ));
        assert!(!was_tls("plaintext; mta-sts=none"));
        assert!(!was_tls("mta-sts=not-applied (sandbox)"));
        assert!(!was_tls("mta-sts=enforce"));
        assert!(!was_tls(""));
    }

    #[test]
    fn filter_errors_name_the_field() {
        let bad_state = pb::MessageFilter {
            state: "soon".into(),
            ..Default::default()
        };
        let e = Filter::from_proto(Some(&bad_state)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("filter.state:"), "{}", e.message());
        let bad_tag = pb::MessageFilter {
            tag: "=x".into(),
            ..Default::default()
        };
        let e = Filter::from_proto(Some(&bad_tag)).unwrap_err();
        assert!(e.message().starts_with("filter.tag:"), "{}", e.message());
    }

    #[test]
    fn domain_only_filters_and_tags() {
        let f = Filter::from_proto(Some(&pb::MessageFilter {
            domain: "Example.COM.".into(),
            ..Default::default()
        }))
        .unwrap();
        assert!(f.is_domain_only());
        assert_eq!(f.list.domain.as_deref(), Some("example.com"));
        let t = TagFilter::parse("tag", "tenant=t1").unwrap().unwrap();
        let tags = [("tenant".to_string(), "t1".to_string())].into();
        assert!(t.matches(&tags));
        assert!(TagFilter::parse("tag", "tenant").unwrap().unwrap().matches(&tags));
        assert!(
            !TagFilter::parse("tag", "tenant=t2")
                .unwrap()
                .unwrap()
                .matches(&tags)
        );
    }

    #[test]
    fn ids_parse() {
        let m = MessageId::new();
        assert_eq!(AnyId::parse("ids", &m.to_string()).unwrap(), AnyId::Message(m));
        assert_eq!(
            AnyId::parse("ids", &format!("{m}.1")).unwrap(),
            AnyId::Job(JobId::new(m, 1))
        );
        assert_eq!(
            AnyId::parse("ids", "nope").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
