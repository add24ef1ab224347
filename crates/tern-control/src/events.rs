//! `tern.v1.Events`: Watch, a server stream of the queue's events from a position or from now.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tern_proto::v1 as pb;
use tern_proto::v1::events_server::Events;
use tern_queue::{Event, EventKind, EventPos, Queue};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::{self, TagFilter, invalid, queue_status};

/// Events read per call to the queue.
const BATCH: usize = 500;
/// How long one read waits for new events.
const BLOCK: Duration = Duration::from_secs(1);
/// The pause after a failed read before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// The Events service over a queue. Authentication is done by the server's interceptor.
#[derive(Clone)]
pub struct EventsService {
    queue: Arc<dyn Queue>,
}

impl std::fmt::Debug for EventsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsService").finish_non_exhaustive()
    }
}

impl EventsService {
    /// The service over `queue`.
    pub fn new(queue: Arc<dyn Queue>) -> Self {
        EventsService { queue }
    }
}

/// What a watcher wants to see.
#[derive(Clone, Debug, Default)]
struct WatchFilter {
    kinds: HashSet<EventKind>,
    domain: Option<String>,
    tag: Option<TagFilter>,
}

impl WatchFilter {
    fn from_request(req: &pb::WatchRequest) -> Result<WatchFilter, Status> {
        let mut kinds = HashSet::new();
        for t in req.types.iter().flat_map(|t| t.split(',')).map(str::trim) {
            if t.is_empty() {
                continue;
            }
            kinds.insert(
                t.to_ascii_lowercase()
                    .parse::<EventKind>()
                    .map_err(|e| invalid("types", e))?,
            );
        }
        let domain = req.domain.trim().trim_end_matches('.').to_ascii_lowercase();
        Ok(WatchFilter {
            kinds,
            domain: (!domain.is_empty()).then_some(domain),
            tag: TagFilter::parse("tag", &req.tag)?,
        })
    }

    fn passes(&self, e: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.domain.as_ref().is_none_or(|d| *d == e.domain)
            && self.tag.as_ref().is_none_or(|t| t.matches(&e.tags))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::QueueEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Events for EventsService {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let req = request.into_inner();
        let filter = WatchFilter::from_request(&req)?;
        let from = req.from.trim();
        let start: Option<EventPos> = match from {
            "" | "now" => Some(self.queue.events_end().await.map_err(queue_status)?),
            "start" => {
                // Fails early (UNAVAILABLE) when the queue cannot be reached.
                self.queue.events_end().await.map_err(queue_status)?;
                None
            }
            other => Some(other.parse::<EventPos>().map_err(|e| invalid("from", e))?),
        };
        let stop_at_end = req.stop_at_end;
        let (tx, rx) = mpsc::channel(256);
        let queue = Arc::clone(&self.queue);
        tokio::spawn(async move {
            let mut pos = start;
            loop {
                if tx.is_closed() {
                    return;
                }
                let block = (!stop_at_end).then_some(BLOCK);
                let (events, next) = match queue.read_events(pos.as_ref(), BATCH, block).await {
                    Ok(r) => r,
                    Err(e) if stop_at_end => {
                        // A one-shot read has no one to wait for: report the outage and end.
                        let _ = tx.send(Err(queue_status(e))).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control: event watch cannot read the queue; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                if events.is_empty() && stop_at_end {
                    return;
                }
                for e in events.iter().filter(|e| filter.passes(e)) {
                    // The backend's position after this event: a client resuming from it misses nothing.
                    let item = convert::event(e, e.position.to_string());
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                pos = Some(next);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, kind: EventKind, domain: &str) -> Event {
        Event {
            kind,
            time_ms: 0,
            message: None,
            job: None,
            domain: domain.into(),
            recipients: vec![],
            reply: None,
            attempt: 0,
            tags: [("tenant".to_string(), "a".to_string())].into(),
            remote_mx: None,
            remote_ip: None,
            tls: None,
            sender: None,
            dsn: None,
            id: id.into(),
            position: EventPos::default(),
        }
    }

    #[test]
    fn filters() {
        let f = WatchFilter::from_request(&pb::WatchRequest {
            types: vec!["delivered,failed".into()],
            domain: "B.example".into(),
            tag: "tenant=a".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(f.passes(&ev("0/1-0", EventKind::Delivered, "b.example")));
        assert!(!f.passes(&ev("0/1-0", EventKind::Queued, "b.example")));
        assert!(!f.passes(&ev("0/1-0", EventKind::Failed, "c.example")));
        let bad = WatchFilter::from_request(&pb::WatchRequest {
            types: vec!["exploded".into()],
            ..Default::default()
        });
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
