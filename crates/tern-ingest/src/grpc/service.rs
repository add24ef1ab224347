//! The `tern.v1.Submission` service: check and build each message, enqueue, and answer only once the queue
//! has acknowledged. The caller was authenticated before the body was read (see
//! [`AuthInterceptor`]); the per-call limits are in [`super::limit`].
//!
//! | outcome | status |
//! |---|---|
//! | queued (or a repeated idempotency key) | OK, with the message id (for a repeated key, the first message's id and recipients) |
//! | no key, or an unknown one | `UNAUTHENTICATED` |
//! | the envelope sender's domain is not among the key's domains | `PERMISSION_DENIED` |
//! | a bad field, no recipients, an empty or oversized message | `INVALID_ARGUMENT`, naming the field |
//! | the queue refused the message as invalid | `INVALID_ARGUMENT` |
//! | any other queue failure (unreachable, backend error, corrupt record, configuration), after repeating the write for up to `ingest.enqueue_retry_for` (less when the call's deadline or a shutdown comes first) | `UNAVAILABLE`, saying whether the message may have been queued (see [`crate::enqueue`]) |

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use tern_core::{Envelope, MessageId, Recipient, ReversePath, Shutdown};
use tern_proto::v1::submission_server::Submission;
use tern_proto::v1::{
    RejectedRecipient, SendBatchRequest, SendBatchResponse, SendError, SendRequest, SendResponse, SendResult,
    send_request::Content, send_result,
};
use tern_queue::{EnqueueReceipt, NewMessage, Queue, QueueError};
use tern_server::auth::{AuthInterceptor, Authenticator, Principal};
use tern_telemetry::metrics::Listener;
use tern_telemetry::trace::message_span;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::compose::{self, Built};
use super::limit::AnswerBy;
use super::validate::{self, FieldError, MAX_BATCH};
use crate::enqueue::{self, Bounds, EnqueueFailure, EnqueueRetry};

/// What the service needs besides the queue.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest message (as queued, after MIME encoding), in bytes.
    pub max_message_size: usize,
    /// Recipients per message; the rest are returned as rejected.
    pub max_recipients: usize,
    /// The host name in generated Message-IDs (`<id@hostname>`).
    pub hostname: String,
}

/// The Submission service.
#[derive(Clone)]
pub struct SubmissionService {
    queue: Arc<dyn Queue>,
    auth: Arc<Authenticator>,
    limits: Arc<Limits>,
    retry: EnqueueRetry,
    stop: Shutdown,
    /// `[[dkim]]`: the keys messages are signed with before they are queued.
    dkim: Option<Arc<tern_dkim::SharedSigners>>,
}

impl std::fmt::Debug for SubmissionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmissionService")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A checked message, ready to enqueue, and what to answer once it is.
#[derive(Debug)]
struct Prepared {
    message: NewMessage,
    accepted: Vec<String>,
    rejected: Vec<RejectedRecipient>,
}

impl Prepared {
    /// The answer for `receipt`. For a repeated idempotency key, `first` holds the recipients of the first
    /// message, which the answer lists instead of this request's (nothing of this request was queued);
    /// this request's refusals are kept, but for an address the first message has. Without `first` (the
    /// queue could not say), this request's lists stand: right for a retry of the same request.
    fn response(self, receipt: EnqueueReceipt, first: Option<Vec<String>>) -> SendResponse {
        let (accepted, rejected) = match first {
            Some(first) if receipt.duplicate => {
                let rejected = self
                    .rejected
                    .into_iter()
                    .filter(|r| !first.iter().any(|a| a.eq_ignore_ascii_case(&r.address)))
                    .collect();
                (first, rejected)
            }
            _ => (self.accepted, self.rejected),
        };
        SendResponse {
            message_id: receipt.message.to_string(),
            accepted,
            rejected,
            duplicate: receipt.duplicate,
        }
    }
}

impl SubmissionService {
    /// A service that enqueues into `queue`, authenticating with `auth`.
    pub fn new(queue: Arc<dyn Queue>, auth: Authenticator, limits: Limits) -> Self {
        SubmissionService {
            queue,
            auth: Arc::new(auth),
            limits: Arc::new(limits),
            retry: EnqueueRetry::default(),
            stop: Shutdown::new(),
            dkim: None,
        }
    }

