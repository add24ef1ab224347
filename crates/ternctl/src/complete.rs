//! Dynamic shell completions: the domains and message ids the control plane knows, asked for while the
//! user types (clap_complete's `COMPLETE=<shell> ternctl` engine, see `ternctl completions`).
//!
//! The shell runs ternctl with the partial command line, not the user's flags, so the control plane is the
//! one of `TERN_SERVER` (with `TERN_ADMIN_TOKEN`). Completion must never hang a shell: short timeouts, and
//! any failure completes nothing.

use std::ffi::OsStr;
use std::time::Duration;

use clap_complete::CompletionCandidate;
use tern_proto::v1 as pb;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tonic::transport::Channel;

use crate::cli::values::{DEFAULT_SERVER, server_url};
use crate::grpc;

/// How long a completion may wait for the control plane, connection and call each.
const WAIT: Duration = Duration::from_millis(1500);
/// How many messages are offered.
const MAX_IDS: u32 = 500;

/// Runs `f` on a client of the control plane; `None` when it cannot be reached or fails.
fn with_admin<T, F>(f: F) -> Option<T>
where
    F: AsyncFnOnce(&mut QueueAdminClient<Channel>, Option<&str>) -> Option<T>,
{
    let server = std::env::var("TERN_SERVER")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map_or_else(|| Ok(DEFAULT_SERVER.to_string()), |s| server_url(&s))
        .ok()?;
    let token = std::env::var("TERN_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let channel = grpc::connect_timeouts(&server, WAIT, Some(WAIT)).await.ok()?;
        let mut client = QueueAdminClient::new(channel);
        f(&mut client, token.as_deref()).await
    })
}

/// The candidates among `items` (value, help) that start with what was typed, sorted and without repeats.
fn candidates(current: &OsStr, mut items: Vec<(String, String)>) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    items.retain(|(v, _)| v.starts_with(prefix.as_ref()));
    items.sort();
    items.dedup_by(|a, b| a.0 == b.0);
    items
        .into_iter()
        .map(|(v, help)| CompletionCandidate::new(v).help((!help.is_empty()).then(|| help.into())))
        .collect()
}

/// The domains in the queue (deepest first), suspended or routed.
pub fn domains(current: &OsStr) -> Vec<CompletionCandidate> {
    let items = with_admin(async |client, token| {
        let mut items = Vec::new();
        let status = client
            .get_status(grpc::request(pb::GetStatusRequest { top_domains: 1000 }, token).ok()?)
            .await
            .ok()?
            .into_inner();
        for d in status.domains {
            items.push((d.domain, format!("{} jobs", d.depth)));
        }
        if let Ok(r) = client
            .list_suspensions(grpc::request(pb::ListSuspensionsRequest {}, token).ok()?)
            .await
        {
            items.extend(
                r.into_inner()
                    .suspensions
                    .into_iter()
                    .map(|s| (s.domain, "suspended".into())),
            );
        }
        if let Ok(r) = client
            .list_routes(grpc::request(pb::ListRoutesRequest {}, token).ok()?)
            .await
        {
            items.extend(
                r.into_inner()
                    .routes
                    .into_iter()
                    .map(|r| (r.domain, format!("routed to {}", r.target))),
            );
        }
        Some(items)
    });
    candidates(current, items.unwrap_or_default())
}

/// The ids of queued messages (job ids too once a `.` is typed).
pub fn ids(current: &OsStr) -> Vec<CompletionCandidate> {
    let jobs = current.to_string_lossy().contains('.');
    let items = with_admin(async |client, token| {
        let page = client
            .list_messages(
                grpc::request(
                    pb::ListMessagesRequest {
                        filter: None,
                        cursor: String::new(),
                        limit: MAX_IDS,
                    },
                    token,
                )
                .ok()?,
            )
            .await
            .ok()?
            .into_inner();
        Some(
            page.jobs
                .into_iter()
                .map(|j| {
                    let help = format!("{} -> {} ({})", j.sender, j.recipients.join(","), j.state);
                    (if jobs { j.job_id } else { j.message_id }, help)
                })
                .collect::<Vec<_>>(),
        )
    });
    candidates(current, items.unwrap_or_default())
}
