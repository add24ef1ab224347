//! `ternctl domain suspend|resume|list`.

use serde_json::json;
use tern_proto::v1 as pb;

use super::output::{self, admin, failed, req, table, when};
use crate::cli::{DomainCommand, Global};

fn suspension_json(s: &pb::Suspension) -> serde_json::Value {
    json!({
        "domain": s.domain,
        "reason": s.reason,
        "since_ms": s.since_ms,
        "until_ms": (s.until_ms > 0).then_some(s.until_ms),
    })
}

fn until(s: &pb::Suspension, now: u64) -> String {
    if s.until_ms == 0 {
        "until resumed".to_string()
    } else {
        format!("until {}", when(s.until_ms, now))
    }
}

/// Runs one `domain` subcommand.
pub async fn run(global: &Global, command: DomainCommand) -> anyhow::Result<()> {
    let now = output::now_ms();
    match command {
        DomainCommand::Suspend {
            domain,
            duration,
            reason,
        } => {
            let duration_seconds = match &duration {
                Some(t) => output::duration_flag("--for", t)?.as_secs().max(1),
                None => 0,
            };
            let mut client = admin(global).await?;
            let s = client
                .suspend_domain(req(
                    global,
                    pb::SuspendDomainRequest {
                        domain,
                        duration_seconds,
                        reason: reason.unwrap_or_default(),
                    },
                )?)
                .await
                .map_err(failed(global))?
                .into_inner()
                .suspension
                .unwrap_or_default();
            if global.json {
                println!("{}", suspension_json(&s));
            } else {
                println!("suspended {} {} ({})", s.domain, until(&s, now), s.reason);
            }
        }
        DomainCommand::Resume { domain } => {
            let mut client = admin(global).await?;
            let r = client
                .resume_domain(req(
                    global,
                    pb::ResumeDomainRequest {
                        domain: domain.clone(),
                    },
                )?)
                .await
                .map_err(failed(global))?
                .into_inner();
            if global.json {
                println!(
                    "{}",
                    json!({ "domain": domain, "was_suspended": r.was_suspended })
                );
            } else if r.was_suspended {
                println!("resumed {domain}");
            } else {
                println!("{domain} was not suspended");
            }
        }
        DomainCommand::List => {
            let mut client = admin(global).await?;
            let list = client
                .list_suspensions(req(global, pb::ListSuspensionsRequest {})?)
                .await
                .map_err(failed(global))?
                .into_inner()
                .suspensions;
            if global.json {
                let doc = json!({ "suspensions": list.iter().map(suspension_json).collect::<Vec<_>>() });
                println!("{doc}");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.domain.clone(),
                            when(s.since_ms, now),
                            until(s, now),
                            s.reason.clone(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["DOMAIN", "SINCE", "UNTIL", "REASON"], &rows));
            }
        }
    }
    Ok(())
}
