//! Claims: takes due jobs of one domain under a lease (`claim.lua`), then reads their records with one plain
//! `MGET` (a long string costs far less in a plain command than through a function).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tern_core::time::now_ms;

use super::{Arg, arg, codec};
use crate::QueueError;
use crate::model::{Claim, ClaimOutcome, ClaimedJob, JobLease, SlotHold};
use crate::redis::library::Function;
use crate::redis::quiet::Visit;
use crate::redis::{RedisQueue, duration_ms};

/// How long a domain at its concurrency limit stays out of the claim order at most (it comes back sooner
/// when a slot of it lapses first, and at once when a call frees one, which also wakes a waiting worker):
/// what bounds how late a claim learns of a raised limit.
const LIMIT_PUSHBACK_MS: u64 = 1_000;
/// How many due domains one claim call looks at.
const CLAIM_SCAN: u32 = 32;

/// The arguments of one `claim` call.
pub(crate) struct ClaimArgs<'a> {
    /// The clock of the call (Unix ms): the lease and the push-back count from it.
    pub now: u64,
    pub owner: &'a str,
    pub max_batch: usize,
    pub lease_ms: u64,
    pub default_limit: u32,
    /// The claim id, a ULID: the token of the claimed jobs.
    pub claim_id: &'a str,
    /// How many due domains to look at (0: only the held ones).
    pub scan: u32,
    pub pushback_ms: u64,
    /// Held domains are looked at before the scan (otherwise a held domain takes its hold in its turn).
    pub held_first: bool,
    /// The caller's holds in this shard (the first of a domain stands for it).
    pub holds: Vec<&'a SlotHold>,
}

impl ClaimArgs<'_> {
    pub(crate) fn into_args(self) -> Vec<Arg> {
        let mut args = Vec::with_capacity(8 + 2 * self.holds.len());
        args.extend([
            arg(self.owner),
            arg(self.max_batch.max(1)),
            // The lease deadline.
            arg(self.now.saturating_add(self.lease_ms.max(1))),
            arg(self.default_limit),
            arg(self.claim_id),
            arg(self.scan),
            // Until when a domain at its limit stays out of the claim order.
            arg(self.now.saturating_add(self.pushback_ms)),
            // A claimed domain's next turn: behind every domain already due.
            arg(self.now.saturating_add(1)),
            arg(if self.held_first { "1" } else { "0" }),
            arg(self.holds.len()),
        ]);
        for h in self.holds {
            args.push(arg(&h.domain));
            args.push(arg(&h.id));
        }
        args
    }
}

/// A claimed job as `claim` gives it.
#[derive(Debug, PartialEq)]
pub(crate) enum ClaimedEntry {
    /// A job in the string form: its id alone (the job is read from its header).
    Header(Vec<u8>),
    /// A job in the hash form: its fields before the claim (see `claim.lua` and [`codec::claimed_job`]).
    Fields(Vec<Value>),
}

impl ClaimedEntry {
    fn id(&self) -> String {
        match self {
            ClaimedEntry::Header(id) => String::from_utf8_lossy(id).into_owned(),
            ClaimedEntry::Fields(fields) => fields.first().and_then(codec::text).unwrap_or_default(),
        }
    }
}

/// What `claim` answers when it took jobs (the caller knows the claim id and the lease deadline).
#[derive(Debug, PartialEq)]
pub(crate) struct ClaimReply {
    pub domain: String,
    /// The hold the claim took over.
    pub took_hold: Option<String>,
    pub entries: Vec<ClaimedEntry>,
}

impl ClaimReply {
    /// `None`: nothing was claimed in this shard.
    pub(crate) fn decode(v: Value) -> Option<ClaimReply> {
        let Value::Array(items) = v else { return None };
        if items.len() < 3 {
            return None;
        }
        let domain = codec::text(&items[0]).unwrap_or_default();
        let took_hold = codec::text(&items[1]).filter(|h| !h.is_empty());
        let entries = items
            .into_iter()
            .skip(2)
            .map(|e| match e {
                Value::BulkString(id) => ClaimedEntry::Header(id),
                Value::Array(fields) => ClaimedEntry::Fields(fields),
                other => ClaimedEntry::Fields(vec![other]),
            })
            .collect();
        Some(ClaimReply {
            domain,
            took_hold,
            entries,
        })
    }
}

