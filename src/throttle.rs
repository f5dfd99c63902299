//! Adaptive client-side throttling: a client that offers more than a server allows learns
//! from 429 `rate_limit` answers to send less, instead of hammering it.
//!
//! [`AdaptiveThrottle`] is the AWS SDKs' "adaptive" retry mode client rate limiter: a token
//! bucket whose fill rate follows CUBIC congestion control.
//!
//! - It is dormant until the first rate-limited answer: until then every attempt is sent
//!   at once.
//! - On a rate-limited answer (`rate_limit`, or 429 without a body) the send rate drops to
//!   0.7 of what the client was measured sending; `lock_timeout` and 409 are contention on
//!   one object, not a rate, and do not count.
//! - On every other answer the rate grows back along a cubic curve towards, then past, the
//!   rate at which the server last pushed back, never above twice the measured rate.
//! - Before each attempt (the first one included) the call takes a token. If none is there
//!   it queues for one on tokio's clock. If the queue is longer than a second, or the wait
//!   would end after the call's deadline, it does not wait at all: it ends at once as "gave
//!   up while retryable" (or indeterminate if an earlier attempt may have taken effect),
//!   with [`StopReason::Throttled`](crate::StopReason::Throttled) and a [`Throttled`]
//!   error saying which limit. A rate cut sends the queued calls back to queue again at the
//!   new rate. A slot taken for an attempt that is then not sent (the call stopped, or was
//!   dropped, while it waited) is given back.
//!
//! In this crate's own test (tests/overload.rs: a server that accepts 40 requests a second,
//! clients offering 200, on paused time) the server turns away about 80% of what reaches it
//! without throttling, and about 1% with it, while the client still uses about two thirds
//! of the server's capacity.
//!
//! Why this rather than the Google SRE book's formula (reject locally with probability
//! `(requests - K * accepts) / (requests + 1)`, K = 2): at steady state that formula sends
//! K times what the server accepts, so half of what reaches the server is still rejected.
//! Pacing by a learned rate keeps the server's rejections near zero, and callers wait a
//! little rather than fail.
//!
//! It is off by default (a single client of a server with ample quota gains nothing from it).
//! One builder call turns it on:
//!
//! ```
//! use resilient_http::RetryLayer;
//!
//! let layer = RetryLayer::builder().adaptive_throttling().build().unwrap();
//! # let _ = layer;
//! ```
//!
//! A throttle is shared by every service that holds it, like a
//! [`RetryBudget`](crate::budget::RetryBudget): every clone, and every service made by the
//! same layer.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

// The constants of the AWS SDKs' adaptive retry mode (botocore's `retries/adaptive.py`).
const MIN_FILL_RATE: f64 = 0.5;
const MIN_CAPACITY: f64 = 1.0;
const SMOOTH: f64 = 0.8;
const BETA: f64 = 0.7;
const SCALE_CONSTANT: f64 = 0.4;
const MAX_RATE_ADJUST_SCALE: f64 = 2.0;
// The longest a call queues for a token. A longer queue would hold calls that were paced
// for a rate which has since changed; past it, a call gives up at once.
const MAX_QUEUE: Duration = Duration::from_secs(1);
// The measured send rate is counted in half-second buckets.
const BUCKETS_PER_SECOND: f64 = 2.0;

/// A CUBIC-paced client rate limiter, shared by every clone. See the
/// [module docs](self).
#[derive(Clone, Default)]
pub struct AdaptiveThrottle {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    // Seconds are counted from the first time the throttle is used, on tokio's clock.
    origin: Option<Instant>,
    enabled: bool,
    fill_rate: f64,
    max_capacity: f64,
    // May go below zero: tokens promised to calls that are waiting for them.
    capacity: f64,
    // Bumped by every rate cut, which voids the promises made at the old rate.
    generation: u64,
    last_refill: f64,
    // CUBIC.
    last_max_rate: f64,
    last_throttle: f64,
    time_window: f64,
    // Measured rate of answers, smoothed.
    measured_rate: f64,
    bucket: f64,
    count: f64,
}

impl Default for State {
    fn default() -> Self {
        State {
            origin: None,
            enabled: false,
            fill_rate: MIN_FILL_RATE,
            max_capacity: MIN_CAPACITY,
            capacity: MIN_CAPACITY,
            generation: 0,
            last_refill: 0.0,
            last_max_rate: 0.0,
            last_throttle: 0.0,
            time_window: 0.0,
            measured_rate: 0.0,
            bucket: 0.0,
            count: 0.0,
        }
    }
}

impl AdaptiveThrottle {
    /// A dormant throttle with the AWS SDKs' constants.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a rate-limited answer has switched pacing on.
    pub fn is_active(&self) -> bool {
        self.lock().enabled
    }

