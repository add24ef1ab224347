//! `ternctl msg find`: messages, queued or finished, by recipient, sender or tag.

use serde_json::json;
use tern_proto::v1 as pb;

use super::output::{self, admin, dash, failed, req, table};
use crate::cli::{FindArgs, Global};
use crate::timefmt::stamp;

/// Prints the messages found, newest first.
pub async fn find(global: &Global, args: FindArgs) -> anyhow::Result<()> {
    let now = output::now_ms();
    let request = pb::FindMessagesRequest {
        recipient: args.to.unwrap_or_default(),
        sender: args.from.unwrap_or_default(),
        tag: args.tag.unwrap_or_default(),
        since_ms: args.since.map_or(0, |s| s.to_ms(now)),
        limit: args.limit,
    };
    let mut client = admin(global).await?;
    let found = client
        .find_messages(req(global, request)?)
        .await
        .map_err(failed(global))?
        .into_inner();
    if global.json {
        let messages: Vec<_> = found
            .messages
            .iter()
            .map(|m| {
                json!({
                    "message_id": m.message_id,
                    "sender": m.sender,
                    "recipients": m.recipients,
                    "tags": m.tags,
                    "accepted_ms": m.accepted_ms,
                    "outcome": m.outcome,
                    "finished_ms": (m.finished_ms > 0).then_some(m.finished_ms),
                })
            })
            .collect();
        println!("{}", json!({ "messages": messages, "complete": found.complete }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .messages
        .iter()
        .map(|m| {
            let mut tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            tags.sort();
            vec![
                m.message_id.clone(),
                stamp(m.accepted_ms),
                dash(&m.outcome),
                stamp(m.finished_ms),
                dash(&m.sender),
                m.recipients.join(","),
                dash(&tags.join(" ")),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "MESSAGE",
                "ACCEPTED (UTC)",
                "OUTCOME",
                "FINISHED (UTC)",
                "SENDER",
                "RECIPIENTS",
                "TAGS"
            ],
            &rows
        )
    );
    if !found.complete {
        eprintln!(
            "ternctl: the search stopped at its budget before looking at every message: narrow it with \
             --since"
        );
    }
    Ok(())
}
