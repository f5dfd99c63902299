//! What a call ends in: the four [`Outcome`]s, the [`CallReport`] of every attempt, and
//! the [`Error`] that carries every outcome but success.
//!
//! A call through the stack returns `Ok(response)` only on success; the response's
//! extensions hold its [`CallReport`]. Every other outcome is an `Err(Error)`, so it
//! cannot be mistaken for a success, and the error still holds the final response (status,
//! headers, whole body), Stripe's parsed error object, the idempotency key, and the
//! request id of every attempt:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use resilient_http::{Outcome, ResilientLayer};
//! use resilient_http::stripe_error::Category;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let stripe = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let body = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder().status(402).header("request-id", "req_123").body(Full::new(Bytes::from(body))).unwrap(),
//!     )
//! });
//! let svc = ResilientLayer::stripe().layer(stripe);
//! let req = Request::post("https://api.stripe.com/v1/charges").body(Full::new(Bytes::new())).unwrap();
//!
//! let err = svc.oneshot(req).await.unwrap_err();
//! assert_eq!(err.outcome(), Outcome::DefiniteFailure);
//! assert_eq!(err.stripe_error().unwrap().category(), Category::CardDeclined);
//! assert_eq!(err.report().attempts().len(), 1);
//! assert_eq!(err.report().request_ids().next().unwrap().to_string(), "req_123");
//! assert!(err.report().idempotency_key().is_some());
//! assert_eq!(err.status(), Some(http::StatusCode::PAYMENT_REQUIRED));
//! # }
//! ```

use crate::body::{BoxError, ErrorBody};
use crate::classify::Class;
use crate::headers::RequestId;
use crate::idempotency::IdempotencyKey;
use crate::stripe_error::StripeError;
use http::{HeaderMap, Response, StatusCode};
use std::fmt;
use std::time::Duration;

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
    /// said `Stripe-Should-Retry: false` about a retryable error (a 429, say); the
    /// [`StopReason`] says which.
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

/// Why the retry loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The last attempt's result was final: a success, or a failure no retry can fix.
    Final,
    /// Every allowed attempt was made.
    AttemptsExhausted,
    /// The next attempt could not start (or the current one could not finish) before the
    /// whole-call deadline.
    DeadlineExceeded,
    /// The server asked for a wait (`Retry-After`) longer than the configured cap.
    RetryAfterTooLong {
        /// The wait the server asked for.
        retry_after: Duration,
    },
    /// A retry might have helped, but the request is neither idempotent nor carries an
    /// idempotency key, so replaying it could repeat its effect.
    NotReplayable,
    /// The inner service failed while getting ready for an attempt.
    ServiceNotReady,
    /// The request was refused before anything was sent (invalid idempotency key, body
    /// over the limit or failing).
    Rejected,
    /// A retry might have helped, but the [retry budget](crate::budget) shared by the
    /// client's calls was empty.
    BudgetExhausted,
    /// [Adaptive throttling](crate::throttle) would have made the next attempt queue longer
    /// than its limit (1 s) or until past the deadline, so it was not sent.
    Throttled,
}

impl StopReason {
    fn describe(&self) -> Option<String> {
        Some(match self {
            StopReason::Final => return None,
            StopReason::AttemptsExhausted => "attempts exhausted".to_owned(),
            StopReason::DeadlineExceeded => "deadline exceeded".to_owned(),
            StopReason::RetryAfterTooLong { retry_after } => {
                // Rounded up: a wait of 60.5 s against a 60 s cap is over it.
                let secs = retry_after
                    .as_secs()
                    .saturating_add(u64::from(retry_after.subsec_nanos() > 0));
                format!("server asked to retry after {secs}s, over the cap")
            }
            StopReason::NotReplayable => "request has no idempotency key, not replayed".to_owned(),
            StopReason::ServiceNotReady => "inner service failed".to_owned(),
            StopReason::Rejected => "rejected before sending".to_owned(),
            StopReason::BudgetExhausted => "retry budget exhausted".to_owned(),
            StopReason::Throttled => "throttled: no send slot in time".to_owned(),
        })
    }
}

