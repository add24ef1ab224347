//! `ternctl queue status|shape|list|top`.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::v1 as pb;

use super::output::{self, admin, failed, req, span, table, when};
use crate::cli::{Global, ListArgs, QueueCommand};

/// Runs one `queue` subcommand.
pub async fn run(global: &Global, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Status { top } => {
            let status = status(global, top).await?;
            if global.json {
                println!("{}", status_json(&status));
            } else {
                print!("{}", status_text(&status));
            }
            Ok(())
        }
        QueueCommand::Shape { top } => shape(global, top).await,
        QueueCommand::List(args) => list(global, args).await,
        QueueCommand::Top { top, iterations } => top_view(global, top, iterations).await,
    }
}

async fn status(global: &Global, top: u32) -> anyhow::Result<pb::GetStatusResponse> {
    let mut client = admin(global).await?;
    Ok(client
        .get_status(req(global, pb::GetStatusRequest { top_domains: top })?)
        .await
        .map_err(failed(global))?
        .into_inner())
}

fn suspension_json(s: &pb::Suspension) -> Value {
    json!({
        "domain": s.domain,
        "reason": s.reason,
        "since_ms": s.since_ms,
        "until_ms": (s.until_ms > 0).then_some(s.until_ms),
    })
}

/// The status as one JSON document.
fn status_json(s: &pb::GetStatusResponse) -> Value {
    let t = s.totals.unwrap_or_default();
    json!({
        "totals": {
            "total": t.total,
            "scheduled": t.scheduled,
            "due_now": t.due_now,
            "in_flight": t.in_flight,
            "deferred": t.deferred,
            "queued": t.queued,
            "suspended": t.suspended,
            "suspended_domains": t.suspended_domains,
            "bounce_pending": t.bounce_pending,
        },
        "oldest_age_ms": s.oldest_age_ms,
        "oldest_age_exact": s.oldest_age_exact,
        "domains": s.domains.iter().map(|d| json!({
            "domain": d.domain,
            "depth": d.depth,
            "in_flight": d.in_flight,
            "due": d.due,
            "active_claims": d.active_claims,
            "suspension": d.suspension.as_ref().map(suspension_json),
            "last_error": (!d.last_error.is_empty()).then_some(&d.last_error),
        })).collect::<Vec<_>>(),
        "recent": s.recent.iter().map(|r| json!({
            "window_seconds": r.window_seconds,
            "delivered": r.delivered,
            "deferred": r.deferred,
            "failed": r.failed,
            "expired": r.expired,
        })).collect::<Vec<_>>(),
    })
}

