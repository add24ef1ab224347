//! One message, queued or finished (GetMessage), and finding messages (FindMessages).
//!
//! A queued message is read from the queue (its jobs, per-recipient state and content); its attempts, and
//! everything about a finished message (delivered, bounced, expired, deleted), come from the store's
//! message history ([`tern_queue::HistoryStore`]), kept for `queue.history`. Without a history store the
//! attempts are looked for in the retained event stream, as before there was one.

use tern_core::MessageId;
use tern_proto::v1 as pb;
use tern_queue::{EventKind, FinalOutcome, HistoryQuery, MessageHistory, MessageInfo};
use tonic::{Response, Status};

use crate::admin::AdminService;
use crate::convert::{self, AnyId, TagFilter, invalid, queue_status};

/// The most events GetMessage reads looking for a message's attempts when there is no history store.
pub const EVENT_SCAN_BUDGET: usize = 200_000;
/// The default and largest number of messages FindMessages returns.
const DEFAULT_FIND: usize = 50;
const MAX_FIND: usize = 1000;

impl AdminService {
    /// GetMessage.
    pub(crate) async fn message(
        &self,
        req: pb::GetMessageRequest,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        if req.id.trim().is_empty() {
            return Err(invalid("id", "is empty"));
        }
        let id = AnyId::parse("id", &req.id)?.message();
        let info = self.queue.get_message(id).await.map_err(queue_status)?;
        let history = match &self.history {
            Some(store) => store.message_history(id).await.map_err(queue_status)?,
            None => None,
        };
        let (info, history) = match (info, history) {
            (None, None) => {
                return Err(Status::not_found(if self.history.is_some() {
                    format!("no message {id} in the queue or its history")
                } else {
                    format!("no message {id} in the queue")
                }));
            }
            pair => pair,
        };
        let attempts = match &history {
            Some(h) => h.events.iter().map(convert::attempt).collect(),
            None => self.attempts_from_events(id).await?,
        };
        let mut response = pb::GetMessageResponse {
            message_id: id.to_string(),
            accepted_ms: id.timestamp_ms(),
            attempts,
            ..Default::default()
        };
        if let Some(h) = &history {
            response.sender = h.sender.as_deref().map(history_sender).unwrap_or_default();
            response.tags = h.tags.clone().into_iter().collect();
            response.dsn_ids = h.dsns.clone();
            response.recipients = h
                .recipients
                .iter()
                .map(|r| pb::HistoryRecipient {
                    address: r.address.clone(),
                    domain: r.domain.clone(),
                    outcome: r.outcome.map_or("pending", FinalOutcome::as_str).to_string(),
                    reply: r.reply.clone().unwrap_or_default(),
                })
                .collect();
            if info.is_none() {
                response.finished = true;
                response.outcome = h.outcome.map(|o| o.as_str().to_string()).unwrap_or_default();
                response.finished_ms = h.finished_ms.unwrap_or(0);
            }
        }
        match info {
            Some(info) => self.fill_queued(&mut response, &info, req.include_body).await?,
            None => {
                response.content_note = "the message has left the queue; its content is not kept".into();
            }
        }
        Ok(Response::new(response))
    }

    /// The parts of a GetMessage answer only a queued message has: its jobs and its content.
    async fn fill_queued(
        &self,
        response: &mut pb::GetMessageResponse,
        info: &MessageInfo,
        include_body: bool,
    ) -> Result<(), Status> {
        let suspended = self.suspended_domains().await?;
        response.size = info.body_size;
        if let Some(first) = info.jobs.first() {
            response.sender = convert::sender_text(&first.envelope.sender);
            response.tags = first.tags.clone().into_iter().collect();
        }
        response.jobs = info
            .jobs
            .iter()
            .map(|j| convert::job_detail(j, &suspended))
            .collect();
        match self.queue.read_body(info.id).await.map_err(queue_status)? {
            Some(msg) => {
                response.headers =
                    String::from_utf8_lossy(tern_core::message::header_section(&msg)).into_owned();
                if include_body {
                    response.body = msg.to_vec();
                }
                response.content_available = true;
            }
            // Its last job finished between the two reads.
            None => response.content_note = "the message left the queue while it was read".into(),
        }
        Ok(())
    }

    /// A message's attempts from the retained event stream (no history store).
    async fn attempts_from_events(&self, id: MessageId) -> Result<Vec<pb::Attempt>, Status> {
        let mut attempts = Vec::new();
        let mut position = None;
        let mut read = 0usize;
        while read < EVENT_SCAN_BUDGET {
            let (events, next) = self
                .queue
                .read_events(position.as_ref(), 1000, None)
                .await
                .map_err(queue_status)?;
            if events.is_empty() {
                break;
            }
            read += events.len();
            attempts.extend(
                events
                    .iter()
                    .filter(|e| {
                        e.message == Some(id) && !matches!(e.kind, EventKind::Suspended | EventKind::Resumed)
                    })
                    .map(convert::attempt),
            );
            position = Some(next);
        }
        Ok(attempts)
    }

    /// FindMessages.
    pub(crate) async fn find(
        &self,
        req: pb::FindMessagesRequest,
    ) -> Result<Response<pb::FindMessagesResponse>, Status> {
        let Some(store) = &self.history else {
            return Err(Status::failed_precondition(
                "this control server has no message history (queue.history)",
            ));
        };
        let nonempty = |s: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        };
        let recipient = nonempty(&req.recipient).map(|r| r.trim_matches(['<', '>']).to_string());
        let sender = nonempty(&req.sender).map(|s| s.trim_matches(['<', '>']).to_string());
        let tag =
            TagFilter::parse("tag", &req.tag)?.map(|t| (t.key().to_string(), t.value().map(str::to_string)));
        if recipient.is_none() && sender.is_none() && tag.is_none() && req.since_ms == 0 {
            return Err(invalid(
                "recipient",
                "give a recipient, a sender, a tag or a time to search from",
            ));
        }
        let limit = match req.limit as usize {
            0 => DEFAULT_FIND,
            n if n > MAX_FIND => return Err(invalid("limit", format!("{n} is more than {MAX_FIND}"))),
            n => n,
        };
        let query = HistoryQuery {
            recipient,
            sender,
            tag,
            since_ms: req.since_ms,
        };
        let (found, complete) = store.find(&query, limit).await.map_err(queue_status)?;
        Ok(Response::new(pb::FindMessagesResponse {
            messages: found.iter().map(found_message).collect(),
            complete,
        }))
    }
}

/// A history's sender as shown: `<>` for the null sender.
fn history_sender(sender: &str) -> String {
    if sender.is_empty() {
        "<>".to_string()
    } else {
        sender.to_string()
    }
}

/// A message FindMessages found.
fn found_message(h: &MessageHistory) -> pb::FoundMessage {
    let mut recipients: Vec<String> = Vec::new();
    for r in &h.recipients {
        if !recipients.contains(&r.address) {
            recipients.push(r.address.clone());
        }
    }
    pb::FoundMessage {
        message_id: h.id.to_string(),
        sender: h.sender.as_deref().map(history_sender).unwrap_or_default(),
        recipients,
        tags: h.tags.clone().into_iter().collect(),
        accepted_ms: h.accepted_ms,
        outcome: h.outcome.map_or("queued", FinalOutcome::as_str).to_string(),
        finished_ms: h.finished_ms.unwrap_or(0),
    }
}