    /// Signs every message with the DKIM keys of `dkim` before it is queued (see [`crate::dkim`]).
    pub fn with_dkim(mut self, dkim: Option<Arc<tern_dkim::SharedSigners>>) -> Self {
        self.dkim = dkim;
        self
    }

    /// Sets the signal that ends the repeats of queue writes: once it is cancelled, a call repeating a write
    /// whose outcome is unknown stops and answers that the message may have been queued (the attempt in
    /// progress finishes first). The server's shutdown; until set, a signal never cancelled.
    pub fn with_stop(mut self, stop: Shutdown) -> Self {
        self.stop = stop;
        self
    }

    /// Sets how long a queue write that may or may not have been applied is repeated
    /// (`ingest.enqueue_retry_for`; [`EnqueueRetry::default`] until set).
    pub fn with_enqueue_retry(mut self, retry: EnqueueRetry) -> Self {
        self.retry = retry;
        self
    }

    /// The recipients of the first message of a repeated idempotency key, read back from the queue (grouped
    /// by destination domain). `None` for a receipt that is not a repeat, and when the queue cannot say: the
    /// message's jobs are not made yet (an interrupted enqueue the reaper has still to finish) or have all
    /// finished, or the read failed. The queue keeps no other record of a message's recipients; a job that
    /// finished while others remain takes its recipients with it.
    async fn first_recipients(&self, receipt: &EnqueueReceipt) -> Option<Vec<String>> {
        if !receipt.duplicate {
            return None;
        }
        match self.queue.get_message(receipt.message).await {
            Ok(Some(info)) if !info.jobs.is_empty() => {
                let mut jobs = info.jobs;
                jobs.sort_by_key(|j| j.id);
                Some(
                    jobs.iter()
                        .flat_map(|j| j.envelope.recipients.iter().map(|r| r.address.to_string()))
                        .collect(),
                )
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(message_id = %receipt.message, error = %e, "cannot read the first message of a repeated idempotency key");
                None
            }
        }
    }

    /// The interceptor to mount the service with (`InterceptedService::new(server, service.interceptor())`):
    /// it checks the API key from the metadata before the request body is read.
    pub fn interceptor(&self) -> AuthInterceptor {
        AuthInterceptor::new(Arc::clone(&self.auth))
    }

