//! After an attempt: classify it, decide with the policy, record it, and either hold its
//! response for a retry or build what the caller gets (the response with its report, or
//! the [`Error`]).

use super::future::{Core, Held, Step};
use super::observe::IndeterminateCall;
use super::policy::{self, Action, AttemptView, History, Limits};
use crate::body::{BodyAbandoned, BoxError, ResponseBody};
use crate::classify::{classify_failure, is_idempotent, is_safe, Classify};
use crate::error::Error;
use crate::headers;
use crate::idempotency::IdempotencyKey;
use crate::outcome::{Class, Classification, Outcome};
use crate::report::{Attempt, CallReport, StopReason};
use bytes::Bytes;
use http::{response, HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use std::fmt;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

/// What an attempt came to.
// Unboxed on purpose: an answer is built and consumed once per attempt, and boxing the
// response would cost every call an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Answer<B> {
    /// A response, with its body as far as it was read.
    Response(response::Parts, Received<B>),
    /// The inner service failed.
    Failed(BoxError),
    /// The attempt ran past its time limit.
    TimedOut,
}

/// A response body as the attempt left it.
pub(super) enum Received<B> {
    /// A 2xx body, unread: it streams to the caller.
    Streaming(B),
    /// A non-2xx body, read for classifying.
    Read {
        bytes: Bytes,
        trailers: Option<Box<HeaderMap>>,
        // Whether `bytes` is the whole body (it may still be over the limit for
        // classifying).
        complete: bool,
        // The error the body's stream ended in.
        failure: Option<BoxError>,
        // The unread rest, when neither complete nor failed.
        rest: Pin<Box<B>>,
    },
}

/// The body a classifier may read: all of it, if it was read whole and within the limit
/// for classifying; none of it otherwise.
fn classifiable(bytes: &Bytes, complete: bool, limit: usize) -> Option<&[u8]> {
    (complete && bytes.len() <= limit).then_some(&bytes[..])
}

