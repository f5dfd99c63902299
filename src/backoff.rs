//! Exponential backoff with jitter: a pure, time-free schedule of delays.
//!
//! Retry `n` (counting from 1) waits `jitter(min(cap, base * 2^(n-1)))`. The jitter
//! strategies are those of the AWS Architecture Blog study "Exponential Backoff And
//! Jitter" (2015):
//!
//! | [`Jitter`] | delay for ceiling `d` |
//! |---|---|
//! | `Full` (default) | uniform in `[0, d]` |
//! | `Equal` | `d/2` + uniform in `[0, d/2]` |
//! | `Decorrelated` | `min(cap, uniform(base, 3 * previous delay))`, the first previous delay being `base` |
//! | `None` | `d` |
//!
//! Decorrelated jitter is the study's rule exactly: the delay is drawn from
//! `[base, 3 * previous delay]` first and capped after, so a draw past the cap waits the
//! whole cap. (Drawing from a range already capped, `[base, min(cap, 3 * previous)]`,
//! would almost never wait the whole cap, and so would wait less than the study's rule.)
//!
//! Full jitter is the default because, in that study's contention model, it needs about
//! 57% fewer calls than unjittered backoff and finishes about 13x sooner.
//!
//! The schedule knows nothing of clocks: [`ExponentialBackoff::delays`] gives an iterator
//! of [`Duration`]s, and the retry layer sleeps on tokio's clock. Each call draws its
//! jitter from its own small RNG, seeded from the thread's RNG, so two calls never back
//! off in lockstep (tower 0.5's `ExponentialBackoffMaker` gives every backoff the same
//! sequence). For tests, [`ExponentialBackoff::seeded`] makes every sequence reproducible.
//!
//! ```
//! use resilient_http::backoff::{ExponentialBackoff, Jitter};
//! use std::time::Duration;
//!
//! let backoff = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1))
//!     .jitter(Jitter::None);
//! let delays: Vec<_> = backoff.delays().take(5).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
//!
//! // Full jitter stays within the same ceilings.
//! let full = backoff.jitter(Jitter::Full).seeded(7);
//! for (delay, ceiling) in full.delays().zip(delays) {
//!     assert!(delay <= ceiling);
//! }
//! ```

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// First backoff ceiling by default: 500 ms, as in Stripe's official clients.
pub(crate) const DEFAULT_BASE: Duration = Duration::from_millis(500);

/// Largest backoff by default: 5 s, as in Stripe's official clients.
pub(crate) const DEFAULT_CAP: Duration = Duration::from_secs(5);

/// How a delay is drawn below its exponential ceiling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// Uniform in `[0, ceiling]` (the default).
    #[default]
    Full,
    /// Half the ceiling plus uniform in `[0, ceiling / 2]`.
    Equal,
    /// Uniform in `[base, 3 * previous delay]`, then at most `cap`: drawn first and
    /// capped after, so a draw past the cap waits exactly the cap. The first previous
    /// delay is `base`. Does not use the ceiling.
    Decorrelated,
    /// Exactly the ceiling. Clients that fail together retry together: use only when
    /// there is a single client.
    None,
}

/// Configuration of exponential backoff; makes one [`Delays`] schedule per call.
///
/// Cheap to clone. Defaults to Stripe's: base 500 ms, cap 5 s, full jitter.
#[derive(Clone, Debug)]
pub struct ExponentialBackoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    seed: Option<Seed>,
}

