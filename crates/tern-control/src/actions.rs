//! The repair actions of `tern.v1.QueueAdmin` (retry, bounce, delete, hold, release): which jobs they apply
//! to (ids, or a filter), the dry run, and the audit line every change leaves.

use tern_proto::v1 as pb;
use tern_queue::{QueueError, Target};
use tern_server::auth::Principal;
use tonic::{Request, Response, Status};

use crate::admin::{AdminService, SCAN_BUDGET};
use crate::convert::{AnyId, Filter, invalid, queue_status};

/// How many ids a dry run shows, and an audit line names.
pub const SAMPLE_IDS: usize = 20;

/// The repair actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make waiting jobs due now.
    Retry,
    /// Fail jobs with a DSN to the sender.
    Bounce,
    /// Delete jobs without a DSN.
    Delete,
    /// Hold waiting jobs: never claimed until released.
    Hold,
    /// Release held jobs.
    Release,
}

impl Action {
    /// The name in audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Bounce => "bounce",
            Action::Delete => "delete",
            Action::Hold => "hold",
            Action::Release => "release",
        }
    }
}

impl AdminService {
    /// The targets an action applies to: the ids (each checked to exist), or the filter (a domain as a
    /// whole, or else every matching job).
    async fn targets(&self, req: &pb::ActionRequest) -> Result<Vec<Target>, Status> {
        if !req.ids.is_empty() {
            let mut targets = Vec::with_capacity(req.ids.len());
            for raw in &req.ids {
                let id = AnyId::parse("ids", raw)?;
                let info = self.queue.get_message(id.message()).await.map_err(queue_status)?;
                let exists = match (&info, id) {
                    (None, _) => false,
                    (Some(_), AnyId::Message(_)) => true,
                    (Some(info), AnyId::Job(j)) => info.jobs.iter().any(|job| job.id == j),
                };
                if !exists {
                    if req.skip_missing {
                        continue;
                    }
                    return Err(Status::not_found(match id {
                        AnyId::Message(m) => format!("no message {m} in the queue"),
                        AnyId::Job(j) => format!("no job {j} in the queue"),
                    }));
                }
                targets.push(match id {
                    AnyId::Message(m) => Target::Message(m),
                    AnyId::Job(j) => Target::Job(j),
                });
            }
            return Ok(targets);
        }
        let filter = Filter::from_proto(req.filter.as_ref())?;
        if filter.is_empty() {
            return Err(invalid(
                "filter",
                "give message ids or a filter (acting on the whole queue is refused)",
            ));
        }
        if filter.is_domain_only()
            && let Some(d) = &filter.list.domain
        {
            return Ok(vec![Target::Domain(d.clone())]);
        }
        let mut targets = Vec::new();
        self.walk(&filter, SCAN_BUDGET, |job| targets.push(Target::Job(job.id)))
            .await?;
        Ok(targets)
    }

