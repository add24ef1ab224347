//! `ternctl send`: one message through the gRPC Send API.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use tern_proto::v1::{
    Attachment, ComposedMessage, Envelope, SendRequest, send_request::Content,
    submission_client::SubmissionClient,
};

use crate::Usage;
use crate::cli::{SendArgs, TopFlags};
use crate::grpc::{self, KeyHint};

/// Builds the request from the flags, sends it, and prints the message id (or the whole response as JSON).
///
/// The ingest node is `--ingest` (`TERN_INGEST`), and the key `--token` (`TERN_TOKEN`), after `send` or
/// before it; `--server`, the control plane's address, does not apply and is refused.
pub async fn run(top: &TopFlags, args: SendArgs) -> anyhow::Result<()> {
    if top.server.is_some() {
        return Err(Usage(
            "--server is the control plane's address; send talks to an ingest node: pass --ingest or set \
             TERN_INGEST"
                .into(),
        )
        .into());
    }
    let token = args
        .token
        .clone()
        .or_else(|| top.token.clone())
        .or_else(|| super::env("TERN_TOKEN"));
    let json = args.json || top.json;
    let request = build(&args)?;
    let channel = grpc::connect(&args.ingest).await?;
    let mut client = SubmissionClient::new(channel);
    let key = KeyHint {
        server: "the ingest node",
        key: "an ingest API key",
        var: "TERN_TOKEN",
        sent: token.is_some(),
    };
    let response = client
        .send(grpc::request(request, token.as_deref())?)
        .await
        .map_err(|s| grpc::status_error(&args.ingest, &s, key))?
        .into_inner();
    if json {
        let rejected: Vec<_> = response
            .rejected
            .iter()
            .map(|r| serde_json::json!({ "address": r.address, "reason": r.reason }))
            .collect();
        let doc = serde_json::json!({
            "message_id": response.message_id,
            "accepted": response.accepted,
            "rejected": rejected,
            "duplicate": response.duplicate,
        });
        println!("{doc}");
    } else {
        println!("{}", response.message_id);
        if response.duplicate {
            eprintln!(
                "ternctl: duplicate: the idempotency key was used before; nothing new was queued (this is the \
                 first message's id)"
            );
        }
        for r in &response.rejected {
            eprintln!("ternctl: rejected {}: {}", r.address, r.reason);
        }
    }
    Ok(())
}

fn build(args: &SendArgs) -> anyhow::Result<SendRequest> {
    let tags = args.tag.iter().cloned().collect();
    let idempotency_key = args.idempotency_key.clone().unwrap_or_default();
    if let Some(path) = &args.raw_file {
        let raw = read_file_or_stdin(path)?;
        // With --from/--to, they are the envelope; without, the server derives it from the headers.
        let envelope = (args.from.is_some() || !args.to.is_empty()).then(|| Envelope {
            mail_from: args.from.clone().unwrap_or_default(),
            rcpt_to: args.to.clone(),
        });
        return Ok(SendRequest {
            idempotency_key,
            envelope,
            content: Some(Content::Raw(raw)),
            tags,
            ..Default::default()
        });
    }
    let from = args.from.clone().unwrap_or_default();
    grpc::nonempty("--from", &from)?;
    let html_body = match &args.html_file {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read --html-file {}", p.display()))?
        }
        None => String::new(),
    };
    let attachments = args
        .attach
        .iter()
        .map(|p| attachment(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(SendRequest {
        idempotency_key,
        envelope: None,
        content: Some(Content::Composed(ComposedMessage {
            from,
            to: args.to.clone(),
            subject: args.subject.clone().unwrap_or_default(),
            text_body: args.text.clone().unwrap_or_default(),
            html_body,
            attachments,
            ..Default::default()
        })),
        tags,
        ..Default::default()
    })
}

fn read_file_or_stdin(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the message from standard input")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read --raw-file {}", path.display()))
}

fn attachment(path: &Path) -> anyhow::Result<Attachment> {
    let content = std::fs::read(path).with_context(|| format!("cannot read --attach {}", path.display()))?;
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".into());
    Ok(Attachment {
        content_type: content_type_of(&filename).into(),
        filename,
        content,
        content_id: String::new(),
    })
}

/// A content type from the file name's extension, for the common cases; the rest are octet streams.
fn content_type_of(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "zip" => "application/zip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ics" => "text/calendar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type_of("a.PDF"), "application/pdf");
        assert_eq!(content_type_of("invoice.csv"), "text/csv");
        assert_eq!(content_type_of("noext"), "application/octet-stream");
    }
}
