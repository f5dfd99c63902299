//! Classification: what one attempt's response or transport error means for the call.
//!
//! A [`Classify`] looks at one attempt and returns a [`Classification`]: a [`Class`] (what
//! happened, for reports and tracing), the [`Outcome`] the call has if it ends here,
//! whether a retry may help, whether this answer also speaks for the call's earlier
//! attempts, and optionally a typed detail (Stripe's parsed error object). The retry
//! engine adds the rest (attempts, deadline, server hints, whether the request may be
//! replayed at all) and knows no API: every API's knowledge is in its classifier.
//!
//! Three profiles ship:
//!
//! | classifier | for |
//! |---|---|
//! | [`StripeClassifier`](crate::stripe::StripeClassifier) | Stripe's API: `Stripe-Should-Retry`, then its error object, then the status |
//! | [`IetfClassifier`] | APIs that follow the IETF `Idempotency-Key` header draft |
//! | [`HttpClassifier`] | any other HTTP API, by status alone |
//!
//! With the `tower-http` cargo feature, `trace::TraceClassifier` hands the same verdicts
//! to tower-http's `TraceLayer`.
//!
//! Plug your own by implementing [`Classify`]:
//!
//! ```
//! use http::response;
//! use resilient_http::classify::{Classify, HttpClassifier, SentRequest};
//! use resilient_http::{Class, Classification};
//!
//! /// An API that answers 423 Locked while a resource is busy: retry it like a 429.
//! #[derive(Clone, Debug)]
//! struct LockedMeansBusy;
//!
//! impl Classify for LockedMeansBusy {
//!     fn classify_response(
//!         &self,
//!         request: SentRequest<'_>,
//!         response: &response::Parts,
//!         body: Option<&[u8]>,
//!     ) -> Classification {
//!         if response.status == http::StatusCode::LOCKED {
//!             return Classification::retryable(Class::Locked);
//!         }
//!         HttpClassifier.classify_response(request, response, body)
//!     }
//! }
//!
//! let layer = resilient_http::RetryLayer::new(LockedMeansBusy);
//! # let _ = layer;
//! ```

mod http_status;
mod ietf;
pub(crate) mod request;
#[cfg(feature = "tower-http")]
pub mod trace;

pub(crate) use self::http_status::classify_status;
pub use self::http_status::HttpClassifier;
pub use self::ietf::IetfClassifier;
pub use self::request::SentRequest;

use crate::outcome::{Class, Classification, Outcome};
use http::{response, Method};
use std::error::Error as StdError;
use std::io;

/// Decides what one attempt means. See the [module docs](self).
pub trait Classify {
    /// Classifies a response to `request`, the head the attempt sent (as the caller gave
    /// it to the retry layer: without what the inner client adds).
    ///
    /// `body` is the whole body for a non-2xx response that was read within the response
    /// body limit; `None` for a 2xx (whose body streams to the caller unread), and for a
    /// body that was over the limit or failed to read (classify by status then).
    fn classify_response(
        &self,
        request: SentRequest<'_>,
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
        request: SentRequest<'_>,
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
    request: SentRequest<'_>,
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
pub(crate) fn classify_transport_error(error: &(dyn StdError + 'static)) -> Classification {
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
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a method is idempotent by definition (RFC 9110 section 9.2.2), so a replay
/// without an idempotency key is safe.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
}