    /// The send rate allowed now, in attempts per second, once active.
    pub fn rate(&self) -> Option<f64> {
        let state = self.lock();
        state.enabled.then_some(state.fill_rate)
    }

    /// Reserves a token for an attempt at `now`: how long to wait before sending it, with
    /// the slot (a guard that gives the token back when dropped unspent; see
    /// [`Self::still_valid`]), or why not (and nothing reserved) if sending would have to
    /// wait past the queue limit or until `latest` or later.
    pub(crate) fn acquire(
        &self,
        now: Instant,
        latest: Instant,
    ) -> Result<(Duration, SendSlot), Throttled> {
        let mut state = self.lock();
        let mut slot = SendSlot {
            generation: state.generation,
            owner: None,
        };
        if !state.enabled {
            return Ok((Duration::ZERO, slot));
        }
        let t = state.seconds(now);
        state.refill(t);
        let short = 1.0 - state.capacity;
        let wait = if short > 0.0 {
            Duration::try_from_secs_f64(short / state.fill_rate).unwrap_or(Duration::MAX)
        } else {
            Duration::ZERO
        };
        if wait > MAX_QUEUE {
            return Err(Throttled::QueueFull(wait));
        }
        match now.checked_add(wait) {
            Some(at) if at < latest => {
                state.capacity -= 1.0;
                slot.owner = Some(self.clone());
                Ok((wait, slot))
            }
            _ => Err(Throttled::Deadline(wait)),
        }
    }

    /// Gives back the token of a slot whose attempt will not be sent, unless a rate cut
    /// has voided it already.
    fn release(&self, generation: u64) {
        let mut state = self.lock();
        if state.generation == generation {
            state.capacity = (state.capacity + 1.0).min(state.max_capacity);
        }
    }

    /// Whether a slot still holds when its wait is over: a rate cut since it was made
    /// voids it, so that a call which queued at the old rate queues again at the new one
    /// rather than arriving with a burst the server has just refused.
    pub(crate) fn still_valid(&self, slot: &SendSlot) -> bool {
        self.lock().generation == slot.generation
    }

    /// Learns from an answer received at `now`; `rate_limited` if the server turned the
    /// attempt away for its rate.
    pub(crate) fn on_response(&self, now: Instant, rate_limited: bool) {
        let mut state = self.lock();
        let t = state.seconds(now);
        let measured = state.measure(t);
        let rate = if rate_limited {
            let current = if state.enabled {
                measured.min(state.fill_rate)
            } else {
                measured
            };
            state.last_max_rate = current;
            state.time_window = time_window(current);
            state.last_throttle = t;
            state.enabled = true;
            // Promises made at the old rate are void; their calls queue again on waking.
            state.generation = state.generation.wrapping_add(1);
            state.capacity = state.capacity.max(0.0);
            current * BETA
        } else {
            state.time_window = time_window(state.last_max_rate);
            let dt = t - state.last_throttle;
            SCALE_CONSTANT * (dt - state.time_window).powi(3) + state.last_max_rate
        };
        let rate = rate.min(MAX_RATE_ADJUST_SCALE * measured);
        state.set_rate(t, rate);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock; a poisoned state is still consistent numbers.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A send slot promised to a call by [`AdaptiveThrottle::acquire`], for the rate in force
/// then. It holds a token (none is taken while the throttle is dormant), given back when
/// the slot is dropped unless the attempt was sent ([`spend`](Self::spend)).
#[derive(Debug)]
pub(crate) struct SendSlot {
    generation: u64,
    owner: Option<AdaptiveThrottle>,
}

impl SendSlot {
    /// The attempt was sent: the token is used up.
    pub(crate) fn spend(mut self) {
        self.owner = None;
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        if let Some(throttle) = self.owner.take() {
            throttle.release(self.generation);
        }
    }
}

/// Why adaptive throttling did not send an attempt: the cause of a call that ended with
/// [`StopReason::Throttled`](crate::StopReason::Throttled), with the wait the next send
/// slot would have needed. Reach it through
/// [`Error::underlying_error`](crate::Error::underlying_error) and downcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Throttled {
    /// The wait is longer than the queue limit (one second).
    QueueFull(Duration),
    /// The wait would end at or after the call's deadline.
    Deadline(Duration),
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Throttled::QueueFull(wait) => write!(
                f,
                "adaptive throttling: the next send slot is {} ms away, over the {} ms queue limit",
                wait.as_millis(),
                MAX_QUEUE.as_millis()
            ),
            Throttled::Deadline(wait) => write!(
                f,
                "adaptive throttling: the next send slot is {} ms away, past the deadline",
                wait.as_millis()
            ),
        }
    }
}