    /// The jobs `target` would touch with `action` (for a dry run): their ids, in queue order.
    async fn would_touch(&self, target: &Target, action: Action) -> Result<Vec<String>, Status> {
        let applies = |job: &tern_queue::Job| match action {
            Action::Release => job.state == tern_queue::JobState::Held,
            Action::Hold | Action::Retry => matches!(
                job.state,
                tern_queue::JobState::Queued | tern_queue::JobState::Deferred
            ),
            Action::Bounce | Action::Delete => true,
        };
        match target {
            Target::Job(j) => Ok(self
                .queue
                .get_message(j.message)
                .await
                .map_err(queue_status)?
                .into_iter()
                .flat_map(|info| info.jobs)
                .filter(|job| job.id == *j && applies(job))
                .map(|job| job.id.to_string())
                .collect()),
            Target::Message(m) => Ok(self
                .queue
                .get_message(*m)
                .await
                .map_err(queue_status)?
                .into_iter()
                .flat_map(|info| info.jobs)
                .filter(|job| applies(job))
                .map(|job| job.id.to_string())
                .collect()),
            Target::Domain(d) => {
                // What the queue's domain-wide actions touch: the domain's own schedule (not jobs an admin
                // bounce moved to the bounce schedule), never jobs in flight, and for a retry only jobs not
                // due yet (due ones need no retry).
                let now = tern_core::time::now_ms();
                let filter = Filter {
                    list: tern_queue::ListFilter {
                        domain: Some(d.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let mut ids = Vec::new();
                self.walk(&filter, SCAN_BUDGET, |job| {
                    // A domain-wide action leaves jobs in flight alone (see `Queue::delete` and friends).
                    let not_retried = action == Action::Retry && job.next_attempt_ms <= now;
                    if applies(&job)
                        && job.state != tern_queue::JobState::InFlight
                        && !job.admin_bounce
                        && !not_retried
                    {
                        ids.push(job.id.to_string());
                    }
                })
                .await?;
                Ok(ids)
            }
        }
    }

    /// Runs one action over the request's targets; returns the count (and, for a dry run, the first ids).
    pub(crate) async fn act(
        &self,
        request: Request<pb::ActionRequest>,
        action: Action,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let key = key_name(&request);
        let req = request.into_inner();
        let reason = req.reason.trim();
        if !reason.is_empty() && action != Action::Bounce {
            return Err(invalid("reason", "only a bounce takes a reason"));
        }
        if reason.len() > 500 {
            return Err(invalid("reason", "is longer than 500 characters"));
        }
        if reason.contains(['\r', '\n']) {
            return Err(invalid("reason", "must be one line"));
        }
        let targets = self.targets(&req).await?;
        let mut count = 0u64;
        let mut sample_ids = Vec::new();
        for target in &targets {
            if req.dry_run {
                let ids = self.would_touch(target, action).await?;
                count = count.saturating_add(ids.len() as u64);
                let room = SAMPLE_IDS.saturating_sub(sample_ids.len());
                sample_ids.extend(ids.into_iter().take(room));
                continue;
            }
            let reason = (!reason.is_empty()).then_some(reason);
            let done = match action {
                Action::Retry => self.queue.retry_now(target).await,
                Action::Bounce => self.queue.bounce(target, reason).await,
                Action::Delete => self.queue.delete(target).await,
                Action::Hold => self.queue.hold(target).await,
                Action::Release => self.queue.unhold(target).await,
            };
            match done {
                Ok(n) => count = count.saturating_add(n),
                // A job that finished between the listing and the action is simply not counted.
                Err(QueueError::NotFound(_)) => {}
                Err(e) => return Err(queue_status(e)),
            }
        }
        if !req.dry_run {
            let ids: Vec<&str> = req.ids.iter().map(|s| s.trim()).take(SAMPLE_IDS).collect();
            tracing::info!(
                action = action.as_str(),
                key = %key,
                ids = %ids.join(","),
                filter = %describe(req.filter.as_ref()),
                reason = %reason,
                count,
                "control: queue action"
            );
        }
        Ok(Response::new(pb::ActionResponse { count, sample_ids }))
    }
}

/// The name of the admin key a request was authenticated with, for audit lines; `-` without one (a
/// loopback listener without a keys file).
pub fn key_name<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Principal>()
        .and_then(|p| p.name.clone())
        .unwrap_or_else(|| "-".into())
}

/// A filter in one line for the audit log: `domain=x sender=y tag=k=v older_than=3600s state=deferred`.
pub fn describe(filter: Option<&pb::MessageFilter>) -> String {
    let Some(f) = filter else {
        return String::new();
    };
    let mut parts = Vec::new();
    let mut add = |name: &str, value: &str| {
        if !value.trim().is_empty() {
            parts.push(format!("{name}={}", value.trim()));
        }
    };
    add("domain", &f.domain);
    add("sender", &f.sender);
    add("recipient", &f.recipient);
    add("state", &f.state);
    add("tag", &f.tag);
    if f.min_attempts > 0 {
        parts.push(format!("min_attempts={}", f.min_attempts));
    }
    if f.older_than_seconds > 0 {
        parts.push(format!("older_than={}s", f.older_than_seconds));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_line_names_every_filter_field_given() {
        let f = pb::MessageFilter {
            domain: "example.com".into(),
            sender: "a@b.test".into(),
            older_than_seconds: 3600,
            tag: "tenant=x".into(),
            ..Default::default()
        };
        assert_eq!(
            describe(Some(&f)),
            "domain=example.com sender=a@b.test tag=tenant=x older_than=3600s"
        );
        assert_eq!(describe(None), "");
    }
}
