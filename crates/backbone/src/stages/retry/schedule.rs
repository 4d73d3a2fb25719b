//! The retry schedule (docs/spec.md §4): execution k runs no earlier than
//! `backoff(k)` after execution k−1 failed, where `backoff(2) = initial` and
//! `backoff(k) = min(max, initial × multiplier^(k−2))`, plus up to 20 %
//! jitter that only ever lengthens the wait.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    pub max_attempts: u32,
}

/// The largest share of the base delay jitter may add.
pub const JITTER: f64 = 0.2;

impl Schedule {
    /// The base delay before execution `k` (k ≥ 2); zero for k ≤ 1.
    pub fn base(&self, k: u32) -> Duration {
        if k < 2 {
            return Duration::ZERO;
        }
        // backon's exponential builder takes an f32 factor (300 ms comes out
        // as 300.000012 ms) and its jitter can double a delay, so docs/spec.md
        // formula is written out here; backon drives the in-process retries.
        let factor = self.multiplier.powi(k.saturating_sub(2).min(64) as i32);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        self.initial.mul_f64(factor).min(self.max)
    }

    /// The delay before execution `k` with jitter in [0, 20 %] of the base.
    pub fn delay(&self, k: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base(k);
        let extra = base.mul_f64(rng.random_range(0.0..=JITTER));
        base + extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Schedule {
        Schedule {
            initial: Duration::from_secs(10),
            multiplier: 2.0,
            max: Duration::from_secs(600),
            max_attempts: 5,
        }
    }

    #[test]
    fn spec_defaults_give_10_20_40_80_then_cap() {
        let s = defaults();
        let secs: Vec<u64> = (1..=10).map(|k| s.base(k).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }

    #[test]
    fn jitter_only_lengthens_and_stays_within_20_percent() {
        let s = defaults();
        let mut rng = rand::rng();
        for k in 2..=8 {
            for _ in 0..200 {
                let d = s.delay(k, &mut rng);
                assert!(d >= s.base(k));
                assert!(d <= s.base(k).mul_f64(1.0 + JITTER) + Duration::from_nanos(1));
            }
        }
    }

    #[test]
    fn millisecond_settings_and_other_multipliers() {
        let s = Schedule {
            initial: Duration::from_millis(100),
            multiplier: 3.0,
            max: Duration::from_millis(1000),
            max_attempts: 5,
        };
        assert_eq!(s.base(2), Duration::from_millis(100));
        assert_eq!(s.base(3), Duration::from_millis(300));
        assert_eq!(s.base(4), Duration::from_millis(900));
        assert_eq!(s.base(5), Duration::from_millis(1000));
    }
}