#[derive(Clone, Debug)]
struct Seed {
    seed: u64,
    calls: Arc<AtomicU64>,
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

impl ExponentialBackoff {
    /// Backoff from `base`, doubling up to `cap`, with full jitter.
    ///
    /// A `cap` below `base` is a fixed ceiling of `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        ExponentialBackoff {
            base,
            cap,
            jitter: Jitter::Full,
            seed: None,
        }
    }

    /// Stripe's defaults: base 500 ms, cap 5 s, full jitter.
    pub const fn stripe() -> Self {
        Self::new(DEFAULT_BASE, DEFAULT_CAP)
    }

    /// Sets the jitter strategy. Defaults to [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the first ceiling. Defaults to 500 ms.
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Sets the largest delay. Defaults to 5 s.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Makes jitter reproducible: the `n`th schedule made by this value or any of its
    /// clones (counting from 0) draws from an RNG seeded with `seed + n` (wrapping), so
    /// the same seed gives the same schedules with the same build of this crate.
    /// Defaults to unseeded: each schedule is seeded from the thread's RNG.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = Some(Seed {
            seed,
            calls: Arc::new(AtomicU64::new(0)),
        });
        self
    }

    /// The jitter strategy.
    pub fn jitter_strategy(&self) -> Jitter {
        self.jitter
    }

    /// The first ceiling.
    pub fn base_delay(&self) -> Duration {
        self.base
    }

    /// The largest delay.
    pub fn max_delay(&self) -> Duration {
        self.cap
    }

    /// The ceiling before jitter of retry `n` (from 1): `min(cap, base * 2^(n-1))`,
    /// saturating rather than overflowing.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1);
        let base = self.base.as_nanos();
        let nanos = if base.leading_zeros() > shift {
            base << shift
        } else if base == 0 {
            0
        } else {
            u128::MAX
        };
        from_nanos(nanos).min(self.cap)
    }

    /// A fresh schedule for one call, drawing jitter as [`seeded`](Self::seeded) says.
    pub fn delays(&self) -> Delays {
        let rng = match &self.seed {
            Some(seed) => {
                let n = seed.calls.fetch_add(1, Ordering::Relaxed);
                SmallRng::seed_from_u64(seed.seed.wrapping_add(n))
            }
            None => SmallRng::from_rng(&mut rand::rng()),
        };
        self.delays_with_rng(rng)
    }

    /// A fresh schedule for one call, drawing jitter from `rng`. Not public, so that no
    /// `rand` type is part of the API: callers reproduce schedules with
    /// [`seeded`](Self::seeded).
    fn delays_with_rng(&self, rng: SmallRng) -> Delays {
        Delays {
            backoff: ExponentialBackoff {
                seed: None,
                ..self.clone()
            },
            retry: 0,
            previous: self.base,
            rng,
        }
    }
}

fn from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

fn uniform(rng: &mut SmallRng, low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    from_nanos(rng.random_range(low.as_nanos()..=high.as_nanos()))
}

/// The delays of one call: retry 1's, retry 2's, and so on. Never ends; the retry layer
/// stops on attempts and the deadline.
///
/// Every delay is finite, non-negative and at most the cap.
#[derive(Debug)]
pub struct Delays {
    backoff: ExponentialBackoff,
    retry: u32,
    previous: Duration,
    rng: SmallRng,
}

impl Delays {
    /// How many delays this schedule has given.
    pub fn retries(&self) -> u32 {
        self.retry
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.retry = self.retry.saturating_add(1);
        let ceiling = self.backoff.ceiling(self.retry);
        let delay = match self.backoff.jitter {
            Jitter::None => ceiling,
            Jitter::Full => uniform(&mut self.rng, Duration::ZERO, ceiling),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + uniform(&mut self.rng, Duration::ZERO, ceiling - half)
            }
            Jitter::Decorrelated => {
                // The study's rule: draw first, cap after. Capping `3 * previous` before
                // the draw would almost never wait the whole cap.
                let high = self.previous.saturating_mul(3);
                uniform(&mut self.rng, self.backoff.base, high).min(self.backoff.cap)
            }
        };
        self.previous = delay;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = ExponentialBackoff::new(ms(500), ms(5000));
        let c: Vec<_> = (1..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(c, [500, 1000, 2000, 4000, 5000, 5000].map(ms));
    }

