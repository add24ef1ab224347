//! `ternctl queue status|top`: totals by state, the oldest message, the deepest domains, recent rates.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::v1 as pb;

use super::output::{self, admin, dash, failed, plural, req, span, table, until};
use crate::cli::Global;

/// `ternctl queue status`.
pub async fn status(global: &Global, top: u32) -> anyhow::Result<()> {
    let status = fetch(global, top).await?;
    if global.json {
        println!("{}", status_json(&status));
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

async fn fetch(global: &Global, top: u32) -> anyhow::Result<pb::GetStatusResponse> {
    let mut client = admin(global).await?;
    Ok(client
        .get_status(req(global, pb::GetStatusRequest { top_domains: top })?)
        .await
        .map_err(failed(global))?
        .into_inner())
}

/// A suspension as JSON.
pub fn suspension_json(s: &pb::Suspension) -> Value {
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
            "held": t.held,
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
            vec!["held".into(), t.held.to_string()],
            vec![
                "suspended".into(),
                format!("{} ({})", t.suspended, plural(t.suspended_domains, "domain")),
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
                d.suspension
                    .as_ref()
                    .map_or("-".to_string(), |s| until(s.until_ms, now, "until resumed")),
                dash(&d.last_error),
            ]
        })
        .collect();
    table(
        &["DOMAIN", "DEPTH", "IN FLIGHT", "DUE", "SUSPENDED", "LAST ERROR"],
        &rows,
    )
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

/// `ternctl queue top`: the status every second.
pub async fn top_view(global: &Global, top: u32, iterations: u64) -> anyhow::Result<()> {
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
                 depth: {}  due {}  in flight {}  deferred {}  held {}  suspended {}  oldest {}\n\n",
                global.server,
                window(minute.window_seconds),
                rate(minute.delivered, minute.window_seconds),
                rate(minute.deferred, minute.window_seconds),
                rate(minute.failed, minute.window_seconds),
                plural(t.total, "job"),
                t.due_now,
                t.in_flight,
                t.deferred,
                t.held,
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
