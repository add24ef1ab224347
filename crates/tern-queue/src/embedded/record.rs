//! A job as the embedded store keeps it: the durable record (what the `jobs` table holds, and what a restart
//! reads back) and, while the job is claimed, its lease (kept in memory only: see `mod.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_core::{Envelope, JobId};

use crate::model::{Job, JobState, RecipientState, RecipientStatus};

/// The durable part of a job: everything but a claim. Stored as JSON in the `jobs` table under the job id,
/// rewritten whenever one of these fields changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    /// The destination domain (lower-cased).
    #[serde(rename = "dom")]
    pub domain: String,
    /// Set by an admin bounce to [`crate::model::BOUNCE_SCHEDULE`], the schedule the job then waits on; absent: its domain's.
    #[serde(rename = "sched", default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The envelope with this job's recipients only, and the DSN parameters.
    #[serde(rename = "env")]
    pub envelope: Envelope,
    /// Per recipient, in envelope order: its state and its last reply.
    #[serde(rename = "rcpt")]
    pub recipients: Vec<(RecipientStatus, Option<String>)>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// The lower-cased sender address (`""` for the null sender), for listing.
    pub sender: String,
    /// When the message was queued (Unix ms).
    pub first: u64,
    /// When the job is (or was last) due (Unix ms).
    pub next: u64,
    /// Finished attempts.
    #[serde(rename = "att", default)]
    pub attempts: u32,
    /// The last error or deferral reply.
    #[serde(rename = "err", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An operator asked for a bounce.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bounce: bool,
    /// The operator's reason given with the bounce, for the DSN.
    #[serde(rename = "why", default, skip_serializing_if = "Option::is_none")]
    pub bounce_reason: Option<String>,
    /// Held by an operator: off its schedule, never claimed, until unheld.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// `c:<token>` or `r:<token>`: the claim that last completed (without finishing the job) or released it,
    /// so that a repeated call is recognised.
    #[serde(rename = "done", default, skip_serializing_if = "Option::is_none")]
    pub done_token: Option<String>,
    /// The size of the message's body in bytes (the body itself is in the `bodies` table, once per message).
    #[serde(rename = "size", default)]
    pub body_size: u64,
}

impl JobRecord {
    /// The schedule the job waits on: its domain's, or `#bounce` after an admin bounce.
    pub(crate) fn schedule(&self) -> &str {
        self.schedule.as_deref().unwrap_or(&self.domain)
    }

    /// The state of a job that is not in flight: held by an operator, or deferred once it has been tried.
    pub(crate) fn waiting_state(&self) -> JobState {
        if self.held {
            JobState::Held
        } else if self.attempts > 0 {
            JobState::Deferred
        } else {
            JobState::Queued
        }
    }

    /// The addresses of the recipients still pending.
    pub(crate) fn pending_addresses(&self) -> Vec<String> {
        self.envelope
            .recipients
            .iter()
            .zip(&self.recipients)
            .filter(|(_, (status, _))| *status == RecipientStatus::Pending)
            .map(|(r, _)| r.address.to_string())
            .collect()
    }
}

/// A claim's hold on a job (memory only: a claim ends with the process that made it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Flight {
    pub owner: String,
    /// The claim id.
    pub token: String,
    /// The lease deadline (Unix ms).
    pub lease_until: u64,
    /// The schedule the job was claimed from (its domain, or `#bounce`).
    pub schedule: String,
}

/// A live job: its record and, while claimed, its lease.
#[derive(Clone, Debug)]
pub(crate) struct LiveJob {
    pub record: JobRecord,
    pub flight: Option<Flight>,
}

impl LiveJob {
    pub(crate) fn state(&self) -> JobState {
        if self.flight.is_some() {
            JobState::InFlight
        } else {
            self.record.waiting_state()
        }
    }

    /// The job as the [`crate::Queue`] shows it.
    pub(crate) fn view(&self, id: JobId) -> Job {
        let r = &self.record;
        Job {
            id,
            domain: r.domain.clone(),
            envelope: r.envelope.clone(),
            recipients: r
                .envelope
                .recipients
                .iter()
                .zip(&r.recipients)
                .map(|(recipient, (status, reply))| RecipientState {
                    recipient: recipient.clone(),
                    status: *status,
                    reply: reply.clone(),
                })
                .collect(),
            state: self.state(),
            attempts: r.attempts,
            first_queued_ms: r.first,
            next_attempt_ms: r.next,
            last_error: r.error.clone(),
            tags: r.tags.clone(),
            trace: r.trace.clone(),
            admin_bounce: r.bounce,
            bounce_reason: r.bounce_reason.clone(),
            owner: self.flight.as_ref().map(|f| f.owner.clone()),
            lease_until_ms: self.flight.as_ref().map(|f| f.lease_until),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BOUNCE_SCHEDULE;
    use tern_core::{MessageId, Recipient, ReversePath};

    fn record() -> JobRecord {
        let envelope = Envelope::new(
            ReversePath::Mailbox("s@a.test".parse().expect("sender")),
            vec![
                Recipient::new("x@b.test".parse().expect("rcpt")),
                Recipient::new("y@b.test".parse().expect("rcpt")),
            ],
        );
        JobRecord {
            domain: "b.test".into(),
            schedule: None,
            envelope,
            recipients: vec![
                (RecipientStatus::Delivered, Some("250 ok".into())),
                (RecipientStatus::Pending, None),
            ],
            tags: BTreeMap::new(),
            trace: None,
            sender: "s@a.test".into(),
            first: 1,
            next: 2,
            attempts: 0,
            error: None,
            bounce: false,
            bounce_reason: None,
            held: false,
            done_token: None,
            body_size: 10,
        }
    }

    #[test]
    fn a_record_round_trips_and_leaves_defaults_out() {
        let r = record();
        let json = serde_json::to_string(&r).expect("json");
        assert!(
            !json.contains("sched")
                && !json.contains("bounce")
                && !json.contains("tags")
                && !json.contains("why")
                && !json.contains("held")
        );
        let back: JobRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
    }

    #[test]
    fn the_view_follows_the_record_and_the_lease() {
        let mut live = LiveJob {
            record: record(),
            flight: None,
        };
        let id = JobId::new(MessageId::new(), 0);
        let job = live.view(id);
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.pending().count(), 1);
        assert_eq!(live.record.pending_addresses(), ["y@b.test"]);
        live.record.attempts = 1;
        assert_eq!(live.state(), JobState::Deferred);
        live.flight = Some(Flight {
            owner: "w".into(),
            token: "t".into(),
            lease_until: 9,
            schedule: "b.test".into(),
        });
        let job = live.view(id);
        assert_eq!(
            (job.state, job.owner.as_deref(), job.lease_until_ms),
            (JobState::InFlight, Some("w"), Some(9))
        );
        live.record.schedule = Some(BOUNCE_SCHEDULE.into());
        assert_eq!(live.record.schedule(), BOUNCE_SCHEDULE);
        live.flight = None;
        live.record.held = true;
        live.record.bounce_reason = Some("spam".into());
        let job = live.view(id);
        assert_eq!(
            (job.state, job.bounce_reason.as_deref()),
            (JobState::Held, Some("spam"))
        );
    }
}
