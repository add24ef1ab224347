//! Heartbeat: pushes a claimed job's lease out (`extend.lua`).

use std::time::Duration;

use redis::Value;
use tern_core::JobId;
use tern_core::time::now_ms;

use super::{Arg, arg, count, status};
use crate::QueueError;
use crate::model::JobLease;
use crate::redis::library::Function;
use crate::redis::{RedisQueue, duration_ms};

/// The arguments of one `extend` call.
pub(crate) struct ExtendArgs<'a> {
    /// The clock of the call (Unix ms): the new lease counts from it.
    pub now: u64,
    pub job: JobId,
    pub owner: &'a str,
    /// The claim id.
    pub token: &'a str,
    pub lease_ms: u64,
}

impl ExtendArgs<'_> {
    pub(crate) fn into_args(self) -> Vec<Arg> {
        vec![
            arg(self.job),
            arg(self.owner),
            arg(self.token),
            // The new deadline.
            arg(self.now.saturating_add(self.lease_ms.max(1))),
        ]
    }
}

/// What `extend` answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExtendReply {
    /// The new lease deadline (Unix ms).
    Extended(u64),
    /// Not in flight for this owner and token, or the lease has run out.
    NotOwner,
    /// No such job.
    Gone,
}

impl ExtendReply {
    pub(crate) fn decode(v: &Value) -> ExtendReply {
        match status(v).as_str() {
            "ok" => ExtendReply::Extended(count(super::codec::items(v).get(1))),
            "gone" => ExtendReply::Gone,
            _ => ExtendReply::NotOwner,
        }
    }
}

impl RedisQueue {
    /// [`crate::Queue::extend`].
    pub(crate) async fn extend_lease(
        &self,
        owner: &str,
        job: &JobLease,
        lease: Duration,
    ) -> Result<u64, QueueError> {
        let shard = self.keys.shard_of_domain(&job.domain);
        let now = now_ms();
        let args = ExtendArgs {
            now,
            job: job.job,
            owner,
            token: &job.token,
            lease_ms: duration_ms(lease),
        };
        let v = self.call(Function::Extend, shard, now, args.into_args()).await?;
        match ExtendReply::decode(&v) {
            ExtendReply::Extended(deadline) => Ok(deadline),
            ExtendReply::Gone => Err(QueueError::NotFound(format!("job {}", job.job))),
            ExtendReply::NotOwner => Err(QueueError::NotOwner { job: job.job }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};
    use tern_core::MessageId;

    #[test]
    fn extend_sends_job_owner_token_and_the_new_deadline() {
        let job = JobId::new(MessageId::new(), 2);
        let args = ExtendArgs {
            now: 1_000,
            job,
            owner: "w1",
            token: "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            lease_ms: 0,
        };
        assert_eq!(
            texts(&args.into_args()),
            [
                job.to_string().as_str(),
                "w1",
                "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                "1001",
            ]
        );
    }

    #[test]
    fn extend_replies_decode() {
        assert_eq!(
            ExtendReply::decode(&array(vec![bulk("ok"), bulk("1795889531049")])),
            ExtendReply::Extended(1_795_889_531_049)
        );
        assert_eq!(ExtendReply::decode(&array(vec![bulk("gone")])), ExtendReply::Gone);
        assert_eq!(
            ExtendReply::decode(&array(vec![bulk("notowner")])),
            ExtendReply::NotOwner
        );
        assert_eq!(ExtendReply::decode(&Value::Nil), ExtendReply::NotOwner);
    }
}
