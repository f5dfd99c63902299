//! Fault injection: which executing request fails, and how.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// One injected fault, applied to a `POST /v1/charges` that has passed validation, got its
/// customer's lock and was not declined (unless [`Builder::fault_declines`] says so),
/// keyed or not (replays, conflicts and rejected requests are never faulted).
///
/// [`Builder::fault_declines`]: crate::Builder::fault_declines
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// 500 `api_error` before the charge is made, with `Stripe-Should-Retry: true`: Stripe
    /// knows nothing happened, saves nothing, and says a retry is safe.
    ApiErrorBeforeEffect,
    /// 500 `api_error` after the charge is made. The 500 is saved under the key, as Stripe
    /// saves every result once the endpoint has begun executing: a replay returns it again.
    ApiErrorAfterEffect,
    /// As [`Fault::ApiErrorAfterEffect`] (the charge is made, the 500 `api_error` is saved
    /// under the key and a replay returns it again), but with no `Stripe-Should-Retry`
    /// header: Stripe's answer when it does not say whether a retry can help.
    ApiErrorAfterEffectNoHint,
    /// The charge is made and its 200 saved, then the connection is closed without a
    /// response. A replay with the same key returns the saved 200.
    DropAfterEffect,
    /// The charge is made and its 200 saved, but the response is sent only after this
    /// delay (on tokio's clock). Until then the key is still executing: a replay gets 409.
    /// A charge with a `customer` also keeps that customer's lock until the answer is sent
    /// or the client closes the connection (the server then drops the request): other
    /// charges for the customer wait for it, and get 429 `lock_timeout` after the server's
    /// [lock timeout](crate::Builder::lock_timeout). The key stays in progress
    /// (409) for the whole delay either way.
    Delay(Duration),
}

impl Fault {
    /// A short name for logs and summaries.
    pub fn as_str(&self) -> &'static str {
        match self {
            Fault::ApiErrorBeforeEffect => "api_error_before_effect",
            Fault::ApiErrorAfterEffect => "api_error_after_effect",
            Fault::ApiErrorAfterEffectNoHint => "api_error_after_effect_no_hint",
            Fault::DropAfterEffect => "drop_after_effect",
            Fault::Delay(_) => "delay",
        }
    }

    /// The four kinds, with `delay` for [`Fault::Delay`]: what
    /// [`Faults::random`] draws from when a test wants every kind.
    /// ([`Fault::ApiErrorAfterEffectNoHint`], a variant of [`Fault::ApiErrorAfterEffect`]
    /// that differs only in a header, is not among them: add it to the list if wanted.)
    pub fn every_kind(delay: Duration) -> [Fault; 4] {
        [
            Fault::ApiErrorBeforeEffect,
            Fault::ApiErrorAfterEffect,
            Fault::DropAfterEffect,
            Fault::Delay(delay),
        ]
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Delay(d) => write!(f, "delay {} ms", d.as_millis()),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Which executing requests get a [`Fault`]: none, a script, or a seeded random draw.
///
/// ```
/// use resilient_http_testing::{Fault, Faults};
/// use std::time::Duration;
///
/// // The first charge made fails after its effect, the second is fine, the third is
/// // dropped; every later one is fine.
/// let scripted = Faults::script([Some(Fault::ApiErrorAfterEffect), None, Some(Fault::DropAfterEffect)]);
/// // One in five charges, any kind, the same sequence for the same seed.
/// let random = Faults::random(7, 0.2, Fault::every_kind(Duration::from_millis(300)));
/// # let _ = (scripted, random);
/// ```
#[derive(Clone)]
pub struct Faults {
    plan: Plan,
}

#[derive(Clone)]
enum Plan {
    None,
    Script(VecDeque<Option<Fault>>),
    Random {
        rng: SmallRng,
        probability: f64,
        kinds: Vec<Fault>,
    },
}

impl Faults {
    /// No faults. The default.
    pub fn none() -> Self {
        Faults { plan: Plan::None }
    }

    /// The n-th executing request (in the order they reach the effect) gets the n-th item;
    /// once the script runs out, none do.
    pub fn script(script: impl IntoIterator<Item = Option<Fault>>) -> Self {
        Faults {
            plan: Plan::Script(script.into_iter().collect()),
        }
    }

    /// Each executing request gets a fault with `probability` (clamped to 0..=1; NaN is
    /// 0), of a kind drawn uniformly from `kinds`, from an RNG seeded with `seed`.
    pub fn random(seed: u64, probability: f64, kinds: impl IntoIterator<Item = Fault>) -> Self {
        let probability = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        Faults {
            plan: Plan::Random {
                rng: SmallRng::seed_from_u64(seed),
                probability,
                kinds: kinds.into_iter().collect(),
            },
        }
    }

    /// The fault for the next executing request, if any.
    pub(crate) fn next(&mut self) -> Option<Fault> {
        match &mut self.plan {
            Plan::None => None,
            Plan::Script(script) => script.pop_front().flatten(),
            Plan::Random {
                rng,
                probability,
                kinds,
            } => {
                if kinds.is_empty() || !rng.random_bool(*probability) {
                    return None;
                }
                kinds.get(rng.random_range(0..kinds.len())).copied()
            }
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::none()
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.plan {
            Plan::None => f.write_str("Faults::none()"),
            Plan::Script(s) => f.debug_tuple("Faults::script").field(s).finish(),
            Plan::Random {
                probability, kinds, ..
            } => f
                .debug_struct("Faults::random")
                .field("probability", probability)
                .field("kinds", kinds)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_plays_in_order_then_stops() {
        let mut f = Faults::script([None, Some(Fault::DropAfterEffect)]);
        assert_eq!(f.next(), None);
        assert_eq!(f.next(), Some(Fault::DropAfterEffect));
        assert_eq!(f.next(), None);
    }

    #[test]
    fn every_fault_has_its_own_name() {
        let all = [
            Fault::ApiErrorBeforeEffect,
            Fault::ApiErrorAfterEffect,
            Fault::ApiErrorAfterEffectNoHint,
            Fault::DropAfterEffect,
            Fault::Delay(Duration::from_millis(5)),
        ];
        let names: std::collections::BTreeSet<&str> = all.iter().map(Fault::as_str).collect();
        assert_eq!(names.len(), all.len(), "{names:?}");
        assert_eq!(
            Fault::ApiErrorAfterEffectNoHint.to_string(),
            "api_error_after_effect_no_hint"
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_faults_at_about_the_rate_asked() {
        let kinds = Fault::every_kind(Duration::from_millis(5));
        let draw = |seed| {
            let mut f = Faults::random(seed, 0.2, kinds);
            (0..10_000).map(|_| f.next()).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        let hits = a.iter().filter(|f| f.is_some()).count();
        assert!((1_600..2_400).contains(&hits), "{hits}");
        for kind in kinds {
            assert!(a.contains(&Some(kind)), "{kind} never drawn");
        }
    }

    #[test]
    fn absurd_probabilities_are_clamped() {
        assert_eq!(
            Faults::random(1, f64::NAN, [Fault::DropAfterEffect]).next(),
            None
        );
        assert_eq!(
            Faults::random(1, 7.0, [Fault::DropAfterEffect]).next(),
            Some(Fault::DropAfterEffect)
        );
        assert_eq!(Faults::random(1, 1.0, []).next(), None);
    }
}
