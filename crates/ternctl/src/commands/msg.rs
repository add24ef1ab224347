//! `ternctl msg show|retry|bounce|delete`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use serde_json::json;
use tern_proto::v1 as pb;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tonic::transport::Channel;

use super::output::{self, admin, failed, req, span, table, when};
use crate::cli::{ActionArgs, Global, MsgCommand};

/// Above this many messages, a bulk action goes in batches and shows its progress.
const PROGRESS_OVER: u64 = 1000;
/// Jobs per batch of a bulk action.
const BATCH: u32 = 1000;

/// Runs one `msg` subcommand.
pub async fn run(global: &Global, command: MsgCommand) -> anyhow::Result<()> {
    match command {
        MsgCommand::Show { id, body } => show(global, &id, body).await,
        MsgCommand::Retry(args) => act(global, Verb::Retry, args).await,
        MsgCommand::Bounce(args) => act(global, Verb::Bounce, args).await,
        MsgCommand::Delete(args) => act(global, Verb::Delete, args).await,
    }
}

async fn show(global: &Global, id: &str, body: bool) -> anyhow::Result<()> {
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
                    "last_error": (!j.last_error.is_empty()).then_some(&j.last_error),
                    "admin_bounce": j.admin_bounce,
                    "owner": (!d.owner.is_empty()).then_some(&d.owner),
                    "lease_until_ms": (d.lease_until_ms > 0).then_some(d.lease_until_ms),
                    "recipients": d.recipients.iter().map(|r| json!({
                        "address": r.address,
                        "status": r.status,
                        "reply": (!r.reply.is_empty()).then_some(&r.reply),
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
                    "remote_mx": (!a.remote_mx.is_empty()).then_some(&a.remote_mx),
                    "remote_ip": (!a.remote_ip.is_empty()).then_some(&a.remote_ip),
                    "reply": (!a.reply.is_empty()).then_some(&a.reply),
                    "tls": a.tls,
                    "tls_details": (!a.tls_details.is_empty()).then_some(&a.tls_details),
                })
            })
            .collect();
        let mut doc = json!({
            "message_id": m.message_id,
            "size": m.size,
            "sender": m.sender,
            "tags": m.tags,
            "jobs": jobs,
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
        println!("{doc}");
        return Ok(());
    }
    let now = output::now_ms();
    let mut tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tags.sort();
    let mut out = table(
        &["MESSAGE", &m.message_id],
        &[
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
        ],
    );
    out.push('\n');
    let mut jobs = Vec::new();
    let mut rcpts = Vec::new();
    for d in &m.jobs {
        let j = d.job.clone().unwrap_or_default();
        jobs.push(vec![
            j.job_id.clone(),
            j.domain.clone(),
            j.state.clone() + if j.admin_bounce { " (bounce)" } else { "" },
            j.attempts.to_string(),
            span(now.saturating_sub(j.first_queued_ms)),
            when(j.next_attempt_ms, now),
            if j.last_error.is_empty() {
                "-".into()
            } else {
                j.last_error.clone()
            },
        ]);
        for r in &d.recipients {
            rcpts.push(vec![
                j.job_id.clone(),
                r.address.clone(),
                r.status.clone(),
                if r.reply.is_empty() {
                    "-".into()
                } else {
                    r.reply.clone()
                },
            ]);
        }
    }
    out.push_str(&table(
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
    ));
    out.push('\n');
    out.push_str(&table(&["JOB", "RECIPIENT", "STATUS", "REPLY"], &rcpts));
    out.push('\n');
    let history: Vec<Vec<String>> = m
        .attempts
        .iter()
        .map(|a| {
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            vec![
                when(a.time_ms, now),
                a.kind.clone(),
                a.job_id.clone(),
                dash(&a.remote_mx),
                dash(&a.remote_ip),
                if a.tls { "yes".into() } else { "no".into() },
                dash(&a.reply),
            ]
        })
        .collect();
    out.push_str(&table(
        &["WHEN", "EVENT", "JOB", "MX", "IP", "TLS", "REPLY"],
        &history,
    ));
    print!("{out}");
    if m.content_available {
        println!();
        if body {
            print!("{}", String::from_utf8_lossy(&m.body));
        } else {
            print!("{}", m.headers);
        }
    } else if body {
        eprintln!("ternctl: content not shown: {}", m.content_note);
    }
    Ok(())
}

