//! `ternctl trace`: live SMTP conversations of the matching deliveries, from every worker of the cluster,
//! one line per record (JSON lines with --json), until Ctrl-C; a broken stream is opened again.

use serde_json::json;
use tern_proto::v1 as pb;
use tern_proto::v1::smtp_trace_client::SmtpTraceClient;

use super::follow::{Backoff, Stop, one_line, print_line, until_interrupted};
use super::output::{failed, req, stream_channel};
use crate::cli::{Global, TraceArgs};
use crate::timefmt::clock;

/// Streams trace lines until interrupted.
pub async fn run(global: &Global, args: TraceArgs) -> anyhow::Result<()> {
    until_interrupted(trace(global, args)).await
}

async fn trace(global: &Global, args: TraceArgs) -> anyhow::Result<()> {
    let request = pb::SmtpTraceRequest {
        domain: args.domain.unwrap_or_default(),
        mx: args.mx.unwrap_or_default(),
    };
    let mut backoff = Backoff::new();
    let mut opened = false;
    let mut outage: Option<String> = None;
    loop {
        let stop = watch(global, &request, &mut opened, &mut backoff, &mut outage).await;
        let reason = match stop {
            Stop::ReaderGone => return Ok(()),
            Stop::Fatal(e) => return Err(e),
            Stop::Broken(reason) if !opened => anyhow::bail!("{reason}"),
            Stop::Broken(reason) => reason,
        };
        if outage.is_none() {
            eprintln!("ternctl: trace: {reason}; reconnecting");
            outage = Some(reason);
        }
        backoff.wait().await;
    }
}

/// One trace stream; returns why it stopped.
async fn watch(
    global: &Global,
    request: &pb::SmtpTraceRequest,
    opened: &mut bool,
    backoff: &mut Backoff,
    outage: &mut Option<String>,
) -> Stop {
    let channel = match stream_channel(global).await {
        Ok(c) => c,
        Err(e) if *opened => return Stop::Broken(format!("{e:#}")),
        Err(e) => return Stop::Fatal(e),
    };
    let request = match req(global, request.clone()) {
        Ok(r) => r,
        Err(e) => return Stop::Fatal(e),
    };
    let mut stream = match SmtpTraceClient::new(channel).watch(request).await {
        Ok(s) => s.into_inner(),
        Err(s) => return Stop::from_status(s, failed(global)),
    };
    if !*opened && !global.json {
        eprintln!("ternctl: tracing (Ctrl-C to stop)");
    }
    *opened = true;
    if outage.take().is_some() {
        eprintln!("ternctl: trace: reconnected");
    }
    loop {
        match stream.message().await {
            Ok(Some(line)) => {
                backoff.reset();
                let text = if global.json {
                    line_json(&line).to_string()
                } else {
                    line_text(&line)
                };
                if let Err(stop) = print_line(&text) {
                    return stop;
                }
            }
            Ok(None) => return Stop::Broken("the control plane ended the stream".into()),
            Err(s) => return Stop::from_status(s, failed(global)),
        }
    }
}

fn line_json(l: &pb::SmtpTraceLine) -> serde_json::Value {
    json!({
        "time_ms": l.time_ms,
        "worker": l.worker,
        "session": l.session,
        "domain": l.domain,
        "mx": l.mx,
        "ip": l.ip,
        "kind": l.kind,
        "text": l.text,
    })
}

/// One record for people: time, worker, session, domain, MX [IP], kind, text.
fn line_text(l: &pb::SmtpTraceLine) -> String {
    let peer = match (l.mx.is_empty(), l.ip.is_empty()) {
        (false, false) => format!("{} [{}]", l.mx, l.ip),
        (false, true) => l.mx.clone(),
        (true, false) => format!("[{}]", l.ip),
        (true, true) => "-".into(),
    };
    format!(
        "{}  {}  {}  {}  {}  {:<7} {}",
        clock(l.time_ms),
        l.worker,
        l.session,
        l.domain,
        peer,
        l.kind,
        one_line(&l.text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_record_reads_as_one_line() {
        let l = pb::SmtpTraceLine {
            time_ms: 1_795_872_409_042,
            worker: "w1".into(),
            session: "s7".into(),
            domain: "r.example".into(),
            mx: "mx.r.example".into(),
            ip: "192.0.2.1".into(),
            kind: "recv".into(),
            text: "250 2.0.0 ok\r\n".into(),
        };
        assert_eq!(
            line_text(&l),
            "13:26:49.042  w1  s7  r.example  mx.r.example [192.0.2.1]  recv    250 2.0.0 ok"
        );
        assert_eq!(line_json(&l)["kind"], "recv");
    }
}