impl std::error::Error for Throttled {}

fn time_window(max_rate: f64) -> f64 {
    (max_rate * (1.0 - BETA) / SCALE_CONSTANT).cbrt()
}

impl State {
    fn seconds(&mut self, now: Instant) -> f64 {
        let origin = *self.origin.get_or_insert(now);
        now.saturating_duration_since(origin).as_secs_f64()
    }

    fn refill(&mut self, t: f64) {
        let elapsed = (t - self.last_refill).max(0.0);
        self.capacity = (self.capacity + elapsed * self.fill_rate).min(self.max_capacity);
        // Callers read the clock before taking the lock: a reading older than the last
        // refill must not move the refill clock back, or that time is counted twice.
        self.last_refill = self.last_refill.max(t);
    }

    fn measure(&mut self, t: f64) -> f64 {
        let bucket = (t * BUCKETS_PER_SECOND).floor() / BUCKETS_PER_SECOND;
        self.count += 1.0;
        if bucket > self.bucket {
            let rate = self.count / (bucket - self.bucket);
            self.measured_rate = rate * SMOOTH + self.measured_rate * (1.0 - SMOOTH);
            self.count = 0.0;
            self.bucket = bucket;
        }
        self.measured_rate
    }

    fn set_rate(&mut self, t: f64, rate: f64) {
        self.refill(t);
        // NaN cannot arise from the arithmetic above, but a rate is never left NaN.
        let rate = if rate.is_nan() { MIN_FILL_RATE } else { rate };
        self.fill_rate = rate.max(MIN_FILL_RATE);
        self.max_capacity = rate.max(MIN_CAPACITY);
        self.capacity = self.capacity.min(self.max_capacity);
    }
}

