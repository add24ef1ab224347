//! Slot holds of idle connections (`hold.lua`: `hold` and `unhold`).

use std::time::Duration;

use redis::Value;
use tern_core::time::now_ms;

use super::{Arg, arg, codec};
use crate::QueueError;
use crate::model::SlotHold;
use crate::redis::library::Function;
use crate::redis::{RedisQueue, duration_ms};

/// The arguments of one `hold` call.
pub(crate) struct HoldArgs<'a> {
    /// The clock of the call (Unix ms): the hold counts from it.
    pub now: u64,
    pub domain: &'a str,
    /// The claim whose connection goes idle.
    pub claim_id: &'a str,
    pub hold_ms: u64,
    pub default_limit: u32,
    /// The caller's waiter id: an enqueue that finds the domain's slots taken wakes the holder through it.
    pub waiter: &'a str,
}

impl HoldArgs<'_> {
    pub(crate) fn into_args(self) -> Vec<Arg> {
        vec![
            arg(self.domain),
            arg(self.claim_id),
            // The hold's deadline.
            arg(self.now.saturating_add(self.hold_ms.max(1))),
            arg(self.default_limit),
            arg(self.waiter),
        ]
    }
}

/// What `hold` answers: the hold's id and deadline (Unix ms), or `None` when the domain is at its limit.
pub(crate) fn decode_hold(v: &Value) -> Option<(String, u64)> {
    let items = codec::items(v);
    let id = items.first().and_then(codec::text)?;
    let until = items.get(1).and_then(codec::int)?;
    Some((id, until.max(0) as u64))
}

/// The arguments of one `unhold` call.
pub(crate) fn unhold_args(hold: &SlotHold) -> Vec<Arg> {
    vec![arg(&hold.domain), arg(&hold.id)]
}

impl RedisQueue {
    /// [`crate::Queue::hold_slot`].
    pub(crate) async fn hold_domain_slot(
        &self,
        domain: &str,
        claim_id: &str,
        hold: Duration,
    ) -> Result<Option<SlotHold>, QueueError> {
        let shard = self.keys.shard_of_domain(domain);
        let now = now_ms();
        let args = HoldArgs {
            now,
            domain,
            claim_id,
            hold_ms: duration_ms(hold),
            default_limit: self.opts.default_domain_concurrency,
            waiter: self.wakes.waiter(),
        };
        let v = self.call(Function::Hold, shard, now, args.into_args()).await?;
        let hold = decode_hold(&v).map(|(id, until_ms)| SlotHold {
            domain: domain.to_string(),
            id,
            until_ms,
        });
        if hold.is_some() {
            // The held domain's due work is this worker's to take now (a claim that found the domain at its
            // limit before the hold existed may have left the shard quiet), and no token says so.
            self.quiet.touched(shard);
        }
        Ok(hold)
    }

    /// [`crate::Queue::drop_slot`].
    pub(crate) async fn drop_domain_slot(&self, hold: &SlotHold) -> Result<(), QueueError> {
        let shard = self.keys.shard_of_domain(&hold.domain);
        self.call(Function::Unhold, shard, now_ms(), unhold_args(hold))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::ops::test_values::{array, bulk, texts};

    #[test]
    fn hold_sends_domain_claim_its_deadline_and_the_default_limit() {
        let args = HoldArgs {
            now: 1_000,
            domain: "d.test",
            claim_id: "c1",
            hold_ms: 0,
            default_limit: 10,
            waiter: "W1",
        };
        assert_eq!(texts(&args.into_args()), ["d.test", "c1", "1001", "10", "W1"]);
        let hold = SlotHold {
            domain: "d.test".into(),
            id: "h:c1".into(),
            until_ms: 5,
        };
        assert_eq!(texts(&unhold_args(&hold)), ["d.test", "h:c1"]);
    }

    #[test]
    fn hold_replies_decode() {
        assert_eq!(
            decode_hold(&array(vec![bulk("h:c1"), bulk("1795889231049")])),
            Some(("h:c1".to_string(), 1_795_889_231_049))
        );
        assert_eq!(decode_hold(&Value::Nil), None);
    }
}
