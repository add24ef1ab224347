//! [`HistoryStore`] for the Redis backend. (Stub: to be built.)

use async_trait::async_trait;
use tern_core::MessageId;

use crate::redis::RedisQueue;
use crate::{Event, HistoryStore, QueueError};

#[async_trait]
impl HistoryStore for RedisQueue {
    async fn history_events(&self, _id: MessageId) -> Result<Vec<Event>, QueueError> {
        Ok(Vec::new())
    }

    async fn history_ids(
        &self,
        _since_ms: u64,
        _before: Option<MessageId>,
        _limit: usize,
    ) -> Result<Vec<MessageId>, QueueError> {
        Ok(Vec::new())
    }
}
