//! Shards a worker's claim skips: those where its handle's last index-order claim found nothing to take.
//!
//! A claim visits the shards in turn, one call each, until one has work. With fewer busy domains than shards
//! most visits find nothing: at 1,000 messages per second over ten domains Redis ran 9 to 19 function calls
//! per message (all clients together), most of them claims of shards with nothing due, and tern and Redis
//! spent three to four times the CPU per message they spend when saturated. So a handle remembers, per
//! shard, that its last index-order claim there found nothing, and skips the shard until one of these comes
//! first:
//!
//! - the time the shard's domain index named (its earliest domain's turn: a retry, a domain pushed back at
//!   its limit);
//! - a wake token from the shard's lists, taken by this handle's listener (`wake.rs`): the queue pushes one
//!   whenever work there becomes claimable without a due time to wait for (an enqueue of a domain that was
//!   not due, a freed slot, a release, the reaper, an operator's retry or bounce, a resume);
//! - something this handle did that makes work claimable there and sends no token: an enqueue (`tern all`,
//!   where ingest and the worker share the handle), a slot kept as a hold for an idle connection (the held
//!   domain's due work is its holder's), a completion that puts a job back for a later attempt (its time);
//! - the bound after the claim ([`crate::RedisQueueOptions::quiet_shard_bound`], 20 ms). It finds the work
//!   of a worker that keeps claiming elsewhere and so never waits for tokens (they stay in Redis until it
//!   does), and work that sends none (a message with a later delivery time queued by another process: a
//!   worker asleep learns its time when it wakes, at most its poll interval later, as before).
//!
//! Tokens do not always name the shard with the work: a shard's list takes at most 8, and a claim that did
//! not wait for a token leaves it behind, old. So a claim that follows a token and finds nothing where it
//! looked then visits the shards it skipped, as every claim did before.
//!
//! A token or an enqueue while a claim of the shard is under way may announce work that claim did not see;
//! each shard counts what touched it, and a claim marks its shard quiet only when nothing did since it began.
//!
//! Only [`crate::Queue::claim_next`], the worker's claim, skips shards: `claim` and `claim_holding` look at
//! every shard.

use std::sync::Mutex;

/// Per shard: quiet until when, and how often work may have come to it.
#[derive(Clone, Copy, Debug, Default)]
struct Shard {
    /// Skipped by claims until this time (Unix ms); 0 or past: visited.
    quiet_until_ms: u64,
    /// The due time the shard's index named, when it named one (what a worker may sleep until).
    next_due_ms: Option<u64>,
    /// What touched the shard: wake tokens taken from its lists, and what this handle did there that sends
    /// none (an enqueue, a hold kept, a completion that puts a job back).
    touches: u64,
}

/// The quiet shards of one queue handle. Cheap to consult: one uncontended lock per shard visit.
#[derive(Debug)]
pub(crate) struct QuietShards {
    state: Mutex<State>,
    /// How long at most a shard stays quiet (ms).
    bound_ms: u64,
}

#[derive(Debug)]
struct State {
    shards: Vec<Shard>,
    /// A wake token was taken since the last [`QuietShards::take_woken`].
    woken: bool,
}

/// What a claim reads of a shard before its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Visit {
    /// Quiet: skip it. The due time its index named, if any; `touches` as for `Claim`.
    Skip { next_due_ms: Option<u64>, touches: u64 },
    /// Claim there; `touches` is the shard's count now, for [`QuietShards::found_nothing`].
    Claim { touches: u64 },
}

impl QuietShards {
    /// `shards` shards, none quiet; a shard stays quiet at most `bound_ms`.
    pub(crate) fn new(shards: u16, bound_ms: u64) -> QuietShards {
        QuietShards {
            state: Mutex::new(State {
                shards: vec![Shard::default(); usize::from(shards)],
                woken: false,
            }),
            bound_ms,
        }
    }

    /// Whether a claim at `now_ms` visits `shard`.
    pub(crate) fn visit(&self, shard: u16, now_ms: u64) -> Visit {
        let state = self.lock();
        let Some(s) = state.shards.get(usize::from(shard)) else {
            return Visit::Claim { touches: 0 };
        };
        if now_ms < s.quiet_until_ms {
            Visit::Skip {
                next_due_ms: s.next_due_ms,
                touches: s.touches,
            }
        } else {
            Visit::Claim { touches: s.touches }
        }
    }

    /// An index-order claim of `shard`, begun when its count was `touches`, found nothing at `now_ms`; its
    /// index named `next_due_ms` (None: the index is empty). The shard is quiet until then (at most the
    /// bound), unless something touched it meanwhile; a due time already past leaves it
    /// visited.
    pub(crate) fn found_nothing(&self, shard: u16, touches: u64, next_due_ms: Option<u64>, now_ms: u64) {
        let mut state = self.lock();
        let Some(s) = state.shards.get_mut(usize::from(shard)) else {
            return;
        };
        if s.touches != touches {
            return;
        }
        let bound = now_ms.saturating_add(self.bound_ms);
        s.quiet_until_ms = next_due_ms.map_or(bound, |due| due.min(bound));
        s.next_due_ms = next_due_ms;
    }