fn window(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The status as tables for people.
fn status_text(s: &pb::GetStatusResponse) -> String {
    let t = s.totals.unwrap_or_default();
    let now = output::now_ms();
    let mut out = table(
        &["STATE", "JOBS"],
        &[
            vec!["total".into(), t.total.to_string()],
            vec!["scheduled".into(), t.scheduled.to_string()],
            vec!["due now".into(), t.due_now.to_string()],
            vec!["in flight".into(), t.in_flight.to_string()],
            vec!["deferred".into(), t.deferred.to_string()],
            vec![
                "suspended".into(),
                format!("{} ({} domains)", t.suspended, t.suspended_domains),
            ],
            vec!["bounce pending".into(), t.bounce_pending.to_string()],
        ],
    );
    out.push_str(&format!(
        "\nOldest message: {}\n\n",
        if t.total == 0 {
            "-".to_string()
        } else if s.oldest_age_exact {
            span(s.oldest_age_ms)
        } else {
            format!("at least {}", span(s.oldest_age_ms))
        }
    ));
    let recent: Vec<Vec<String>> = s
        .recent
        .iter()
        .map(|r| {
            vec![
                window(r.window_seconds),
                r.delivered.to_string(),
                r.deferred.to_string(),
                r.failed.to_string(),
                r.expired.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["LAST", "DELIVERED", "DEFERRED", "FAILED", "EXPIRED"],
        &recent,
    ));
    out.push('\n');
    out.push_str(&domains_table(&s.domains, now));
    out
}

fn domains_table(domains: &[pb::DomainStatus], now: u64) -> String {
    let rows: Vec<Vec<String>> = domains
        .iter()
        .map(|d| {
            vec![
                d.domain.clone(),
                d.depth.to_string(),
                d.in_flight.to_string(),
                d.due.to_string(),
                d.suspension.as_ref().map_or("-".to_string(), |s| {
                    if s.until_ms == 0 {
                        "until resumed".to_string()
                    } else {
                        format!("until {}", when(s.until_ms, now))
                    }
                }),
                if d.last_error.is_empty() {
                    "-".into()
                } else {
                    d.last_error.clone()
                },
            ]
        })
        .collect();
    table(
        &["DOMAIN", "DEPTH", "IN FLIGHT", "DUE", "SUSPENDED", "LAST ERROR"],
        &rows,
    )
}

async fn shape(global: &Global, top: u32) -> anyhow::Result<()> {
    let mut client = admin(global).await?;
    let shape = client
        .get_shape(req(
            global,
            pb::GetShapeRequest {
                top_domains: top,
                by: String::new(),
            },
        )?)
        .await
        .map_err(failed(global))?
        .into_inner();
    let total = shape.total.clone().unwrap_or_default();
    if global.json {
        let row = |r: &pb::ShapeRow| json!({ "domain": r.domain, "total": r.total, "counts": r.counts });
        let doc = json!({
            "buckets": shape.buckets,
            "rows": shape.rows.iter().map(row).collect::<Vec<_>>(),
            "total": row(&total),
            "complete": shape.complete,
        });
        println!("{doc}");
        return Ok(());
    }
    let mut headers = vec!["DOMAIN", "TOTAL"];
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

fn job_json(j: &pb::JobSummary) -> Value {
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

/// The filter flags as a request filter; a bad `--older-than` is an error naming the flag.
pub fn filter(args: &ListArgs) -> anyhow::Result<pb::MessageFilter> {
    let older_than_seconds = match &args.older_than {
        Some(t) => output::duration_flag("--older-than", t)?.as_secs().max(1),
        None => 0,
    };
    Ok(pb::MessageFilter {
        domain: args.domain.clone().unwrap_or_default(),
        sender: args.sender.clone().unwrap_or_default(),
        recipient: args.rcpt.clone().unwrap_or_default(),
        state: args.state.clone().unwrap_or_default(),
        min_attempts: args.min_attempts.unwrap_or(0),
        older_than_seconds,
        tag: args.tag.clone().unwrap_or_default(),
    })
}

async fn list(global: &Global, args: ListArgs) -> anyhow::Result<()> {
    let filter = filter(&args)?;
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
                j.state.clone() + if j.admin_bounce { " (bounce)" } else { "" },
                j.attempts.to_string(),
                span(now.saturating_sub(j.first_queued_ms)),
                when(j.next_attempt_ms, now),
                j.sender.clone(),
                j.recipients.join(","),
                if j.last_error.is_empty() {
                    "-".into()
                } else {
                    j.last_error.clone()
                },
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

/// Per-second rate over a window.
fn rate(count: u64, secs: u64) -> String {
    if secs == 0 {
        return "0".into();
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let r = count as f64 / secs as f64;
    format!("{r:.1}/s")
}

async fn top_view(global: &Global, top: u32, iterations: u64) -> anyhow::Result<()> {
    let mut client = admin(global).await?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        ticker.tick().await;
        let s = client
            .get_status(req(global, pb::GetStatusRequest { top_domains: top })?)
            .await
            .map_err(failed(global))?
            .into_inner();
        if global.json {
            // One document per refresh, one per line.
            println!("{}", status_json(&s));
        } else {
            let t = s.totals.unwrap_or_default();
            let mut screen = String::from("\x1b[2J\x1b[H");
            let minute = s.recent.first().cloned().unwrap_or_default();
            screen.push_str(&format!(
                "tern queue  {}  (Ctrl-C to stop)\n\nrates (last {}): delivered {}  deferred {}  failed {}\n\
                 depth: {} jobs  due {}  in flight {}  deferred {}  suspended {}  oldest {}\n\n",
                global.server,
                window(minute.window_seconds),
                rate(minute.delivered, minute.window_seconds),
                rate(minute.deferred, minute.window_seconds),
                rate(minute.failed, minute.window_seconds),
                t.total,
                t.due_now,
                t.in_flight,
                t.deferred,
                t.suspended,
                if t.total == 0 {
                    "-".to_string()
                } else {
                    span(s.oldest_age_ms)
                },
            ));
            screen.push_str(&domains_table(&s.domains, output::now_ms()));
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(screen.as_bytes())?;
            stdout.flush()?;
        }
        n += 1;
        if iterations > 0 && n >= iterations {
            return Ok(());
        }
    }
}
