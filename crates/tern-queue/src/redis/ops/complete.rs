//! Completion: records the outcomes of attempts (`complete.lua`), many jobs per call.

use std::collections::{BTreeMap, BTreeSet};

use redis::Value;
use tern_core::JobId;
use tern_core::time::now_ms;

use super::{Arg, arg, codec, count, status};
use crate::QueueError;
use crate::model::{Completion, JobLease, Outcome, OutcomeKind, RecipientStatus};
use crate::redis::library::Function;
use crate::redis::{RedisQueue, ShardCalls};

/// The most jobs one `complete` call records.
const COMPLETE_MAX_JOBS: usize = 200;

/// The arguments of one job in a `complete` call: its id, the attempt details (token, kind, retry time,
/// reply, MX, IP, TLS, DSN id) and its per-recipient results.
pub(crate) struct JobOutcome {
    id: Arg,
    details: [Arg; 8],
    results: Vec<Arg>,
}

/// An attempt detail (MX, IP, TLS, DSN id) as stored: a unit separator (which separates the fields of a
/// history line, `keys.rs`) becomes a space. Such details come from DNS and the TLS library; none holds one.
fn detail(value: Option<String>) -> Arg {
    let mut value = value.unwrap_or_default();
    if value.contains('\u{1f}') {
        value = value.replace('\u{1f}', " ");
    }
    value.into_bytes()
}

impl JobOutcome {
    /// A job's outcome; an outcome that leaves recipients pending without a retry time is refused.
    pub(crate) fn new(job: &JobLease, outcome: Outcome) -> Result<JobOutcome, QueueError> {
        let (kind, retry) = match outcome.kind {
            OutcomeKind::Delivered => ("delivered", String::new()),
            OutcomeKind::Deferred { until_ms } => ("deferred", until_ms.to_string()),
            OutcomeKind::Failed => ("failed", String::new()),
            OutcomeKind::Expired => ("expired", String::new()),
        };
        if retry.is_empty()
            && outcome
                .recipients
                .iter()
                .any(|r| r.status == RecipientStatus::Pending)
        {
            return Err(QueueError::InvalidOutcome(
                "recipients left pending need a deferred outcome with a retry time".into(),
            ));
        }
        let attempt = outcome.attempt.unwrap_or_default();
        let mut results = Vec::with_capacity(1 + 3 * outcome.recipients.len());
        results.push(arg(outcome.recipients.len()));
        for r in outcome.recipients {
            let state = match r.status {
                RecipientStatus::Delivered => "d",
                RecipientStatus::Pending => "p",
                RecipientStatus::Failed => "f",
            };
            results.extend([arg(r.index), arg(state), r.reply.unwrap_or_default().into_bytes()]);
        }
        Ok(JobOutcome {
            id: arg(job.job),
            details: [
                job.token.as_bytes().to_vec(),
                arg(kind),
                arg(retry),
                outcome.reply.unwrap_or_default().into_bytes(),
                detail(attempt.remote_mx),
                detail(attempt.remote_ip),
                detail(attempt.tls),
                detail(attempt.dsn),
            ],
            results,
        })
    }
}

/// Whether `outcome` may leave the job for a later attempt (deferred, or a recipient still pending).
fn reschedules(outcome: &Outcome) -> bool {
    matches!(outcome.kind, OutcomeKind::Deferred { .. })
        || outcome
            .recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Pending)
}

/// The arguments of one `complete` call: the owner, the history retention (ms, 0: none kept), then each
/// job. A job whose attempt details are the previous job's sends `=` for them (the jobs of one claim usually
/// share them).
pub(crate) fn complete_args(owner: &str, history_ms: u64, jobs: &[&JobOutcome]) -> Vec<Arg> {
    let size = jobs
        .iter()
        .map(|j| 2 + j.details.len() + j.results.len())
        .sum::<usize>();
    let mut args = Vec::with_capacity(3 + size);
    args.push(arg(owner));
    args.push(arg(history_ms));
    args.push(arg(jobs.len()));
    let mut previous: Option<&[Arg; 8]> = None;
    for job in jobs {
        args.push(job.id.clone());
        if previous == Some(&job.details) {
            args.push(arg("="));
        } else {
            args.extend(job.details.iter().cloned());
        }
        args.extend(job.results.iter().cloned());
        previous = Some(&job.details);
    }
    args
}

