//! `ternctl domain suspend|resume|route|unroute|list`.

use serde_json::json;
use tern_proto::v1 as pb;

use super::output::{self, admin, dash, failed, req, secs, table, until, when};
use super::queue_status::suspension_json;
use crate::cli::{DomainCommand, Global};

fn route_json(r: &pb::Route) -> serde_json::Value {
    json!({
        "domain": r.domain,
        "target": r.target,
        "reason": r.reason,
        "since_ms": r.since_ms,
        "until_ms": (r.until_ms > 0).then_some(r.until_ms),
    })
}

/// `(why)` after a line, when there is a reason.
fn why(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

/// Runs one `domain` subcommand.
pub async fn run(global: &Global, command: DomainCommand) -> anyhow::Result<()> {
    let now = output::now_ms();
    let mut client = admin(global).await?;
    match command {
        DomainCommand::Suspend {
            domain,
            duration,
            reason,
        } => {
            let s = client
                .suspend_domain(req(
                    global,
                    pb::SuspendDomainRequest {
                        domain,
                        duration_seconds: duration.map_or(0, secs),
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
                println!(
                    "suspended {} {}{}",
                    s.domain,
                    until(s.until_ms, now, "until resumed"),
                    why(&s.reason)
                );
            }
        }
        DomainCommand::Resume { domain } => {
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
        DomainCommand::Route {
            domain,
            target,
            duration,
            reason,
        } => {
            let r = client
                .route_domain(req(
                    global,
                    pb::RouteDomainRequest {
                        domain,
                        target,
                        duration_seconds: duration.map_or(0, secs),
                        reason: reason.unwrap_or_default(),
                    },
                )?)
                .await
                .map_err(failed(global))?
                .into_inner()
                .route
                .unwrap_or_default();
            if global.json {
                println!("{}", route_json(&r));
            } else {
                println!(
                    "routed {} to {} {}{}",
                    r.domain,
                    r.target,
                    until(r.until_ms, now, "until unrouted"),
                    why(&r.reason)
                );
            }
        }
        DomainCommand::Unroute { domain } => {
            let r = client
                .unroute_domain(req(
                    global,
                    pb::UnrouteDomainRequest {
                        domain: domain.clone(),
                    },
                )?)
                .await
                .map_err(failed(global))?
                .into_inner();
            if global.json {
                println!("{}", json!({ "domain": domain, "was_routed": r.was_routed }));
            } else if r.was_routed {
                println!("unrouted {domain}: its mail goes to its MX hosts again");
            } else {
                println!("{domain} had no route");
            }
        }
        DomainCommand::List => {
            let suspensions = client
                .list_suspensions(req(global, pb::ListSuspensionsRequest {})?)
                .await
                .map_err(failed(global))?
                .into_inner()
                .suspensions;
            let routes = match client.list_routes(req(global, pb::ListRoutesRequest {})?).await {
                Ok(r) => r.into_inner().routes,
                // A control plane without routes (older, or without the store) still has suspensions to
                // show.
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unimplemented | tonic::Code::FailedPrecondition
                    ) =>
                {
                    eprintln!(
                        "ternctl: {} does not serve routes ({}): suspensions only",
                        global.server,
                        s.message()
                    );
                    Vec::new()
                }
                Err(s) => return Err(failed(global)(s)),
            };
            if global.json {
                let doc = json!({
                    "suspensions": suspensions.iter().map(suspension_json).collect::<Vec<_>>(),
                    "routes": routes.iter().map(route_json).collect::<Vec<_>>(),
                });
                println!("{doc}");
                return Ok(());
            }
            let mut rows: Vec<Vec<String>> = suspensions
                .iter()
                .map(|s| {
                    vec![
                        s.domain.clone(),
                        "suspended".into(),
                        "-".into(),
                        when(s.since_ms, now),
                        until(s.until_ms, now, "until resumed"),
                        dash(&s.reason),
                    ]
                })
                .collect();
            rows.extend(routes.iter().map(|r| {
                vec![
                    r.domain.clone(),
                    "routed".into(),
                    r.target.clone(),
                    when(r.since_ms, now),
                    until(r.until_ms, now, "until unrouted"),
                    dash(&r.reason),
                ]
            }));
            rows.sort_by(|a, b| a[0].cmp(&b[0]).then_with(|| a[1].cmp(&b[1])));
            print!(
                "{}",
                table(&["DOMAIN", "STATE", "TO", "SINCE", "UNTIL", "REASON"], &rows)
            );
        }
    }
    Ok(())
}
