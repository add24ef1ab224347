//! The repair actions (hold, release, retry, bounce, delete) on ids or on a filter: dry runs, confirmation
//! with the count, and big filters a batch at a time with progress.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use serde_json::json;
use tern_proto::v1 as pb;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tonic::transport::Channel;

use super::output::{admin, failed, plural, req};
use super::queue::filter;
use crate::cli::{ActionArgs, BulkArgs, Global};

/// Above this many jobs, a bulk action goes in batches and shows its progress.
const PROGRESS_OVER: u64 = 1000;
/// Jobs per batch of a bulk action.
const BATCH: u32 = 1000;

/// The actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Make due now.
    Retry,
    /// Fail with a DSN.
    Bounce,
    /// Delete without a DSN.
    Delete,
    /// Hold: never claimed until released.
    Hold,
    /// Release held jobs.
    Release,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Retry => "retry",
            Verb::Bounce => "bounce",
            Verb::Delete => "delete",
            Verb::Hold => "hold",
            Verb::Release => "release",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verb::Retry => "retried",
            Verb::Bounce => "bounced",
            Verb::Delete => "deleted",
            Verb::Hold => "held",
            Verb::Release => "released",
        }
    }

    /// Whether the action applies to a listed job, as the server's filter action decides: waiting jobs
    /// only; release only held ones, hold only the others.
    fn applies(self, job: &pb::JobSummary) -> bool {
        match self {
            Verb::Release => job.state == "held",
            Verb::Hold => job.state != "inflight" && job.state != "held",
            _ => job.state != "inflight",
        }
    }

    async fn call(
        self,
        global: &Global,
        client: &mut QueueAdminClient<Channel>,
        request: pb::ActionRequest,
    ) -> anyhow::Result<pb::ActionResponse> {
        let request = req(global, request)?;
        let r = match self {
            Verb::Retry => client.retry_now(request).await,
            Verb::Bounce => client.bounce(request).await,
            Verb::Delete => client.delete(request).await,
            Verb::Hold => client.hold(request).await,
            Verb::Release => client.release(request).await,
        };
        Ok(r.map_err(failed(global))?.into_inner())
    }
}

/// Which jobs, and how carefully.
#[derive(Debug)]
pub struct Selection {
    target: Target,
    dry_run: bool,
    yes: bool,
}

#[derive(Debug)]
enum Target {
    /// Message or job ids.
    Ids(Vec<String>),
    /// A filter, and how to say it to people.
    Filter(pb::MessageFilter, String),
}

impl Selection {
    /// `ternctl queue hold|release|retry|bounce|delete`: a filter.
    pub fn bulk(args: BulkArgs) -> Self {
        let f = filter(&args.filter);
        let what = describe(&f);
        Selection {
            target: Target::Filter(f, what),
            dry_run: args.dry_run,
            yes: args.yes,
        }
    }

    /// `ternctl msg retry|bounce|delete`: ids, or a domain.
    pub fn action(args: ActionArgs) -> Self {
        let target = match args.domain {
            Some(domain) => {
                let f = pb::MessageFilter {
                    domain,
                    ..Default::default()
                };
                let what = describe(&f);
                Target::Filter(f, what)
            }
            None => Target::Ids(args.ids),
        };
        Selection {
            target,
            dry_run: args.dry_run,
            yes: args.yes,
        }
    }

    /// `ternctl msg hold|release`: ids.
    pub fn ids(ids: Vec<String>, dry_run: bool) -> Self {
        Selection {
            target: Target::Ids(ids),
            dry_run,
            yes: true,
        }
    }
}

/// A filter for people: `domain=a.example sender=b@c.example older-than=1h`.
fn describe(f: &pb::MessageFilter) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("domain", &f.domain),
        ("sender", &f.sender),
        ("rcpt", &f.recipient),
        ("state", &f.state),
        ("tag", &f.tag),
    ] {
        if !value.is_empty() {
            parts.push(format!("{name}={value}"));
        }
    }
    if f.older_than_seconds > 0 {
        let age = tern_core::HumanDuration(std::time::Duration::from_secs(f.older_than_seconds));
        parts.push(format!("older-than={age}"));
    }
    if f.min_attempts > 0 {
        parts.push(format!("min-attempts={}", f.min_attempts));
    }
    parts.join(" ")
}

