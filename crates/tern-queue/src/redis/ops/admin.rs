//! Operator actions (`admin.lua`: `admin`, `suspend`, `resume`), and the plain-command ones: the
//! suspensions in force and per-domain concurrency limits.
//!
//! `admin` retries, deletes, bounces, holds and releases held jobs. A held job (state `held`) is on no
//! schedule: it waits in its domain's `held:<domain>` index, counted under `held` in `cnt`, until it is
//! released (back on its schedule, due now), bounced or deleted.

use redis::Value;
use tern_core::time::now_ms;

use super::{Arg, arg, codec, count};
use crate::QueueError;
use crate::model::{Suspension, Target};
use crate::redis::RedisQueue;
use crate::redis::library::Function;

/// Jobs per `admin` call in domain mode.
const ADMIN_CHUNK: u32 = 500;

/// What an operator does to jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdminAction {
    /// A waiting job becomes due now.
    Retry,
    /// The job is removed, no DSN.
    Delete,
    /// The job is flagged for an admin bounce and moves to the `#bounce` schedule.
    Bounce,
    /// A waiting job is held: off its schedule until released.
    Hold,
    /// A held job goes back to its schedule, due now.
    Unhold,
}

impl AdminAction {
    fn as_str(self) -> &'static str {
        match self {
            AdminAction::Retry => "retry",
            AdminAction::Delete => "delete",
            AdminAction::Bounce => "bounce",
            AdminAction::Hold => "hold",
            AdminAction::Unhold => "unhold",
        }
    }
}

