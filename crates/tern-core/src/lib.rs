//! Core types shared by every tern role.
//!
//! Nothing here does I/O. The types are what travels between ingest, the queue, delivery workers and the control
//! plane: message and job ids, the SMTP envelope with its DSN parameters, how a reply is classified, the retry
//! schedule, the human durations used throughout the configuration, and the shutdown signal.
#![forbid(unsafe_code)]

pub mod duration;
pub mod envelope;
pub mod id;
pub mod message;
pub mod retry;
pub mod shutdown;
pub mod time;

pub use duration::{DurationError, HumanDuration};
pub use envelope::{Envelope, EnvelopeError, Recipient};
pub use id::{IdError, JobId, MessageId};
pub use retry::{RetryDecision, RetrySchedule, RetryScheduleError};
pub use shutdown::Shutdown;

/// The SMTP protocol types the envelope is built from, re-exported so that users of tern-core need not depend
/// on tern-smtp for them.
pub use tern_smtp::{Body, Mailbox, Notify, OriginalRecipient, Ret, ReversePath};

/// How a reply is classified: tern-smtp's RFC 5321 [`ReplyClass`], the only one
/// (delivery derives its success / transient / permanent decision from it).
pub use tern_smtp::ReplyClass;
