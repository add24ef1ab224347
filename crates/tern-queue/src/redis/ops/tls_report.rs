//! The TLS-RPT counters ([`TlsReportStore`]) in Redis (`tls_report.lua`: `tls_rpt_add`, `tls_rpt_lock`;
//! reading the counters, listing a shard's domains and marking a report sent are plain commands).
//!
//! **Where the counters live.** A policy domain's counters of a day are one hash in the domain's queue
//! shard, `{<prefix>:sNN}:tlsrpt:<day>:<domain>` (field: the session key's JSON, value: its count, added to
//! with `HINCRBY`), with the shard's list of that day's domains `tlsrptdom:<day>` and the report's sent mark
//! `tlsrptsent:<day>:<domain>` beside it. Not one key (or slot) per day:
//!
//! - every delivery adds to a counter, so a slot per day would put the whole cluster's writes of that day
//!   on one master; in the domain's shard they spread over the masters as the mail does;
//! - the counters share the fate of the mail they count (as the MTA-STS policy does, `sts.rs`): a master
//!   that is down stops that shard's deliveries anyway, and every other shard's domains keep counting;
//! - one function call adds to a counter and lists the domain for the day together, atomically.
//!
//! Listing a day's domains pays for it: every shard is asked (`SMEMBERS`) and the answers merged, once a
//! day by the node that sends the reports. The day's report lock `tlsrptlock:<day>` is one key, in the
//! shard the day's text hashes to. Every key of a day expires (`PEXPIREAT`, computed by the caller)
//! [`KEEP_AFTER_DAY`](crate::tls_report::KEEP_AFTER_DAY) after the day ends.

use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use tern_core::time::now_ms;

use super::sts::decode_lock;
use super::{Arg, arg, codec};
use crate::QueueError;
use crate::redis::RedisQueue;
use crate::redis::library::Function;
use crate::sts::{LockOutcome, lock_ttl_ms};
use crate::tls_report::{TlsReportStore, TlsSessionKey, checked_count, live_day, report_domain};

/// The arguments of one `tls_rpt_add` call.
pub(crate) fn add_args(day: &str, domain: &str, field: &str, count: u64, keep_until: u64) -> Vec<Arg> {
    vec![arg(day), arg(domain), arg(field), arg(count), arg(keep_until)]
}

/// The counters of an `HGETALL` of a day's hash, in key order.
pub(crate) fn decode_counters(v: &Value) -> Result<Vec<(TlsSessionKey, u64)>, QueueError> {
    let mut out = codec::fields(v)
        .into_iter()
        .map(|(field, count)| {
            let key = TlsSessionKey::from_stored(&field)?;
            let count = count
                .parse::<u64>()
                .map_err(|_| QueueError::Corrupt(format!("TLS-RPT counter {field}: bad count {count:?}")))?;
            Ok((key, count))
        })
        .collect::<Result<Vec<_>, QueueError>>()?;
    out.sort();
    Ok(out)
}

/// The shards' domain lists merged: sorted, each once.
pub(crate) fn merge_domains(lists: Vec<Vec<String>>) -> Vec<String> {
    let mut all: Vec<String> = lists.into_iter().flatten().collect();
    all.sort();
    all.dedup();
    all
}

/// Whether a `SET ... NX` set the key (`OK`) rather than finding it (nil).
fn was_set(v: &Value) -> bool {
    !matches!(v, Value::Nil)
}

impl RedisQueue {
    /// A key of a policy domain's day, in the domain's shard.
    fn tls_report_key(&self, kind: &str, day: &str, domain: &str) -> String {
        let shard = self.keys.shard_of_domain(domain);
        self.keys.key(shard, &format!("{kind}:{day}:{domain}"))
    }
}

#[async_trait]
impl TlsReportStore for RedisQueue {
    async fn tls_report_add(
        &self,
        day: &str,
        policy_domain: &str,
        key: &TlsSessionKey,
        count: u64,
    ) -> Result<(), QueueError> {
        let domain = report_domain(policy_domain)?;
        let count = checked_count(count)?;
        let now = now_ms();
        let Some(keep) = live_day(day, now)? else {
            return Ok(());
        };
        if count == 0 {
            return Ok(());
        }
        let shard = self.keys.shard_of_domain(&domain);
        let args = add_args(day, &domain, &key.to_stored()?, count, keep);
        self.call(Function::TlsRptAdd, shard, now, args).await?;
        Ok(())
    }

