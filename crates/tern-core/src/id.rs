//! Message and job identifiers.
//!
//! A [`MessageId`] is a ULID: 48 bits of millisecond time then 80 random bits, printed as 26 Crockford base32
//! characters. Ids sort by the time they were made, and any node can mint them without coordination. A
//! [`JobId`] names one destination domain's share of a message: `<message id>.<n>`.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use ulid::Ulid;

/// Why an id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not a 26-character ULID.
    #[error("invalid message id {0:?}: expected 26 base32 characters")]
    Message(String),
    /// Not `<message id>.<n>`.
    #[error("invalid job id {0:?}: expected <message id>.<n>")]
    Job(String),
}

/// A message id: unique across nodes and sortable by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(Ulid);

impl MessageId {
    /// A new id for the current time.
    pub fn new() -> Self {
        MessageId(Ulid::generate())
    }

    /// A new id for the given time (used by tests and imports).
    pub fn at(time: SystemTime) -> Self {
        MessageId(Ulid::from_datetime(time))
    }

    /// When the id was made, to the millisecond.
    pub fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for MessageId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(s)
            .map(MessageId)
            .map_err(|_| IdError::Message(s.to_string()))
    }
}

/// One destination domain's share of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId {
    /// The message the job belongs to.
    pub message: MessageId,
    /// The job's number within the message, from 0.
    pub index: u32,
}

impl JobId {
    /// The job numbered `index` of `message`.
    pub fn new(message: MessageId, index: u32) -> Self {
        JobId { message, index }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.message, self.index)
    }
}

impl FromStr for JobId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (msg, idx) = s.split_once('.').ok_or_else(|| IdError::Job(s.to_string()))?;
        let message = msg.parse().map_err(|_| IdError::Job(s.to_string()))?;
        let index = idx.parse().map_err(|_| IdError::Job(s.to_string()))?;
        Ok(JobId { message, index })
    }
}

macro_rules! serde_via_string {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_string!(MessageId);
serde_via_string!(JobId);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn message_ids_sort_by_creation_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let earlier = MessageId::at(t);
        let later = MessageId::at(t + Duration::from_millis(1));
        assert!(earlier < later);
        assert!(earlier.to_string() < later.to_string());
        assert_eq!(earlier.timestamp_ms(), 1_800_000_000_000);
    }

    #[test]
    fn message_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| MessageId::new()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id = MessageId::new();
        assert_eq!(id.to_string().len(), 26);
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        let job = JobId::new(id, 3);
        assert_eq!(job.to_string(), format!("{id}.3"));
        assert_eq!(job.to_string().parse::<JobId>().unwrap(), job);
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), job);
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert!("nope".parse::<MessageId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<JobId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV.x".parse::<JobId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV.2".parse::<JobId>().is_ok());
    }
}
