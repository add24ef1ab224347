//! The reaper's pass: expired leases back to their schedule (`reap.lua`), and interrupted enqueues driven
//! again from their intake records.

use bytes::Bytes;
use redis::Value;

use super::enqueue::Prepared;
use super::{Arg, arg, codec, count};
use crate::QueueError;
use crate::redis::RedisQueue;
use crate::redis::codec::IntakePayload;
use crate::redis::library::Function;

/// Jobs per `reap` call.
const REAP_CHUNK: u32 = 500;
/// Intake records older than this are driven again by the reaper.
const INTAKE_REDRIVE_AFTER_MS: u64 = 5_000;
/// Intake records looked at per shard and pass.
const REDRIVE_BATCH: u32 = 100;

/// The arguments of one `reap` call: the most jobs it handles, the history retention (ms) and the history
/// index's horizon (now - twice the retention: older messages leave the index; a message's history lives up
/// to twice the retention after its first shard's last event, see `history_keep` in `shared.lua`). A node
/// that keeps no history (retention 0) trims nothing: horizon 0, so that it cannot empty the index the other
/// nodes fill.
pub(crate) fn reap_args(limit: u32, now: u64, history_ms: u64) -> Vec<Arg> {
    let horizon = if history_ms == 0 {
        0
    } else {
        now.saturating_sub(history_ms.saturating_mul(2))
    };
    vec![arg(limit), arg(history_ms), arg(horizon)]
}

/// What `reap` answers: jobs returned to their schedule, suspensions ended.
pub(crate) fn decode_reap(v: &Value) -> (u64, u64) {
    let items = codec::items(v);
    (count(items.first()), count(items.get(1)))
}

impl RedisQueue {
    /// [`crate::Queue::reap`].
    pub(crate) async fn reap_expired(&self, now: u64) -> Result<u64, QueueError> {
        let history_ms = self.history_ms();
        let counts = self
            .on_all_shards(|shard| async move {
                let mut returned = 0u64;
                loop {
                    let v = self
                        .call(Function::Reap, shard, now, reap_args(REAP_CHUNK, now, history_ms))
                        .await?;
                    let (got, _) = decode_reap(&v);
                    returned += got;
                    if got < u64::from(REAP_CHUNK) {
                        return Ok(returned);
                    }
                }
            })
            .await?;
        let reaped: u64 = counts.into_iter().sum();
        let redriven = self.redrive_intakes(now).await?;
        if reaped > 0 || redriven > 0 {
            tracing::info!(lease_expired = reaped, intakes = redriven, "reaped");
        }
        Ok(reaped)
    }

    /// Drives intake records older than a few seconds again (an enqueue was interrupted after its
    /// acknowledgement). Returns how many were finished. One record that fails is logged and left for the
    /// next pass; an outage ends the pass.
    async fn redrive_intakes(&self, now: u64) -> Result<u64, QueueError> {
        let mut total = 0;
        for shard in 0..self.keys.shards() {
            let mut list = redis::cmd("ZRANGEBYSCORE");
            list.arg(self.keys.key(shard, "intakes"))
                .arg("-inf")
                .arg(now.saturating_sub(INTAKE_REDRIVE_AFTER_MS))
                .arg("LIMIT")
                .arg(0)
                .arg(REDRIVE_BATCH);
            let ids: Vec<String> = codec::items(&self.command(list).await?)
                .iter()
                .filter_map(codec::text)
                .collect();
            for id in ids {
                match self.redrive_intake(shard, &id, now).await {
                    Ok(true) => total += 1,
                    Ok(false) => {}
                    Err(e) if e.is_unavailable() => return Err(e),
                    Err(e) => {
                        tracing::warn!(message = %id, shard, error = %e, "re-driving an interrupted enqueue failed; next pass tries again");
                    }
                }
            }
        }
        Ok(total)
    }

    /// Re-drives one intake record; whether it finished an enqueue.
    async fn redrive_intake(&self, shard: u16, id: &str, now: u64) -> Result<bool, QueueError> {
        let mut read = redis::cmd("HGETALL");
        read.arg(self.keys.key(shard, &format!("intake:{id}")));
        let v = self.command(read).await?;
        let fields = codec::items(&v);
        if fields.is_empty() {
            // Dropped since it was listed (its enqueue finished meanwhile): only the index entry is left.
            let mut unlist = redis::cmd("ZREM");
            unlist.arg(self.keys.key(shard, "intakes")).arg(id);
            self.command(unlist).await?;
            return Ok(false);
        }
        let (mut payload, mut body) = (None, Vec::new());
        for pair in fields.chunks(2) {
            if let [name, value] = pair {
                match codec::text(name).as_deref() {
                    Some("p") => payload = codec::text(value),
                    Some("b") => body = codec::bytes(value).unwrap_or_default(),
                    _ => {}
                }
            }
        }
        let Some(payload) = payload.and_then(|p| serde_json::from_str::<IntakePayload>(&p).ok()) else {
            // An acknowledged message that cannot be read: kept for an operator, out of the re-drive index
            // (where it would be tried on every pass), in `badintakes`.
            tracing::error!(message = %id, shard, "unreadable intake record; moved to badintakes for an operator");
            // Listed there first: should the second step fail, the next pass moves it again.
            let mut keep = redis::cmd("ZADD");
            keep.arg(self.keys.key(shard, "badintakes")).arg(now).arg(id);
            self.command(keep).await?;
            let mut unlist = redis::cmd("ZREM");
            unlist.arg(self.keys.key(shard, "intakes")).arg(id);
            self.command(unlist).await?;
            return Ok(false);
        };
        let p = Prepared::from_intake(payload, Bytes::from(body))?;
        let per_shard = self.intake_materialise_calls(&[&p]);
        for (_, r) in self
            .materialise(now, per_shard, false)
            .await
            .into_iter()
            .flatten()
        {
            r?;
        }
        // The record's own name: the listed id.
        self.call(Function::IntakeDone, shard, now, vec![arg(id)]).await?;
        tracing::info!(message = %id, "finished an interrupted enqueue");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, texts};

    #[test]
    fn reap_sends_its_chunk_and_reads_both_counts() {
        assert_eq!(texts(&reap_args(500, 10_000, 3_000)), ["500", "3000", "4000"]);
        // A node that keeps no history leaves the index alone.
        assert_eq!(texts(&reap_args(500, 10_000, 0))[1..], ["0", "0"]);
        assert_eq!(decode_reap(&array(vec![Value::Int(3), Value::Int(1)])), (3, 1));
        assert_eq!(decode_reap(&Value::Nil), (0, 0));
    }
}
