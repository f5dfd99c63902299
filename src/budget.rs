//! A retry budget: retries may add only a bounded share to the load a client offers.
//!
//! Attempts and deadlines bound one call. They do not bound a client: under a total
//! outage every call would still make all of its attempts, and a client asked for 1,000
//! calls would send 3,000 requests to a server that is already failing.
//! A [`RetryBudget`] bounds retries across every call that shares it.
//!
//! It is a token bucket in the style of Finagle's `RetryBudget` and gRPC's retry
//! throttling, kept free of clocks:
//!
//! - every call deposits `ratio` of a token when it starts (10% by default);
//! - every retry withdraws one whole token, and is sent only if one is there. The token is
//!   held as a permit that gives itself back when dropped unspent, so a retry that is then
//!   not sent (the call stopped, or was dropped, while it waited) costs nothing;
//! - the bucket holds at most `reserve` tokens (10 by default), and starts full, so that a
//!   client that has just started, or sends few calls, can still retry a blip.
//!
//! Over any stretch of calls, retries are therefore at most `ratio` of the calls plus the
//! reserve: under a total outage a client asked for 1,000 calls sends at most about
//! 1,000 + 100 + 10 requests, not 3,000.
//!
//! Why not `tower::retry::budget::TpsBudget`: its deposits expire on a clock of its own,
//! which paused-time tests cannot drive, and it would make `tower` itself a dependency.
//! Why not gRPC's exact rule (withdraw on every failure, refund a fraction on every
//! success): it bounds retries by recent successes rather than by offered load, which is
//! not what this budget promises.
//!
//! When the budget is empty, a call that wanted to retry stops at once, never waits: it
//! ends as [`Outcome::GaveUp`](crate::Outcome::GaveUp) ("gave up while retryable"), or as
//! indeterminate if an attempt may have taken effect, with
//! [`StopReason::BudgetExhausted`](crate::StopReason::BudgetExhausted).
//!
//! A budget is shared by every service that holds it: every clone of the service and
//! every service made by the same layer. To share one across layers (two clients of one
//! API), pass clones of the same budget to each. To share one across the processes of a
//! fleet, build it with `fleet::FleetBudget` (feature `redis`): the bucket then lives in
//! Redis, and this process's own bucket is the fallback while Redis does not answer.
//!
//! ```
//! use resilient_http::budget::RetryBudget;
//! use resilient_http::RetryLayer;
//!
//! # fn main() -> Result<(), resilient_http::ConfigError> {
//! // Retries may add 20% to the calls offered, plus a reserve of 5.
//! let budget = RetryBudget::new(0.2, 5)?;
//! let layer = RetryLayer::builder().retry_budget(budget.clone()).build()?;
//! # let _ = layer;
//! assert_eq!(budget.available(), 5.0);
//!
//! // A share must be a number from 0 to 1.
//! assert!(RetryBudget::new(f64::NAN, 5).is_err());
//! # Ok(()) }
//! ```

use crate::error::ConfigError;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Share of offered calls that retries may add by default: 10%, so that under a total
/// outage a client sends about 1.1 requests per call.
pub(crate) const DEFAULT_RATIO: f64 = 0.1;

/// Retries a budget holds, and starts with, by default.
pub(crate) const DEFAULT_RESERVE: u32 = 10;

/// One token, in the fixed-point units the balance is kept in.
pub(crate) const TOKEN: u64 = 1_000_000;

/// The largest ratio accepted: retries may at most match calls one for one.
const MAX_RATIO: f64 = 1.0;

/// A token bucket of retries, shared by every clone. See the [module docs](self).
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    // Tokens, in millionths, so that small ratios add up exactly.
    balance: AtomicU64,
    deposit: u64,
    max: u64,
    /// The bucket shared beyond this process, if any (a fleet budget). `balance` is then
    /// the fallback used while the shared bucket cannot answer, and is kept by every
    /// call's deposit all the same, so that it is ready when needed.
    shared: Option<Box<dyn SharedBucket>>,
}

/// A bucket of retries kept beyond this process (the hook of a fleet budget).
///
/// It must answer from what this process holds, never wait on the network: the retry
/// layer asks it on the call's task. Amounts are in millionths of a token.
pub(crate) trait SharedBucket: fmt::Debug + Send + Sync + 'static {
    /// Adds one call's deposit, `amount` millionths of a token.
    fn deposit(&self, amount: u64);

    /// Takes one whole token.
    fn take(&self) -> Take;

    /// Gives back one token that [`take`](Self::take) gave and that was not spent.
    fn give_back(&self);

    /// Retries this process may take from it now; `None` while it cannot answer.
    fn available(&self) -> Option<f64>;
}

/// What a [`SharedBucket`] answers a withdrawal.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// One token taken: the retry may go.
    Taken,
    /// No whole token: the retry may not go.
    Empty,
    /// The shared bucket cannot answer now: the local bucket decides.
    Unavailable,
}

