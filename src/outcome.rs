//! The vocabulary every other module speaks: what a call ended in ([`Outcome`]), what one
//! attempt meant ([`Class`]), and a classifier's whole verdict on an attempt
//! ([`Classification`]).
//!
//! This module imports nothing of the crate: classifiers, the retry engine, the report and
//! the error all build on it, never the other way round.
//!
//! ```
//! use resilient_http::{Class, Classification, Outcome};
//!
//! // A 409: the same idempotency key is still being processed. Retry with backoff.
//! let busy = Classification::retryable(Class::Conflict);
//! assert_eq!(busy.outcome(), Outcome::GaveUp);
//! assert!(busy.should_retry());
//!
//! // A definite failure is never retried, whatever a classifier asks.
//! let declined = Classification::new(Class::Declined, Outcome::DefiniteFailure, true);
//! assert!(!declined.should_retry());
//! ```

use std::error::Error as StdError;
use std::fmt;

/// How a call ended: exactly one of four outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The server did the work.
    Success,
    /// The server did not do the work, and retrying will not help.
    DefiniteFailure,
    /// The work may or may not have happened: reconcile with the idempotency key and the
    /// request ids (replay with the same key, fetch the object, or wait for its webhook).
    Indeterminate,
    /// The work did not happen, and retrying later may help. The stack stopped because
    /// attempts, the deadline or the retry budget ran out, the throttle or a `Retry-After`
    /// asked for too long a wait, the inner service failed to get ready, or the server
    /// said a retry would not help; the call's stop reason says which.
    GaveUp,
}

impl Outcome {
    /// A short lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::DefiniteFailure => "definite failure",
            Outcome::Indeterminate => "indeterminate",
            Outcome::GaveUp => "gave up while retryable",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one attempt meant, in terms that hold for any HTTP API. A classifier profile
/// (Stripe's, say) maps its own error types onto these and may attach its parsed error
/// object as the classification's [detail](Classification::with_detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    /// The server did the work (2xx).
    Success,
    /// Rate limited (429, or an API's own rate-limit error).
    RateLimited,
    /// Another request held a lock the request needed (Stripe's `lock_timeout`, a 423).
    Locked,
    /// 409: another request with the same idempotency key is still being processed.
    Conflict,
    /// The server failed while handling the request, maybe after doing the work (a 500, or
    /// an API's own server error such as Stripe's `api_error`).
    ServerError,
    /// 502/503/504, or a 5xx from in front of the server (a proxy or load balancer).
    Unavailable,
    /// The request was refused as it stands (a 4xx): it will stay wrong until changed.
    Rejected,
    /// The request was understood and refused on its merits: a payment declined (402,
    /// Stripe's `card_error`).
    Declined,
    /// 401/403: the credentials were refused.
    Unauthorized,
    /// The idempotency key was reused with another request: a bug in the caller.
    KeyReused,
    /// A 1xx or 3xx final response: not an answer the stack can use.
    UnexpectedStatus,
    /// The connection could not be made; nothing was sent.
    Connect,
    /// The transport failed after the request may have been sent.
    Transport,
    /// The attempt ran past its time limit; it may have taken effect.
    Timeout,
}

impl Class {
    /// A short lower-case name, as used in tracing events and `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::RateLimited => "rate_limited",
            Class::Locked => "locked",
            Class::Conflict => "conflict",
            Class::ServerError => "server_error",
            Class::Unavailable => "unavailable",
            Class::Rejected => "rejected",
            Class::Declined => "declined",
            Class::Unauthorized => "unauthorized",
            Class::KeyReused => "key_reused",
            Class::UnexpectedStatus => "unexpected_status",
            Class::Connect => "connect",
            Class::Transport => "transport",
            Class::Timeout => "timeout",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile's typed account of an answer, such as Stripe's parsed error object. It is
/// handed to the caller inside the call's error, where it can be downcast to its type.
pub(crate) type Detail = Box<dyn StdError + Send + Sync>;

/// A classifier's verdict on one attempt.
///
/// It answers two questions: what this answer means (its [`Class`], the call's
/// [`Outcome`] if it ends here, whether a retry may help), and whether this answer also
/// speaks for the call's earlier attempts ([`settles_earlier`](Self::settles_earlier)).
pub struct Classification {
    class: Class,
    outcome: Outcome,
    retry: bool,
    // The server said a retry cannot help about an answer that would otherwise be retried.
    server_refused: bool,
    settles: bool,
    detail: Option<Detail>,
}

impl Classification {
    /// A verdict: what happened, the call's outcome if it ends here, and whether a retry
    /// may help.
    ///
    /// `retry` is honoured only for [`Outcome::Indeterminate`] and [`Outcome::GaveUp`]: a
    /// success is final and a definite failure is never retried.
    pub const fn new(class: Class, outcome: Outcome, retry: bool) -> Self {
        let retry = retry && matches!(outcome, Outcome::Indeterminate | Outcome::GaveUp);
        Classification {
            class,
            outcome,
            retry,
            server_refused: false,
            settles: false,
            detail: None,
        }
    }

    /// The work was done.
    pub const fn success() -> Self {
        Self::new(Class::Success, Outcome::Success, false)
    }

