//! The retry engine's decisions, as pure functions: no clock, no I/O, no randomness of
//! their own. The future carries them out.
//!
//! - [`decide`]: after an attempt, retry (after which delay) or stop (for which reason).
//! - [`settle`]: the call's outcome, from its last attempt's and what came before.

use crate::outcome::{Classification, Outcome};
use crate::report::StopReason;
use std::time::Duration;
use tokio::time::Instant;

/// The resolution of tokio's timers: the shortest wait before a retry, and the margin a
/// wake-up needs before the deadline.
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(1);

/// The attempt that just ended, as the decision sees it.
pub(crate) struct AttemptView<'a> {
    /// Which attempt, from 1.
    pub(crate) number: u32,
    pub(crate) classification: &'a Classification,
    /// The server's `Retry-After`, if it sent one that parses; looked up only for an
    /// attempt that may be retried, the only one this reads it for.
    pub(crate) retry_after: Option<Duration>,
}

/// The limits of the call the attempt belongs to.
pub(crate) struct Limits {
    pub(crate) max_attempts: u32,
    pub(crate) retry_after_cap: Duration,
    /// Whether a replay cannot repeat an effect: the method is idempotent, or the request
    /// carries an idempotency key.
    pub(crate) replayable: bool,
    pub(crate) deadline: Instant,
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send another attempt after this delay.
    Retry(Duration),
    /// End the call.
    Stop(StopReason),
}

/// Whether and when to retry. `backoff` gives the schedule's next delay; it is drawn only
/// when every other check allows a retry, so a call that stops consumes no draw. `now`
/// reads the clock, which only the deadline check needs: an attempt that ends the call
/// (a success above all) costs no clock read.
///
/// The delay is `max(backoff, Retry-After)`: the server's hint is a floor, never a way to
/// retry sooner, and at least one timer tick, so a zero backoff never retries in the same
/// instant. A retry whose wake-up (rounded up to the next tick) would not come before the
/// deadline is not made.
pub(crate) fn decide(
    attempt: &AttemptView<'_>,
    limits: &Limits,
    now: impl FnOnce() -> Instant,
    backoff: impl FnOnce() -> Duration,
) -> Action {
    let c = attempt.classification;
    if !c.should_retry() {
        return Action::Stop(if c.server_refused_retry() {
            StopReason::ServerRefusedRetry
        } else {
            StopReason::Final
        });
    }
    if c.outcome() == Outcome::Indeterminate && !limits.replayable {
        return Action::Stop(StopReason::NotReplayable);
    }
    if attempt.number >= limits.max_attempts {
        return Action::Stop(StopReason::AttemptsExhausted);
    }
    if let Some(retry_after) = attempt.retry_after.filter(|h| *h > limits.retry_after_cap) {
        return Action::Stop(StopReason::RetryAfterTooLong { retry_after });
    }
    let delay = backoff()
        .max(attempt.retry_after.unwrap_or_default())
        .max(TIMER_TICK);
    // Checked: a server hint may be as long as `Duration::MAX`.
    let wake = delay
        .checked_add(TIMER_TICK)
        .and_then(|d| now().checked_add(d));
    match wake {
        Some(wake) if wake < limits.deadline => Action::Retry(delay),
        _ => Action::Stop(StopReason::DeadlineExceeded),
    }
}

/// What the call did before its last attempt, as [`settle`] needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct History {
    /// Whether an attempt may have taken effect (it ended indeterminate).
    pub(crate) maybe_applied: bool,
    /// Whether the method is safe (`GET`, `HEAD`, ...): it had no effect to take.
    pub(crate) safe_method: bool,
    /// Whether the last answer speaks for every earlier attempt (the classifier says so).
    pub(crate) settles_earlier: bool,
}

