//! The MTA-STS policy cache ([`PolicyStore`]) in Redis (`sts.lua`: `sts_put`, `sts_error`, `sts_evict`,
//! `sts_list`, `sts_lock`, `sts_unlock`; a read is a plain `HGETALL`).
//!
//! **Where an entry lives.** A policy domain's entry, its refresh lock and its place in the listing index
//! are keys of the domain's queue shard (`{<prefix>:sNN}:sts:<domain>`, the shard of
//! [`Keys::shard_of_domain`](crate::redis::keys::Keys::shard_of_domain)), rather than under a hash tag of
//! their own per domain or in one fixed slot:
//!
//! - the policy shares the fate of the mail it governs: a master that is down stops that shard's deliveries
//!   anyway, and the other masters' domains keep their policies (one fixed slot would make a single master
//!   the cluster's only source of policies, and its loss stop every enforced domain);
//! - entries spread over the masters as the shards do, without a slot of their own per domain;
//! - one function call changes an entry and the shard's index together, atomically, so the index stays
//!   consistent with puts and evictions (a tag per domain would put the index in another slot, and leave
//!   every write in two calls).
//!
//! Listing pays for it: a page asks every shard for its first `limit` domains after the cursor and merges
//! them (an operator's call, not a delivery's). An entry's Redis TTL (`PEXPIREAT`, computed by the caller)
//! falls [`KEEP_AFTER_EXPIRY`](crate::sts::KEEP_AFTER_EXPIRY) after the later of its expiry and its last
//! write; its index member, left behind by that expiry, is dropped by the next listing that meets it.

use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use tern_core::time::now_ms;

use super::{Arg, arg, codec, status, unexpected};
use crate::QueueError;
use crate::redis::RedisQueue;
use crate::redis::library::Function;
use crate::sts::{LockOutcome, PolicyStore, StsEntry, keep_until_ms, lock_ttl_ms, stored_domain};

/// The arguments of one `sts_put` call: the entry (its domain lower-cased) and when Redis drops it.
pub(crate) fn put_args(entry: &StsEntry, domain: &str, keep_until: u64) -> Vec<Arg> {
    vec![
        arg(domain),
        arg(&entry.policy),
        arg(&entry.policy_id),
        arg(entry.fetched_at_ms),
        arg(entry.expires_at_ms),
        arg(keep_until),
        arg(if entry.last_error.is_some() { "1" } else { "0" }),
        arg(entry.last_error.as_deref().unwrap_or_default()),
        arg(entry.last_error_at_ms.map(|t| t.to_string()).unwrap_or_default()),
    ]
}

/// The arguments of one `sts_error` call.
pub(crate) fn error_args(domain: &str, error: &str, at_ms: u64, keep_until: u64) -> Vec<Arg> {
    vec![arg(domain), arg(error), arg(at_ms), arg(keep_until)]
}

/// An entry from its hash fields (`HGETALL`); `None` for no fields (no entry).
pub(crate) fn decode_entry(domain: &str, v: &Value) -> Result<Option<StsEntry>, QueueError> {
    let mut f = codec::fields(v);
    if f.is_empty() {
        return Ok(None);
    }
    let number = |text: Option<String>, name: &str| -> Result<Option<u64>, QueueError> {
        text.map(|t| {
            t.parse::<u64>()
                .map_err(|_| QueueError::Corrupt(format!("MTA-STS cache entry {domain}: bad {name} {t:?}")))
        })
        .transpose()
    };
    Ok(Some(StsEntry {
        domain: domain.to_string(),
        policy: f.remove("p").unwrap_or_default(),
        policy_id: f.remove("id").unwrap_or_default(),
        fetched_at_ms: number(f.remove("f"), "fetch time")?.unwrap_or(0),
        expires_at_ms: number(f.remove("x"), "expiry")?.unwrap_or(0),
        last_error: f.remove("e"),
        last_error_at_ms: number(f.remove("ea"), "error time")?,
    }))
}

