//! The [`Error`] that carries every outcome but success.

use crate::body::{BoxError, ErrorBody};
use crate::idempotency::IdempotencyKey;
use crate::outcome::{Class, Detail, Outcome};
use crate::report::{CallReport, StopReason};
use http::{response, HeaderMap, Response, StatusCode};
use std::error::Error as StdError;
use std::fmt;
use sync_wrapper::SyncWrapper;

/// A call that did not succeed: a definite failure, an indeterminate outcome, or a
/// retryable failure the stack gave up on.
///
/// A call through the stack returns `Ok(response)` only on success; every other outcome
/// is an `Err(Error)`, so it cannot be mistaken for a success, and the error still holds
/// the final response (status, headers, whole body), the classifier's detail (Stripe: its
/// parsed error object), the idempotency key, and the request id of every attempt:
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use resilient_http::{Outcome, ResilientLayer};
/// use resilient_http::stripe::Category;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let stripe = service_fn(|_req: Request<Full<Bytes>>| async {
///     let body = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
///     Ok::<_, std::convert::Infallible>(
///         Response::builder().status(402).header("request-id", "req_123").body(Full::new(Bytes::from(body))).unwrap(),
///     )
/// });
/// let svc = ResilientLayer::stripe().layer(stripe);
/// let req = Request::post("https://api.stripe.com/v1/charges").body(Full::new(Bytes::new())).unwrap();
///
/// let err = svc.oneshot(req).await.unwrap_err();
/// assert_eq!(err.outcome(), Outcome::DefiniteFailure);
/// assert_eq!(err.stripe_error().unwrap().category(), Category::CardDeclined);
/// assert_eq!(err.report().attempts().len(), 1);
/// assert_eq!(err.report().request_ids().next().unwrap().to_string(), "req_123");
/// assert!(err.report().idempotency_key().is_some());
/// assert_eq!(err.status(), Some(http::StatusCode::PAYMENT_REQUIRED));
/// # }
/// ```
///
/// `Display` is the call's one-line [`CallReport`]. What lies under it is
/// [`source()`](std::error::Error::source): the client's transport error or this stack's
/// own (a timeout, an invalid key), else the classifier's detail (Stripe's error object),
/// so an error reporter that walks the chain shows each once.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    report: CallReport,
    // The final response, split so that the error stays `Sync` (a `BoxError`) whatever
    // the client's body: the body is only ever reached through `&mut self`.
    head: Option<response::Parts>,
    body: Option<SyncWrapper<ErrorBody>>,
    detail: Option<Detail>,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn new(
        report: CallReport,
        response: Option<Response<ErrorBody>>,
        detail: Option<Detail>,
        source: Option<BoxError>,
    ) -> Self {
        debug_assert!(report.outcome != Outcome::Success);
        let (head, body) = match response.map(Response::into_parts) {
            Some((head, body)) => (Some(head), Some(SyncWrapper::new(body))),
            None => (None, None),
        };
        Error {
            inner: Box::new(Inner {
                report,
                head,
                body,
                detail,
                source,
            }),
        }
    }

    /// How the call ended: never [`Outcome::Success`].
    pub fn outcome(&self) -> Outcome {
        self.inner.report.outcome
    }

    /// Whether the work may or may not have happened.
    pub fn is_indeterminate(&self) -> bool {
        self.outcome() == Outcome::Indeterminate
    }

    /// Whether the work did not happen and retrying will not help.
    pub fn is_definite_failure(&self) -> bool {
        self.outcome() == Outcome::DefiniteFailure
    }

    /// Whether the work did not happen and the stack gave up while it was retryable.
    pub fn is_gave_up(&self) -> bool {
        self.outcome() == Outcome::GaveUp
    }

    /// Whether the request was refused before anything was sent.
    pub fn is_rejected(&self) -> bool {
        self.inner.report.stop == StopReason::Rejected
    }

    /// Whether the server said the idempotency key was reused with another request: a
    /// bug in the caller ([`Class::KeyReused`] on the final attempt).
    ///
    /// Decided by the classification of the final attempt, so that a 409 (a concurrent
    /// request with the same key, transient and retried) is not mistaken for it.
    pub fn is_idempotency_error(&self) -> bool {
        self.inner.report.last_class() == Some(Class::KeyReused)
    }

    /// The account of every attempt.
    pub fn report(&self) -> &CallReport {
        &self.inner.report
    }

    /// The idempotency key every attempt carried.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.inner.report.idempotency_key.as_ref()
    }

    /// The classifier's typed account of the final answer, if it gave one: Stripe's
    /// error object under the Stripe profile (see `stripe_error()`). Downcast it to the
    /// profile's type.
    pub fn detail(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.inner.detail.as_deref()
    }

    /// The final response's status, if the last attempt got a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.head.as_ref().map(|h| h.status)
    }

    /// The final response's headers, if the last attempt got a response.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.head.as_ref().map(|h| &h.headers)
    }

    /// Takes the final response, with its whole body, out of the error. `None` if the
    /// last attempt got no response, or it was taken already.
    pub fn take_response(&mut self) -> Option<Response<ErrorBody>> {
        let head = self.inner.head.take()?;
        let body = self.inner.body.take()?.into_inner();
        Some(Response::from_parts(head, body))
    }

    /// The error under the outcome when no answer explains it: the client's transport
    /// error, or this stack's own (an [`Elapsed`](crate::report::Elapsed) time limit, an
    /// invalid idempotency key, a refused request body, the throttle's
    /// [`Throttled`](crate::throttle::Throttled), the inner service's readiness error).
    pub fn underlying_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("report", &self.inner.report)
            .field("status", &self.status())
            .field("detail", &self.inner.detail)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.report)?;
        if self.is_idempotency_error() {
            f.write_str(
                " (the idempotency key was reused with different parameters: a bug in the caller)",
            )?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.source {
            Some(source) => Some(&**source),
            None => self.inner.detail.as_deref().map(|e| e as _),
        }
    }
}