impl RetryBudget {
    /// A budget that lets retries add `ratio` of the calls offered (a share: 0.1 is 10%),
    /// plus a reserve of `reserve` retries.
    ///
    /// `ratio` is kept to millionths (one retry per million calls is the smallest share).
    /// The bucket never holds more than `reserve` tokens, so a reserve of 0 allows no retry
    /// at all, whatever the ratio: use it to turn retries off for every clone at once.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Ratio`] if `ratio` is not a number from 0 to 1.
    pub fn new(ratio: f64, reserve: u32) -> Result<Self, ConfigError> {
        Self::build(ratio, reserve, None)
    }

    /// A budget of `ratio` and `reserve` whose bucket is `shared` beyond this process,
    /// with a local bucket of the same ratio and reserve as its fallback.
    #[cfg(feature = "redis")]
    pub(crate) fn with_shared(
        ratio: f64,
        reserve: u32,
        shared: Box<dyn SharedBucket>,
    ) -> Result<Self, ConfigError> {
        Self::build(ratio, reserve, Some(shared))
    }

    fn build(
        ratio: f64,
        reserve: u32,
        shared: Option<Box<dyn SharedBucket>>,
    ) -> Result<Self, ConfigError> {
        if !(0.0..=MAX_RATIO).contains(&ratio) {
            return Err(ConfigError::Ratio(ratio));
        }
        let max = u64::from(reserve) * TOKEN;
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                balance: AtomicU64::new(max),
                // In 0..=TOKEN after the check: the cast cannot overflow.
                deposit: (ratio * TOKEN as f64).round() as u64,
                max,
                shared,
            }),
        })
    }

    /// Adds one call's share. The retry layer calls it once per call, as the call starts.
    pub(crate) fn record_call(&self) {
        self.add(self.inner.deposit);
        if let Some(shared) = &self.inner.shared {
            shared.deposit(self.inner.deposit);
        }
    }

    /// Adds `amount` (in millionths of a token), up to the reserve.
    fn add(&self, amount: u64) {
        let max = self.inner.max;
        if amount == 0 {
            return;
        }
        // Fails only when the bucket is already full: nothing to add then.
        let _ = self
            .inner
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < max).then(|| b.saturating_add(amount).min(max))
            });
    }

    /// Takes one retry's token as a permit that gives it back when dropped unspent;
    /// `None` (and nothing taken) if there is not a whole one.
    /// A shared bucket decides while it can answer; the local bucket otherwise.
    pub(crate) fn try_withdraw(&self) -> Option<RetryPermit> {
        let shared = match self.inner.shared.as_deref().map(SharedBucket::take) {
            Some(Take::Taken) => true,
            Some(Take::Empty) => return None,
            Some(Take::Unavailable) | None => {
                self.inner
                    .balance
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                        b.checked_sub(TOKEN)
                    })
                    .ok()?;
                false
            }
        };
        Some(RetryPermit {
            budget: Some(self.clone()),
            shared,
        })
    }

    /// Retries available now (fractional: deposits are shares of a retry). For a budget
    /// shared by a fleet, the retries this process holds while the shared bucket answers,
    /// and its local bucket's otherwise.
    pub fn available(&self) -> f64 {
        if let Some(available) = self
            .inner
            .shared
            .as_deref()
            .and_then(SharedBucket::available)
        {
            return available;
        }
        self.inner.balance.load(Ordering::Acquire) as f64 / TOKEN as f64
    }

    /// The share of offered calls that retries may add.
    pub fn ratio(&self) -> f64 {
        self.inner.deposit as f64 / TOKEN as f64
    }

    /// The most retries the budget holds.
    pub fn reserve(&self) -> u32 {
        // `max` was built from a u32 times TOKEN.
        u32::try_from(self.inner.max / TOKEN).unwrap_or(u32::MAX)
    }
}

impl Default for RetryBudget {
    /// 10% of offered calls plus a reserve of 10 retries.
    fn default() -> Self {
        RetryBudget::new(DEFAULT_RATIO, DEFAULT_RESERVE).expect("the default ratio is valid")
    }
}

/// One retry's token, taken from a [`RetryBudget`]: given back when dropped, unless the
/// retry was sent ([`spend`](Self::spend)).
#[derive(Debug)]
pub(crate) struct RetryPermit {
    budget: Option<RetryBudget>,
    /// Taken from the shared bucket, and given back to it.
    shared: bool,
}

