//! `ternctl events`: the queue's events as JSON lines.

use std::io::Write;

use serde_json::json;
use tern_proto::v1 as pb;

use super::output::{events, failed, req};
use crate::cli::{EventsArgs, Global};

/// Prints events, one JSON document per line, until caught up (or, with `--follow`, until interrupted).
pub async fn run(global: &Global, args: EventsArgs) -> anyhow::Result<()> {
    let from = args
        .from
        .clone()
        .unwrap_or_else(|| if args.follow { "now" } else { "start" }.to_string());
    let mut client = events(global).await?;
    let mut stream = client
        .watch(req(
            global,
            pb::WatchRequest {
                from,
                types: args.types,
                domain: args.domain.unwrap_or_default(),
                tag: args.tag.unwrap_or_default(),
                stop_at_end: !args.follow,
            },
        )?)
        .await
        .map_err(failed(global))?
        .into_inner();
    let mut stdout = std::io::stdout();
    while let Some(e) = stream.message().await.map_err(failed(global))? {
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        let line = json!({
            "kind": e.kind,
            "time_ms": e.time_ms,
            "message_id": some(&e.message_id),
            "job_id": some(&e.job_id),
            "domain": e.domain,
            "recipients": e.recipients,
            "reply": some(&e.reply),
            "attempt": e.attempt,
            "tags": e.tags,
            "remote_mx": some(&e.remote_mx),
            "remote_ip": some(&e.remote_ip),
            "tls": some(&e.tls),
            "id": e.id,
            "position": e.position,
        });
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}