    async fn tls_report_read(
        &self,
        day: &str,
        policy_domain: &str,
    ) -> Result<Vec<(TlsSessionKey, u64)>, QueueError> {
        let domain = report_domain(policy_domain)?;
        if live_day(day, now_ms())?.is_none() {
            return Ok(Vec::new());
        }
        let key = self.tls_report_key("tlsrpt", day, &domain);
        let mut read = redis::cmd("HGETALL");
        read.arg(key);
        decode_counters(&self.command(read).await?)
    }

    async fn tls_report_domains(&self, day: &str) -> Result<Vec<String>, QueueError> {
        if live_day(day, now_ms())?.is_none() {
            return Ok(Vec::new());
        }
        let lists = self
            .on_all_shards(|shard| async move {
                let mut members = redis::cmd("SMEMBERS");
                members.arg(self.keys.key(shard, &format!("tlsrptdom:{day}")));
                let v = self.command(members).await?;
                Ok(codec::items(&v).iter().filter_map(codec::text).collect())
            })
            .await?;
        Ok(merge_domains(lists))
    }

    async fn tls_report_sent(&self, day: &str, policy_domain: &str) -> Result<bool, QueueError> {
        let domain = report_domain(policy_domain)?;
        let now = now_ms();
        let Some(keep) = live_day(day, now)? else {
            // Too old to report: it was sent, or it never will be.
            return Ok(false);
        };
        let key = self.tls_report_key("tlsrptsent", day, &domain);
        let mut mark = redis::cmd("SET");
        mark.arg(key).arg(now).arg("NX").arg("PXAT").arg(keep);
        Ok(was_set(&self.command(mark).await?))
    }

    async fn tls_report_try_lock(
        &self,
        day: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockOutcome, QueueError> {
        live_day(day, 0)?;
        let shard = self.keys.shard_of_domain(day);
        let args = vec![arg(day), arg(owner), arg(lock_ttl_ms(ttl))];
        decode_lock(&self.call(Function::TlsRptLock, shard, now_ms(), args).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};

    fn key(result: Option<&str>) -> TlsSessionKey {
        TlsSessionKey {
            policy_type: "sts".into(),
            policy_string: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_host: "mx.example.test".into(),
            result_type: result.map(str::to_string),
            sending_mta_ip: "192.0.2.1".into(),
            receiving_ip: "192.0.2.25".into(),
            receiving_mx_helo: None,
            failure_reason_code: None,
        }
    }

    #[test]
    fn add_sends_the_day_domain_key_count_and_keep_time() {
        assert_eq!(
            texts(&add_args("2024-05-01", "example.test", "{}", 3, 99)),
            ["2024-05-01", "example.test", "{}", "3", "99"]
        );
    }

    #[test]
    fn counters_decode_in_key_order_and_bad_ones_are_corrupt() {
        let ok = key(None);
        let failed = key(Some("certificate-expired"));
        let v = array(vec![
            bulk(&failed.to_stored().expect("stored")),
            bulk("2"),
            bulk(&ok.to_stored().expect("stored")),
            bulk("40"),
        ]);
        assert_eq!(decode_counters(&v), Ok(vec![(ok.clone(), 40), (failed, 2)]));
        assert_eq!(decode_counters(&array(vec![])), Ok(vec![]));
        let bad_count = array(vec![bulk(&ok.to_stored().expect("stored")), bulk("x")]);
        assert!(matches!(decode_counters(&bad_count), Err(QueueError::Corrupt(_))));
        let bad_key = array(vec![bulk("not json"), bulk("1")]);
        assert!(matches!(decode_counters(&bad_key), Err(QueueError::Corrupt(_))));
    }

    #[test]
    fn shard_domain_lists_merge_sorted_and_once() {
        let lists = vec![
            vec!["b.test".to_string(), "a.test".to_string()],
            vec![],
            vec!["c.test".to_string(), "a.test".to_string()],
        ];
        assert_eq!(merge_domains(lists), ["a.test", "b.test", "c.test"]);
        assert!(was_set(&Value::Okay));
        assert!(!was_set(&Value::Nil));
    }
}