fn print_count(global: &Global, verb: Verb, count: u64) {
    if global.json {
        println!("{}", json!({ "action": verb.word(), "count": count }));
    } else {
        println!("{} {}", verb.done(), plural(count, "job"));
    }
}

fn print_dry_run(global: &Global, verb: Verb, what: Option<&str>, r: &pb::ActionResponse) {
    if global.json {
        let doc = json!({
            "action": verb.word(),
            "dry_run": true,
            "count": r.count,
            "sample_ids": r.sample_ids,
        });
        println!("{doc}");
        return;
    }
    let matching = what.map(|w| format!(" matching {w}")).unwrap_or_default();
    println!(
        "would {} {}{matching}; nothing was changed",
        verb.word(),
        plural(r.count, "job")
    );
    for id in &r.sample_ids {
        println!("{id}");
    }
    let shown = u64::try_from(r.sample_ids.len()).unwrap_or(u64::MAX);
    if !r.sample_ids.is_empty() && r.count > shown {
        println!("(and {} more)", r.count - shown);
    }
}

/// Runs `verb` on the selection; `reason` goes with a bounce.
pub async fn act(
    global: &Global,
    verb: Verb,
    selection: Selection,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let reason = reason.unwrap_or_default();
    let (filter, what) = match selection.target {
        Target::Ids(ids) => {
            let mut client = admin(global).await?;
            let request = pb::ActionRequest {
                ids,
                dry_run: selection.dry_run,
                reason,
                ..Default::default()
            };
            let r = verb.call(global, &mut client, request).await?;
            if selection.dry_run {
                print_dry_run(global, verb, None, &r);
            } else {
                print_count(global, verb, r.count);
            }
            return Ok(());
        }
        Target::Filter(filter, what) => (filter, what),
    };
    // By filter: confirm first, unless --yes or --dry-run.
    if !selection.dry_run && !selection.yes && !std::io::stdin().is_terminal() {
        bail!(
            "refusing to {} the jobs matching {what} without confirmation: stdin is not a terminal; pass \
             --yes (or --dry-run to see what would change)",
            verb.word()
        );
    }
    let mut client = admin(global).await?;
    let planned = verb
        .call(
            global,
            &mut client,
            pb::ActionRequest {
                filter: Some(filter.clone()),
                dry_run: true,
                reason: reason.clone(),
                ..Default::default()
            },
        )
        .await?;
    if selection.dry_run {
        print_dry_run(global, verb, Some(&what), &planned);
        return Ok(());
    }
    if planned.count == 0 {
        print_count(global, verb, 0);
        return Ok(());
    }
    if !selection.yes {
        eprint!(
            "{} {} matching {what}? [y/N] ",
            verb.word(),
            plural(planned.count, "job")
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            bail!("not confirmed; nothing was changed");
        }
    }
    if planned.count <= PROGRESS_OVER {
        let request = pb::ActionRequest {
            filter: Some(filter),
            reason,
            ..Default::default()
        };
        let r = verb.call(global, &mut client, request).await?;
        print_count(global, verb, r.count);
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
                .filter(|j| verb.applies(j))
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
        let request = pb::ActionRequest {
            ids: chunk.to_vec(),
            // A job that finished since the listing has nothing left to do.
            skip_missing: true,
            reason: reason.clone(),
            ..Default::default()
        };
        count += verb.call(global, &mut client, request).await?.count;
        done += chunk.len();
        eprint!("\r{}: {done}/{total}", verb.done());
        std::io::stderr().flush()?;
    }
    eprintln!();
    print_count(global, verb, count);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_as_flags() {
        let f = pb::MessageFilter {
            domain: "a.example".into(),
            tag: "k=v".into(),
            older_than_seconds: 3600,
            state: "held".into(),
            ..Default::default()
        };
        assert_eq!(describe(&f), "domain=a.example state=held tag=k=v older-than=1h");
    }
}
