//! The queue's error type.

use tern_core::JobId;

/// Why a queue operation failed.
///
/// [`QueueError::Unavailable`] and [`QueueError::NotSent`] are the ones to retry (see
/// [`QueueError::is_unavailable`]): the store could not be reached or did not answer in time (ingest answers
/// `451 4.3.0`, gRPC `UNAVAILABLE`, workers back off). The others are logic errors: retrying the same call
/// gives the same answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The store is unreachable, timed out, or is not ready (loading, cluster down). Nothing was
    /// acknowledged; the call may or may not have taken effect, and every call is safe to repeat.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The store is unreachable and the call never left this process: no connection could be had (it could
    /// not be made, or none was free in time), so nothing of it was sent and nothing was stored. Only said
    /// where that is certain: a client that may have sent the call (and repeated it itself) reports
    /// [`QueueError::Unavailable`]. A call over several shards says it of the part that failed; an enqueue
    /// says it per message.
    #[error("queue unavailable: {0} (nothing was sent)")]
    NotSent(String),
    /// The caller does not own the job: its lease expired (and the job went back to the schedule or was
    /// claimed by another worker), or the token is wrong. Nothing was changed.
    #[error("job {job} is not owned by this caller (lease expired or claimed by another owner)")]
    NotOwner {
        /// The job.
        job: JobId,
    },
    /// No job or message with that id (already finished, deleted, or never queued).
    #[error("not found: {0}")]
    NotFound(String),
    /// The message cannot be queued (for example an envelope with no recipients).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The outcome is inconsistent (for example recipients left pending with no retry time).
    #[error("invalid outcome: {0}")]
    InvalidOutcome(String),
    /// The options are unusable (bad URL, zero shards).
    #[error("queue configuration: {0}")]
    Config(String),
    /// The store answered with an error that is not an outage (a bug, or data of the wrong type).
    #[error("queue backend error: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("corrupt queue record: {0}")]
    Corrupt(String),
}

impl QueueError {
    /// Whether the error is an outage worth retrying later (as opposed to a logic error):
    /// [`QueueError::Unavailable`] or [`QueueError::NotSent`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::Unavailable(_) | QueueError::NotSent(_))
    }

    /// Whether the store refused the connection outright (nothing listens there): the store is plainly
    /// down, unlike a store that accepted the connection and stalled, which may answer again soon. The
    /// backend keeps the operating system's reason in the message ("Connection refused").
    pub fn is_refused(&self) -> bool {
        match self {
            QueueError::Unavailable(m) | QueueError::NotSent(m) => m.to_ascii_lowercase().contains("refused"),
            _ => false,
        }
    }
}