impl<S, C> Core<S, C>
where
    S: Service<Request<Full<Bytes>>>,
{
    /// Classifies the attempt that just ended, records it, and decides: a sleep before
    /// the retry, or the call's result. `forced` stops the call whatever the policy says.
    pub(super) fn conclude<B>(&mut self, answer: Answer<B>, forced: Option<StopReason>) -> Step<B>
    where
        C: Classify,
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let limit = self.config.settings.response_body_limit;
        let action = match &answer {
            Answer::Response(parts, received) => {
                let body = match received {
                    Received::Streaming(_) => None,
                    Received::Read {
                        bytes, complete, ..
                    } => classifiable(bytes, *complete, limit),
                };
                self.judge_response(parts, body, forced)
            }
            Answer::Failed(e) => {
                let c = classify_failure(&self.config.classifier, self.sent(), &**e);
                self.judge(c, None, forced)
            }
            Answer::TimedOut => {
                let out_of_time = self.attempt_deadline >= self.deadline;
                let forced = forced.or(out_of_time.then_some(StopReason::DeadlineExceeded));
                self.judge(
                    Classification::indeterminate(Class::Timeout, true),
                    None,
                    forced,
                )
            }
        };
        match action {
            Action::Retry(delay) => self.retry_after(answer, delay),
            Action::Stop(stop) => Step::Done(self.finish(answer, stop)),
        }
    }

    /// Holds what the attempt's response has to give, and sleeps before the retry.
    pub(super) fn retry_after<B: Body>(&mut self, answer: Answer<B>, delay: Duration) -> Step<B> {
        self.hold(answer);
        Step::Sleep(Instant::now() + delay)
    }

    /// Classifies a response (with its body, if it was read and may be classified),
    /// records the attempt and decides. `forced` stops the call whatever the policy says.
    pub(super) fn judge_response(
        &mut self,
        parts: &response::Parts,
        body: Option<&[u8]>,
        forced: Option<StopReason>,
    ) -> Action
    where
        C: Classify,
    {
        let c = self
            .config
            .classifier
            .classify_response(self.sent(), parts, body);
        self.judge(c, Some(parts), forced)
    }

    /// The result of a call that stops on a 2xx whose body streams to the caller.
    pub(super) fn finish_streaming<B>(
        &mut self,
        parts: response::Parts,
        body: B,
        stop: StopReason,
    ) -> Result<Response<ResponseBody<B>>, Error>
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.finish_response(parts, stop, |report| ResponseBody::streaming(body, report))
    }

    /// Decides on the attempt's classification, and keeps it.
    fn judge(
        &mut self,
        c: Classification,
        head: Option<&response::Parts>,
        forced: Option<StopReason>,
    ) -> Action {
        let action = self.decide(&c, head, forced);
        self.last = Some(c);
        action
    }

    /// Runs the policy on the attempt, takes a retry's budget token, and records the
    /// attempt (in the report and as one tracing event).
    fn decide(
        &mut self,
        c: &Classification,
        head: Option<&response::Parts>,
        forced: Option<StopReason>,
    ) -> Action {
        let settings = &self.config.settings;
        let number = self.attempts.as_slice().len() as u32 + 1;
        self.maybe_applied |= c.outcome() == Outcome::Indeterminate;
        if let (Some(throttle), Some(_)) = (&settings.throttle, head) {
            throttle.on_response(Instant::now(), c.class() == Class::RateLimited);
        }
        let action = forced.map(Action::Stop).unwrap_or_else(|| {
            let attempt = AttemptView {
                number,
                classification: c,
                // The policy reads the hint only for an attempt it may retry: no header
                // look-up for the others (a success above all).
                retry_after: head
                    .filter(|_| c.should_retry())
                    .and_then(|r| headers::retry_after(&r.headers)),
            };
            let limits = Limits {
                max_attempts: self.max_attempts,
                retry_after_cap: settings.retry_after_cap,
                replayable: self.key.is_some() || is_idempotent(self.head.method()),
                deadline: self.deadline,
            };
            let (delays, backoff) = (&mut self.delays, &settings.backoff);
            policy::decide(&attempt, &limits, Instant::now, || {
                let delays = delays.get_or_insert_with(|| Box::new(backoff.delays()));
                delays.next().unwrap_or_default()
            })
        });
        // Last, so that a retry refused for another reason costs no token.
        let action = match (action, &settings.budget) {
            (Action::Retry(delay), Some(budget)) => match budget.try_withdraw() {
                Some(permit) => {
                    self.permit = Some(permit);
                    Action::Retry(delay)
                }
                None => Action::Stop(StopReason::BudgetExhausted),
            },
            (action, _) => action,
        };
        let delay = match action {
            Action::Retry(d) => Some(d),
            Action::Stop(_) => None,
        };
        let (request_id, replayed) = head.map_or((None, false), |r| {
            headers::request_id_and_replayed(&r.headers)
        });
        self.replayed = replayed;
        let attempt = Attempt {
            number,
            class: c.class(),
            status: head.map(|r| r.status),
            request_id,
            delay,
        };
        tracing::debug!(
            target: "resilient_http::retry",
            attempt = number,
            class = %attempt.class,
            status = %Maybe(attempt.status.map(|s| s.as_u16())),
            outcome = %c.outcome(),
            retry_in_ms = %Maybe(delay.map(|d| d.as_millis())),
            idempotency_key = %Maybe(self.key.as_ref()),
            request_id = %Maybe(attempt.request_id.as_ref()),
            "attempt finished"
        );
        self.attempts.push(attempt);
        action
    }

    /// Keeps what a response of an attempt that will be retried has to give, in case the
    /// retry is never sent. Dropping the rest of its body releases the connection: a
    /// complete body was read to its end already, an unfinished one is abandoned on purpose
    /// rather than left pinning a connection while the call sleeps.
    fn hold<B: Body>(&mut self, answer: Answer<B>) {
        self.held = match answer {
            // A custom classifier may retry a 2xx: its body is dropped unread.
            Answer::Response(parts, Received::Streaming(body)) => Some(Box::new(Held {
                parts,
                bytes: Bytes::new(),
                trailers: None,
                complete: body.is_end_stream(),
            })),
            Answer::Response(
                parts,
                Received::Read {
                    bytes,
                    trailers,
                    complete,
                    ..
                },
            ) => Some(Box::new(Held {
                parts,
                bytes,
                trailers,
                complete,
            })),
            Answer::Failed(_) | Answer::TimedOut => None,
        };
    }

    /// The last attempt's outcome, before the policy settles the call's ("gave up" if
    /// nothing was sent).
    fn last_outcome(&self) -> Outcome {
        self.last.as_ref().map_or(Outcome::GaveUp, |c| c.outcome())
    }

    /// The caller's result for a call that stops on the attempt that just ended.
    fn finish<B>(
        &mut self,
        answer: Answer<B>,
        stop: StopReason,
    ) -> Result<Response<ResponseBody<B>>, Error>
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = match answer {
            Answer::Response(parts, received) => (parts, received),
            Answer::Failed(cause) => {
                return Err(self.finish_error(self.last_outcome(), stop, cause))
            }
            Answer::TimedOut => {
                let cause = Box::new(self.elapsed());
                return Err(self.finish_error(self.last_outcome(), stop, cause));
            }
        };
        let body = match body {
            Received::Streaming(body) => ResponseBody::streaming(body, None),
            Received::Read {
                bytes,
                trailers,
                complete: true,
                ..
            } => ResponseBody::buffered(bytes, trailers, None),
            Received::Read {
                bytes,
                failure: Some(e),
                ..
            } => ResponseBody::buffered(bytes, None, Some(e)),
            Received::Read { bytes, rest, .. } => ResponseBody::prefixed(bytes, rest),
        };
        self.finish_response(parts, stop, |report| match report {
            Some(report) => body.with_report(report),
            None => body,
        })
    }

    /// The caller's result for a call that stops on a response: the response with its
    /// report on success, an error that carries it otherwise. `body` builds the response's
    /// body, with the report if it carries one: built once, in place, as the response is
    /// large and each move of it costs.
    fn finish_response<B>(
        &mut self,
        parts: response::Parts,
        stop: StopReason,
        body: impl FnOnce(Option<CallReport>) -> ResponseBody<B>,
    ) -> Result<Response<ResponseBody<B>>, Error>
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let outcome = self.last_outcome();
        if outcome != Outcome::Success {
            return Err(self.finish_with_response(outcome, stop, parts, body(None), None));
        }
        let report = self.report(Outcome::Success, stop, self.replayed);
        Ok(Response::from_parts(parts, body(Some(report))))
    }

    /// Ends a call that stopped before its next attempt could be sent: the outcome is the
    /// last attempt's ("gave up" if nothing was sent), and so is the response, if it had
    /// one.
    pub(super) fn finish_stalled(&mut self, stop: StopReason, cause: BoxError) -> Error {
        // The retry the last attempt was waiting for was never sent: its token and slot
        // go back as they drop.
        if let Some(last) = self.attempts.last_mut() {
            last.delay = None;
        }
        self.permit = None;
        self.slot = None;
        let outcome = self.last_outcome();
        let Some(held) = self.held.take() else {
            return self.finish_error(outcome, stop, cause);
        };
        let body: ResponseBody<Empty<Bytes>> = if held.complete {
            ResponseBody::buffered(held.bytes, held.trailers, None)
        } else {
            ResponseBody::buffered(held.bytes, None, Some(Box::new(BodyAbandoned)))
        };
        self.finish_with_response(outcome, stop, held.parts, body, Some(cause))
    }

    /// Ends a call that sent nothing (its refusal was logged as the call was made).
    pub(super) fn reject(&mut self, cause: BoxError) -> Error {
        let report = self.report(Outcome::DefiniteFailure, StopReason::Rejected, false);
        Error::new(report, None, None, Some(cause))
    }

    fn finish_error(&mut self, outcome: Outcome, stop: StopReason, cause: BoxError) -> Error {
        let report = self.report(outcome, stop, false);
        Error::new(report, None, None, Some(cause))
    }

    /// Ends a call in an error that carries its final response and the classifier's
    /// detail on it.
    fn finish_with_response<B>(
        &mut self,
        outcome: Outcome,
        stop: StopReason,
        parts: response::Parts,
        body: ResponseBody<B>,
        cause: Option<BoxError>,
    ) -> Error
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let report = self.report(outcome, stop, self.replayed);
        let detail = self.last.as_mut().and_then(Classification::take_detail);
        let response = Response::from_parts(parts, body.boxed_unsync());
        Error::new(report, Some(response), detail, cause)
    }

    /// The call's report, its outcome settled by the policy; logged as one event
    /// (`warn` when indeterminate).
    fn report(&mut self, outcome: Outcome, stop: StopReason, replayed: bool) -> CallReport {
        let history = History {
            maybe_applied: self.maybe_applied,
            safe_method: is_safe(self.head.method()),
            settles_earlier: self
                .last
                .as_ref()
                .is_some_and(Classification::settles_earlier),
        };
        let report = CallReport {
            outcome: policy::settle(outcome, history),
            stop,
            // Taken, as the attempts are: the call is over.
            idempotency_key: self.key.take(),
            attempts: std::mem::take(&mut self.attempts),
            replayed,
        };
        match report.outcome {
            Outcome::Success => {}
            Outcome::Indeterminate => {
                tracing::warn!(
                    target: "resilient_http::retry",
                    idempotency_key = %Maybe(report.idempotency_key.as_ref()),
                    "{report}"
                );
                if let Some(observer) = &self.config.settings.on_indeterminate {
                    // Rebuilt from the kept copy (a cold path), with the key the report
                    // now holds.
                    let key = report.idempotency_key.as_ref();
                    let key = key.map(IdempotencyKey::as_header_value);
                    self.head.with_parts(key, |request| {
                        observer.0.indeterminate(&IndeterminateCall {
                            request,
                            body: &self.body,
                            report: &report,
                        })
                    });
                }
            }
            _ => tracing::debug!(target: "resilient_http::retry", "{report}"),
        }
        report
    }
}

/// Shows an optional tracing field as its value or `-`.
struct Maybe<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Maybe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