/// One job's answer of `complete`.
pub(crate) fn decode_completion(v: &Value, job: JobId) -> Result<Completion, QueueError> {
    match status(v).as_str() {
        "finished" => Ok(Completion::Finished),
        "deferred" => Ok(Completion::Deferred {
            next_attempt_ms: count(codec::items(v).get(1)),
        }),
        "dup" => Ok(Completion::AlreadyDone),
        "gone" => Ok(Completion::Gone),
        "notowner" => Err(QueueError::NotOwner { job }),
        other => Err(QueueError::Backend(format!(
            "unexpected complete reply {other:?}"
        ))),
    }
}

impl RedisQueue {
    /// [`crate::Queue::complete_batch`]: one `complete` call per shard and up to [`COMPLETE_MAX_JOBS`]
    /// jobs, every shard's calls in one pipeline on one server ([`RedisQueue::call_shards`]).
    pub(crate) async fn complete_jobs(
        &self,
        owner: &str,
        jobs: Vec<(JobLease, Outcome)>,
    ) -> Vec<Result<Completion, QueueError>> {
        let n = jobs.len();
        let mut results: Vec<Option<Result<Completion, QueueError>>> = vec![None; n];
        // Per shard: the jobs' positions and their arguments.
        let mut per_shard: BTreeMap<u16, Vec<(usize, JobOutcome)>> = BTreeMap::new();
        // Shards where a job goes back to its schedule for a later attempt: the worker's claims should learn
        // its time, which no wake token announces (`quiet.rs`).
        let mut rescheduling = BTreeSet::new();
        let mut ids = Vec::with_capacity(n);
        for (i, (lease, outcome)) in jobs.into_iter().enumerate() {
            let shard = self.keys.shard_of_domain(&lease.domain);
            if reschedules(&outcome) {
                rescheduling.insert(shard);
            }
            match JobOutcome::new(&lease, outcome) {
                Ok(job) => per_shard.entry(shard).or_default().push((i, job)),
                Err(e) => results[i] = Some(Err(e)),
            }
            ids.push(lease.job);
        }
        let now = now_ms();
        let history_ms = self.history_ms();
        let mut parts = Vec::with_capacity(per_shard.len());
        let mut members = Vec::with_capacity(per_shard.len());
        for (shard, list) in per_shard {
            let mut of_calls = Vec::new();
            let mut calls = Vec::new();
            for chunk in list.chunks(COMPLETE_MAX_JOBS) {
                let jobs: Vec<&JobOutcome> = chunk.iter().map(|(_, j)| j).collect();
                calls.push(complete_args(owner, history_ms, &jobs));
                of_calls.push(chunk.iter().map(|(i, _)| *i).collect::<Vec<_>>());
            }
            parts.push(ShardCalls {
                shard,
                pre: Vec::new(),
                function: Function::Complete,
                calls,
            });
            members.push(of_calls);
        }
        let replies = self.call_shards(parts, now, false).await;
        for &shard in &rescheduling {
            self.quiet.touched(shard);
        }
        for (members, reply) in members
            .into_iter()
            .zip(replies)
            .flat_map(|(m, r)| m.into_iter().zip(r))
        {
            match reply {
                Ok(v) => {
                    let replies = codec::items(&v);
                    for (k, i) in members.into_iter().enumerate() {
                        let job = ids[i];
                        results[i] = Some(match replies.get(k) {
                            Some(r) => decode_completion(r, job),
                            None => Err(QueueError::Backend(format!(
                                "missing complete reply for job {job}"
                            ))),
                        });
                    }
                }
                Err(e) => {
                    for i in members {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(QueueError::Backend("no result".into()))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeliveryAttempt, RecipientResult};
    use crate::redis::ops::test_values::{array, bulk, texts};
    use tern_core::MessageId;

    fn lease(index: u32) -> JobLease {
        JobLease {
            job: JobId::new("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().expect("id"), index),
            domain: "d.test".into(),
            token: "01ARZ3NDEKTSV4RRFFQ69G5FAW".into(),
        }
    }

    #[test]
    fn jobs_of_one_attempt_share_its_details_and_recipients_follow() {
        let mut outcome = Outcome::delivered();
        outcome.reply = Some("250 ok".into());
        outcome.attempt = Some(DeliveryAttempt {
            remote_mx: Some("mx.d.test".into()),
            remote_ip: Some("192.0.2.1".into()),
            tls: Some("TLSv1.3".into()),
            dsn: None,
        });
        let first = JobOutcome::new(&lease(0), outcome.clone()).expect("outcome");
        outcome.recipients = vec![RecipientResult {
            index: 1,
            status: RecipientStatus::Failed,
            reply: Some("550 no".into()),
        }];
        let second = JobOutcome::new(&lease(1), outcome).expect("outcome");
        let args = texts(&complete_args("w1", 7, &[&first, &second]));
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert_eq!(
            args,
            [
                "w1",
                "7",
                "2",
                &format!("{id}.0"),
                "01ARZ3NDEKTSV4RRFFQ69G5FAW",
                "delivered",
                "",
                "250 ok",
                "mx.d.test",
                "192.0.2.1",
                "TLSv1.3",
                "",
                "0",
                &format!("{id}.1"),
                "=",
                "1",
                "1",
                "f",
                "550 no",
            ]
        );
    }

    #[test]
    fn a_failure_carries_its_dsn_id_and_details_lose_unit_separators() {
        let outcome = Outcome::fail("550 no").with_attempt(DeliveryAttempt {
            remote_mx: Some("mx\u{1f}.d.test".into()),
            remote_ip: None,
            tls: None,
            dsn: Some("01ARZ3NDEKTSV4RRFFQ69G5FAX".into()),
        });
        let job = JobOutcome::new(&lease(0), outcome).expect("outcome");
        let args = texts(&complete_args("w1", 1000, &[&job]));
        assert_eq!(
            args[4..12],
            [
                "01ARZ3NDEKTSV4RRFFQ69G5FAW",
                "failed",
                "",
                "550 no",
                "mx .d.test",
                "",
                "",
                "01ARZ3NDEKTSV4RRFFQ69G5FAX"
            ]
        );
    }

    #[test]
    fn a_deferral_carries_its_retry_time_and_pending_needs_one() {
        let job =
            JobOutcome::new(&lease(0), Outcome::defer(1_795_889_291_049, "421 later")).expect("outcome");
        let args = texts(&complete_args("w1", 0, &[&job]));
        assert_eq!(args[5..8], ["deferred", "1795889291049", "421 later"]);
        let mut pending = Outcome::fail("550 no");
        pending.recipients = vec![RecipientResult {
            index: 0,
            status: RecipientStatus::Pending,
            reply: None,
        }];
        assert!(matches!(
            JobOutcome::new(&lease(0), pending),
            Err(QueueError::InvalidOutcome(_))
        ));
    }

    #[test]
    fn complete_replies_decode_per_job() {
        let job = JobId::new(MessageId::new(), 0);
        assert_eq!(
            decode_completion(&array(vec![bulk("finished")]), job),
            Ok(Completion::Finished)
        );
        assert_eq!(
            decode_completion(&array(vec![bulk("deferred"), bulk("42")]), job),
            Ok(Completion::Deferred { next_attempt_ms: 42 })
        );
        assert_eq!(
            decode_completion(&array(vec![bulk("dup")]), job),
            Ok(Completion::AlreadyDone)
        );
        assert_eq!(
            decode_completion(&array(vec![bulk("gone")]), job),
            Ok(Completion::Gone)
        );
        assert_eq!(
            decode_completion(&array(vec![bulk("notowner")]), job),
            Err(QueueError::NotOwner { job })
        );
        assert!(matches!(
            decode_completion(&Value::Nil, job),
            Err(QueueError::Backend(_))
        ));
    }
}