    /// The caller, as authenticated by [`AuthInterceptor`]. Should the service be mounted without it, the
    /// key is checked here instead: after the body was read, but a call is never let through unchecked.
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        match request.extensions().get::<Principal>() {
            Some(principal) => Ok(principal.clone()),
            None => self.auth.authenticate(request.metadata()),
        }
    }

    /// Checks one request and builds its message; nothing is enqueued here.
    async fn prepare(
        &self,
        req: &SendRequest,
        principal: &Principal,
        trace: Option<&str>,
    ) -> Result<Prepared, Status> {
        let idempotency_key = validate::idempotency_key("idempotency_key", &req.idempotency_key)?;
        let tags = validate::tags("tags", &req.tags)?;
        let dsn = validate::dsn(&req.envid, req.ret, &req.notify)?;
        let id = MessageId::new();
        let hostname = &self.limits.hostname;
        let max = self.limits.max_message_size;
        let from_headers = req.envelope.is_none();
        let (field, mut built) = match &req.content {
            None => return Err(FieldError::new("content", "required: set raw or composed").into()),
            Some(Content::Raw(raw)) => {
                too_large("raw", raw.len(), max)?;
                (
                    "raw",
                    compose::raw(raw, from_headers, &id.to_string(), hostname, SystemTime::now())?,
                )
            }
            Some(Content::Composed(c)) => {
                let parts: usize = c.attachments.iter().map(|a| a.content.len()).sum::<usize>()
                    + c.text_body.len()
                    + c.html_body.len();
                too_large("composed", parts, max)?;
                ("composed", compose::compose(c, &format!("{id}@{hostname}"))?)
            }
        };
        too_large(field, built.body.len(), max)?;

        let (sender, candidates) = match &req.envelope {
            Some(env) => {
                let sender = validate::envelope_sender("envelope.mail_from", &env.mail_from)?;
                let mut rcpts = Vec::with_capacity(env.rcpt_to.len());
                for (i, r) in env.rcpt_to.iter().enumerate() {
                    let path = format!("envelope.rcpt_to[{i}]");
                    let mailbox = validate::envelope_recipient(&path, r)?;
                    rcpts.push((path, mailbox));
                }
                if rcpts.is_empty() {
                    return Err(FieldError::new("envelope.rcpt_to", "no recipients").into());
                }
                (sender, rcpts)
            }
            None => envelope_from_headers(field, &mut built)?,
        };

        if !principal.may_send_from(&sender) {
            let who = principal.name.as_deref().unwrap_or("this caller");
            let domain = sender
                .mailbox()
                .map_or_else(|| "<>".to_owned(), |m| m.domain_for_routing());
            return Err(Status::permission_denied(format!(
                "API key {who:?} may not send from {domain} (sender {sender})"
            )));
        }

        // Duplicates are queued once. A duplicate in the explicit envelope is reported; the same person in
        // To and Cc is ordinary and is not.
        let mut seen: HashSet<String> = HashSet::new();
        let mut recipients = Vec::new();
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for (path, mailbox) in candidates {
            let address = mailbox.to_string();
            if !seen.insert(address.to_ascii_lowercase()) {
                if !from_headers {
                    rejected.push(RejectedRecipient {
                        address,
                        reason: format!("{path}: listed twice; queued once"),
                    });
                }
                continue;
            }
            if recipients.len() >= self.limits.max_recipients {
                rejected.push(RejectedRecipient {
                    address,
                    reason: format!(
                        "{path}: too many recipients (at most {} per message)",
                        self.limits.max_recipients
                    ),
                });
                continue;
            }
            let mut r = Recipient::new(mailbox);
            r.notify = dsn.notify;
            recipients.push(r);
            accepted.push(address);
        }

        let smtputf8 = sender.mailbox().is_some_and(|m| !m.is_ascii())
            || recipients.iter().any(|r| !r.address.is_ascii());
        let mut envelope = Envelope::new(sender, recipients);
        envelope.envid = dsn.envid;
        envelope.ret = dsn.ret;
        envelope.smtputf8 = smtputf8;
        if built.body.iter().any(|b| *b >= 0x80) {
            envelope.body = Some(tern_core::Body::EightBitMime);
        }
        let body = crate::dkim::sign_off_runtime(
            self.dkim.as_ref(),
            built.body,
            req.sign,
            principal.domains.as_deref(),
        )
        .await
        .map_err(|e| match e {
            crate::dkim::SignError::Required(_) => Status::failed_precondition(format!("sign: {e}")),
            crate::dkim::SignError::Failed(_) | crate::dkim::SignError::Interrupted => {
                tracing::warn!(message_id = %id, error = %e, "message refused: DKIM signing failed");
                Status::unavailable(format!("{e}; nothing was queued"))
            }
        })?;
        let message = NewMessage {
            id: Some(id),
            envelope,
            body: body.into(),
            tags,
            trace: trace.map(str::to_owned),
            idempotency_key,
            not_before_ms: None,
        };
        Ok(Prepared {
            message,
            accepted,
            rejected,
        })
    }
}

/// `INVALID_ARGUMENT` when `size` is over `max`.
fn too_large(field: &str, size: usize, max: usize) -> Result<(), FieldError> {
    if size > max {
        return Err(FieldError::new(
            field,
            format!("message too large: {size} bytes, the limit is {max}"),
        ));
    }
    Ok(())
}

/// The envelope taken from the headers: the From address and every To, Cc and Bcc address.
fn envelope_from_headers(
    field: &str,
    built: &mut Built,
) -> Result<(ReversePath, Vec<(String, tern_core::Mailbox)>), FieldError> {
    let sender = built.from.take().ok_or_else(|| {
        FieldError::new(
            field,
            "no From address to take the envelope sender from (add one, or set envelope)",
        )
    })?;
    if built.recipients.is_empty() {
        return Err(FieldError::new(
            field,
            "no recipients: To, Cc and Bcc are empty (or set envelope)",
        ));
    }
    Ok((
        ReversePath::Mailbox(sender),
        std::mem::take(&mut built.recipients),
    ))
}

