//! Shards whose domain index a claim found empty, which this handle's index-order claims pass over for a
//! moment.
//!
//! A claim visits the shards one call at a time until one has due work (`ops/claim.rs`), and domains map to
//! shards by their name, so with few destination domains most shards hold none. A busy worker then paid a
//! call to each empty shard for nearly every claim: in the benchmark with one domain (all its jobs in one
//! of 16 shards), about 13 claim calls per claim that found work, 1.5 per message delivered.
//!
//! A shard found empty is passed over for [`EMPTY_SHARD_SKIP_MS`] at most. The skip ends at once when
//! anything may have put a domain in the shard's index that this handle can know of:
//! - a wake token from the shard reached this handle's listener (an enqueue made a domain due there, a slot
//!   was freed, a job came back, an operator retried one: every change that makes work claimable now
//!   signals its shard, see `wake.rs`);
//! - this handle called any other function on the shard (its own enqueue, completion, release, ...).
//!
//! What signals nothing (a retry time coming due, a deferral by another worker) waits for the skip to lapse:
//! a busy worker sees it at most [`EMPTY_SHARD_SKIP_MS`] later than without the skip. An idle worker is not
//! affected: it sleeps until a wake or the poll interval either way, and knew no due time in an empty shard.
//!
//! A claim's reply can cross a wake of the same shard (they travel on different connections): the skip is
//! recorded only if no wake or write of the shard came since the claim was sent (a generation count), so a
//! token is never lost to a reply that was already out of date.

use std::sync::Mutex;

/// How long a shard found empty is passed over at most (ms).
pub(crate) const EMPTY_SHARD_SKIP_MS: u64 = 250;

/// One shard's skip.
#[derive(Clone, Copy, Default)]
struct ShardSkip {
    /// Passed over until then (Unix ms; 0: visited).
    until_ms: u64,
    /// Counts the wakes and writes of the shard, so that a claim sent before one cannot skip it after.
    generation: u64,
}

/// The skips of a queue handle's shards.
pub(crate) struct EmptyShards {
    shards: Mutex<Vec<ShardSkip>>,
}

impl EmptyShards {
    /// No shard skipped.
    pub(crate) fn new(shards: u16) -> EmptyShards {
        EmptyShards {
            shards: Mutex::new(vec![ShardSkip::default(); usize::from(shards)]),
        }
    }

    fn with<T>(&self, shard: u16, f: impl FnOnce(&mut ShardSkip) -> T) -> Option<T> {
        // A poisoned lock only means a panic elsewhere while it was held; the counts are still whole.
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards.get_mut(usize::from(shard)).map(f)
    }

    /// Whether an index-order claim passes over `shard` now, and otherwise the shard's generation, which
    /// [`EmptyShards::found_empty`] takes after the claim.
    pub(crate) fn visit(&self, shard: u16, now_ms: u64) -> Option<u64> {
        self.with(shard, |s| (s.until_ms <= now_ms).then_some(s.generation))
            .unwrap_or(Some(0))
    }

    /// A claim sent at `generation` found the shard's domain index empty at `now_ms`.
    pub(crate) fn found_empty(&self, shard: u16, generation: u64, now_ms: u64) {
        self.with(shard, |s| {
            if s.generation == generation {
                s.until_ms = now_ms.saturating_add(EMPTY_SHARD_SKIP_MS);
            }
        });
    }

    /// Something may have put a domain in the shard's index: visit it again.
    pub(crate) fn may_have_work(&self, shard: u16) {
        self.with(shard, |s| {
            s.until_ms = 0;
            s.generation = s.generation.wrapping_add(1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_found_empty_is_passed_over_until_its_skip_lapses() {
        let shards = EmptyShards::new(4);
        let generation = shards.visit(2, 1_000).expect("visited at first");
        shards.found_empty(2, generation, 1_000);
        assert_eq!(shards.visit(2, 1_000), None);
        assert_eq!(shards.visit(2, 1_000 + EMPTY_SHARD_SKIP_MS - 1), None);
        assert!(shards.visit(2, 1_000 + EMPTY_SHARD_SKIP_MS).is_some());
        assert!(shards.visit(1, 1_000).is_some(), "the other shards are visited");
    }

    #[test]
    fn a_wake_or_a_write_ends_the_skip_at_once() {
        let shards = EmptyShards::new(4);
        let generation = shards.visit(0, 1_000).expect("visited");
        shards.found_empty(0, generation, 1_000);
        shards.may_have_work(0);
        assert!(shards.visit(0, 1_001).is_some());
    }

    #[test]
    fn a_reply_sent_before_a_wake_does_not_skip_the_shard() {
        let shards = EmptyShards::new(4);
        let generation = shards.visit(3, 1_000).expect("visited");
        // The wake's token arrives while the claim's reply ("empty") is still on its way.
        shards.may_have_work(3);
        shards.found_empty(3, generation, 1_001);
        assert!(shards.visit(3, 1_002).is_some());
    }

    #[test]
    fn a_shard_beyond_the_count_is_always_visited() {
        let shards = EmptyShards::new(1);
        shards.found_empty(5, 0, 1_000);
        shards.may_have_work(5);
        assert_eq!(shards.visit(5, 1_000), Some(0));
    }
}