/// A time limit that ran out: the cause inside an [`Error`] whose call timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Elapsed {
    /// One attempt ran past the per-attempt timeout.
    Attempt(Duration),
    /// The call ran past its whole-call deadline.
    Deadline(Duration),
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elapsed::Attempt(d) => write!(f, "attempt timed out after {d:?}"),
            Elapsed::Deadline(d) => write!(f, "call deadline of {d:?} exceeded"),
        }
    }
}

impl std::error::Error for Elapsed {}

/// One attempt of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// Which attempt, from 1.
    pub number: u32,
    /// What happened.
    pub class: Class,
    /// The response status, if a response came.
    pub status: Option<StatusCode>,
    /// The `Request-Id` of the response, if it had one.
    pub request_id: Option<RequestId>,
    /// The wait before the next attempt, if there was one: the backoff, or the server's
    /// `Retry-After` when that was longer.
    pub delay: Option<Duration>,
}

/// The attempts of a call. Most calls make one, kept inline: a list is allocated only for
/// a call that retries. `Debug` shows the list, whichever way it is kept.
#[derive(Clone, Default)]
pub(crate) enum Attempts {
    #[default]
    None,
    One(Attempt),
    Many(Vec<Attempt>),
}

impl Attempts {
    pub(crate) fn push(&mut self, attempt: Attempt) {
        *self = match std::mem::take(self) {
            Attempts::None => Attempts::One(attempt),
            Attempts::One(first) => Attempts::Many(vec![first, attempt]),
            Attempts::Many(mut all) => {
                all.push(attempt);
                Attempts::Many(all)
            }
        };
    }

    pub(crate) fn as_slice(&self) -> &[Attempt] {
        match self {
            Attempts::None => &[],
            Attempts::One(attempt) => std::slice::from_ref(attempt),
            Attempts::Many(all) => all,
        }
    }

    pub(crate) fn last_mut(&mut self) -> Option<&mut Attempt> {
        match self {
            Attempts::None => None,
            Attempts::One(attempt) => Some(attempt),
            Attempts::Many(all) => all.last_mut(),
        }
    }
}

impl fmt::Debug for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for Attempts {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Attempts {}

impl FromIterator<Attempt> for Attempts {
    fn from_iter<I: IntoIterator<Item = Attempt>>(iter: I) -> Self {
        let mut attempts = Attempts::None;
        for attempt in iter {
            attempts.push(attempt);
        }
        attempts
    }
}

/// The account of one call: its outcome, its idempotency key, and every attempt.
///
/// On success it is in the response's extensions; otherwise in the [`Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallReport {
    pub(crate) outcome: Outcome,
    pub(crate) stop: StopReason,
    pub(crate) idempotency_key: Option<IdempotencyKey>,
    pub(crate) attempts: Attempts,
    pub(crate) replayed: bool,
}

impl CallReport {
    /// How the call ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Why the retry loop stopped.
    pub fn stop_reason(&self) -> StopReason {
        self.stop
    }

    /// The idempotency key every attempt carried, if the request had one.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.idempotency_key.as_ref()
    }

    /// Every attempt, in order. Empty if nothing was sent.
    pub fn attempts(&self) -> &[Attempt] {
        self.attempts.as_slice()
    }

    /// The request id of every attempt that got one, in order.
    pub fn request_ids(&self) -> impl Iterator<Item = &RequestId> + '_ {
        self.attempts().iter().filter_map(|a| a.request_id.as_ref())
    }

    /// Whether the final response said it was replayed from the server's saved result
    /// (`Idempotent-Replayed: true`).
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// The class of the last attempt, if there was one.
    pub fn last_class(&self) -> Option<Class> {
        self.attempts().last().map(|a| a.class)
    }
}