    /// The work was not done and a retry will not help.
    pub const fn definite(class: Class) -> Self {
        Self::new(class, Outcome::DefiniteFailure, false)
    }

    /// The work was not done and a retry may help.
    pub const fn retryable(class: Class) -> Self {
        Self::new(class, Outcome::GaveUp, true)
    }

    /// The work may have been done; `retry` says whether a replay with the same key may
    /// help.
    pub const fn indeterminate(class: Class, retry: bool) -> Self {
        Self::new(class, Outcome::Indeterminate, retry)
    }

    /// Applies a server's explicit retry verdict (such as Stripe's `Stripe-Should-Retry`).
    ///
    /// `true` makes a failure retryable; a definite failure becomes "gave up while
    /// retryable", since the server says a retry can succeed. `false` stops retries and
    /// keeps the outcome; the call then reports that the server refused the retry. A
    /// success is never changed.
    pub fn with_server_verdict(self, retry: bool) -> Self {
        match (self.outcome, retry) {
            (Outcome::Success, _) => self,
            (Outcome::DefiniteFailure, true) => Classification {
                outcome: Outcome::GaveUp,
                retry: true,
                ..self
            },
            (_, true) => Classification {
                retry: true,
                server_refused: false,
                ..self
            },
            (_, false) => Classification {
                server_refused: self.retry || self.server_refused,
                retry: false,
                ..self
            },
        }
    }

    /// Marks this answer as speaking for every earlier attempt of the same call: a
    /// definite failure that comes from past the server's idempotency layer, which would
    /// have replayed an earlier attempt's result had that attempt run.
    ///
    /// Without it, an earlier attempt that may have taken effect keeps the call
    /// indeterminate whatever later attempts answer, unless one succeeds (or the method is
    /// safe, so there was nothing to take effect).
    pub fn settling_earlier_attempts(mut self) -> Self {
        self.settles = true;
        self
    }

    /// Attaches the profile's typed account of the answer (such as a parsed error object),
    /// handed to the caller with the call's error.
    pub fn with_detail(mut self, detail: impl StdError + Send + Sync + 'static) -> Self {
        self.detail = Some(Box::new(detail));
        self
    }

    /// What happened.
    pub const fn class(&self) -> Class {
        self.class
    }

    /// The call's outcome if it ends with this attempt.
    pub const fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether a retry may help.
    pub const fn should_retry(&self) -> bool {
        self.retry
    }

    /// Whether the server said a retry cannot help about an answer that would otherwise
    /// have been retried.
    pub const fn server_refused_retry(&self) -> bool {
        self.server_refused
    }

    /// Whether this answer speaks for every earlier attempt of the call; see
    /// [`settling_earlier_attempts`](Self::settling_earlier_attempts).
    pub const fn settles_earlier(&self) -> bool {
        self.settles
    }

    /// The profile's typed account of the answer, if it attached one.
    pub fn detail(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.detail.as_deref()
    }

    /// Takes the detail out.
    pub(crate) fn take_detail(&mut self) -> Option<Detail> {
        self.detail.take()
    }
}

impl fmt::Debug for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classification")
            .field("class", &self.class)
            .field("outcome", &self.outcome)
            .field("retry", &self.retry)
            .field("server_refused", &self.server_refused)
            .field("settles_earlier", &self.settles)
            .field("detail", &self.detail)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(c: &Classification) -> (Outcome, bool, bool) {
        (c.outcome(), c.should_retry(), c.server_refused_retry())
    }

    #[test]
    fn definite_failures_and_successes_are_never_retryable() {
        let c = Classification::new(Class::Declined, Outcome::DefiniteFailure, true);
        assert!(!c.should_retry());
        assert!(!Classification::new(Class::Success, Outcome::Success, true).should_retry());
    }

    #[test]
    fn server_verdicts() {
        // (before, verdict) -> (outcome, retry, server_refused)
        let rows = [
            (
                Classification::success(),
                true,
                (Outcome::Success, false, false),
            ),
            (
                Classification::success(),
                false,
                (Outcome::Success, false, false),
            ),
            (
                Classification::definite(Class::Rejected),
                true,
                (Outcome::GaveUp, true, false),
            ),
            (
                Classification::definite(Class::Rejected),
                false,
                (Outcome::DefiniteFailure, false, false),
            ),
            (
                Classification::indeterminate(Class::ServerError, true),
                false,
                (Outcome::Indeterminate, false, true),
            ),
            (
                Classification::indeterminate(Class::ServerError, false),
                true,
                (Outcome::Indeterminate, true, false),
            ),
            (
                Classification::retryable(Class::RateLimited),
                false,
                (Outcome::GaveUp, false, true),
            ),
        ];
        for (before, verdict_given, expected) in rows {
            let label = format!("{before:?} + {verdict_given}");
            let after = before.with_server_verdict(verdict_given);
            assert_eq!(verdict(&after), expected, "{label}");
        }
    }

    #[test]
    fn detail_and_settling_are_carried() {
        let c = Classification::definite(Class::Rejected)
            .with_detail(std::fmt::Error)
            .settling_earlier_attempts();
        assert!(c.settles_earlier());
        assert!(c
            .detail()
            .unwrap()
            .downcast_ref::<std::fmt::Error>()
            .is_some());
        assert!(!Classification::definite(Class::Rejected).settles_earlier());
    }
}
