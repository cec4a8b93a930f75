//! Backoff between attempts: exponential, capped, with full jitter.
//!
//! Owns only the arithmetic. It never sleeps, never reads a clock and never draws a random
//! number: the caller injects the random fraction, so every delay is reproducible in a test.
//! Whether an item may be retried at all is the caller's decision (the indexer's `classify`), not
//! this module's.

use std::time::Duration;

/// The retry bound and the backoff curve (`INDEXER_RETRY_MAX_ATTEMPTS`, `INDEXER_RETRY_BACKOFF_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts allowed in total, the first one included: 1 means "never retry".
    pub max_attempts: u32,
    /// The ceiling of the first backoff; it doubles with every further attempt.
    pub base: Duration,
    /// No backoff ceiling grows beyond this.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt after `attempt` attempts failed; see [`delay`].
    pub fn delay(&self, attempt: u32, random_fraction: f64) -> Duration {
        delay(attempt, self.base, self.max, random_fraction)
    }
}

/// The largest wait after `attempt` failed attempts: `min(max, base * 2^(attempt - 1))`.
///
/// Attempt 0 is read as 1, so a caller that counts from zero still waits about `base`.
pub fn ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1);
    // 2^31 * base overflows for any realistic base; past 2^20 every ceiling is `max` anyway.
    let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): a uniform draw in
/// `[0, ceiling]`, so workers that failed together do not retry together.
///
/// `random_fraction` is the caller's draw from `[0, 1)`; values outside `[0, 1]` are clamped and
/// NaN counts as 0, because a bad random source must never turn into a panic or an endless wait.
pub fn delay(attempt: u32, base: Duration, max: Duration, random_fraction: f64) -> Duration {
    let fraction = if random_fraction.is_nan() {
        0.0
    } else {
        random_fraction.clamp(0.0, 1.0)
    };
    ceiling(attempt, base, max).mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn ceiling_doubles_from_base_and_stops_at_max() {
        let cases: [(u32, u64, u64, u64); 9] = [
            // (attempt, base ms, max ms, expected ceiling ms)
            (0, 100, 10_000, 100),
            (1, 100, 10_000, 100),
            (2, 100, 10_000, 200),
            (3, 100, 10_000, 400),
            (7, 100, 10_000, 6_400),
            (8, 100, 10_000, 10_000),
            (u32::MAX, 100, 10_000, 10_000),
            (3, 100, 50, 50),
            (40, u64::MAX / 4, 10_000, 10_000),
        ];
        for (attempt, base, max, expected) in cases {
            assert_eq!(
                ceiling(attempt, MS(base), MS(max)),
                MS(expected),
                "attempt {attempt}, base {base}, max {max}"
            );
        }
    }

    #[test]
    fn delay_is_a_fraction_of_the_ceiling_and_never_outside_it() {
        let cases: [(u32, f64, u64); 9] = [
            // (attempt, random fraction, expected delay ms) with base 100 ms, max 1 s
            (1, 0.0, 0),
            (1, 0.5, 50),
            (1, 1.0, 100),
            (3, 0.25, 100),
            (10, 0.5, 500),
            (10, 1.0, 1_000),
            (2, -3.0, 0),
            (2, 7.0, 200),
            (2, f64::NAN, 0),
        ];
        for (attempt, fraction, expected) in cases {
            assert_eq!(
                delay(attempt, MS(100), MS(1_000), fraction),
                MS(expected),
                "attempt {attempt}, fraction {fraction}"
            );
        }
    }

    #[test]
    fn every_delay_is_within_zero_and_max() {
        let max = MS(30_000);
        for attempt in 0..100 {
            for fraction in [
                0.0,
                0.1,
                0.5,
                0.999_999,
                1.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ] {
                let d = delay(attempt, MS(200), max, fraction);
                assert!(d <= max, "attempt {attempt}, fraction {fraction}: {d:?}");
            }
        }
    }

    #[test]
    fn policy_delegates_to_delay() {
        let p = RetryPolicy {
            max_attempts: 3,
            base: MS(10),
            max: MS(25),
        };
        assert_eq!(p.delay(2, 1.0), MS(20));
        assert_eq!(p.delay(3, 1.0), MS(25));
    }
}
