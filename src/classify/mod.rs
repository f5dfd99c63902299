//! Classification: what one attempt's response or transport error means for the call.
//!
//! A [`Classify`] looks at one attempt and returns a [`Classification`]: a [`Class`] (what
//! happened, for reports and tracing), the [`Outcome`] the call has if it ends here, and
//! whether a retry may help. The retry layer adds the rest (attempts, deadline, server
//! hints, whether the request may be replayed at all).
//!
//! Two classifiers ship:
//!
//! - [`StripeClassifier`] implements SPEC section 2 for Stripe's API: `Stripe-Should-Retry`
//!   first, then the JSON error body, then the status.
//! - [`HttpClassifier`] for other APIs: 2xx success; 429 retried; 5xx and 408 indeterminate
//!   and retried; other 4xx definite failures.
//!
//! With the `tower-http` cargo feature, `trace::TraceClassifier` hands the same verdicts
//! to tower-http's `TraceLayer`.
//!
//! Plug your own by implementing [`Classify`]:
//!
//! ```
//! use http::{request, response};
//! use resilient_http::classify::{Class, Classification, Classify, HttpClassifier};
//! use resilient_http::Outcome;
//!
//! /// An API that answers 423 Locked while a resource is busy: retry it like a 429.
//! #[derive(Clone, Debug)]
//! struct LockedMeansBusy;
//!
//! impl Classify for LockedMeansBusy {
//!     fn classify_response(
//!         &self,
//!         request: &request::Parts,
//!         response: &response::Parts,
//!         body: Option<&[u8]>,
//!     ) -> Classification {
//!         if response.status == http::StatusCode::LOCKED {
//!             return Classification::new(Class::LockTimeout, Outcome::GaveUp, true);
//!         }
//!         HttpClassifier.classify_response(request, response, body)
//!     }
//! }
//!
//! let layer = resilient_http::RetryLayer::new(LockedMeansBusy);
//! # let _ = layer;
//! ```

mod stripe;
#[cfg(feature = "tower-http")]
pub mod trace;

pub use self::stripe::StripeClassifier;

use crate::Outcome;
use http::{request, response, Method, StatusCode};
use std::error::Error as StdError;
use std::io;

/// What happened on one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    /// The server did the work (2xx).
    Success,
    /// Rate limited (`rate_limit`, or 429 without a body).
    RateLimited,
    /// Stripe's `lock_timeout`: another request held the object's lock.
    LockTimeout,
    /// 409: another request with the same idempotency key was in flight.
    Conflict,
    /// Stripe's `api_error`: Stripe failed, maybe after doing the work.
    ApiError,
    /// 502/503/504, or a 5xx without a Stripe error body (usually a proxy in front).
    Unavailable,
    /// Stripe's `card_error`: the payment was declined or blocked.
    CardError,
    /// Stripe's `idempotency_error`: the key was reused with other parameters.
    IdempotencyError,
    /// 401/403 or `secret_key_required`: the credentials were refused.
    Authentication,
    /// Any other 4xx: the request is wrong and will stay wrong.
    InvalidRequest,
    /// A 1xx or 3xx final response: not an answer this stack can use.
    UnexpectedStatus,
    /// The connection could not be made; nothing was sent.
    Connect,
    /// The transport failed after the request may have been sent.
    Transport,
    /// The attempt ran past its per-attempt timeout; it may have taken effect.
    Timeout,
}

