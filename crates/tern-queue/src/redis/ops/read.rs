//! Read-only views (`read.lua`, flagged `no-writes`): a message, its body, pages of jobs, counts, domain
//! depths.

use bytes::Bytes;
use redis::Value;
use tern_core::MessageId;
use tern_core::time::now_ms;

use super::{Arg, arg, codec, count, unexpected};
use crate::QueueError;
use crate::model::{Cursor, DomainDepth, Job, ListFilter, MessageInfo, Page, QueueCounts, Suspension};
use crate::redis::RedisQueue;
use crate::redis::library::Function;

/// Jobs one `page` view scans.
const PAGE_SCAN: usize = 500;
/// `page` views per `list` call before it answers with what it has (and a cursor).
const PAGE_CALLS: usize = 20;

/// A view and its arguments.
pub(crate) enum View<'a> {
    /// A message and its jobs in one shard.
    Message(MessageId),
    /// A message's stored body.
    Body(MessageId),
    /// Up to `scan` jobs after `after`, those matching the filter with their fields.
    Page {
        after: &'a str,
        scan: usize,
        domain: &'a str,
        state: &'a str,
        sender: &'a str,
        recipient: &'a str,
    },
    /// The shard's counts.
    Counts,
    /// One domain's depth, or every domain's (`""`).
    Depths(&'a str),
    /// A message's history records in the shard, and (with `true`) the `queued` lines of its jobs there that
    /// are still in the string form.
    History(MessageId, bool),
}

impl View<'_> {
    pub(crate) fn into_args(self) -> Vec<Arg> {
        match self {
            View::Message(id) => vec![arg("message"), arg(id)],
            View::Body(id) => vec![arg("body"), arg(id)],
            View::Page {
                after,
                scan,
                domain,
                state,
                sender,
                recipient,
            } => vec![
                arg("page"),
                arg(after),
                arg(scan),
                arg(domain),
                arg(state),
                arg(sender),
                arg(recipient),
            ],
            View::Counts => vec![arg("counts")],
            View::Depths(domain) => vec![arg("depths"), arg(domain)],
            View::History(id, queued) => vec![arg("history"), arg(id), arg(if queued { "1" } else { "0" })],
        }
    }
}

