//! `ternctl events`: the queue's events, one line each for people or JSON lines; `--follow` keeps going
//! across control-plane restarts, resuming after the last event printed.

use serde_json::{Value, json};
use tern_proto::v1 as pb;
use tern_proto::v1::events_client::EventsClient;

use super::follow::{Backoff, Stop, one_line, print_line, until_interrupted};
use super::output::{failed, req, stream_channel};
use crate::cli::{EventsArgs, Global};
use crate::timefmt::stamp;

/// Prints events until caught up (or, with `--follow`, until interrupted).
pub async fn run(global: &Global, args: EventsArgs) -> anyhow::Result<()> {
    until_interrupted(events(global, args)).await
}

async fn events(global: &Global, args: EventsArgs) -> anyhow::Result<()> {
    let mut from = args
        .from
        .clone()
        .unwrap_or_else(|| if args.follow { "now" } else { "start" }.to_string());
    let mut backoff = Backoff::new();
    // Whether a watch was ever opened: until then a failure is the user's to see (wrong address, key).
    let mut opened = false;
    let mut outage: Option<String> = None;
    loop {
        let stop = watch(global, &args, &mut from, &mut opened, &mut backoff, &mut outage).await;
        let reason = match stop {
            None if !args.follow => return Ok(()),
            None => "the control plane ended the stream".to_string(),
            Some(Stop::ReaderGone) => return Ok(()),
            Some(Stop::Fatal(e)) => return Err(e),
            Some(Stop::Broken(reason)) if !args.follow || !opened => anyhow::bail!("{reason}"),
            Some(Stop::Broken(reason)) => reason,
        };
        if outage.is_none() {
            eprintln!("ternctl: events: {reason}; reconnecting");
            outage = Some(reason);
        }
        backoff.wait().await;
    }
}

/// One watch, from `from`, printing events and moving `from` past each; `None` when the server ended it.
async fn watch(
    global: &Global,
    args: &EventsArgs,
    from: &mut String,
    opened: &mut bool,
    backoff: &mut Backoff,
    outage: &mut Option<String>,
) -> Option<Stop> {
    let channel = match stream_channel(global).await {
        Ok(c) => c,
        Err(e) if *opened => return Some(Stop::Broken(format!("{e:#}"))),
        Err(e) => return Some(Stop::Fatal(e)),
    };
    let request = match req(
        global,
        pb::WatchRequest {
            from: from.clone(),
            types: args.types.clone(),
            domain: args.domain.clone().unwrap_or_default(),
            tag: args.tag.clone().unwrap_or_default(),
            stop_at_end: !args.follow,
        },
    ) {
        Ok(r) => r,
        Err(e) => return Some(Stop::Fatal(e)),
    };
    let mut stream = match EventsClient::new(channel).watch(request).await {
        Ok(s) => s.into_inner(),
        Err(s) => return Some(Stop::from_status(s, failed(global))),
    };
    *opened = true;
    if outage.take().is_some() {
        eprintln!("ternctl: events: reconnected");
    }
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                backoff.reset();
                let line = if global.json {
                    event_json(&e).to_string()
                } else {
                    event_text(&e)
                };
                if let Err(stop) = print_line(&line) {
                    return Some(stop);
                }
                if !e.position.is_empty() {
                    from.clone_from(&e.position);
                }
            }
            Ok(None) => return None,
            Err(s) => return Some(Stop::from_status(s, failed(global))),
        }
    }
}

fn event_json(e: &pb::QueueEvent) -> Value {
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    json!({
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
        "dsn_id": some(&e.dsn_id),
        "id": e.id,
        "position": e.position,
    })
}

/// At most this many recipients are listed on a line.
const RECIPIENTS_SHOWN: usize = 3;

/// One event for people: time, kind, job (or message) id, domain, recipients, reply, MX.
fn event_text(e: &pb::QueueEvent) -> String {
    let mut parts = vec![format!("{:<19}", stamp(e.time_ms)), format!("{:<9}", e.kind)];
    let id = if e.job_id.is_empty() {
        &e.message_id
    } else {
        &e.job_id
    };
    if !id.is_empty() {
        parts.push(id.clone());
    }
    if !e.domain.is_empty() {
        parts.push(e.domain.clone());
    }
    if !e.recipients.is_empty() {
        let mut r = e.recipients[..e.recipients.len().min(RECIPIENTS_SHOWN)].join(",");
        if e.recipients.len() > RECIPIENTS_SHOWN {
            r.push_str(&format!(" +{} more", e.recipients.len() - RECIPIENTS_SHOWN));
        }
        parts.push(r);
    }
    if !e.reply.is_empty() {
        parts.push(format!("\"{}\"", one_line(&e.reply)));
    }
    match (e.remote_mx.is_empty(), e.remote_ip.is_empty()) {
        (false, false) => parts.push(format!("via {} [{}]", e.remote_mx, e.remote_ip)),
        (false, true) => parts.push(format!("via {}", e.remote_mx)),
        (true, false) => parts.push(format!("via [{}]", e.remote_ip)),
        (true, true) => {}
    }
    if !e.dsn_id.is_empty() {
        parts.push(format!("dsn {}", e.dsn_id));
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_as_one_line_without_its_position() {
        let e = pb::QueueEvent {
            kind: "deferred".into(),
            time_ms: 1_795_872_409_000,
            message_id: "01KB".into(),
            job_id: "01KB.0".into(),
            domain: "r.example".into(),
            recipients: vec!["a@r.example".into(), "b@r.example".into()],
            reply: "451 4.7.1\ngreylisted".into(),
            remote_mx: "mx.r.example".into(),
            remote_ip: "192.0.2.1".into(),
            position: "opaque-cursor".into(),
            ..Default::default()
        };
        assert_eq!(
            event_text(&e),
            "2026-11-28 13:26:49  deferred   01KB.0  r.example  a@r.example,b@r.example  \"451 4.7.1 greylisted\"  \
             via mx.r.example [192.0.2.1]"
        );
        assert_eq!(event_json(&e)["position"], "opaque-cursor");
    }
}