impl Class {
    /// A short lower-case name, as used in tracing events and `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::RateLimited => "rate_limited",
            Class::LockTimeout => "lock_timeout",
            Class::Conflict => "conflict",
            Class::ApiError => "api_error",
            Class::Unavailable => "unavailable",
            Class::CardError => "card_error",
            Class::IdempotencyError => "idempotency_error",
            Class::Authentication => "authentication",
            Class::InvalidRequest => "invalid_request",
            Class::UnexpectedStatus => "unexpected_status",
            Class::Connect => "connect",
            Class::Transport => "transport",
            Class::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Classification {
    class: Class,
    outcome: Outcome,
    retry: bool,
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

    /// Applies a server's explicit retry verdict (such as `Stripe-Should-Retry`).
    ///
    /// `true` makes a failure retryable; a definite failure becomes "gave up while
    /// retryable", since the server says a retry can succeed. `false` stops retries and
    /// keeps the outcome. A success is never changed.
    pub const fn with_server_verdict(self, retry: bool) -> Self {
        match (self.outcome, retry) {
            (Outcome::Success, _) => self,
            (Outcome::DefiniteFailure, true) => Self::new(self.class, Outcome::GaveUp, true),
            (outcome, retry) => Self::new(self.class, outcome, retry),
        }
    }
}

/// Decides what one attempt means. See the [module docs](self).
pub trait Classify {
    /// Classifies a response.
    ///
    /// `body` is the whole body for a non-2xx response that was read within the response
    /// body limit; `None` for a 2xx (whose body streams to the caller unread), and for a
    /// body that was over the limit or failed to read (classify by status then).
    fn classify_response(
        &self,
        request: &request::Parts,
        response: &response::Parts,
        body: Option<&[u8]>,
    ) -> Classification;