/// The three actions.
#[derive(Clone, Copy, Debug)]
enum Verb {
    Retry,
    Bounce,
    Delete,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Retry => "retry",
            Verb::Bounce => "bounce",
            Verb::Delete => "delete",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verb::Retry => "retried",
            Verb::Bounce => "bounced",
            Verb::Delete => "deleted",
        }
    }

    async fn call(
        self,
        global: &Global,
        client: &mut QueueAdminClient<Channel>,
        request: pb::ActionRequest,
    ) -> anyhow::Result<u64> {
        let request = req(global, request)?;
        let r = match self {
            Verb::Retry => client.retry_now(request).await,
            Verb::Bounce => client.bounce(request).await,
            Verb::Delete => client.delete(request).await,
        };
        Ok(r.map_err(failed(global))?.into_inner().count)
    }
}

fn print_count(global: &Global, verb: Verb, count: u64) {
    if global.json {
        println!("{}", json!({ "action": verb.word(), "count": count }));
    } else {
        println!("{} {count} job{}", verb.done(), if count == 1 { "" } else { "s" });
    }
}

async fn act(global: &Global, verb: Verb, args: ActionArgs) -> anyhow::Result<()> {
    let Some(domain) = args.domain else {
        let mut client = admin(global).await?;
        let count = verb
            .call(
                global,
                &mut client,
                pb::ActionRequest {
                    ids: args.ids,
                    ..Default::default()
                },
            )
            .await?;
        print_count(global, verb, count);
        return Ok(());
    };
    // By filter: confirm first, unless --yes.
    if !args.yes && !std::io::stdin().is_terminal() {
        bail!(
            "refusing to {} every message of {domain} without confirmation: stdin is not a terminal; pass --yes",
            verb.word()
        );
    }
    let filter = pb::MessageFilter {
        domain: domain.clone(),
        ..Default::default()
    };
    let mut client = admin(global).await?;
    let planned = verb
        .call(
            global,
            &mut client,
            pb::ActionRequest {
                filter: Some(filter.clone()),
                dry_run: true,
                ..Default::default()
            },
        )
        .await?;
    if planned == 0 {
        print_count(global, verb, 0);
        return Ok(());
    }
    if !args.yes {
        eprint!("{} {planned} job(s) of {domain}? [y/N] ", verb.word());
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            bail!("not confirmed; nothing was changed");
        }
    }
    if planned <= PROGRESS_OVER {
        let count = verb
            .call(
                global,
                &mut client,
                pb::ActionRequest {
                    filter: Some(filter),
                    ..Default::default()
                },
            )
            .await?;
        print_count(global, verb, count);
        return Ok(());
    }
    // Many: list the jobs first, then act on them a batch at a time, with progress on stderr.
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_messages(req(
                global,
                pb::ListMessagesRequest {
                    filter: Some(filter.clone()),
                    cursor: cursor.clone(),
                    limit: BATCH,
                },
            )?)
            .await
            .map_err(failed(global))?
            .into_inner();
        ids.extend(
            page.jobs
                .into_iter()
                .filter(|j| verb_applies(verb, j))
                .map(|j| j.job_id),
        );
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let total = ids.len();
    let mut count = 0u64;
    let mut done = 0usize;
    for chunk in ids.chunks(BATCH as usize) {
        count += verb
            .call(
                global,
                &mut client,
                pb::ActionRequest {
                    ids: chunk.to_vec(),
                    // A job that finished since the listing has nothing left to do.
                    skip_missing: true,
                    ..Default::default()
                },
            )
            .await?;
        done += chunk.len();
        eprint!("\r{}: {done}/{total}", verb.done());
        std::io::stderr().flush()?;
    }
    eprintln!();
    print_count(global, verb, count);
    Ok(())
}

/// By domain, the queue acts on waiting jobs only; the batched path does the same.
fn verb_applies(_verb: Verb, job: &pb::JobSummary) -> bool {
    job.state != "inflight"
}