impl fmt::Debug for AdaptiveThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("AdaptiveThrottle")
            .field("active", &state.enabled)
            .field("rate", &state.fill_rate)
            .field("measured_rate", &state.measured_rate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait of a slot taken and kept (spent), or of a refusal.
    fn wait(r: Result<(Duration, SendSlot), Throttled>) -> Result<Duration, Duration> {
        r.map(|(wait, slot)| {
            slot.spend();
            wait
        })
        .map_err(|refusal| match refusal {
            Throttled::QueueFull(wait) | Throttled::Deadline(wait) => wait,
        })
    }

    fn at(origin: Instant, secs: f64) -> Instant {
        origin + Duration::from_secs_f64(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn dormant_until_rate_limited() {
        let throttle = AdaptiveThrottle::new();
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        for _ in 0..1000 {
            assert_eq!(wait(throttle.acquire(now, far)), Ok(Duration::ZERO));
            throttle.on_response(now, false);
        }
        assert!(!throttle.is_active());
        assert_eq!(throttle.rate(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_reading_of_the_clock_does_not_refill_twice() {
        let throttle = AdaptiveThrottle::new();
        let origin = Instant::now();
        throttle.on_response(origin, true); // on, at the floor: 0.5 tokens a second
        let far = at(origin, 60.0);
        assert_eq!(
            wait(throttle.acquire(at(origin, 2.0), far)),
            Ok(Duration::ZERO)
        );
        // Another thread read the clock at 0 s and took the lock late.
        throttle.on_response(at(origin, 0.0), false);
        // By 2.5 s only a quarter of a token has come back: no send slot within the
        // queue limit.
        let late = wait(throttle.acquire(at(origin, 2.5), far));
        assert!(
            late.is_err(),
            "the 2 s before the stale reading counted twice: {late:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_cuts_the_rate_below_what_was_measured() {
        let throttle = AdaptiveThrottle::new();
        let origin = Instant::now();
        // 100 answers a second for two seconds, then a 429.
        for i in 0..200 {
            throttle.on_response(at(origin, i as f64 / 100.0), false);
        }
        throttle.on_response(at(origin, 2.0), true);
        let rate = throttle.rate().expect("active after a 429");
        assert!(rate < 100.0 * BETA + 1.0, "rate {rate}");
        assert!(rate > 10.0, "rate {rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_floor_a_second_call_would_queue_too_long() {
        let throttle = AdaptiveThrottle::new();
        let origin = Instant::now();
        throttle.on_response(origin, true);
        assert_eq!(
            throttle.rate(),
            Some(MIN_FILL_RATE),
            "nothing measured: the floor"
        );
        let far = at(origin, 60.0);
        // One token in the bucket; the next is two seconds away, over the queue limit.
        assert_eq!(wait(throttle.acquire(origin, far)), Ok(Duration::ZERO));
        assert_eq!(
            wait(throttle.acquire(origin, far)),
            Err(Duration::from_secs(2))
        );
        // Two seconds on, it is there.
        assert_eq!(
            wait(throttle.acquire(at(origin, 2.0), far)),
            Ok(Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queues_in_rate_order_and_refuses_a_wait_past_the_deadline() {
        let throttle = AdaptiveThrottle::new();
        let origin = Instant::now();
        for i in 0..100 {
            throttle.on_response(at(origin, i as f64 / 20.0), false);
        }
        throttle.on_response(at(origin, 5.0), true);
        let now = at(origin, 5.0);
        let far = at(origin, 60.0);
        while wait(throttle.acquire(now, far)) == Ok(Duration::ZERO) {}
        let first = wait(throttle.acquire(now, far)).expect("queued");
        let second = wait(throttle.acquire(now, far)).expect("queued");
        assert!(
            Duration::ZERO < first && first < second,
            "{first:?} {second:?}"
        );
        // A call whose deadline comes before its turn is refused, and reserves nothing.
        let soon = now + second;
        let refused = wait(throttle.acquire(now, soon)).expect_err("past the deadline");
        assert!(refused > second);
        let third = wait(throttle.acquire(now, far)).expect("queued");
        assert_eq!(
            third, refused,
            "the refused call took no place in the queue"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_cut_voids_the_promises_made_before_it() {
        let throttle = AdaptiveThrottle::new();
        let origin = Instant::now();
        throttle.on_response(origin, true);
        let far = at(origin, 60.0);
        let (_, before) = throttle.acquire(origin, far).expect("a token");
        assert!(throttle.still_valid(&before));
        throttle.on_response(at(origin, 1.0), false);
        assert!(throttle.still_valid(&before), "growth keeps promises");
        throttle.on_response(at(origin, 1.5), true);
        assert!(!throttle.still_valid(&before), "a cut voids them");
        let (_, after) = throttle.acquire(at(origin, 1.5), far).expect("a token");
        assert!(throttle.still_valid(&after));
    }

    #[tokio::test(start_paused = true)]
    async fn grows_back_after_the_server_stops_pushing_back() {
        let throttle = AdaptiveThrottle::new();
        let origin = Instant::now();
        for i in 0..100 {
            throttle.on_response(at(origin, i as f64 / 50.0), false);
        }
        throttle.on_response(at(origin, 2.0), true);
        let low = throttle.rate().expect("active");
        for i in 0..400 {
            throttle.on_response(at(origin, 2.0 + i as f64 / 50.0), false);
        }
        let high = throttle.rate().expect("active");
        assert!(high > low, "{low} -> {high}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_slot_gives_its_token_back_unless_a_cut_voided_it() {
        let throttle = AdaptiveThrottle::new();
        let origin = Instant::now();
        throttle.on_response(origin, true);
        let far = at(origin, 60.0);
        let (_, first) = throttle
            .acquire(origin, far)
            .expect("the bucket's one token");
        assert!(
            throttle.acquire(origin, far).is_err(),
            "the next is 2 s away"
        );
        drop(first);
        let (wait, second) = throttle.acquire(origin, far).expect("given back");
        assert_eq!(wait, Duration::ZERO);
        // A cut voids the promise: releasing it then adds nothing.
        throttle.on_response(at(origin, 0.1), true);
        drop(second);
        assert!(throttle.acquire(at(origin, 0.1), far).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dormant_throttle_has_no_token_to_give_back() {
        let throttle = AdaptiveThrottle::new();
        let now = Instant::now();
        let (_, slot) = throttle
            .acquire(now, now + Duration::from_secs(1))
            .expect("dormant");
        drop(slot);
        throttle.on_response(now, true);
        let far = now + Duration::from_secs(60);
        let held = throttle.acquire(now, far);
        assert!(held.is_ok());
        assert!(throttle.acquire(now, far).is_err(), "one token, not two");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_say_which_limit() {
        let throttle = AdaptiveThrottle::new();
        let now = Instant::now();
        throttle.on_response(now, true);
        let far = now + Duration::from_secs(60);
        let _held = throttle.acquire(now, far);
        let queue = throttle.acquire(now, far).expect_err("2 s away");
        assert_eq!(queue, Throttled::QueueFull(Duration::from_secs(2)));
        assert!(
            queue.to_string().contains("over the 1000 ms queue limit"),
            "{queue}"
        );
        let later = throttle.acquire(
            now + Duration::from_millis(1500),
            now + Duration::from_millis(1600),
        );
        assert_eq!(
            later.err(),
            Some(Throttled::Deadline(Duration::from_millis(500)))
        );
    }

    #[test]
    fn debug_names_the_state() {
        let s = format!("{:?}", AdaptiveThrottle::new());
        assert!(s.contains("active: false"), "{s}");
    }
}