    /// Classifies a transport error from the inner service.
    ///
    /// The default: [`Class::Connect`] (retryable, "gave up" if it persists) when the
    /// error chain shows that the connection was never made, [`Class::Transport`]
    /// (indeterminate, retryable) for anything else.
    ///
    /// An error is never a success: a [`Classification::success`] returned here is read
    /// as indeterminate ([`Class::Transport`]), so that only a response can be `Ok`.
    fn classify_error(
        &self,
        request: &request::Parts,
        error: &(dyn StdError + 'static),
    ) -> Classification {
        let _ = request;
        classify_transport_error(error)
    }
}

/// `classifier`'s verdict on a transport error, under the one rule no classifier can
/// change: an error is never a success (it becomes indeterminate, [`Class::Transport`]),
/// so that only a response can be `Ok`. The retry layer and the trace classifier both
/// classify errors through it.
pub(crate) fn classify_failure<C: Classify + ?Sized>(
    classifier: &C,
    request: &request::Parts,
    error: &(dyn StdError + 'static),
) -> Classification {
    let c = classifier.classify_error(request, error);
    if c.outcome() == Outcome::Success {
        Classification::indeterminate(Class::Transport, c.should_retry())
    } else {
        c
    }
}

/// The default classification of a transport error; see [`Classify::classify_error`]: a
/// connect error ([`is_connect_error`]) is [`Class::Connect`], retryable, "gave up" if it
/// persists; anything else is [`Class::Transport`], indeterminate, retryable.
///
/// A request the client refuses to build before sending (reqwest: a relative URI) is
/// indeterminate too: reqwest reports an unusable redirect target, after the server has
/// done the work, with the same kind of error.
pub fn classify_transport_error(error: &(dyn StdError + 'static)) -> Classification {
    if is_connect_error(error) {
        Classification::retryable(Class::Connect)
    } else {
        Classification::indeterminate(Class::Transport, true)
    }
}

/// Whether an error chain shows that the connection was never made, so the server saw
/// nothing. Anywhere in its `source()` chain:
///
/// - an [`io::Error`] of kind `ConnectionRefused`, `AddrNotAvailable`,
///   `NetworkUnreachable` or `HostUnreachable`;
/// - (feature `hyper-util`, which feature `reqwest` brings) a
///   `hyper_util::client::legacy::Error` whose `is_connect()` is true: the connector
///   failed (DNS, TCP, TLS, a connect timeout) before any byte of the request was
///   written. reqwest's connect errors carry one.
///
/// An error that shows neither is treated as "may have been sent": pessimistic, and safe.
pub fn is_connect_error(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::HostUnreachable
            ) {
                return true;
            }
        }
        #[cfg(feature = "hyper-util")]
        if err
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// Whether a method is safe (RFC 9110 section 9.2.1): it asks the server to change
/// nothing, so whether an attempt of it took effect never matters.
pub fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a method is idempotent by definition (RFC 9110 section 9.2.2), so a replay
/// without an idempotency key is safe.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A classifier for plain HTTP APIs.
///
/// | status | class | outcome if final | retried |
/// |---|---|---|---|
/// | 2xx | success | success | no |
/// | 1xx, 3xx | unexpected status | definite failure | no |
/// | 429 | rate limited | gave up | yes |
/// | 408 | timeout | indeterminate | yes |
/// | 401, 403 | authentication | definite failure | no |
/// | other 4xx | invalid request | definite failure | no |
/// | 5xx | unavailable | indeterminate | yes |
///
/// Indeterminate outcomes are only replayed for idempotent methods or requests with an
/// idempotency key: the retry layer enforces that whatever the classifier says.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl Classify for HttpClassifier {
    fn classify_response(
        &self,
        _: &request::Parts,
        response: &response::Parts,
        _: Option<&[u8]>,
    ) -> Classification {
        classify_status(response.status)
    }
}

/// The status rules shared by both classifiers (see [`HttpClassifier`]).
pub(crate) fn classify_status(status: StatusCode) -> Classification {
    match status.as_u16() {
        200..=299 => Classification::success(),
        429 => Classification::retryable(Class::RateLimited),
        408 => Classification::indeterminate(Class::Timeout, true),
        401 | 403 => Classification::definite(Class::Authentication),
        400..=499 => Classification::definite(Class::InvalidRequest),
        500..=599 => Classification::indeterminate(Class::Unavailable, true),
        _ => Classification::definite(Class::UnexpectedStatus),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn refused_connections_are_connect_errors_through_the_chain() {
        let err = Wrapped(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(is_connect_error(&err));
        assert_eq!(classify_transport_error(&err).class(), Class::Connect);
        assert_eq!(classify_transport_error(&err).outcome(), Outcome::GaveUp);
    }

    #[test]
    fn resets_are_indeterminate() {
        let err = Wrapped(io::Error::from(io::ErrorKind::ConnectionReset));
        let c = classify_transport_error(&err);
        assert_eq!(c.class(), Class::Transport);
        assert_eq!(c.outcome(), Outcome::Indeterminate);
        assert!(c.should_retry());
    }

    #[test]
    fn definite_failures_are_never_retryable() {
        let c = Classification::new(Class::CardError, Outcome::DefiniteFailure, true);
        assert!(!c.should_retry());
        assert!(!Classification::new(Class::Success, Outcome::Success, true).should_retry());
    }

    #[test]
    fn server_verdicts_never_touch_success() {
        let s = Classification::success().with_server_verdict(true);
        assert_eq!(s, Classification::success());
        let d = Classification::definite(Class::InvalidRequest).with_server_verdict(true);
        assert_eq!((d.outcome(), d.should_retry()), (Outcome::GaveUp, true));
        let u = Classification::indeterminate(Class::Unavailable, true).with_server_verdict(false);
        assert_eq!(
            (u.outcome(), u.should_retry()),
            (Outcome::Indeterminate, false)
        );
    }

    #[test]
    fn status_table() {
        let cases = [
            (200, Class::Success, Outcome::Success, false),
            (204, Class::Success, Outcome::Success, false),
            (
                302,
                Class::UnexpectedStatus,
                Outcome::DefiniteFailure,
                false,
            ),
            (400, Class::InvalidRequest, Outcome::DefiniteFailure, false),
            (401, Class::Authentication, Outcome::DefiniteFailure, false),
            (404, Class::InvalidRequest, Outcome::DefiniteFailure, false),
            (408, Class::Timeout, Outcome::Indeterminate, true),
            (429, Class::RateLimited, Outcome::GaveUp, true),
            (500, Class::Unavailable, Outcome::Indeterminate, true),
            (503, Class::Unavailable, Outcome::Indeterminate, true),
        ];
        for (status, class, outcome, retry) in cases {
            let c = classify_status(StatusCode::from_u16(status).unwrap());
            assert_eq!(
                (c.class(), c.outcome(), c.should_retry()),
                (class, outcome, retry),
                "{status}"
            );
        }
    }
}
