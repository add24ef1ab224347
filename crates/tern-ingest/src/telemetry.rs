//! What ingest records into tern's telemetry: one count per submission, by listener and answer.

use tern_smtp::Reply;
use tern_telemetry::metrics::{Listener, Received};
use tonic::{Code, Status};

/// Counts an SMTP message answered with `reply` (at the end of its data).
pub(crate) fn smtp_message(listener: Listener, reply: &Reply) {
    let outcome = match reply.code / 100 {
        2 => Received::Accepted,
        4 => Received::Tempfail,
        _ => Received::Rejected,
    };
    tern_telemetry::metrics().message_received(listener, outcome);
}

/// How a gRPC answer counts: a temporary failure for what a retry may fix, a rejection otherwise.
pub(crate) fn grpc_outcome(code: Code) -> Received {
    match code {
        Code::Ok => Received::Accepted,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted => {
            Received::Tempfail
        }
        _ => Received::Rejected,
    }
}

/// Counts one gRPC `Send` by its answer.
pub(crate) fn grpc_message<T>(result: &Result<T, Status>) {
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    tern_telemetry::metrics().message_received(Listener::Grpc, grpc_outcome(code));
}

/// Counts the messages of one gRPC `SendBatch`: each by its own answer, or all by the call's error.
pub(crate) fn grpc_batch(
    messages: usize,
    result: &Result<tonic::Response<tern_proto::v1::SendBatchResponse>, Status>,
) {
    use tern_proto::v1::send_result::Result as One;
    let metrics = tern_telemetry::metrics();
    match result {
        Ok(response) => {
            for r in &response.get_ref().results {
                let code = match &r.result {
                    Some(One::Ok(_)) => Code::Ok,
                    Some(One::Error(e)) => Code::from_i32(e.code),
                    None => Code::Internal,
                };
                metrics.message_received(Listener::Grpc, grpc_outcome(code));
            }
        }
        Err(status) => {
            for _ in 0..messages {
                metrics.message_received(Listener::Grpc, grpc_outcome(status.code()));
            }
        }
    }
}
