//! `ternctl msg show`: one message, queued or finished (from the history the control plane keeps).

use serde_json::{Value, json};
use tern_proto::v1 as pb;

use super::output::{self, admin, dash, failed, next_attempt, req, span, table, when};
use super::queue::state_cell;
use crate::cli::Global;
use crate::timefmt::stamp;

/// Prints one message.
pub async fn show(global: &Global, id: &str, body: bool) -> anyhow::Result<()> {
    let mut client = admin(global).await?;
    let m = client
        .get_message(req(
            global,
            pb::GetMessageRequest {
                id: id.to_string(),
                include_body: body,
            },
        )?)
        .await
        .map_err(failed(global))?
        .into_inner();
    if global.json {
        println!("{}", message_json(&m, body));
        return Ok(());
    }
    print!("{}", message_text(&m, output::now_ms()));
    if m.content_available {
        println!();
        if body {
            print!("{}", String::from_utf8_lossy(&m.body));
        } else {
            print!("{}", m.headers);
        }
    } else if body || m.finished {
        eprintln!("ternctl: content not shown: {}", dash(&m.content_note));
    }
    Ok(())
}

fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn message_json(m: &pb::GetMessageResponse, body: bool) -> Value {
    let jobs: Vec<_> = m
        .jobs
        .iter()
        .map(|d| {
            let j = d.job.clone().unwrap_or_default();
            json!({
                "job_id": j.job_id,
                "domain": j.domain,
                "state": j.state,
                "attempts": j.attempts,
                "first_queued_ms": j.first_queued_ms,
                "next_attempt_ms": j.next_attempt_ms,
                "last_error": some(&j.last_error),
                "admin_bounce": j.admin_bounce,
                "owner": some(&d.owner),
                "lease_until_ms": (d.lease_until_ms > 0).then_some(d.lease_until_ms),
                "recipients": d.recipients.iter().map(|r| json!({
                    "address": r.address,
                    "status": r.status,
                    "reply": some(&r.reply),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let attempts: Vec<_> = m
        .attempts
        .iter()
        .map(|a| {
            json!({
                "time_ms": a.time_ms,
                "job_id": a.job_id,
                "kind": a.kind,
                "attempt": a.attempt,
                "recipients": a.recipients,
                "remote_mx": some(&a.remote_mx),
                "remote_ip": some(&a.remote_ip),
                "reply": some(&a.reply),
                "tls": a.tls,
                "tls_details": some(&a.tls_details),
                "dsn_id": some(&a.dsn_id),
            })
        })
        .collect();
    let recipients: Vec<_> = m
        .recipients
        .iter()
        .map(|r| {
            json!({
                "address": r.address,
                "domain": r.domain,
                "outcome": r.outcome,
                "reply": some(&r.reply),
            })
        })
        .collect();
    let mut doc = json!({
        "message_id": m.message_id,
        "finished": m.finished,
        "outcome": some(&m.outcome),
        "accepted_ms": (m.accepted_ms > 0).then_some(m.accepted_ms),
        "finished_ms": (m.finished_ms > 0).then_some(m.finished_ms),
        "size": m.size,
        "sender": m.sender,
        "tags": m.tags,
        "dsn_ids": m.dsn_ids,
        "jobs": jobs,
        "recipients": recipients,
        "attempts": attempts,
        "content_available": m.content_available,
    });
    if m.content_available {
        doc["headers"] = json!(m.headers);
        if body {
            doc["body"] = json!(String::from_utf8_lossy(&m.body));
        }
    } else {
        doc["content_note"] = json!(m.content_note);
    }
    doc
}

/// A time for people: the UTC stamp and how long ago.
fn stamp_ago(ms: u64, now: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    format!("{} UTC ({})", stamp(ms), when(ms, now))
}

fn message_text(m: &pb::GetMessageResponse, now: u64) -> String {
    let mut tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tags.sort();
    let status = if m.finished {
        format!(
            "{}, finished {}",
            if m.outcome.is_empty() {
                "finished"
            } else {
                &m.outcome
            },
            stamp_ago(m.finished_ms, now)
        )
    } else {
        format!("queued ({})", output::plural(m.jobs.len() as u64, "job"))
    };
    let mut head = vec![
        vec!["status".into(), status],
        vec!["accepted".into(), stamp_ago(m.accepted_ms, now)],
        vec!["size".into(), format!("{} bytes", m.size)],
        vec!["sender".into(), m.sender.clone()],
        vec![
            "tags".into(),
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(" ")
            },
        ],
    ];
    if !m.dsn_ids.is_empty() {
        head.push(vec!["DSN".into(), m.dsn_ids.join(" ")]);
    }
    let mut out = table(&["MESSAGE", &m.message_id], &head);
    if !m.jobs.is_empty() {
        out.push('\n');
        out.push_str(&jobs_table(m, now));
    }
    out.push('\n');
    if m.recipients.is_empty() {
        // A server that keeps no history: the recipients of the remaining jobs.
        let mut rcpts = Vec::new();
        for d in &m.jobs {
            let j = d.job.clone().unwrap_or_default();
            for r in &d.recipients {
                rcpts.push(vec![
                    j.job_id.clone(),
                    r.address.clone(),
                    r.status.clone(),
                    dash(&r.reply),
                ]);
            }
        }
        out.push_str(&table(&["JOB", "RECIPIENT", "STATUS", "REPLY"], &rcpts));
    } else {
        let rcpts: Vec<Vec<String>> = m
            .recipients
            .iter()
            .map(|r| {
                vec![
                    r.address.clone(),
                    r.domain.clone(),
                    r.outcome.clone(),
                    dash(&r.reply),
                ]
            })
            .collect();
        out.push_str(&table(&["RECIPIENT", "DOMAIN", "OUTCOME", "REPLY"], &rcpts));
    }
    out.push('\n');
    let history: Vec<Vec<String>> = m
        .attempts
        .iter()
        .map(|a| {
            let tls = if a.tls {
                if a.tls_details.is_empty() {
                    "yes".into()
                } else {
                    a.tls_details.clone()
                }
            } else if a.remote_mx.is_empty() && a.remote_ip.is_empty() {
                "-".into()
            } else {
                "no".into()
            };
            vec![
                stamp(a.time_ms),
                a.kind.clone(),
                dash(&a.job_id),
                dash(&a.remote_mx),
                dash(&a.remote_ip),
                tls,
                dash(&a.reply),
                dash(&a.dsn_id),
            ]
        })
        .collect();
    out.push_str(&table(
        &["TIME (UTC)", "EVENT", "JOB", "MX", "IP", "TLS", "REPLY", "DSN"],
        &history,
    ));
    out
}

fn jobs_table(m: &pb::GetMessageResponse, now: u64) -> String {
    let jobs: Vec<Vec<String>> = m
        .jobs
        .iter()
        .map(|d| {
            let j = d.job.clone().unwrap_or_default();
            vec![
                j.job_id.clone(),
                j.domain.clone(),
                state_cell(&j),
                j.attempts.to_string(),
                span(now.saturating_sub(j.first_queued_ms)),
                next_attempt(&j.state, j.next_attempt_ms, now),
                dash(&j.last_error),
            ]
        })
        .collect();
    table(
        &[
            "JOB",
            "DOMAIN",
            "STATE",
            "ATTEMPTS",
            "AGE",
            "NEXT ATTEMPT",
            "LAST ERROR",
        ],
        &jobs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_message_shows_its_outcome_recipients_and_attempts() {
        let now = 1_795_872_409_000;
        let m = pb::GetMessageResponse {
            message_id: "01KB0000000000000000000000".into(),
            sender: "a@s.example".into(),
            finished: true,
            outcome: "delivered".into(),
            finished_ms: now - 60_000,
            accepted_ms: now - 120_000,
            recipients: vec![pb::HistoryRecipient {
                address: "x@r.example".into(),
                domain: "r.example".into(),
                outcome: "delivered".into(),
                reply: "250 2.0.0 ok".into(),
            }],
            attempts: vec![pb::Attempt {
                time_ms: now - 60_000,
                kind: "delivered".into(),
                remote_mx: "mx.r.example".into(),
                remote_ip: "192.0.2.1".into(),
                tls: true,
                tls_details: "TLSv1.3".into(),
                reply: "250 2.0.0 ok".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = message_text(&m, now);
        assert!(
            text.contains("delivered, finished 2026-11-28 13:25:49 UTC (1m ago)"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("RECIPIENT ") && l.contains(" OUTCOME ")),
            "{text}"
        );
        assert!(
            text.contains("mx.r.example") && text.contains("TLSv1.3"),
            "{text}"
        );
        assert!(!text.contains("NEXT ATTEMPT"), "no jobs table: {text}");
        let doc = message_json(&m, false);
        assert_eq!(doc["outcome"], "delivered");
        assert_eq!(doc["recipients"][0]["outcome"], "delivered");
    }
}
