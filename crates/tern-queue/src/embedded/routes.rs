//! [`RouteStore`] and [`TraceBus`] for the embedded store. (Stub: to be built.)

use async_trait::async_trait;

use crate::embedded::EmbeddedQueue;
use crate::{QueueError, Route, RouteStore, TraceBus, TraceFilter, TraceRecord, TraceSubscription};

#[async_trait]
impl RouteStore for EmbeddedQueue {
    async fn set_route(&self, _route: &Route) -> Result<(), QueueError> {
        Err(QueueError::Backend("routes are not built yet".into()))
    }

    async fn remove_route(&self, _domain: &str) -> Result<bool, QueueError> {
        Ok(false)
    }

    async fn routes(&self) -> Result<Vec<Route>, QueueError> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl TraceBus for EmbeddedQueue {
    async fn trace_filters(&self) -> Result<Vec<TraceFilter>, QueueError> {
        Ok(Vec::new())
    }

    async fn publish_trace(&self, _records: &[TraceRecord]) -> Result<(), QueueError> {
        Ok(())
    }

    async fn open_trace(&self, _filter: TraceFilter) -> Result<TraceSubscription, QueueError> {
        Err(QueueError::Backend("traces are not built yet".into()))
    }
}
