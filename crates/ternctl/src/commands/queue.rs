//! `ternctl queue shape|list` and the dispatch of every `queue` subcommand (status and top are in
//! [`super::queue_status`], the bulk actions in [`super::actions`]).

use serde_json::{Value, json};
use tern_proto::v1 as pb;

use super::actions::{self, Selection, Verb};
use super::output::{self, admin, dash, failed, next_attempt, req, secs, span, table};
use super::queue_status;
use crate::cli::{FilterArgs, Global, ListArgs, QueueCommand};

/// Runs one `queue` subcommand.
pub async fn run(global: &Global, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Status { top } => queue_status::status(global, top).await,
        QueueCommand::Shape { top, by } => shape(global, top, by).await,
        QueueCommand::List(args) => list(global, args).await,
        QueueCommand::Top { top, iterations } => queue_status::top_view(global, top, iterations).await,
        QueueCommand::Hold(b) => actions::act(global, Verb::Hold, Selection::bulk(b), None).await,
        QueueCommand::Release(b) => actions::act(global, Verb::Release, Selection::bulk(b), None).await,
        QueueCommand::Retry(b) => actions::act(global, Verb::Retry, Selection::bulk(b), None).await,
        QueueCommand::Bounce { bulk, reason } => {
            actions::act(global, Verb::Bounce, Selection::bulk(bulk), reason).await
        }
        QueueCommand::Delete(b) => actions::act(global, Verb::Delete, Selection::bulk(b), None).await,
    }
}

async fn shape(global: &Global, top: u32, by: String) -> anyhow::Result<()> {
    let mut client = admin(global).await?;
    let shape = client
        .get_shape(req(
            global,
            pb::GetShapeRequest {
                top_domains: top,
                by: by.clone(),
            },
        )?)
        .await
        .map_err(failed(global))?
        .into_inner();
    let total = shape.total.clone().unwrap_or_default();
    if global.json {
        let row = |r: &pb::ShapeRow| json!({ by.as_str(): r.domain, "total": r.total, "counts": r.counts });
        let doc = json!({
            "by": by,
            "buckets": shape.buckets,
            "rows": shape.rows.iter().map(row).collect::<Vec<_>>(),
            "total": row(&total),
            "complete": shape.complete,
        });
        println!("{doc}");
        return Ok(());
    }
    let first = by.to_ascii_uppercase();
    let mut headers = vec![first.as_str(), "TOTAL"];
    headers.extend(shape.buckets.iter().map(String::as_str));
    let row = |r: &pb::ShapeRow| {
        let mut cells = vec![r.domain.clone(), r.total.to_string()];
        cells.extend(r.counts.iter().map(u64::to_string));
        cells
    };
    let mut rows = vec![row(&total)];
    rows.extend(shape.rows.iter().map(row));
    print!("{}", table(&headers, &rows));
    if !shape.complete {
        eprintln!("ternctl: the queue is too large to look at every job: the counts cover the first ones");
    }
    Ok(())
}

/// A job as JSON.
pub fn job_json(j: &pb::JobSummary) -> Value {
    json!({
        "job_id": j.job_id,
        "message_id": j.message_id,
        "domain": j.domain,
        "sender": j.sender,
        "recipients": j.recipients,
        "state": j.state,
        "attempts": j.attempts,
        "first_queued_ms": j.first_queued_ms,
        "next_attempt_ms": j.next_attempt_ms,
        "last_error": (!j.last_error.is_empty()).then_some(&j.last_error),
        "tags": j.tags,
        "admin_bounce": j.admin_bounce,
    })
}

/// The filter flags as a request filter.
pub fn filter(args: &FilterArgs) -> pb::MessageFilter {
    pb::MessageFilter {
        domain: args.domain.clone().unwrap_or_default(),
        sender: args.sender.clone().unwrap_or_default(),
        recipient: args.rcpt.clone().unwrap_or_default(),
        state: args.state.clone().unwrap_or_default(),
        min_attempts: args.min_attempts.unwrap_or(0),
        older_than_seconds: args.older_than.map_or(0, secs),
        tag: args.tag.clone().unwrap_or_default(),
    }
}

/// A job's state for people: `deferred`, `held`, `deferred (bounce)` for a job flagged for an admin bounce.
pub fn state_cell(j: &pb::JobSummary) -> String {
    j.state.clone() + if j.admin_bounce { " (bounce)" } else { "" }
}

async fn list(global: &Global, args: ListArgs) -> anyhow::Result<()> {
    let filter = filter(&args.filter);
    let mut client = admin(global).await?;
    let page = client
        .list_messages(req(
            global,
            pb::ListMessagesRequest {
                filter: Some(filter),
                cursor: args.cursor.clone().unwrap_or_default(),
                limit: args.limit,
            },
        )?)
        .await
        .map_err(failed(global))?
        .into_inner();
    if global.json {
        let doc = json!({
            "jobs": page.jobs.iter().map(job_json).collect::<Vec<_>>(),
            "next_cursor": (!page.next_cursor.is_empty()).then_some(&page.next_cursor),
        });
        println!("{doc}");
        return Ok(());
    }
    let now = output::now_ms();
    let rows: Vec<Vec<String>> = page
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.job_id.clone(),
                j.domain.clone(),
                state_cell(j),
                j.attempts.to_string(),
                span(now.saturating_sub(j.first_queued_ms)),
                next_attempt(&j.state, j.next_attempt_ms, now),
                j.sender.clone(),
                j.recipients.join(","),
                dash(&j.last_error),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "JOB",
                "DOMAIN",
                "STATE",
                "ATTEMPTS",
                "AGE",
                "NEXT",
                "SENDER",
                "RECIPIENTS",
                "LAST ERROR"
            ],
            &rows
        )
    );
    if !page.next_cursor.is_empty() {
        eprintln!("more: ternctl queue list --cursor {} ...", page.next_cursor);
    }
    Ok(())
}
