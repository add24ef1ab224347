//! `tern.v1.SmtpTrace`: Watch, a live stream of the SMTP conversations of matching deliveries, from every
//! worker of the cluster, carried by the queue store's trace bus ([`tern_queue::TraceBus`]).
//!
//! Opening a watch registers its filter cluster-wide; workers see it within a second or so and start
//! publishing the conversations of the deliveries it matches (commands and replies, TLS details; never
//! bodies, and AUTH payloads masked by the client's transcript hook). The registration ends with the stream.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tern_proto::v1 as pb;
use tern_proto::v1::smtp_trace_server::SmtpTrace;
use tern_queue::{TraceBus, TraceFilter, TraceRecord};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::queue_status;

/// The SmtpTrace service over the store's trace bus. Authentication is done by the server's interceptor.
#[derive(Clone)]
pub struct TraceService {
    bus: Arc<dyn TraceBus>,
}

impl std::fmt::Debug for TraceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceService").finish_non_exhaustive()
    }
}

impl TraceService {
    /// The service over `bus`.
    pub fn new(bus: Arc<dyn TraceBus>) -> Self {
        TraceService { bus }
    }
}

type TraceStream = Pin<Box<dyn Stream<Item = Result<pb::SmtpTraceLine, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SmtpTrace for TraceService {
    type WatchStream = TraceStream;

    async fn watch(&self, request: Request<pb::SmtpTraceRequest>) -> Result<Response<TraceStream>, Status> {
        let req = request.into_inner();
        let nonempty = |s: &str| {
            let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
            (!s.is_empty()).then_some(s)
        };
        let filter = TraceFilter {
            domain: nonempty(&req.domain),
            mx: nonempty(&req.mx),
        };
        tracing::info!(
            domain = filter.domain.as_deref().unwrap_or("*"),
            mx = filter.mx.as_deref().unwrap_or("*"),
            "control: SMTP trace opened"
        );
        let mut subscription = self.bus.open_trace(filter).await.map_err(queue_status)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    record = subscription.next() => {
                        let Some(record) = record else {
                            let _ = tx
                                .send(Err(Status::unavailable("the trace bus closed; open the trace again")))
                                .await;
                            return;
                        };
                        if tx.send(Ok(line(record))).await.is_err() {
                            return;
                        }
                    }
                    // The client went away: dropping the subscription ends the registration.
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A trace record as the API shows it.
fn line(r: TraceRecord) -> pb::SmtpTraceLine {
    pb::SmtpTraceLine {
        time_ms: r.time_ms,
        worker: r.worker,
        session: r.session,
        domain: r.domain,
        mx: r.mx,
        ip: r.ip,
        kind: r.kind,
        text: r.text,
    }
}