/// What `sts_list` answers: the shard's entries, in domain order.
pub(crate) fn decode_list(v: &Value) -> Result<Vec<StsEntry>, QueueError> {
    codec::items(v)
        .iter()
        .filter_map(|item| {
            let pair = codec::items(item);
            let domain = pair.first().and_then(codec::text)?;
            let fields = pair.get(1)?;
            decode_entry(&domain, fields).transpose()
        })
        .collect()
}

/// What `sts_lock` answers.
pub(crate) fn decode_lock(v: &Value) -> Result<LockOutcome, QueueError> {
    match status(v).as_str() {
        "ok" => Ok(LockOutcome::Acquired),
        "held" => Ok(LockOutcome::HeldBy(
            codec::items(v).get(1).and_then(codec::text).unwrap_or_default(),
        )),
        _ => Err(unexpected("sts_lock", v)),
    }
}

/// Merges the shards' pages (each in domain order) into the first `limit` entries overall.
pub(crate) fn merge_pages(pages: Vec<Vec<StsEntry>>, limit: usize) -> Vec<StsEntry> {
    let mut all: Vec<StsEntry> = pages.into_iter().flatten().collect();
    all.sort_by(|a, b| a.domain.cmp(&b.domain));
    all.truncate(limit);
    all
}

#[async_trait]
impl PolicyStore for RedisQueue {
    async fn sts_get(&self, domain: &str) -> Result<Option<StsEntry>, QueueError> {
        let domain = stored_domain(domain)?;
        let shard = self.keys.shard_of_domain(&domain);
        let mut read = redis::cmd("HGETALL");
        read.arg(self.keys.key(shard, &format!("sts:{domain}")));
        decode_entry(&domain, &self.command(read).await?)
    }

    async fn sts_put(&self, entry: &StsEntry) -> Result<(), QueueError> {
        let domain = stored_domain(&entry.domain)?;
        let shard = self.keys.shard_of_domain(&domain);
        let now = now_ms();
        let args = put_args(entry, &domain, keep_until_ms(entry.expires_at_ms, now));
        self.call(Function::StsPut, shard, now, args).await?;
        Ok(())
    }

    async fn sts_record_error(&self, domain: &str, error: &str, at_ms: u64) -> Result<(), QueueError> {
        let domain = stored_domain(domain)?;
        let shard = self.keys.shard_of_domain(&domain);
        let now = now_ms();
        let args = error_args(&domain, error, at_ms, keep_until_ms(at_ms, now));
        self.call(Function::StsError, shard, now, args).await?;
        Ok(())
    }

    async fn sts_evict(&self, domain: &str) -> Result<bool, QueueError> {
        let domain = stored_domain(domain)?;
        let shard = self.keys.shard_of_domain(&domain);
        let v = self
            .call(Function::StsEvict, shard, now_ms(), vec![arg(&domain)])
            .await?;
        Ok(codec::int(&v).unwrap_or(0) > 0)
    }