/// A setting that cannot work, refused when the layer is built (or, for per-call
/// options, before the call sends anything) rather than quietly changed.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Fewer than one attempt per call: a call is always attempted once.
    ZeroAttempts,
    /// A whole-call deadline under one tick of the timer (1 ms): every call would be
    /// abandoned as soon as it was sent.
    Deadline(std::time::Duration),
    /// A per-attempt timeout under one tick of the timer (1 ms).
    AttemptTimeout(std::time::Duration),
    /// A retry budget ratio that is not a number from 0 to 1.
    Ratio(f64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroAttempts => f.write_str("max attempts must be at least 1"),
            ConfigError::Deadline(d) => {
                write!(f, "a deadline of {d:?} is under the shortest accepted, 1ms")
            }
            ConfigError::AttemptTimeout(d) => {
                write!(
                    f,
                    "an attempt timeout of {d:?} is under the shortest accepted, 1ms"
                )
            }
            ConfigError::Ratio(r) => {
                write!(f, "a retry budget ratio of {r} is not a share from 0 to 1")
            }
        }
    }
}

impl StdError for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::report;

    #[test]
    fn errors_cross_threads_and_box() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Error>();
        let e: BoxError = Box::new(Error::new(
            report(Outcome::GaveUp, StopReason::AttemptsExhausted, &[]),
            None,
            None,
            None,
        ));
        assert!(e.downcast_ref::<Error>().is_some());
    }

    /// Walks the error chain as an error reporter does, one message per link.
    fn chain(e: &Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(cause) = next {
            out.push(cause.to_string());
            next = cause.source();
        }
        out
    }

    #[test]
    fn display_is_the_report_and_each_cause_shows_once_down_the_chain() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(
            report(Outcome::GaveUp, StopReason::AttemptsExhausted, &[]),
            None,
            None,
            Some(Box::new(refused)),
        );
        assert_eq!(
            chain(&e),
            [
                "gave up while retryable after 0 attempts (attempts exhausted), idempotency \
                 key key-1",
                "refused"
            ]
        );
        assert_eq!(e.underlying_error().unwrap().to_string(), "refused");
    }

    #[test]
    fn the_detail_is_the_source_when_nothing_failed_locally() {
        let e = Error::new(
            report(
                Outcome::DefiniteFailure,
                StopReason::Final,
                &[(402, Class::Declined, "req_1")],
            ),
            None,
            Some(Box::new(std::fmt::Error)),
            None,
        );
        assert!(e.detail().unwrap().is::<std::fmt::Error>());
        assert_eq!(chain(&e).len(), 2);
        assert!(e.underlying_error().is_none());
    }

    #[test]
    fn idempotency_errors_say_whose_bug_it_is() {
        let e = Error::new(
            report(
                Outcome::DefiniteFailure,
                StopReason::Final,
                &[(400, Class::KeyReused, "req_3")],
            ),
            None,
            None,
            None,
        );
        assert!(e.is_idempotency_error());
        assert!(e.to_string().contains("a bug in the caller"), "{e}");
        assert!(
            e.to_string()
                .starts_with("definite failure after 1 attempt (400 key_reused)"),
            "{e}"
        );
    }
}
