//! Operator actions (`admin.lua`: `admin`, `suspend`, `resume`), and the plain-command ones: the
//! suspensions in force and per-domain concurrency limits.

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
}

impl AdminAction {
    fn as_str(self) -> &'static str {
        match self {
            AdminAction::Retry => "retry",
            AdminAction::Delete => "delete",
            AdminAction::Bounce => "bounce",
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

/// The arguments of one `admin` call.
pub(crate) fn admin_args(action: AdminAction, scope: AdminScope<'_>) -> Vec<Arg> {
    match scope {
        AdminScope::Job(id) => vec![arg(action.as_str()), arg("id"), arg(id), arg(1)],
        AdminScope::Domain { domain, limit } => {
            vec![arg(action.as_str()), arg("domain"), arg(domain), arg(limit)]
        }
    }
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
    /// [`crate::Queue::retry_now`], [`crate::Queue::delete`] and [`crate::Queue::bounce`].
    pub(crate) async fn admin(&self, action: AdminAction, target: &Target) -> Result<u64, QueueError> {
        let now = now_ms();
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
                                admin_args(action, AdminScope::Job(id)),
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
                            admin_args(action, AdminScope::Job(&id)),
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
                        .call(Function::Admin, shard, now_ms(), admin_args(action, scope))
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
        tracing::info!(domain = %domain, reason, until_ms, "domain suspended");
        Ok(())
    }

    /// [`crate::Queue::resume`].
    pub(crate) async fn resume_domain(&self, domain: &str) -> Result<bool, QueueError> {
        let domain = domain.to_ascii_lowercase();
        let shard = self.keys.shard_of_domain(&domain);
        let v = self
            .call(Function::Resume, shard, now_ms(), vec![arg(&domain)])
            .await?;
        let was = codec::int(&v).unwrap_or(0) == 1;
        tracing::info!(domain = %domain, was_suspended = was, "domain resumed");
        Ok(was)
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
    fn admin_sends_the_action_and_its_scope() {
        assert_eq!(
            texts(&admin_args(AdminAction::Bounce, AdminScope::Job("M.0"))),
            ["bounce", "id", "M.0", "1"]
        );
        let scope = AdminScope::Domain {
            domain: "d.test",
            limit: 500,
        };
        assert_eq!(
            texts(&admin_args(AdminAction::Retry, scope)),
            ["retry", "domain", "d.test", "500"]
        );
        assert_eq!(texts(&admin_args(AdminAction::Delete, scope))[0], "delete");
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