/// The call's outcome, given the last attempt's.
///
/// Once an attempt may have taken effect, being turned away later (a 429, a 409 while the
/// first attempt still runs) says nothing about it: the call stays indeterminate. A
/// success settles it. A definite failure settles it only if it answers for the earlier
/// attempt (the classifier says so) or the method is safe.
pub(crate) fn settle(last: Outcome, history: History) -> Outcome {
    match last {
        Outcome::GaveUp if history.maybe_applied => Outcome::Indeterminate,
        Outcome::DefiniteFailure
            if history.maybe_applied && !(history.settles_earlier || history.safe_method) =>
        {
            Outcome::Indeterminate
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Class;

    const BACKOFF: Duration = Duration::from_millis(300);

    struct Row {
        signal: &'static str,
        classification: Classification,
        method_idempotent_or_keyed: bool,
        retry_after: Option<u64>,
        expected: Action,
    }

    fn row(signal: &'static str, classification: Classification, expected: Action) -> Row {
        Row {
            signal,
            classification,
            method_idempotent_or_keyed: true,
            retry_after: None,
            expected,
        }
    }

    /// One row per signal of the classification contract, as the classifiers hand them to
    /// the engine, on the first of three attempts.
    #[test]
    fn decisions_by_signal() {
        use Action::{Retry, Stop};
        let retry = Retry(BACKOFF);
        let rows = [
            row("2xx", Classification::success(), Stop(StopReason::Final)),
            row(
                "rate limited (429)",
                Classification::retryable(Class::RateLimited),
                retry,
            ),
            row(
                "lock held by another request",
                Classification::retryable(Class::Locked),
                retry,
            ),
            row(
                "409: the same key in flight",
                Classification::retryable(Class::Conflict),
                retry,
            ),
            row(
                "key reused with other parameters",
                Classification::definite(Class::KeyReused),
                Stop(StopReason::Final),
            ),
            row(
                "declined (402)",
                Classification::definite(Class::Declined),
                Stop(StopReason::Final),
            ),
            row(
                "rejected 4xx",
                Classification::definite(Class::Rejected),
                Stop(StopReason::Final),
            ),
            row(
                "unauthorized 401/403",
                Classification::definite(Class::Unauthorized),
                Stop(StopReason::Final),
            ),
            row(
                "server error (500), replayable",
                Classification::indeterminate(Class::ServerError, true),
                retry,
            ),
            row(
                "server error, server says a retry cannot help",
                Classification::indeterminate(Class::ServerError, true).with_server_verdict(false),
                Stop(StopReason::ServerRefusedRetry),
            ),
            row(
                "5xx from a proxy (502/503/504)",
                Classification::indeterminate(Class::Unavailable, true),
                retry,
            ),
            row(
                "connect error, nothing sent",
                Classification::retryable(Class::Connect),
                retry,
            ),
            row(
                "transport error after sending",
                Classification::indeterminate(Class::Transport, true),
                retry,
            ),
            row(
                "attempt timeout",
                Classification::indeterminate(Class::Timeout, true),
                retry,
            ),
            Row {
                method_idempotent_or_keyed: false,
                ..row(
                    "5xx on an unkeyed POST",
                    Classification::indeterminate(Class::ServerError, true),
                    Stop(StopReason::NotReplayable),
                )
            },
            Row {
                method_idempotent_or_keyed: false,
                ..row(
                    "429 on an unkeyed POST: nothing happened",
                    Classification::retryable(Class::RateLimited),
                    retry,
                )
            },
            Row {
                retry_after: Some(2),
                ..row(
                    "Retry-After over the backoff is a floor",
                    Classification::retryable(Class::RateLimited),
                    Retry(Duration::from_secs(2)),
                )
            },
            Row {
                retry_after: Some(0),
                ..row(
                    "Retry-After under the backoff changes nothing",
                    Classification::retryable(Class::RateLimited),
                    retry,
                )
            },
            Row {
                retry_after: Some(61),
                ..row(
                    "Retry-After over the cap ends the call",
                    Classification::retryable(Class::RateLimited),
                    Stop(StopReason::RetryAfterTooLong {
                        retry_after: Duration::from_secs(61),
                    }),
                )
            },
            Row {
                retry_after: Some(u64::MAX),
                ..row(
                    "Retry-After of u64::MAX seconds",
                    Classification::retryable(Class::RateLimited),
                    Stop(StopReason::RetryAfterTooLong {
                        retry_after: Duration::from_secs(u64::MAX),
                    }),
                )
            },
        ];
        let now = Instant::now();
        for r in rows {
            let attempt = AttemptView {
                number: 1,
                classification: &r.classification,
                retry_after: r.retry_after.map(Duration::from_secs),
            };
            let limits = Limits {
                max_attempts: 3,
                retry_after_cap: Duration::from_secs(60),
                replayable: r.method_idempotent_or_keyed,
                deadline: now + Duration::from_secs(80),
            };
            assert_eq!(
                decide(&attempt, &limits, || now, || BACKOFF),
                r.expected,
                "{}",
                r.signal
            );
        }
    }

    #[test]
    fn limits_stop_a_retryable_attempt() {
        let c = Classification::retryable(Class::RateLimited);
        let now = Instant::now();
        let limits = |deadline: Duration| Limits {
            max_attempts: 3,
            retry_after_cap: Duration::from_secs(60),
            replayable: true,
            deadline: now + deadline,
        };
        let at = |number| AttemptView {
            number,
            classification: &c,
            retry_after: None,
        };
        let long = limits(Duration::from_secs(80));
        assert_eq!(
            decide(&at(2), &long, || now, || BACKOFF),
            Action::Retry(BACKOFF)
        );
        assert_eq!(
            decide(&at(3), &long, || now, || panic!("no draw when stopping")),
            Action::Stop(StopReason::AttemptsExhausted)
        );
        // The wake-up, rounded up a tick, must come before the deadline.
        let tight = limits(BACKOFF + TIMER_TICK);
        assert_eq!(
            decide(&at(1), &tight, || now, || BACKOFF),
            Action::Stop(StopReason::DeadlineExceeded)
        );
        let roomy = limits(BACKOFF + TIMER_TICK * 2);
        assert_eq!(
            decide(&at(1), &roomy, || now, || BACKOFF),
            Action::Retry(BACKOFF)
        );
        // A zero draw still waits one tick.
        assert_eq!(
            decide(&at(1), &long, || now, || Duration::ZERO),
            Action::Retry(TIMER_TICK)
        );
    }

    #[test]
    fn settling_the_outcome() {
        use Outcome::*;
        let h = |maybe_applied, safe_method, settles_earlier| History {
            maybe_applied,
            safe_method,
            settles_earlier,
        };
        // (last attempt, history) -> call
        let rows = [
            (Success, h(true, false, false), Success),
            (GaveUp, h(false, false, false), GaveUp),
            (GaveUp, h(true, false, false), Indeterminate),
            (DefiniteFailure, h(false, false, false), DefiniteFailure),
            (DefiniteFailure, h(true, false, false), Indeterminate),
            (DefiniteFailure, h(true, false, true), DefiniteFailure),
            (DefiniteFailure, h(true, true, false), DefiniteFailure),
            (Indeterminate, h(false, false, true), Indeterminate),
        ];
        for (last, history, expected) in rows {
            assert_eq!(settle(last, history), expected, "{last:?} {history:?}");
        }
    }
}