/// A `message` view: the stored body's size and the jobs, or `None` when the shard has none of it.
pub(crate) fn decode_message(v: &Value) -> Result<Option<(u64, Vec<Job>)>, QueueError> {
    let items = codec::items(v);
    let Some(size) = items.first() else {
        return Ok(None);
    };
    let jobs = items[1..]
        .iter()
        .map(|f| codec::job_from_fields(&codec::fields(f)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((count(Some(size)), jobs)))
}

/// A `page` view: the last job id scanned, whether the shard is done, and the matching jobs.
pub(crate) fn decode_page(v: &Value) -> Result<(String, bool, Vec<Job>), QueueError> {
    let items = codec::items(v);
    let last = items.first().and_then(codec::text).unwrap_or_default();
    let done = items.get(1).and_then(codec::text).as_deref() == Some("1");
    let jobs = items
        .iter()
        .skip(2)
        .map(|f| codec::job_from_fields(&codec::fields(f)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((last, done, jobs))
}

/// A `counts` view added to `total`.
pub(crate) fn add_counts(total: &mut QueueCounts, v: &Value) -> Result<(), QueueError> {
    let items = codec::items(v);
    let n: Vec<i64> = items.iter().take(7).map(|x| codec::int(x).unwrap_or(0)).collect();
    let [queued, deferred, inflight, jobs, oldest, bounce, suspended] = n[..] else {
        return Err(unexpected("counts", v));
    };
    let first_message = items
        .get(7)
        .and_then(codec::text)
        .and_then(|id| id.split('.').next().and_then(|m| m.parse::<MessageId>().ok()));
    if let Some(m) = first_message {
        let t = m.timestamp_ms();
        total.oldest_message_ms = Some(total.oldest_message_ms.map_or(t, |x| x.min(t)));
    }
    total.held += count(items.get(8));
    total.queued += queued.max(0) as u64;
    total.deferred += deferred.max(0) as u64;
    total.in_flight += inflight.max(0) as u64;
    total.total += jobs.max(0) as u64;
    total.bounce_pending += bounce.max(0) as u64;
    total.suspended_domains += suspended.max(0) as u64;
    if let Ok(o) = u64::try_from(oldest) {
        total.oldest_due_ms = Some(total.oldest_due_ms.map_or(o, |x| x.min(o)));
    }
    Ok(())
}

/// A `depths` view: one depth per domain.
pub(crate) fn decode_depths(v: &Value) -> Vec<DomainDepth> {
    codec::items(v).chunks(9).filter_map(depth).collect()
}

fn depth(rec: &[Value]) -> Option<DomainDepth> {
    let [d, waiting, due, total, earliest, active, limit, suspension, held] = rec else {
        return None;
    };
    let domain = codec::text(d)?;
    let int = |v: &Value| codec::int(v).unwrap_or(0);
    let suspension = codec::text(suspension).filter(|s| !s.is_empty()).and_then(|s| {
        serde_json::from_str::<Suspension>(&s).ok().map(|mut x| {
            x.domain = domain.clone();
            x
        })
    });
    Some(DomainDepth {
        waiting: int(waiting).max(0) as u64,
        due: int(due).max(0) as u64,
        held: int(held).max(0) as u64,
        total: int(total).max(0) as u64,
        earliest_due_ms: u64::try_from(int(earliest)).ok(),
        active_claims: int(active).max(0) as u64,
        concurrency_limit: u32::try_from(int(limit)).ok(),
        suspension,
        domain,
    })
}

impl RedisQueue {
    pub(crate) async fn view(&self, shard: u16, now: u64, view: View<'_>) -> Result<Value, QueueError> {
        self.call(Function::Read, shard, now, view.into_args()).await
    }

    /// [`crate::Queue::get_message`]: every shard holds the message's jobs of its domains.
    pub(crate) async fn read_message(&self, id: MessageId) -> Result<Option<MessageInfo>, QueueError> {
        let now = now_ms();
        let parts = self
            .on_all_shards(|shard| async move { self.view(shard, now, View::Message(id)).await })
            .await?;
        let mut found = false;
        let mut body_size = 0;
        let mut jobs = Vec::new();
        for v in parts {
            let Some((size, shard_jobs)) = decode_message(&v)? else {
                continue;
            };
            found = true;
            body_size = body_size.max(size);
            jobs.extend(shard_jobs);
        }
        if !found {
            return Ok(None);
        }
        jobs.sort_by_key(|j| j.id.index);
        Ok(Some(MessageInfo { id, body_size, jobs }))
    }

    /// [`crate::Queue::read_body`]: a message's body lives in each shard that holds one of its jobs; any
    /// copy will do.
    pub(crate) async fn read_message_body(&self, id: MessageId) -> Result<Option<Bytes>, QueueError> {
        let now = now_ms();
        let parts = self
            .on_all_shards(|shard| async move { self.view(shard, now, View::Body(id)).await })
            .await?;
        Ok(parts.into_iter().find_map(|v| match v {
            Value::BulkString(b) => Some(Bytes::from(b)),
            _ => None,
        }))
    }

    /// [`crate::Queue::list`]: shard by shard (one shard for a domain filter), in job id order within a
    /// shard; the cursor is `<shard>/<last job id>`.
    pub(crate) async fn list_jobs(
        &self,
        filter: &ListFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<Job>, QueueError> {
        let limit = limit.max(1);
        let domain = filter.domain.as_ref().map(|d| d.to_ascii_lowercase());
        let shards: Vec<u16> = match &domain {
            Some(d) => vec![self.keys.shard_of_domain(d)],
            None => (0..self.keys.shards()).collect(),
        };
        let (mut pos, mut after) = match &cursor {
            Some(Cursor(c)) => {
                let bad = || QueueError::InvalidMessage(format!("bad cursor {c:?}"));
                let (s, id) = c.split_once('/').ok_or_else(bad)?;
                let s: u16 = s.parse().map_err(|_| bad())?;
                (
                    shards.iter().position(|x| *x == s).unwrap_or(shards.len()),
                    id.to_string(),
                )
            }
            None => (0, String::new()),
        };
        let sender = filter.sender.as_deref().unwrap_or("").to_ascii_lowercase();
        let recipient = filter.recipient.as_deref().unwrap_or("").to_ascii_lowercase();
        let mut items = Vec::new();
        let mut calls = 0;
        while pos < shards.len() {
            let shard = shards[pos];
            let view = View::Page {
                after: &after,
                scan: PAGE_SCAN,
                domain: domain.as_deref().unwrap_or(""),
                state: filter.state.map(|s| s.as_str()).unwrap_or(""),
                sender: &sender,
                recipient: &recipient,
            };
            let v = self.view(shard, now_ms(), view).await?;
            calls += 1;
            let (last, done, jobs) = decode_page(&v)?;
            for job in jobs {
                items.push(job);
                if items.len() == limit {
                    let next = Cursor(format!("{shard}/{}", items[limit - 1].id));
                    return Ok(Page {
                        items,
                        next: Some(next),
                    });
                }
            }
            if done {
                pos += 1;
                after.clear();
            } else {
                after = last;
            }
            if calls >= PAGE_CALLS && pos < shards.len() {
                let next = Cursor(format!("{}/{}", shards[pos], after));
                return Ok(Page {
                    items,
                    next: Some(next),
                });
            }
        }
        Ok(Page { items, next: None })
    }

    /// [`crate::Queue::counts`].
    pub(crate) async fn read_counts(&self) -> Result<QueueCounts, QueueError> {
        let now = now_ms();
        let parts = self
            .on_all_shards(|shard| async move { self.view(shard, now, View::Counts).await })
            .await?;
        let mut counts = QueueCounts::default();
        for v in parts {
            add_counts(&mut counts, &v)?;
        }
        Ok(counts)
    }

    /// [`crate::Queue::domain_depths`].
    pub(crate) async fn read_domain_depths(&self) -> Result<Vec<DomainDepth>, QueueError> {
        let now = now_ms();
        let parts = self
            .on_all_shards(|shard| async move { self.view(shard, now, View::Depths("")).await })
            .await?;
        let mut out: Vec<DomainDepth> = parts.iter().flat_map(decode_depths).collect();
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }

    /// [`crate::Queue::domain_depth`].
    pub(crate) async fn read_domain_depth(&self, domain: &str) -> Result<DomainDepth, QueueError> {
        let domain = domain.to_ascii_lowercase();
        let shard = self.keys.shard_of_domain(&domain);
        let v = self.view(shard, now_ms(), View::Depths(&domain)).await?;
        decode_depths(&v)
            .into_iter()
            .next()
            .ok_or_else(|| unexpected("depth", &v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};

    #[test]
    fn views_send_their_name_and_arguments() {
        let id: MessageId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().expect("id");
        assert_eq!(
            texts(&View::Message(id).into_args()),
            ["message", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]
        );
        assert_eq!(texts(&View::Body(id).into_args())[0], "body");
        assert_eq!(texts(&View::Counts.into_args()), ["counts"]);
        assert_eq!(texts(&View::Depths("d.test").into_args()), ["depths", "d.test"]);
        assert_eq!(
            texts(&View::History(id, true).into_args()),
            ["history", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "1"]
        );
        let page = View::Page {
            after: "M.0",
            scan: 500,
            domain: "",
            state: "queued",
            sender: "s@a.test",
            recipient: "",
        };
        assert_eq!(
            texts(&page.into_args()),
            ["page", "M.0", "500", "", "queued", "s@a.test", ""]
        );
    }

    #[test]
    fn counts_add_up_over_shards() {
        let id = MessageId::new();
        let shard = |queued: i64, oldest: i64| {
            array(vec![
                Value::Int(queued),
                Value::Int(1),
                Value::Int(2),
                Value::Int(queued + 3),
                Value::Int(oldest),
                Value::Int(0),
                Value::Int(1),
                bulk(&format!("{id}.0")),
                Value::Int(queued - 1),
            ])
        };
        let mut total = QueueCounts::default();
        add_counts(&mut total, &shard(4, 50)).expect("counts");
        add_counts(&mut total, &shard(1, -1)).expect("counts");
        assert_eq!(
            (total.queued, total.deferred, total.in_flight, total.total),
            (5, 2, 4, 11)
        );
        assert_eq!((total.oldest_due_ms, total.suspended_domains), (Some(50), 2));
        assert_eq!(total.held, 3);
        assert_eq!(total.oldest_message_ms, Some(id.timestamp_ms()));
        assert!(add_counts(&mut total, &array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn depths_decode_with_their_suspension() {
        let suspension = r#"{"domain":"","reason":"r","since_ms":1,"until_ms":null}"#;
        let v = array(vec![
            bulk("d.test"),
            Value::Int(3),
            Value::Int(2),
            Value::Int(4),
            Value::Int(-1),
            Value::Int(1),
            Value::Int(-1),
            bulk(suspension),
            Value::Int(2),
        ]);
        let depths = decode_depths(&v);
        assert_eq!(depths.len(), 1);
        let d = &depths[0];
        assert_eq!((d.waiting, d.due, d.total, d.active_claims), (3, 2, 4, 1));
        assert_eq!(d.held, 2);
        assert_eq!((d.earliest_due_ms, d.concurrency_limit), (None, None));
        assert_eq!(d.suspension.as_ref().map(|s| s.domain.as_str()), Some("d.test"));
    }

    #[test]
    fn an_empty_message_view_is_none_and_a_page_reads_its_position() {
        assert_eq!(decode_message(&Value::Nil).expect("decode"), None);
        let (last, done, jobs) = decode_page(&array(vec![bulk("M.3"), bulk("1")])).expect("page");
        assert_eq!((last.as_str(), done, jobs.len()), ("M.3", true, 0));
    }
}
