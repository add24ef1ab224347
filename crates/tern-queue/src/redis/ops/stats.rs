//! Counters (plain `HGETALL`s; the functions count with `stat` in `shared.lua`).

use std::time::Duration;

use tern_core::time::now_ms;

use super::codec;
use crate::QueueError;
use crate::model::Stats;
use crate::redis::RedisQueue;

/// The most minutes of per-minute counters kept.
const MAX_MINUTES: u64 = 120;

/// The per-minute buckets (`min:<minute>`) that cover `window` up to the minute of `now_ms`.
pub(crate) fn minutes(window: Duration, now_ms: u64) -> Vec<u64> {
    let count = window.as_secs().div_ceil(60).clamp(1, MAX_MINUTES);
    let current = now_ms / 60_000;
    (0..count).map(|m| current.saturating_sub(m)).collect()
}

fn add_fields(stats: &mut Stats, v: &redis::Value) {
    for (name, n) in codec::fields(v) {
        stats.add(&name, n.parse::<i64>().unwrap_or(0).max(0) as u64);
    }
}

impl RedisQueue {
    /// [`crate::Queue::stats`].
    pub(crate) async fn read_stats(&self) -> Result<Stats, QueueError> {
        let parts = self
            .on_all_shards(|shard| async move {
                let mut all = redis::cmd("HGETALL");
                all.arg(self.keys.key(shard, "stats"));
                self.command(all).await
            })
            .await?;
        let mut stats = Stats::default();
        for v in &parts {
            add_fields(&mut stats, v);
        }
        Ok(stats)
    }

    /// [`crate::Queue::recent_stats`].
    pub(crate) async fn read_recent_stats(&self, window: Duration) -> Result<Stats, QueueError> {
        let buckets = minutes(window, now_ms());
        let buckets = &buckets;
        let parts = self
            .on_all_shards(|shard| async move {
                let mut pipe = redis::pipe();
                for minute in buckets {
                    pipe.cmd("HGETALL")
                        .arg(self.keys.key(shard, &format!("min:{minute}")));
                }
                self.commands(pipe).await
            })
            .await?;
        let mut stats = Stats::default();
        for v in parts.iter().flatten() {
            add_fields(&mut stats, v);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_covers_whole_minutes_back_from_now_and_at_most_two_hours() {
        let now = 120 * 60_000 + 5;
        assert_eq!(minutes(Duration::from_secs(90), now), [120, 119]);
        assert_eq!(minutes(Duration::ZERO, now), [120]);
        assert_eq!(minutes(Duration::from_secs(86_400), now).len(), 120);
    }
}
