//! When a deferred delivery is tried again, and when it gives up.

use std::time::Duration;

use crate::HumanDuration;

/// Why a retry schedule is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryScheduleError {
    /// No steps at all.
    #[error("retry schedule is empty")]
    Empty,
    /// A step of zero would retry in a tight loop.
    #[error("retry schedule step {0} is zero")]
    ZeroStep(usize),
    /// Jitter must be a fraction in `0.0..1.0`.
    #[error("retry jitter {0} is outside 0.0..1.0")]
    Jitter(f64),
}

/// The delays between attempts of a deferred job, and how old a job may grow before it expires.
///
/// Step `i` is the wait after the `i+1`-th failed attempt; the last step repeats for ever after. Each wait is
/// spread by `±jitter` so that a burst of deferrals to one domain does not come back as one burst.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
    jitter: f64,
    max_age: Duration,
}

/// What to do with a job after a transient failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this time (Unix milliseconds).
    RetryAt(u64),
    /// The job is older than the maximum age: give up and send a DSN (4.4.7).
    Expire,
}

impl RetrySchedule {
    /// tern's default: 5m, 10m, 30m, 1h, 2h, then every 4h; ±10% jitter; expire after 5 days.
    pub fn default_steps() -> Vec<HumanDuration> {
        [5 * 60, 10 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600]
            .into_iter()
            .map(HumanDuration::from_secs)
            .collect()
    }

    /// A schedule from its steps, jitter fraction and maximum age.
    pub fn new(steps: Vec<Duration>, jitter: f64, max_age: Duration) -> Result<Self, RetryScheduleError> {
        if steps.is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        if let Some(i) = steps.iter().position(|d| d.is_zero()) {
            return Err(RetryScheduleError::ZeroStep(i));
        }
        if !(0.0..1.0).contains(&jitter) {
            return Err(RetryScheduleError::Jitter(jitter));
        }
        Ok(RetrySchedule {
            steps,
            jitter,
            max_age,
        })
    }

    /// The maximum age of a job.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The jitter fraction: each wait is the base delay times a factor in `1 ± jitter`.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The un-jittered wait after `failed_attempts` failures (1 for the first failure).
    pub fn base_delay(&self, failed_attempts: u32) -> Duration {
        let i = (failed_attempts.max(1) as usize - 1).min(self.steps.len() - 1);
        self.steps[i]
    }

    /// Decides the next attempt after a transient failure.
    ///
    /// `spread` in `-1.0..=1.0` picks the point within the jitter band (use [`RetrySchedule::decide_now`] for
    /// a random one). The next attempt is never later than the expiry time, so a job gets one last try at its
    /// maximum age before it expires.
    pub fn decide(
        &self,
        failed_attempts: u32,
        first_queued_ms: u64,
        now_ms: u64,
        spread: f64,
    ) -> RetryDecision {
        let expires_ms = first_queued_ms.saturating_add(duration_ms(self.max_age));
        if now_ms >= expires_ms {
            return RetryDecision::Expire;
        }
        let base = duration_ms(self.base_delay(failed_attempts)) as f64;
        let factor = 1.0 + self.jitter * spread.clamp(-1.0, 1.0);
        let delay = (base * factor).max(1000.0) as u64;
        RetryDecision::RetryAt(now_ms.saturating_add(delay).min(expires_ms))
    }

    /// [`RetrySchedule::decide`] with a random point in the jitter band.
    pub fn decide_now(&self, failed_attempts: u32, first_queued_ms: u64, now_ms: u64) -> RetryDecision {
        let spread = rand::random::<f64>() * 2.0 - 1.0;
        self.decide(failed_attempts, first_queued_ms, now_ms, spread)
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            steps: Self::default_steps().into_iter().map(Duration::from).collect(),
            jitter: 0.1,
            max_age: Duration::from_secs(5 * 86400),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn default_schedule_steps_then_repeats_the_last() {
        let s = RetrySchedule::default();
        let mins: Vec<u64> = (1..=8).map(|n| s.base_delay(n).as_secs() / 60).collect();
        assert_eq!(mins, vec![5, 10, 30, 60, 120, 240, 240, 240]);
        assert_eq!(s.max_age(), Duration::from_secs(5 * 86400));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let s = RetrySchedule::default();
        let now = 1_000 * MIN;
        assert_eq!(
            s.decide(1, now, now, -1.0),
            RetryDecision::RetryAt(now + 5 * MIN - 30_000)
        );
        assert_eq!(
            s.decide(1, now, now, 1.0),
            RetryDecision::RetryAt(now + 5 * MIN + 30_000)
        );
        assert_eq!(s.decide(1, now, now, 0.0), RetryDecision::RetryAt(now + 5 * MIN));
        for _ in 0..1000 {
            let RetryDecision::RetryAt(at) = s.decide_now(2, now, now) else {
                panic!("expired early")
            };
            assert!((now + 9 * MIN..=now + 11 * MIN).contains(&at), "{at}");
        }
    }

    #[test]
    fn jobs_past_max_age_expire() {
        let s = RetrySchedule::new(vec![Duration::from_secs(60)], 0.0, Duration::from_secs(600)).unwrap();
        assert_eq!(s.decide(3, 0, 10 * MIN, 0.0), RetryDecision::Expire);
        assert_eq!(s.decide(3, 0, 11 * MIN, 0.0), RetryDecision::Expire);
    }

    #[test]
    fn last_retry_is_clamped_to_the_expiry_time() {
        let s = RetrySchedule::new(vec![Duration::from_secs(3600)], 0.0, Duration::from_secs(600)).unwrap();
        assert_eq!(s.decide(1, 0, MIN, 0.0), RetryDecision::RetryAt(10 * MIN));
    }

    #[test]
    fn bad_schedules_are_rejected() {
        assert_eq!(
            RetrySchedule::new(vec![], 0.1, Duration::from_secs(1)),
            Err(RetryScheduleError::Empty)
        );
        assert_eq!(
            RetrySchedule::new(
                vec![Duration::from_secs(1), Duration::ZERO],
                0.1,
                Duration::from_secs(1)
            ),
            Err(RetryScheduleError::ZeroStep(1))
        );
        assert!(matches!(
            RetrySchedule::new(vec![Duration::from_secs(1)], 1.5, Duration::from_secs(1)),
            Err(RetryScheduleError::Jitter(_))
        ));
    }
}