    async fn sts_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StsEntry>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Redis counts in signed 64 bits (`LIMIT`), and no page comes near this.
        let limit = limit.min(i32::MAX as usize);
        let after = after.map(str::to_ascii_lowercase).unwrap_or_default();
        let after = after.as_str();
        let now = now_ms();
        let pages = self
            .on_all_shards(|shard| async move {
                let v = self
                    .call(Function::StsList, shard, now, vec![arg(after), arg(limit)])
                    .await?;
                decode_list(&v)
            })
            .await?;
        Ok(merge_pages(pages, limit))
    }

    async fn sts_try_lock(
        &self,
        domain: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, QueueError> {
        let domain = stored_domain(domain)?;
        let shard = self.keys.shard_of_domain(&domain);
        let args = vec![arg(&domain), arg(owner), arg(lock_ttl_ms(ttl))];
        decode_lock(&self.call(Function::StsLock, shard, now_ms(), args).await?)
    }

    async fn sts_unlock(&self, domain: &str, owner: &str) -> Result<(), QueueError> {
        let domain = stored_domain(domain)?;
        let shard = self.keys.shard_of_domain(&domain);
        self.call(
            Function::StsUnlock,
            shard,
            now_ms(),
            vec![arg(&domain), arg(owner)],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};

    fn entry() -> StsEntry {
        StsEntry {
            domain: "Example.COM".into(),
            policy: "version: STSv1\nmode: enforce\n".into(),
            policy_id: "20240101".into(),
            fetched_at_ms: 10,
            expires_at_ms: 20,
            last_error: None,
            last_error_at_ms: None,
        }
    }

    #[test]
    fn put_sends_the_entry_and_its_keep_time_and_no_error_as_none() {
        assert_eq!(
            texts(&put_args(&entry(), "example.com", 99)),
            [
                "example.com",
                "version: STSv1\nmode: enforce\n",
                "20240101",
                "10",
                "20",
                "99",
                "0",
                "",
                ""
            ]
        );
        let with_error = StsEntry {
            last_error: Some(String::new()),
            last_error_at_ms: Some(7),
            ..entry()
        };
        let args = texts(&put_args(&with_error, "example.com", 99));
        assert_eq!(args[6..], ["1", "", "7"]);
        assert_eq!(
            texts(&error_args("example.com", "timeout", 5, 6)),
            ["example.com", "timeout", "5", "6"]
        );
    }

    #[test]
    fn entries_decode_from_their_fields() {
        let fields = array(vec![
            bulk("p"),
            bulk("policy"),
            bulk("id"),
            bulk("abc"),
            bulk("f"),
            bulk("10"),
            bulk("x"),
            bulk("20"),
            bulk("e"),
            bulk("refused"),
            bulk("ea"),
            bulk("15"),
        ]);
        let got = decode_entry("example.com", &fields)
            .expect("decodes")
            .expect("an entry");
        assert_eq!(
            got,
            StsEntry {
                domain: "example.com".into(),
                policy: "policy".into(),
                policy_id: "abc".into(),
                fetched_at_ms: 10,
                expires_at_ms: 20,
                last_error: Some("refused".into()),
                last_error_at_ms: Some(15),
            }
        );
        let error_only = array(vec![bulk("e"), bulk("refused"), bulk("ea"), bulk("15")]);
        let got = decode_entry("example.com", &error_only)
            .expect("decodes")
            .expect("an entry");
        assert!(!got.has_policy());
        assert_eq!((got.fetched_at_ms, got.expires_at_ms), (0, 0));
        assert_eq!(decode_entry("example.com", &array(vec![])), Ok(None));
        assert!(matches!(
            decode_entry("example.com", &array(vec![bulk("x"), bulk("soon")])),
            Err(QueueError::Corrupt(_))
        ));
        let list = array(vec![array(vec![bulk("a.test"), error_only])]);
        assert_eq!(decode_list(&list).expect("decodes")[0].domain, "a.test");
    }

    #[test]
    fn lock_replies_decode() {
        assert_eq!(decode_lock(&array(vec![bulk("ok")])), Ok(LockOutcome::Acquired));
        assert_eq!(
            decode_lock(&array(vec![bulk("held"), bulk("worker-2")])),
            Ok(LockOutcome::HeldBy("worker-2".into()))
        );
        assert!(decode_lock(&Value::Nil).is_err());
    }

    #[test]
    fn shard_pages_merge_in_domain_order_up_to_the_limit() {
        let e = |d: &str| StsEntry {
            domain: d.into(),
            ..StsEntry::default()
        };
        let merged = merge_pages(vec![vec![e("b"), e("d")], vec![e("a"), e("c")], vec![]], 3);
        let domains: Vec<&str> = merged.iter().map(|e| e.domain.as_str()).collect();
        assert_eq!(domains, ["a", "b", "c"]);
    }
}