    /// This handle did something in `shard` that makes work claimable and sends no token (an enqueue, a hold
    /// kept for an idle connection, a completion that puts a job back): claims visit it again.
    pub(crate) fn touched(&self, shard: u16) {
        Self::touch(&mut self.lock(), shard);
    }

    /// A wake token from `shard`'s lists was taken: claims visit it again, and the next claim learns that a
    /// token came ([`QuietShards::take_woken`]).
    pub(crate) fn token(&self, shard: u16) {
        let mut state = self.lock();
        Self::touch(&mut state, shard);
        state.woken = true;
    }

    /// Whether a wake token was taken since the last call. A claim after one that finds nothing where it
    /// looked visits the quiet shards too: the token was an old one (its work taken by a claim that did not
    /// wait for it), and a shard whose list was full when new work came got none.
    pub(crate) fn take_woken(&self) -> bool {
        std::mem::take(&mut self.lock().woken)
    }

    fn touch(state: &mut State, shard: u16) {
        if let Some(s) = state.shards.get_mut(usize::from(shard)) {
            s.touches = s.touches.wrapping_add(1);
            s.quiet_until_ms = 0;
            s.next_due_ms = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: u64 = 50;

    #[test]
    fn a_shard_that_had_nothing_is_skipped_until_its_next_due_time_or_the_bound() {
        let quiet = QuietShards::new(2, BOUND);
        let Visit::Claim { touches } = quiet.visit(0, 100) else {
            panic!("a new shard is visited");
        };
        quiet.found_nothing(0, touches, Some(130), 100);
        assert_eq!(
            quiet.visit(0, 129),
            Visit::Skip {
                next_due_ms: Some(130),
                touches
            }
        );
        assert_eq!(quiet.visit(0, 130), Visit::Claim { touches });
        assert_eq!(
            quiet.visit(1, 129),
            Visit::Claim { touches: 0 },
            "other shards as they were"
        );

        // An empty index, or a due time beyond the bound: the bound.
        quiet.found_nothing(0, touches, None, 500);
        assert!(matches!(
            quiet.visit(0, 500 + BOUND - 1),
            Visit::Skip {
                next_due_ms: None,
                ..
            }
        ));
        assert!(matches!(quiet.visit(0, 500 + BOUND), Visit::Claim { .. }));
        quiet.found_nothing(0, touches, Some(60_000), 500);
        assert!(matches!(quiet.visit(0, 500 + BOUND), Visit::Claim { .. }));
    }

    #[test]
    fn a_due_time_already_past_leaves_the_shard_visited() {
        // More due domains than a claim looks at, all at their limits: the index names a time gone by.
        let quiet = QuietShards::new(1, BOUND);
        quiet.found_nothing(0, 0, Some(90), 100);
        assert!(matches!(quiet.visit(0, 100), Visit::Claim { .. }));
    }

    #[test]
    fn a_wake_token_from_the_shard_ends_its_quiet() {
        let quiet = QuietShards::new(1, BOUND);
        quiet.found_nothing(0, 0, None, 100);
        assert!(matches!(quiet.visit(0, 101), Visit::Skip { .. }));
        quiet.token(0);
        assert_eq!(quiet.visit(0, 101), Visit::Claim { touches: 1 });
    }

    #[test]
    fn the_next_claim_learns_that_a_token_came_and_only_it() {
        let quiet = QuietShards::new(2, BOUND);
        assert!(!quiet.take_woken());
        quiet.touched(0);
        assert!(!quiet.take_woken(), "an enqueue of this handle is no token");
        quiet.token(1);
        assert!(quiet.take_woken());
        assert!(!quiet.take_woken(), "told once");
    }

    #[test]
    fn a_token_or_an_enqueue_during_the_claim_keeps_the_shard_visited() {
        // Either may announce work that reached the shard after the claim looked.
        let quiet = QuietShards::new(1, BOUND);
        let Visit::Claim { touches } = quiet.visit(0, 100) else {
            panic!("visited");
        };
        quiet.token(0);
        quiet.found_nothing(0, touches, None, 110);
        assert!(matches!(quiet.visit(0, 111), Visit::Claim { .. }));
        let Visit::Claim { touches } = quiet.visit(0, 120) else {
            panic!("visited");
        };
        quiet.touched(0);
        quiet.found_nothing(0, touches, None, 110);
        assert!(matches!(quiet.visit(0, 111), Visit::Claim { .. }));
    }

    #[test]
    fn a_shard_out_of_range_is_always_visited() {
        let quiet = QuietShards::new(1, BOUND);
        quiet.found_nothing(5, 0, None, 100);
        quiet.touched(5);
        assert_eq!(quiet.visit(5, 101), Visit::Claim { touches: 0 });
    }
}