impl RetryPermit {
    /// The retry was sent: the token is used up.
    pub(crate) fn spend(mut self) {
        self.budget = None;
    }
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            match (&budget.inner.shared, self.shared) {
                (Some(shared), true) => shared.give_back(),
                _ => budget.add(TOKEN),
            }
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RetryBudget");
        debug
            .field("ratio", &self.ratio())
            .field("reserve", &self.reserve())
            .field("available", &self.available());
        if let Some(shared) = &self.inner.shared {
            debug.field("shared", shared);
        }
        debug.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, reserve: u32) -> RetryBudget {
        RetryBudget::new(ratio, reserve).unwrap()
    }

    fn spend(budget: &RetryBudget) -> bool {
        budget.try_withdraw().map(RetryPermit::spend).is_some()
    }

    #[test]
    fn starts_full_and_runs_dry() {
        let budget = budget(0.1, 3);
        assert!(spend(&budget));
        assert!(spend(&budget));
        assert!(spend(&budget));
        assert!(!spend(&budget));
        assert_eq!(budget.available(), 0.0);
    }

    #[test]
    fn ten_calls_at_ten_percent_earn_one_retry() {
        let budget = budget(0.1, 2);
        while spend(&budget) {}
        for _ in 0..9 {
            budget.record_call();
        }
        assert!(!spend(&budget), "nine calls earn 0.9 of a retry");
        budget.record_call();
        assert!(spend(&budget));
        assert!(!spend(&budget));
    }

    #[test]
    fn an_unspent_permit_gives_its_token_back_up_to_the_reserve() {
        let budget = budget(0.0, 1);
        let permit = budget.try_withdraw().unwrap();
        assert_eq!(budget.available(), 0.0);
        drop(permit);
        assert_eq!(budget.available(), 1.0);
        budget.add(TOKEN);
        assert_eq!(budget.available(), 1.0, "never over the reserve");
    }

    #[test]
    fn deposits_stop_at_the_reserve() {
        let budget = budget(0.5, 2);
        for _ in 0..100 {
            budget.record_call();
        }
        assert_eq!(budget.available(), 2.0);
    }

    #[test]
    fn clones_share_one_balance() {
        let budget = budget(0.0, 1);
        let clone = budget.clone();
        assert!(spend(&clone));
        assert!(!spend(&budget));
    }

    #[test]
    fn out_of_range_ratios_are_refused() {
        for bad in [f64::NAN, -3.0, 1.000_001, 1e30, f64::INFINITY] {
            let err = RetryBudget::new(bad, 1).unwrap_err();
            assert!(err.to_string().contains("retry budget ratio"), "{err}");
        }
        assert_eq!(budget(1.0, 1).ratio(), 1.0);
        assert_eq!(budget(0.0, 1).ratio(), 0.0);
    }

    #[test]
    fn a_zero_reserve_never_retries() {
        let budget = budget(1.0, 0);
        budget.record_call();
        assert!(!spend(&budget));
    }

    /// A shared bucket whose answer the test sets, counting what it is given.
    #[derive(Debug, Default)]
    struct Fake {
        answer: std::sync::Mutex<Option<Take>>,
        deposits: AtomicU64,
        given_back: AtomicU64,
    }

    impl SharedBucket for Arc<Fake> {
        fn deposit(&self, amount: u64) {
            self.deposits.fetch_add(amount, Ordering::SeqCst);
        }
        fn take(&self) -> Take {
            self.answer.lock().unwrap().unwrap_or(Take::Unavailable)
        }
        fn give_back(&self) {
            self.given_back.fetch_add(1, Ordering::SeqCst);
        }
        fn available(&self) -> Option<f64> {
            (self.take() != Take::Unavailable).then_some(7.0)
        }
    }

    fn shared(reserve: u32) -> (RetryBudget, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let budget = RetryBudget::build(0.5, reserve, Some(Box::new(fake.clone()))).unwrap();
        (budget, fake)
    }

    #[test]
    fn a_shared_bucket_decides_while_it_answers_and_takes_back_its_own_tokens() {
        let (budget, fake) = shared(1);
        *fake.answer.lock().unwrap() = Some(Take::Taken);
        let permit = budget.try_withdraw().unwrap();
        assert_eq!(budget.available(), 7.0, "the shared bucket's count");
        drop(permit);
        assert_eq!(fake.given_back.load(Ordering::SeqCst), 1);
        assert_eq!(
            budget.inner.balance.load(Ordering::SeqCst),
            TOKEN,
            "the local bucket untouched"
        );

        *fake.answer.lock().unwrap() = Some(Take::Empty);
        assert!(
            budget.try_withdraw().is_none(),
            "empty: no fallback to the local bucket"
        );
        assert_eq!(budget.inner.balance.load(Ordering::SeqCst), TOKEN);
    }

    #[test]
    fn the_local_bucket_decides_while_the_shared_one_cannot_and_every_call_fills_both() {
        let (budget, fake) = shared(1);
        let permit = budget.try_withdraw().expect("the local reserve");
        assert_eq!(budget.available(), 0.0, "the local bucket's count");
        assert!(budget.try_withdraw().is_none());
        drop(permit);
        assert_eq!(budget.available(), 1.0, "given back to the local bucket");
        assert_eq!(fake.given_back.load(Ordering::SeqCst), 0);
        budget.record_call();
        assert_eq!(fake.deposits.load(Ordering::SeqCst), TOKEN / 2);
        assert!(format!("{budget:?}").contains("shared: Fake"), "{budget:?}");
    }

    #[test]
    fn debug_shows_the_balance() {
        let s = format!("{:?}", budget(0.1, 10));
        assert!(s.contains("available: 10.0"), "{s}");
    }
}
