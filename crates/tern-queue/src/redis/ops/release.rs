//! Gives a claimed job back unchanged, due now (`release.lua`).

use redis::Value;
use tern_core::JobId;
use tern_core::time::now_ms;

use super::{Arg, arg, status};
use crate::QueueError;
use crate::model::JobLease;
use crate::redis::RedisQueue;
use crate::redis::library::Function;

/// The arguments of one `release` call.
pub(crate) struct ReleaseArgs<'a> {
    pub job: JobId,
    pub owner: &'a str,
    /// The claim id.
    pub token: &'a str,
    /// The history retention (ms; 0: none kept).
    pub history_ms: u64,
}

impl ReleaseArgs<'_> {
    pub(crate) fn into_args(self) -> Vec<Arg> {
        vec![
            arg(self.job),
            arg(self.owner),
            arg(self.token),
            arg(self.history_ms),
        ]
    }
}

/// What `release` answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReleaseReply {
    Released,
    /// This token released the job already (a repeated call).
    AlreadyReleased,
    NotOwner,
    Gone,
}

impl ReleaseReply {
    pub(crate) fn decode(v: &Value) -> ReleaseReply {
        match status(v).as_str() {
            "ok" => ReleaseReply::Released,
            "dup" => ReleaseReply::AlreadyReleased,
            "gone" => ReleaseReply::Gone,
            _ => ReleaseReply::NotOwner,
        }
    }
}

impl RedisQueue {
    /// [`crate::Queue::release`].
    pub(crate) async fn release_job(&self, owner: &str, job: &JobLease) -> Result<(), QueueError> {
        let shard = self.keys.shard_of_domain(&job.domain);
        let args = ReleaseArgs {
            job: job.job,
            owner,
            token: &job.token,
            history_ms: self.history_ms(),
        };
        let v = self
            .call(Function::Release, shard, now_ms(), args.into_args())
            .await?;
        match ReleaseReply::decode(&v) {
            ReleaseReply::Released | ReleaseReply::AlreadyReleased => Ok(()),
            ReleaseReply::Gone => Err(QueueError::NotFound(format!("job {}", job.job))),
            ReleaseReply::NotOwner => Err(QueueError::NotOwner { job: job.job }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};
    use tern_core::MessageId;

    #[test]
    fn release_sends_job_owner_and_token() {
        let job = JobId::new(MessageId::new(), 0);
        let args = ReleaseArgs {
            job,
            owner: "w1",
            token: "tok",
            history_ms: 60_000,
        };
        assert_eq!(
            texts(&args.into_args()),
            [job.to_string().as_str(), "w1", "tok", "60000"]
        );
    }

    #[test]
    fn release_replies_decode() {
        assert_eq!(
            ReleaseReply::decode(&array(vec![bulk("ok")])),
            ReleaseReply::Released
        );
        assert_eq!(
            ReleaseReply::decode(&array(vec![bulk("dup")])),
            ReleaseReply::AlreadyReleased
        );
        assert_eq!(
            ReleaseReply::decode(&array(vec![bulk("gone")])),
            ReleaseReply::Gone
        );
        assert_eq!(
            ReleaseReply::decode(&array(vec![bulk("notowner")])),
            ReleaseReply::NotOwner
        );
    }
}