    #[test]
    fn ceilings_saturate_instead_of_overflowing() {
        let b = ExponentialBackoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.ceiling(u32::MAX), Duration::MAX);
        let b = ExponentialBackoff::new(ms(1), Duration::MAX);
        assert!(b.ceiling(200) > Duration::from_secs(1 << 40));
        assert_eq!(ExponentialBackoff::new(ms(0), ms(10)).ceiling(9), ms(0));
    }

    #[test]
    fn cap_below_base_is_a_fixed_ceiling() {
        let b = ExponentialBackoff::new(ms(900), ms(300)).jitter(Jitter::None);
        assert_eq!(b.delays().take(3).collect::<Vec<_>>(), [ms(300); 3]);
    }

    #[test]
    fn every_strategy_stays_within_its_bounds() {
        for jitter in [
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::None,
        ] {
            let b = ExponentialBackoff::new(ms(5), ms(2000))
                .jitter(jitter)
                .seeded(1);
            for _ in 0..50 {
                for (n, d) in (1..=12).zip(b.delays()) {
                    assert!(d <= ms(2000), "{jitter:?} {d:?}");
                    match jitter {
                        Jitter::Full => assert!(d <= b.ceiling(n)),
                        Jitter::Equal => assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n)),
                        Jitter::Decorrelated => assert!(d >= ms(5)),
                        _ => assert_eq!(d, b.ceiling(n)),
                    }
                }
            }
        }
    }

    #[test]
    fn seeded_schedules_are_reproducible_and_distinct_per_call() {
        let a = ExponentialBackoff::stripe().seeded(42);
        let b = ExponentialBackoff::stripe().seeded(42);
        let a1: Vec<_> = a.delays().take(4).collect();
        let a2: Vec<_> = a.clone().delays().take(4).collect();
        let b1: Vec<_> = b.delays().take(4).collect();
        let b2: Vec<_> = b.delays().take(4).collect();
        assert_eq!(a1, b1);
        assert_eq!(a2, b2);
        assert_ne!(a1, a2, "two calls must not back off in lockstep");
        let by_hand: Vec<_> = ExponentialBackoff::stripe()
            .delays_with_rng(SmallRng::seed_from_u64(43))
            .take(4)
            .collect();
        assert_eq!(by_hand, a2);
    }

    #[test]
    fn decorrelated_waits_the_cap_as_often_as_the_study_rule_says() {
        // base 100 ms, cap 150 ms: the first delay is min(150, uniform(100, 300)), so it is
        // exactly the cap with probability (300 - 150) / (300 - 100) = 3/4, and otherwise
        // uniform in [100, 150]. A draw from the capped range [100, 150] would be exactly
        // 150 ms about once in 50 million.
        let b = ExponentialBackoff::new(ms(100), ms(150))
            .jitter(Jitter::Decorrelated)
            .seeded(11);
        let n = 10_000;
        let first: Vec<_> = (0..n).map(|_| b.delays().next().unwrap()).collect();
        let at_cap = first.iter().filter(|&&d| d == ms(150)).count();
        let share = at_cap as f64 / n as f64;
        // One standard error is 0.0043.
        assert!((share - 0.75).abs() < 0.02, "{share}");
        let below: Vec<_> = first.iter().filter(|&&d| d < ms(150)).collect();
        assert!(below.iter().all(|&&d| d >= ms(100)));
        let mean = below.iter().copied().sum::<Duration>() / below.len() as u32;
        assert!(mean > ms(122) && mean < ms(128), "{mean:?}");
    }

    #[test]
    fn decorrelated_is_the_study_rule_step_by_step() {
        // The study's loop, `sleep = min(cap, uniform(base, 3 * sleep))` from
        // `sleep = base`, replayed by hand on the same RNG stream as the schedule.
        let (base, cap) = (ms(5), ms(2000));
        let b = ExponentialBackoff::new(base, cap).jitter(Jitter::Decorrelated);
        let mut capped = 0;
        for seed in 0..20 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut sleep = base;
            for (retry, delay) in b
                .delays_with_rng(SmallRng::seed_from_u64(seed))
                .take(30)
                .enumerate()
            {
                let draw = rng.random_range(base.as_nanos()..=(sleep * 3).as_nanos());
                sleep = Duration::from_nanos(draw as u64).min(cap);
                assert_eq!(delay, sleep, "seed {seed}, retry {}", retry + 1);
                capped += usize::from(delay == cap);
            }
        }
        // The cap was reached, where drawing from a capped range would have differed.
        assert!(capped > 20, "{capped}");
    }

    #[test]
    fn extreme_durations_never_panic_or_pass_the_cap() {
        let max = Duration::MAX;
        let tiny = Duration::from_nanos(1);
        for jitter in [
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::None,
        ] {
            for (base, cap) in [
                (max, max),
                (max, ms(0)),
                (max, ms(1)),
                (ms(0), max),
                (tiny, max),
                (ms(0), ms(0)),
                (ms(1), ms(1)),
            ] {
                let b = ExponentialBackoff::new(base, cap).jitter(jitter).seeded(5);
                for d in b.delays().take(200) {
                    assert!(d <= cap, "{jitter:?} base {base:?} cap {cap:?}: {d:?}");
                }
            }
        }
        // Decorrelated with no cap to speak of grows until it saturates.
        let b = ExponentialBackoff::new(tiny, max)
            .jitter(Jitter::Decorrelated)
            .seeded(6);
        assert!(b
            .delays()
            .take(400)
            .any(|d| d > Duration::from_secs(1 << 40)));
    }

    #[test]
    fn unseeded_schedules_differ_between_calls() {
        let b = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(100));
        let x: Vec<_> = b.delays().take(8).collect();
        let y: Vec<_> = b.delays().take(8).collect();
        assert_ne!(x, y);
    }

    #[test]
    fn full_jitter_mean_is_half_the_ceiling() {
        let b = ExponentialBackoff::new(ms(1000), ms(1000)).seeded(3);
        let n = 4000;
        let total: Duration = (0..n).map(|_| b.delays().next().unwrap()).sum();
        let mean = total / n;
        assert!(mean > ms(470) && mean < ms(530), "{mean:?}");
    }
}
