//! `ternctl sts show|refresh|list|evict`: the cluster's MTA-STS policy cache (`tern.v1.MtaSts`); `sts report`
//! and `sts send-reports` are in [`super::tlsrpt`].

use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::v1 as pb;

use super::output::{self, failed, mta_sts, req, span, table, when};
use crate::cli::{Global, StsCommand, StsListArgs};
use crate::grpc::CALL_TIMEOUT;

/// How long a refresh may take: the server looks up the TXT record, may wait for the domain's lock (held
/// at most the fetch timeout plus 30 s) and fetches (default timeout 60 s).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest page the server gives.
const MAX_PAGE: usize = 1000;

/// Runs one `sts` subcommand.
pub async fn run(global: &Global, command: StsCommand) -> anyhow::Result<()> {
    match command {
        StsCommand::Show { domain } => {
            let mut client = mta_sts(global, CALL_TIMEOUT).await?;
            let info = client
                .get(req(global, pb::GetPolicyRequest { domain })?)
                .await
                .map_err(failed(global))?
                .into_inner();
            print_policy(global, &info);
        }
        StsCommand::Refresh { domain } => {
            let mut client = mta_sts(global, REFRESH_TIMEOUT).await?;
            let info = client
                .refresh(req(global, pb::RefreshPolicyRequest { domain })?)
                .await
                .map_err(failed(global))?
                .into_inner();
            print_policy(global, &info);
        }
        StsCommand::List(args) => list(global, args).await?,
        StsCommand::Report { domain, day } => super::tlsrpt::report(global, domain, day).await?,
        StsCommand::SendReports { day } => super::tlsrpt::send_reports(global, day).await?,
        StsCommand::Evict { domain } => {
            let mut client = mta_sts(global, CALL_TIMEOUT).await?;
            let r = client
                .evict(req(
                    global,
                    pb::EvictPolicyRequest {
                        domain: domain.clone(),
                    },
                )?)
                .await
                .map_err(failed(global))?
                .into_inner();
            if global.json {
                println!("{}", json!({ "domain": domain, "evicted": r.evicted }));
            } else if r.evicted {
                println!("evicted the MTA-STS policy of {domain}");
            } else {
                println!("no MTA-STS policy was cached for {domain}");
            }
        }
    }
    Ok(())
}

/// `Some(s)` unless empty: JSON says null for "none".
fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// `Some(n)` unless 0.
fn some_n<T: Default + PartialEq>(n: T) -> Option<T> {
    (n != T::default()).then_some(n)
}

fn policy_json(p: &pb::PolicyInfo) -> Value {
    json!({
        "domain": p.domain,
        "state": p.state,
        "mode": some(&p.mode),
        "mx": p.mx,
        "max_age_seconds": some_n(p.max_age_seconds),
        "policy_id": some(&p.policy_id),
        "fetched_at_ms": some_n(p.fetched_at_ms),
        "expires_at_ms": some_n(p.expires_at_ms),
        "last_error": some(&p.last_error),
        "last_error_at_ms": some_n(p.last_error_at_ms),
        "policy": some(&p.policy),
    })
}

/// `-` for an empty cell.
fn cell(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_owned() }
}

/// One policy for people: a two-column table.
fn policy_text(p: &pb::PolicyInfo, now: u64) -> String {
    let last_error = if p.last_error.is_empty() {
        "-".to_string()
    } else {
        format!("{} ({})", p.last_error, when(p.last_error_at_ms, now))
    };
    table(
        &["DOMAIN", &p.domain],
        &[
            vec!["state".into(), p.state.clone()],
            vec!["mode".into(), cell(&p.mode)],
            vec!["mx".into(), cell(&p.mx.join(" "))],
            vec![
                "max age".into(),
                if p.max_age_seconds == 0 {
                    "-".into()
                } else {
                    span(u64::from(p.max_age_seconds) * 1000)
                },
            ],
            vec!["id".into(), cell(&p.policy_id)],
            vec!["fetched".into(), when(p.fetched_at_ms, now)],
            vec!["expires".into(), when(p.expires_at_ms, now)],
            vec!["last error".into(), last_error],
        ],
    )
}

fn print_policy(global: &Global, p: &pb::PolicyInfo) {
    if global.json {
        println!("{}", policy_json(p));
    } else {
        print!("{}", policy_text(p, output::now_ms()));
    }
}