/// Which jobs one `admin` call handles.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AdminScope<'a> {
    /// One job.
    Job(&'a str),
    /// Up to `limit` waiting jobs of a domain.
    Domain { domain: &'a str, limit: u32 },
}

/// The arguments of one `admin` call: the action, its scope, the history retention (ms; 0: none kept) and
/// the operator's reason for a bounce.
pub(crate) fn admin_args(
    action: AdminAction,
    scope: AdminScope<'_>,
    history_ms: u64,
    reason: Option<&str>,
) -> Vec<Arg> {
    let (mode, target, limit) = match scope {
        AdminScope::Job(id) => ("id", id, 1),
        AdminScope::Domain { domain, limit } => ("domain", domain, limit),
    };
    vec![
        arg(action.as_str()),
        arg(mode),
        arg(target),
        arg(limit),
        arg(history_ms),
        reason.unwrap_or("").as_bytes().to_vec(),
    ]
}

/// What `admin` answers: jobs changed, jobs examined.
pub(crate) fn decode_admin(v: &Value) -> (u64, u64) {
    let items = codec::items(v);
    (count(items.first()), count(items.get(1)))
}

/// The arguments of one `suspend` call.
pub(crate) fn suspend_args(rec: &Suspension) -> Result<Vec<Arg>, QueueError> {
    let json = serde_json::to_string(rec).map_err(|e| QueueError::Backend(e.to_string()))?;
    Ok(vec![
        arg(&rec.domain),
        arg(json),
        arg(rec.until_ms.map(|u| u.to_string()).unwrap_or_default()),
    ])
}

impl RedisQueue {
    /// [`crate::Queue::retry_now`], [`crate::Queue::delete`], [`crate::Queue::bounce`] (with the operator's
    /// `reason`), [`crate::Queue::hold`] and [`crate::Queue::unhold`].
    pub(crate) async fn admin(
        &self,
        action: AdminAction,
        target: &Target,
        reason: Option<&str>,
    ) -> Result<u64, QueueError> {
        let now = now_ms();
        let history_ms = self.history_ms();
        // An empty reason is none.
        let reason = reason.filter(|r| !r.is_empty());
        match target {
            Target::Job(id) => {
                // The job's shard is its domain's, which the id does not tell: every shard is asked.
                let id = id.to_string();
                let id = id.as_str();
                let counts = self
                    .on_all_shards(|shard| async move {
                        let v = self
                            .call(
                                Function::Admin,
                                shard,
                                now,
                                admin_args(action, AdminScope::Job(id), history_ms, reason),
                            )
                            .await?;
                        Ok(decode_admin(&v).0)
                    })
                    .await?;
                Ok(counts.into_iter().sum())
            }
            Target::Message(m) => {
                let Some(info) = self.read_message(*m).await? else {
                    return Ok(0);
                };
                let mut changed = 0;
                for job in info.jobs {
                    let shard = self.keys.shard_of_domain(&job.domain);
                    let id = job.id.to_string();
                    let v = self
                        .call(
                            Function::Admin,
                            shard,
                            now,
                            admin_args(action, AdminScope::Job(&id), history_ms, reason),
                        )
                        .await?;
                    changed += decode_admin(&v).0;
                }
                Ok(changed)
            }
            Target::Domain(d) => {
                let domain = d.to_ascii_lowercase();
                let shard = self.keys.shard_of_domain(&domain);
                let scope = AdminScope::Domain {
                    domain: &domain,
                    limit: ADMIN_CHUNK,
                };
                let mut changed = 0;
                loop {
                    let v = self
                        .call(
                            Function::Admin,
                            shard,
                            now_ms(),
                            admin_args(action, scope, history_ms, reason),
                        )
                        .await?;
                    let (done, examined) = decode_admin(&v);
                    changed += done;
                    if examined < u64::from(ADMIN_CHUNK) {
                        return Ok(changed);
                    }
                }
            }
        }
    }

    /// [`crate::Queue::suspend`].
    pub(crate) async fn suspend_domain(
        &self,
        domain: &str,
        until_ms: Option<u64>,
        reason: &str,
    ) -> Result<(), QueueError> {
        let domain = domain.to_ascii_lowercase();
        let now = now_ms();
        let rec = Suspension {
            domain: domain.clone(),
            reason: reason.to_string(),
            since_ms: now,
            until_ms,
        };
        let shard = self.keys.shard_of_domain(&domain);
        self.call(Function::Suspend, shard, now, suspend_args(&rec)?)
            .await?;
        // The caller logs the change (the control plane's audit line names the key): one line, not two.
        Ok(())
    }

    /// [`crate::Queue::resume`].
    pub(crate) async fn resume_domain(&self, domain: &str) -> Result<bool, QueueError> {
        let domain = domain.to_ascii_lowercase();
        let shard = self.keys.shard_of_domain(&domain);
        let v = self
            .call(Function::Resume, shard, now_ms(), vec![arg(&domain)])
            .await?;
        Ok(codec::int(&v).unwrap_or(0) == 1)
    }

    /// [`crate::Queue::suspensions`].
    pub(crate) async fn read_suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        let parts = self
            .on_all_shards(|shard| async move {
                let mut all = redis::cmd("HGETALL");
                all.arg(self.keys.key(shard, "susp"));
                self.command(all).await
            })
            .await?;
        let mut out = Vec::new();
        for v in parts {
            for (domain, rec) in codec::fields(&v) {
                if let Ok(mut s) = serde_json::from_str::<Suspension>(&rec) {
                    s.domain = domain;
                    out.push(s);
                }
            }
        }
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }

    /// [`crate::Queue::set_domain_concurrency`].
    pub(crate) async fn set_concurrency(&self, domain: &str, limit: Option<u32>) -> Result<(), QueueError> {
        let domain = domain.to_ascii_lowercase();
        let key = self.keys.key(self.keys.shard_of_domain(&domain), "conc");
        let mut change = match limit {
            Some(_) => redis::cmd("HSET"),
            None => redis::cmd("HDEL"),
        };
        change.arg(key).arg(&domain);
        if let Some(l) = limit {
            change.arg(l);
        }
        self.command(change).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, texts};

    #[test]
    fn admin_sends_the_action_its_scope_the_retention_and_the_reason() {
        assert_eq!(
            texts(&admin_args(
                AdminAction::Bounce,
                AdminScope::Job("M.0"),
                9,
                Some("spam run\tstopped")
            )),
            ["bounce", "id", "M.0", "1", "9", "spam run\tstopped"]
        );
        let scope = AdminScope::Domain {
            domain: "d.test",
            limit: 500,
        };
        assert_eq!(
            texts(&admin_args(AdminAction::Retry, scope, 0, None)),
            ["retry", "domain", "d.test", "500", "0", ""]
        );
        assert_eq!(
            texts(&admin_args(AdminAction::Delete, scope, 0, None))[0],
            "delete"
        );
        assert_eq!(texts(&admin_args(AdminAction::Hold, scope, 0, None))[0], "hold");
        assert_eq!(
            texts(&admin_args(AdminAction::Unhold, scope, 0, None))[0],
            "unhold"
        );
        assert_eq!(
            decode_admin(&array(vec![Value::Int(2), Value::Int(500)])),
            (2, 500)
        );
    }

    #[test]
    fn suspend_sends_the_record_and_its_expiry() {
        let mut rec = Suspension {
            domain: "d.test".into(),
            reason: "blocked".into(),
            since_ms: 1,
            until_ms: Some(9),
        };
        let args = texts(&suspend_args(&rec).expect("args"));
        assert_eq!(args[0], "d.test");
        let back: Suspension = serde_json::from_str(&args[1]).expect("record JSON");
        assert_eq!(back.reason, "blocked");
        assert_eq!(args[2], "9");
        rec.until_ms = None;
        assert_eq!(texts(&suspend_args(&rec).expect("args"))[2], "");
    }
}