/// When `claim` took nothing in a shard: the earliest score of its domain index (Unix ms), when it answers
/// one.
pub(crate) fn decode_next_due(v: &Value) -> Option<u64> {
    let text = codec::text(v)?;
    // Redis writes scores in the shortest form that reads back the same: integers as such.
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// Splits `data` at its first newline (the rest is empty when there is none).
fn split_line(data: Bytes) -> (Bytes, Bytes) {
    match data.iter().position(|c| *c == b'\n') {
        Some(p) => (data.slice(..p), data.slice(p + 1..)),
        None => (data, Bytes::new()),
    }
}

impl RedisQueue {
    /// [`crate::Queue::claim_next`]: tries the shards in turn (held domains' shards first) until one has
    /// due work; when none has, the earliest time any shard's domain index names. After a claim that looked
    /// at held domains first and took a hold over, the next one goes by the shards' domain indexes alone (a
    /// held domain met there still takes its hold): an idle connection is used soon, and every domain gets
    /// its turn in the index-order claims, which are at least every other claim, however busy the held
    /// domains are. With `skip_quiet` (the worker's `claim_next`) shards this handle found empty are
    /// skipped for a while (`quiet.rs`); `claim` and `claim_holding` look at every shard.
    pub(crate) async fn claim_jobs(
        &self,
        owner: &str,
        max_batch: usize,
        lease: Duration,
        holds: &[SlotHold],
        skip_quiet: bool,
    ) -> Result<ClaimOutcome, QueueError> {
        let shards = self.keys.shards();
        let start = (self.next_shard.load(Ordering::Relaxed) % u64::from(shards)) as u16;
        let held_start = (self.next_held_shard.load(Ordering::Relaxed) % u64::from(shards)) as u16;
        let claim_id = ulid::Ulid::generate().to_string();
        // First the held domains alone (scan 0), shard by shard, so that an idle connection is used before
        // any other domain is taken; then every shard in turn, the usual way. Not after a held-first claim
        // that took a hold over: held domains that always have due work would starve the others.
        let held_first = !self.took_hold_last.swap(false, Ordering::Relaxed);
        // Each kind of visit has its own rotation: with one, shared, the held-first claims in between
        // could set every index-order claim's start past the same shards, whose domains then never came up
        // (seen: two domains of ten unclaimed for seconds, in a cycle of eight claims).
        let held_visits = (0..shards)
            .map(|i| (held_start + i) % shards)
            .filter(|s| held_first && holds.iter().any(|h| self.keys.shard_of_domain(&h.domain) == *s))
            .map(|s| (s, 0));
        let rotation = (0..shards).map(|i| (start + i) % shards);
        let visits: Vec<(u16, u32)> = held_visits.chain(rotation.map(|s| (s, CLAIM_SCAN))).collect();
        let mut next_due_ms: Option<u64> = None;
        let mut earliest = |due: u64| next_due_ms = Some(next_due_ms.map_or(due, |d| d.min(due)));
        // Where this handle's last index-order claim found nothing, and nothing touched the shard since,
        // there is nothing to take (`quiet.rs`): skipped, unless this claim follows a wake token and finds
        // nothing where it looks (the token was an old one, or its shard's list was full when the new work
        // came): then a second pass visits the shards skipped.
        let woken = skip_quiet && self.quiet.take_woken();
        let mut skipping = skip_quiet;
        let mut skipped = Vec::new();
        let mut pass = visits.into_iter();
        loop {
            let Some((shard, scan)) = pass.next() else {
                if !(woken && skipping) || skipped.is_empty() {
                    break;
                }
                skipping = false;
                pass = std::mem::take(&mut skipped).into_iter();
                continue;
            };
            let now = now_ms();
            // Index-order claims of the worker mark the shards where they find nothing.
            let touches = match skip_quiet.then(|| self.quiet.visit(shard, now)) {
                Some(Visit::Skip { next_due_ms: due, .. }) if skipping => {
                    if let Some(due) = due {
                        earliest(due);
                    }
                    skipped.push((shard, scan));
                    continue;
                }
                Some(Visit::Skip { touches, .. } | Visit::Claim { touches }) if scan > 0 => Some(touches),
                _ => None,
            };
            let lease_until_ms = now.saturating_add(duration_ms(lease).max(1));
            let args = ClaimArgs {
                now,
                owner,
                max_batch,
                lease_ms: duration_ms(lease),
                default_limit: self.opts.default_domain_concurrency,
                claim_id: &claim_id,
                scan,
                pushback_ms: LIMIT_PUSHBACK_MS,
                held_first,
                holds: holds
                    .iter()
                    .filter(|h| self.keys.shard_of_domain(&h.domain) == shard)
                    .collect(),
            };
            let v = match self.call(Function::Claim, shard, now, args.into_args()).await {
                Ok(v) => v,
                Err(e) => {
                    // Fail fast (a dead server would otherwise cost one timeout per shard), but start the
                    // next visit of this kind at the following shard, so that one dead cluster node does not
                    // stop work on the shards the other nodes hold (a held visit too: the failed claim left
                    // the next one held-first, which would otherwise start at the dead shard again).
                    self.move_rotation_past(shard, scan);
                    return Err(e);
                }
            };
            if let Some(due) = decode_next_due(&v) {
                earliest(due);
                if let Some(touches) = touches {
                    self.quiet.found_nothing(shard, touches, Some(due), now);
                }
                continue;
            }
            let Some(reply) = ClaimReply::decode(v) else {
                if let Some(touches) = touches {
                    self.quiet.found_nothing(shard, touches, None, now);
                }
                continue;
            };
            let claim = self
                .claimed(shard, owner, &claim_id, lease_until_ms, reply)
                .await?;
            // The next claim of this node (of the same kind) starts at the following shard, so that shards
            // (and the domains in them) take turns whatever the gaps between non-empty shards; held-first
            // claims take turns among the held domains' shards the same way.
            self.move_rotation_past(shard, scan);
            // Held-first and index-order claims alternate, whoever the index-order claim went to.
            self.took_hold_last
                .store(held_first && claim.took_hold.is_some(), Ordering::Relaxed);
            tracing::debug!(owner, domain = %claim.domain, jobs = claim.jobs.len(), shard, "claimed");
            return Ok(ClaimOutcome::Claimed(claim));
        }
        Ok(ClaimOutcome::Nothing { next_due_ms })
    }

    /// The next visit of the kind that went to `shard` (held-first when `scan` is 0, index-order otherwise)
    /// starts at the shard after it.
    fn move_rotation_past(&self, shard: u16, scan: u32) {
        let rotation = if scan == 0 {
            &self.next_held_shard
        } else {
            &self.next_shard
        };
        rotation.store(u64::from(shard) + 1, Ordering::Relaxed);
    }

    /// The claim of `reply`, with each job read from its record.
    async fn claimed(
        &self,
        shard: u16,
        owner: &str,
        claim_id: &str,
        lease_until_ms: u64,
        reply: ClaimReply,
    ) -> Result<Claim, QueueError> {
        let data = self.claimed_data(shard, &reply.entries).await?;
        let mut jobs = Vec::with_capacity(reply.entries.len());
        for (entry, (data, shared_body)) in reply.entries.iter().zip(data) {
            if data.is_empty() {
                // Deleted by an operator since the claim (which took it out of flight).
                continue;
            }
            // A job's data is its header line, its envelope, and for a solo job the body after another
            // newline; otherwise the body is the message's shared one.
            let (header, rest) = split_line(data);
            let (envelope, body) = match shared_body {
                Some(b) => (rest, b),
                None => split_line(rest),
            };
            let job = match entry {
                ClaimedEntry::Header(id) => {
                    codec::header_job(id, &header, &envelope, &reply.domain, owner, lease_until_ms)?
                }
                ClaimedEntry::Fields(fields) => {
                    codec::claimed_job(fields, &envelope, &reply.domain, owner, lease_until_ms)?
                }
            };
            let lease = JobLease {
                job: job.id,
                domain: job.domain.clone(),
                token: claim_id.to_string(),
            };
            jobs.push(ClaimedJob { body, job, lease });
        }
        Ok(Claim {
            domain: reply.domain,
            claim_id: claim_id.to_string(),
            lease_until_ms,
            jobs,
            took_hold: reply.took_hold,
        })
    }

    /// The data `jd:<id>` of each claimed job, and `body:<msg>` for a job whose message has several (None
    /// for a solo job), with one MGET. The jobs are in flight for this claim, so nothing else changes them
    /// meanwhile (an operator's delete aside: its job's data is empty and its completion reports it gone).
    async fn claimed_data(
        &self,
        shard: u16,
        entries: &[ClaimedEntry],
    ) -> Result<Vec<(Bytes, Option<Bytes>)>, QueueError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for entry in entries {
            let id = entry.id();
            let message = id.rsplit_once('.').map_or(id.as_str(), |(m, _)| m);
            mget.arg(self.keys.key(shard, &format!("jd:{id}")));
            mget.arg(self.keys.key(shard, &format!("body:{message}")));
        }
        let v = self.command(mget).await?;
        Ok(codec::items(&v)
            .chunks(2)
            .map(|pair| {
                let data = pair.first().and_then(codec::bytes).unwrap_or_default();
                let body = pair.get(1).and_then(codec::bytes);
                (Bytes::from(data), body.map(Bytes::from))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};

    #[test]
    fn claim_sends_its_request_and_the_holds_of_the_shard() {
        let hold = SlotHold {
            domain: "d.test".into(),
            id: "h:c0".into(),
            until_ms: 1,
        };
        let args = ClaimArgs {
            now: 1_000,
            owner: "w1",
            max_batch: 0,
            lease_ms: 60_000,
            default_limit: 10,
            claim_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            scan: 32,
            pushback_ms: 250,
            held_first: true,
            holds: vec![&hold],
        };
        assert_eq!(
            texts(&args.into_args()),
            [
                "w1",
                "1",
                "61000",
                "10",
                "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                "32",
                "1250",
                "1001",
                "1",
                "1",
                "d.test",
                "h:c0"
            ]
        );
    }

    #[test]
    fn a_claim_reply_decodes_both_forms_of_job() {
        let reply = array(vec![
            bulk("d.test"),
            bulk(""),
            bulk("M1.0"),
            array(vec![bulk("M2.1"), bulk("d.test")]),
        ]);
        let decoded = ClaimReply::decode(reply).expect("a claim");
        assert_eq!(decoded.domain, "d.test");
        assert_eq!(decoded.took_hold, None);
        assert_eq!(decoded.entries.len(), 2);
        assert_eq!(decoded.entries[0], ClaimedEntry::Header(b"M1.0".to_vec()));
        assert_eq!(decoded.entries[0].id(), "M1.0");
        assert_eq!(decoded.entries[1].id(), "M2.1");
        let held = ClaimReply::decode(array(vec![bulk("d"), bulk("h:c0"), bulk("M1.0")]));
        assert_eq!(held.and_then(|r| r.took_hold).as_deref(), Some("h:c0"));
        assert_eq!(ClaimReply::decode(Value::Nil), None);
    }

    #[test]
    fn a_claim_that_took_nothing_tells_the_next_due_time() {
        assert_eq!(decode_next_due(&bulk("1795889231049")), Some(1_795_889_231_049));
        assert_eq!(decode_next_due(&bulk("1.5e3")), Some(1_500));
        assert_eq!(decode_next_due(&Value::Nil), None);
        assert_eq!(decode_next_due(&array(vec![bulk("d.test")])), None);
        let claimed = array(vec![bulk("d.test"), bulk(""), bulk("M1.0")]);
        assert_eq!(decode_next_due(&claimed), None);
    }

    #[test]
    fn claimed_data_splits_into_header_envelope_and_body() {
        let (header, rest) = split_line(Bytes::from_static(b"qheader\n{\"env\":1}\nbody\nmore"));
        assert_eq!(&header[..], b"qheader");
        let (envelope, body) = split_line(rest);
        assert_eq!(
            (&envelope[..], &body[..]),
            (&b"{\"env\":1}"[..], &b"body\nmore"[..])
        );
        assert_eq!(split_line(Bytes::from_static(b"x")).1.len(), 0);
    }
}