/// The status for a failed enqueue: `INVALID_ARGUMENT` when the queue refused the message itself, else
/// `UNAVAILABLE`. A backend, corrupt-record or configuration error is not the caller's fault and may clear
/// (a fixed Redis, a restart), and only `UNAVAILABLE` is retried by standard gRPC retry policies: answered
/// `INTERNAL`, the client might drop the mail. The message says "nothing was queued" only when that is
/// certain; otherwise the message may have been queued, and only a repeat with the same idempotency key is
/// safe. SMTP answers `451 4.3.0` to all of them alike.
fn queue_status(failure: &EnqueueFailure) -> Status {
    let e = &failure.error;
    if let QueueError::InvalidMessage(m) = e {
        return Status::invalid_argument(m.clone());
    }
    if !e.is_unavailable() {
        // Not an outage: worth an operator's attention, though the caller only needs to retry.
        tracing::warn!(error = %e, "queue failed a gRPC submission; answered UNAVAILABLE");
    }
    if failure.maybe_queued {
        Status::unavailable(format!(
            "the queue did not confirm the write ({} attempts); the message may have been queued: retry \
             later with the same idempotency_key, which is then answered with the first message's id (without \
             a key a retry may send it twice) ({e})",
            failure.attempts
        ))
    } else {
        Status::unavailable(format!(
            "the queue is unavailable, nothing was queued; retry later ({e})"
        ))
    }
}

/// Whether a failed enqueue is answered `UNAVAILABLE` (see [`queue_status`]).
fn is_retryable(failure: &EnqueueFailure) -> bool {
    !failure.is_invalid()
}

/// When repeats of a queue write must stop so that the answer comes in time: by nine tenths of the client's
/// own deadline (`grpc-timeout`), by nine tenths of the call's deadline on this server ([`AnswerBy`]), and at
/// `stop` (the server's shutdown).
fn call_bounds<T>(req: &Request<T>, stop: &Shutdown) -> Bounds {
    let timeout = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(validate::grpc_timeout);
    let client = timeout.map(|t| Instant::now() + t.mul_f64(0.9));
    let server = req.extensions().get::<AnswerBy>().map(|a| a.0);
    let until = match (client, server) {
        (Some(c), Some(s)) => Some(c.min(s)),
        (c, s) => c.or(s),
    };
    Bounds {
        until,
        stop: Some(stop.clone()),
    }
}

/// The answer to a batch whose every message failed: the status of the first failure that may have queued
/// its message, else of the first failure. Saying "nothing was queued" while part of the batch may have been
/// would have the client send that part again.
fn batch_failure_status(failures: &[EnqueueFailure]) -> Status {
    failures
        .iter()
        .find(|f| f.maybe_queued)
        .or(failures.first())
        .map_or_else(|| Status::unavailable("the queue is unavailable"), queue_status)
}

/// The W3C `traceparent` metadata, if any, carried with the jobs.
fn trace_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
        .map(str::to_owned)
}

#[tonic::async_trait]
impl Submission for SubmissionService {
    /// [`SubmissionService::send_one`] in the message's `message_receive` span (continuing the caller's
    /// `traceparent`), counted by its answer.
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let span = message_span(Listener::Grpc, trace_of(&request).as_deref());
        let result = self.send_one(request).instrument(span).await;
        crate::telemetry::grpc_message(&result);
        result
    }

    /// [`SubmissionService::send_many`] in a `message_receive` span, each message counted by its answer.
    async fn send_batch(
        &self,
        request: Request<SendBatchRequest>,
    ) -> Result<Response<SendBatchResponse>, Status> {
        let span = message_span(Listener::Grpc, trace_of(&request).as_deref());
        let messages = request.get_ref().messages.len();
        let result = self.send_many(request).instrument(span).await;
        crate::telemetry::grpc_batch(messages, &result);
        result
    }
}

impl SubmissionService {
    async fn send_one(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let principal = self.principal(&request)?;
        let trace = trace_of(&request);
        let bounds = call_bounds(&request, &self.stop);
        let prepared = self
            .prepare(request.get_ref(), &principal, trace.as_deref())
            .await?;
        let receipt = enqueue::enqueue(
            self.queue.as_ref(),
            prepared.message.clone(),
            &self.retry,
            &bounds,
        )
        .await
        .map_err(|f| queue_status(&f))?;
        let first = self.first_recipients(&receipt).await;
        log_queued(&prepared, &receipt, principal.name.as_deref(), "queued via gRPC");
        Ok(Response::new(prepared.response(receipt, first)))
    }