impl fmt::Display for CallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.attempts().len();
        write!(
            f,
            "{} after {} attempt{}",
            self.outcome,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        // Every attempt, so that the one that may have taken effect (a timeout before a
        // 429, say) shows in a log line, then why the loop stopped.
        let reason = self.stop.describe();
        if n > 0 || reason.is_some() {
            f.write_str(" (")?;
            for (i, attempt) in self.attempts().iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                match attempt.status {
                    Some(status) => write!(f, "{} {}", status.as_u16(), attempt.class)?,
                    None => write!(f, "{}", attempt.class)?,
                }
            }
            match reason {
                Some(reason) if n > 0 => write!(f, "; {reason})")?,
                Some(reason) => write!(f, "{reason})")?,
                None => f.write_str(")")?,
            }
        }
        if let Some(key) = &self.idempotency_key {
            write!(f, ", idempotency key {key}")?;
        }
        let mut ids = self.request_ids().peekable();
        if ids.peek().is_some() {
            f.write_str(", request ids ")?;
            for (i, id) in ids.enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{id}")?;
            }
        }
        if self.replayed {
            f.write_str(", replayed")?;
        }
        Ok(())
    }
}

/// A call that did not succeed: a definite failure, an indeterminate outcome, or a
/// retryable failure the stack gave up on. See the [module docs](self).
///
/// `Display` is one line that stands alone: the [`CallReport`], then Stripe's error, or the
/// transport error followed by each of its causes (`client error (Connect): tcp connect
/// error: Connection refused (os error 111)`). That cause is also
/// [`source()`](std::error::Error::source), for code that looks for an `io::Error` down
/// the chain, so a reporter that prints every cause shows those messages twice.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    report: CallReport,
    response: Option<Response<ErrorBody>>,
    stripe: Option<StripeError>,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn new(
        report: CallReport,
        response: Option<Response<ErrorBody>>,
        stripe: Option<StripeError>,
        source: Option<BoxError>,
    ) -> Self {
        debug_assert!(report.outcome != Outcome::Success);
        Error {
            inner: Box::new(Inner {
                report,
                response,
                stripe,
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

    /// Whether Stripe reported that the idempotency key was reused with other parameters:
    /// a bug in the caller.
    ///
    /// Decided by the classification of the final attempt, so that a 409
    /// `idempotency_key_in_use` (a concurrent request with the same key, transient and
    /// retried) is not mistaken for it.
    pub fn is_idempotency_error(&self) -> bool {
        self.inner.report.last_class() == Some(Class::IdempotencyError)
    }

    /// The account of every attempt.
    pub fn report(&self) -> &CallReport {
        &self.inner.report
    }

    /// The idempotency key every attempt carried.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.inner.report.idempotency_key.as_ref()
    }

    /// Stripe's error object from the final response's body, if it had one.
    pub fn stripe_error(&self) -> Option<&StripeError> {
        self.inner.stripe.as_ref()
    }

    /// The final response's status, if the last attempt got a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.response.as_ref().map(Response::status)
    }

    /// The final response's headers, if the last attempt got a response.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.response.as_ref().map(Response::headers)
    }

    /// The final response, if the last attempt got one.
    pub fn response(&self) -> Option<&Response<ErrorBody>> {
        self.inner.response.as_ref()
    }

    /// Takes the final response, with its whole body, out of the error.
    pub fn take_response(&mut self) -> Option<Response<ErrorBody>> {
        self.inner.response.take()
    }

    /// The transport or local error behind the outcome, if there was one.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("report", &self.inner.report)
            .field("status", &self.status())
            .field("stripe_error", &self.inner.stripe)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.report)?;
        if let Some(stripe) = &self.inner.stripe {
            write!(f, ": {stripe}")?;
            if self.is_idempotency_error() {
                f.write_str(
                    " (the idempotency key was reused with different parameters: a bug in the caller)",
                )?;
            }
        } else if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
            // The causes below it, each unless the line holds its text already; at most
            // 16, in case a chain loops back on itself.
            let mut shown = source.to_string();
            let mut next = source.source();
            for _ in 0..16 {
                let Some(cause) = next else { break };
                let text = cause.to_string();
                if !shown.contains(&text) {
                    write!(f, ": {text}")?;
                    shown.push_str(": ");
                    shown.push_str(&text);
                }
                next = cause.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.inner.source {
            Some(source) => Some(&**source),
            None => self.inner.stripe.as_ref().map(|e| e as _),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn report(outcome: Outcome, stop: StopReason, statuses: &[(u16, Class, &str)]) -> CallReport {
        CallReport {
            outcome,
            stop,
            idempotency_key: Some(IdempotencyKey::new("key-1").unwrap()),
            attempts: statuses
                .iter()
                .enumerate()
                .map(|(i, (status, class, id))| Attempt {
                    number: i as u32 + 1,
                    class: *class,
                    status: Some(StatusCode::from_u16(*status).unwrap()),
                    request_id: Some(RequestId::new(HeaderValue::from_str(id).unwrap())),
                    delay: None,
                })
                .collect(),
            replayed: false,
        }
    }

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

    #[test]
    fn reports_read_as_one_line() {
        let r = report(
            Outcome::Indeterminate,
            StopReason::AttemptsExhausted,
            &[
                (503, Class::Unavailable, "req_1"),
                (503, Class::Unavailable, "req_2"),
            ],
        );
        assert_eq!(
            r.to_string(),
            "indeterminate after 2 attempts (503 unavailable, 503 unavailable; attempts \
             exhausted), idempotency key key-1, request ids req_1 req_2"
        );
    }

    /// A transport error whose message is its own, and whose cause is below it.
    #[derive(Debug)]
    struct Layered(&'static str, Option<std::io::Error>);

    impl fmt::Display for Layered {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layered {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    /// `.0`'s message over `.1`'s chain.
    #[derive(Debug)]
    struct Chain(Layered, Layered);

    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.fmt(f)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    fn failed_with(cause: Layered) -> String {
        let report = report(Outcome::GaveUp, StopReason::AttemptsExhausted, &[]);
        Error::new(report, None, None, Some(Box::new(cause))).to_string()
    }

    #[test]
    fn transport_errors_show_every_cause_once() {
        let refused = || Some(std::io::Error::other("Connection refused"));
        assert!(failed_with(Layered("client error (Connect)", refused()))
            .ends_with(": client error (Connect): Connection refused"));
        // A message that holds its cause's already is not followed by it again.
        assert!(
            failed_with(Layered("connect: Connection refused", refused()))
                .ends_with(": connect: Connection refused")
        );
        // Nor is a cause whose text the line holds from further up.
        let middle = Layered("b", Some(std::io::Error::other("refused")));
        let outer = Layered("connect failed: b: refused", None);
        let line = {
            let report = report(Outcome::GaveUp, StopReason::AttemptsExhausted, &[]);
            let chain = Chain(outer, middle);
            Error::new(report, None, None, Some(Box::new(chain))).to_string()
        };
        assert!(line.ends_with(": connect failed: b: refused"), "{line}");
        assert_eq!(
            failed_with(Layered("reset", None)),
            "gave up while retryable after 0 attempts (attempts exhausted), idempotency key \
             key-1: reset"
        );
    }

    #[test]
    fn debug_lists_the_attempts_however_they_are_kept() {
        let none = report(Outcome::DefiniteFailure, StopReason::Rejected, &[]);
        assert!(format!("{none:?}").contains("attempts: []"), "{none:?}");
        let one = report(
            Outcome::Success,
            StopReason::Final,
            &[(200, Class::Success, "r")],
        );
        assert!(
            format!("{one:?}").contains("attempts: [Attempt {"),
            "{one:?}"
        );
    }

    #[test]
    fn a_wait_over_the_cap_is_never_shown_at_the_cap() {
        // An HTTP-date `Retry-After` measured against the local clock has a fraction.
        let stop = StopReason::RetryAfterTooLong {
            retry_after: Duration::from_millis(60_500),
        };
        assert_eq!(
            stop.describe().as_deref(),
            Some("server asked to retry after 61s, over the cap")
        );
    }

    #[test]
    fn idempotency_errors_say_whose_bug_it_is() {
        let stripe = StripeError::from_body(
            br#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#,
        );
        let e = Error::new(
            report(
                Outcome::DefiniteFailure,
                StopReason::Final,
                &[(400, Class::IdempotencyError, "req_3")],
            ),
            None,
            stripe,
            None,
        );
        assert!(e.is_idempotency_error());
        assert!(e.to_string().contains("a bug in the caller"), "{e}");
        assert!(
            e.to_string()
                .starts_with("definite failure after 1 attempt (400 idempotency_error)"),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