/// Policies as a table for people, one per line.
fn policies_table(policies: &[pb::PolicyInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|p| {
            vec![
                p.domain.clone(),
                cell(&p.mode),
                p.state.clone(),
                when(p.expires_at_ms, now),
                cell(&p.policy_id),
                cell(&p.mx.join(",")),
            ]
        })
        .collect();
    table(&["DOMAIN", "MODE", "STATE", "EXPIRES", "ID", "MX"], &rows)
}

async fn list(global: &Global, args: StsListArgs) -> anyhow::Result<()> {
    let want = if args.all { usize::MAX } else { args.limit as usize };
    let mut client = mta_sts(global, CALL_TIMEOUT).await?;
    let mut policies = Vec::new();
    let mut token = args.cursor.unwrap_or_default();
    // Page after page until `want` policies or the end: the server gives at most MAX_PAGE at a time.
    loop {
        let page_size = u32::try_from(want.saturating_sub(policies.len()).min(MAX_PAGE)).unwrap_or(1000);
        let page = client
            .list(req(
                global,
                pb::ListPoliciesRequest {
                    page_size,
                    page_token: token,
                },
            )?)
            .await
            .map_err(failed(global))?
            .into_inner();
        policies.extend(page.policies);
        token = page.next_page_token;
        if token.is_empty() || policies.len() >= want {
            break;
        }
    }
    if global.json {
        let doc = json!({
            "policies": policies.iter().map(policy_json).collect::<Vec<_>>(),
            "next_cursor": some(&token),
        });
        println!("{doc}");
        return Ok(());
    }
    print!("{}", policies_table(&policies, output::now_ms()));
    if !token.is_empty() {
        eprintln!("more: ternctl sts list --cursor {token} ...");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enforce(now: u64) -> pb::PolicyInfo {
        pb::PolicyInfo {
            domain: "example.com".into(),
            state: "valid".into(),
            mode: "enforce".into(),
            mx: vec!["mx.example.com".into(), "*.example.net".into()],
            max_age_seconds: 604_800,
            policy_id: "20240101".into(),
            fetched_at_ms: now - 120_000,
            expires_at_ms: now + 3 * 86_400_000,
            policy: "version: STSv1\n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_policy_for_people_shows_state_mode_mx_expiry_id_and_error() {
        let now = 1_700_000_000_000;
        let mut p = enforce(now);
        let text = policy_text(&p, now);
        assert!(text.starts_with("DOMAIN      example.com\n"), "{text}");
        for want in [
            "state       valid",
            "mode        enforce",
            "mx          mx.example.com *.example.net",
            "max age     1w",
            "id          20240101",
            "fetched     2m ago",
            "expires     in 3d",
            "last error  -",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
        p.last_error = "HTTP status 404".into();
        p.last_error_at_ms = now - 60_000;
        assert!(policy_text(&p, now).contains("last error  HTTP status 404 (1m ago)"));
    }

    #[test]
    fn json_says_null_for_what_an_entry_without_a_policy_lacks() {
        let p = pb::PolicyInfo {
            domain: "example.org".into(),
            state: "no-policy".into(),
            last_error: "timed out".into(),
            last_error_at_ms: 5,
            ..Default::default()
        };
        let doc = policy_json(&p);
        assert_eq!(doc["state"], "no-policy");
        assert!(doc["mode"].is_null() && doc["policy_id"].is_null() && doc["expires_at_ms"].is_null());
        assert_eq!(doc["mx"], json!([]));
        assert_eq!(doc["last_error"], "timed out");
        assert_eq!(doc["last_error_at_ms"], 5);
        let full = policy_json(&enforce(1_700_000_000_000));
        assert_eq!(full["max_age_seconds"], 604_800);
        assert_eq!(full["mx"][1], "*.example.net");
    }

    #[test]
    fn the_list_is_one_line_per_policy() {
        let now = 1_700_000_000_000;
        let none = pb::PolicyInfo {
            domain: "example.org".into(),
            state: "no-policy".into(),
            ..Default::default()
        };
        let t = policies_table(&[enforce(now), none], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with("DOMAIN       MODE     STATE      EXPIRES  ID        MX"),
            "{t}"
        );
        assert!(lines[1].contains("enforce") && lines[1].contains("in 3d"), "{t}");
        assert!(lines[1].ends_with("mx.example.com,*.example.net"), "{t}");
        assert!(lines[2].starts_with("example.org  -        no-policy  -"), "{t}");
    }
}