    async fn send_many(
        &self,
        request: Request<SendBatchRequest>,
    ) -> Result<Response<SendBatchResponse>, Status> {
        let principal = self.principal(&request)?;
        let trace = trace_of(&request);
        let bounds = call_bounds(&request, &self.stop);
        let messages = &request.get_ref().messages;
        if messages.len() > MAX_BATCH {
            return Err(FieldError::new(
                "messages",
                format!("{} messages; at most {MAX_BATCH} per call", messages.len()),
            )
            .into());
        }
        let mut results: Vec<Option<send_result::Result>> = Vec::with_capacity(messages.len());
        let mut ready: Vec<(usize, Prepared)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match self.prepare(m, &principal, trace.as_deref()).await {
                Ok(p) => {
                    ready.push((i, p));
                    results.push(None);
                }
                Err(status) => results.push(Some(error_result(&status))),
            }
        }
        let outcomes = if ready.is_empty() {
            Vec::new()
        } else {
            let batch = ready.iter().map(|(_, p)| p.message.clone()).collect();
            enqueue::enqueue_batch(self.queue.as_ref(), batch, &self.retry, &bounds).await
        };
        // When the queue failed every message it was given, the whole call fails, so that a client's retry
        // policy repeats it; a per-message error inside an OK answer is not retried by any policy.
        if !ready.is_empty() && outcomes.iter().all(|o| matches!(o, Err(e) if is_retryable(e))) {
            let failures: Vec<EnqueueFailure> = outcomes.into_iter().filter_map(Result::err).collect();
            return Err(batch_failure_status(&failures));
        }
        let mut queued = 0usize;
        for ((i, prepared), outcome) in ready.into_iter().zip(outcomes) {
            results[i] = Some(match outcome {
                Ok(receipt) => {
                    queued += 1;
                    log_queued(
                        &prepared,
                        &receipt,
                        principal.name.as_deref(),
                        "queued via gRPC (batch)",
                    );
                    let first = self.first_recipients(&receipt).await;
                    send_result::Result::Ok(prepared.response(receipt, first))
                }
                Err(e) => error_result(&queue_status(&e)),
            });
        }
        tracing::info!(
            key = principal.name.as_deref().unwrap_or("-"),
            messages = messages.len(),
            queued,
            "batch queued via gRPC"
        );
        let results = results
            .into_iter()
            .map(|r| SendResult {
                result: Some(r.unwrap_or_else(|| error_result(&Status::internal("no result")))),
            })
            .collect();
        Ok(Response::new(SendBatchResponse { results }))
    }
}

/// The `queued` line of a message: its id, sender, recipients and their domains, as every lifecycle line
/// of a message has them, and the API key's name. A repeated idempotency key queued nothing: the line says
/// so, with the first message's id.
fn log_queued(prepared: &Prepared, receipt: &EnqueueReceipt, key: Option<&str>, what: &str) {
    let envelope = &prepared.message.envelope;
    tracing::info!(
        message_id = %receipt.message,
        sender = crate::log_fields::sender(&envelope.sender),
        recipients = crate::log_fields::recipients(&envelope.recipients),
        recipient_count = envelope.recipients.len(),
        domain = crate::log_fields::domains(&envelope.recipients),
        size = prepared.message.body.len(),
        key = key.unwrap_or("-"),
        duplicate = receipt.duplicate,
        "{what}"
    );
}

/// A per-message error of a batch.
fn error_result(status: &Status) -> send_result::Result {
    send_result::Result::Error(SendError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(error: QueueError, maybe_queued: bool) -> EnqueueFailure {
        EnqueueFailure {
            error,
            maybe_queued,
            attempts: 1,
        }
    }

    /// In a cluster a batch's shards go to different nodes, so its messages can fail differently: the
    /// answer must not say "nothing was queued" when any part may have been.
    #[test]
    fn a_batch_that_failed_whole_says_it_may_have_been_queued_when_any_part_may_have_been() {
        let failures = [
            failure(QueueError::NotSent("connection refused".into()), false),
            failure(QueueError::Unavailable("connection reset".into()), true),
        ];
        let status = batch_failure_status(&failures);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("may have been queued"), "{status:?}");
        assert!(status.message().contains("connection reset"), "{status:?}");
    }

    #[test]
    fn a_batch_none_of_which_was_sent_says_nothing_was_queued() {
        let failures = [
            failure(QueueError::NotSent("connection refused".into()), false),
            failure(QueueError::NotSent("connection refused".into()), false),
        ];
        let status = batch_failure_status(&failures);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("nothing was queued"), "{status:?}");
    }
}
