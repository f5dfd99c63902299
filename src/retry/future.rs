//! The [`ResponseFuture`] of [`Retry`](super::Retry): a hand-written state machine.

use super::Config;
use crate::backoff::Delays;
use crate::body::{BodyAbandoned, BoxError, Collected, Collector, RequestBodyError, ResponseBody};
use crate::classify::{classify_failure, is_idempotent, is_safe, Class, Classification, Classify};
use crate::error::{Attempt, Attempts, CallReport, Elapsed, Error, Outcome, StopReason};
use crate::headers::{self, RequestId};
use crate::idempotency::{needs_key, IdempotencyKey};
use crate::stripe_error::{ErrorType, StripeError};
use crate::throttle::Reservation;
use bytes::Bytes;
use http::{request, response, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    ///
    /// Dropping it at any point (mid-request, mid-sleep) drops the in-flight attempt and
    /// its timer: nothing keeps running.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, C, ReqB, ResB>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<S::Future, ReqB, ResB>,
        // The per-attempt limit while an attempt runs, the wake-up time while backing
        // off, the deadline while waiting for readiness. See `expired`.
        #[pin]
        timer: Option<Sleep>,
        core: Core<S, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, ReqB, ResB> {
        Rejected { error: Option<Error> },
        Buffering { #[pin] body: ReqB, collector: Collector },
        Calling { #[pin] future: F },
        Reading {
            parts: Option<response::Parts>,
            body: Option<Pin<Box<ResB>>>,
            collector: Collector,
        },
        Sleeping,
        Readying,
        Done,
    }
}

/// What the future knows between states: everything that is not pinned.
struct Core<S, C> {
    service: S,
    config: Arc<Config<C>>,
    parts: request::Parts,
    body: Bytes,
    // The request's `Idempotency-Key`, if it carries a valid one: a clone of the header's
    // value (usually a reference count), so that the log and the report need no look-up.
    key: Option<IdempotencyKey>,
    attempts: Attempts,
    deadline: Instant,
    attempt_deadline: Instant,
    wake: Instant,
    // Boxed: only a call that retries needs its backoff schedule (over 100 bytes), and
    // the future is moved as a whole on every call.
    delays: Option<Box<Delays>>,
    last: Option<Classification>,
    // Whether an attempt so far may have taken effect: a later attempt that is merely
    // turned away (429, 409) does not undo that, so the call stays indeterminate.
    maybe_applied: bool,
    // The send slot the next attempt holds from the adaptive throttle, if any.
    slot: Option<Reservation>,
    // Whether the next attempt (a retry) holds a token from the retry budget.
    retry_token: bool,
    // The last attempt's response (what was read of it) while the call backs off and gets
    // ready, so that a call stopped before its next attempt still hands it to the caller.
    // Boxed: only a call that retries has one, and the future is moved as a whole.
    held: Option<Box<Held>>,
}

struct Held {
    parts: response::Parts,
    bytes: Bytes,
    trailers: Option<http::HeaderMap>,
    // Whether `bytes` is the whole body (it may still be over the limit for classifying).
    complete: bool,
}

enum Next {
    Stop(StopReason),
    Retry(Duration),
}

impl<S, C, ReqB, ResB> ResponseFuture<S, C, ReqB, ResB>
where
    S: Service<Request<Full<Bytes>>>,
    ReqB: Body,
{
    pub(crate) fn new(service: S, config: Arc<Config<C>>, req: Request<ReqB>) -> Self {
        let (parts, body) = req.into_parts();
        let now = Instant::now();
        let deadline = now.checked_add(config.deadline).unwrap_or_else(far_future);
        let (key, invalid) = match IdempotencyKey::from_headers(&parts.headers) {
            Ok(key) => (key, None),
            Err(e) => (None, Some(e)),
        };
        let over_limit = body.size_hint().lower() > config.request_body_limit as u64;
        let mut core = Core {
            service,
            config,
            parts,
            body: Bytes::new(),
            key,
            attempts: Attempts::None,
            deadline,
            attempt_deadline: deadline,
            wake: now,
            delays: None,
            last: None,
            maybe_applied: false,
            slot: None,
            retry_token: false,
            held: None,
        };
        let state = match invalid {
            Some(e) => State::Rejected {
                error: Some(core.reject(e.into())),
            },
            None if over_limit => {
                let limit = core.config.request_body_limit;
                State::Rejected {
                    error: Some(core.reject(RequestBodyError::TooLarge { limit }.into())),
                }
            }
            None => State::Buffering {
                body,
                collector: Collector::default(),
            },
        };
        ResponseFuture {
            state,
            timer: None,
            core,
        }
    }
}

/// The resolution of tokio's timers.
const TIMER_TICK: Duration = Duration::from_millis(1);

fn far_future() -> Instant {
    // About 30 years, as tokio itself uses for "never".
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Whether the time limit `at` has passed, polling the one timer of the call (made on
/// first need, inside the runtime; moved only when the limit changes). An attempt that
/// answers at once never touches the timer.
fn expired(mut timer: Pin<&mut Option<Sleep>>, at: Instant, cx: &mut Context<'_>) -> bool {
    let missing = match timer.as_mut().as_pin_mut() {
        Some(mut sleep) => {
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            false
        }
        None => true,
    };
    if missing {
        timer.set(Some(sleep_until(at)));
    }
    timer
        .as_pin_mut()
        .is_some_and(|sleep| sleep.poll(cx).is_ready())
}

impl<S, C, ReqB, ResB> Future for ResponseFuture<S, C, ReqB, ResB>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify,
    ReqB: Body,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Send + Sync + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let core = this.core;
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Rejected { error } => {
                    let error = error.take();
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error.expect("a rejected call holds its error")));
                }
                StateProj::Buffering { body, collector } => {
                    let limit = core.config.request_body_limit;
                    let collected = match collector.poll_collect(body, limit, cx) {
                        Poll::Ready(collected) => collected,
                        Poll::Pending => {
                            // The deadline covers reading the body, too.
                            if !expired(this.timer.as_mut(), core.deadline, cx) {
                                return Poll::Pending;
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Err(core.deadline_passed()));
                        }
                    };
                    let problem = match collected {
                        Collected::Complete if collector.trailers.is_some() => {
                            Some(RequestBodyError::Trailers)
                        }
                        Collected::Complete => None,
                        Collected::OverLimit => Some(RequestBodyError::TooLarge { limit }),
                        Collected::Failed(e) => Some(RequestBodyError::Failed(e)),
                    };
                    if let Some(problem) = problem {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(core.reject(problem.into())));
                    }
                    core.body = collector.bytes();
                    // Polled first after its deadline (a stalled runtime), or the body's
                    // last bytes came on the deadline's tick: an attempt now would be
                    // abandoned at once, leaving a call that did nothing indeterminate.
                    if Instant::now() >= core.deadline {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(core.deadline_passed()));
                    }
                    match core.send_slot() {
                        Ok(None) => {
                            let future = core.start_attempt();
                            this.state.set(State::Calling { future });
                        }
                        Ok(Some(wake)) => {
                            // Paced by the throttle: wait, then get ready again.
                            core.wake = wake;
                            this.state.set(State::Sleeping);
                        }
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                    continue;
                }
                StateProj::Calling { future } => match future.poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        let (parts, body) = response.into_parts();
                        if !parts.status.is_success() {
                            // The head is in: the attempt timeout has done its job, and the
                            // body (which says whether a 500 is Stripe's saved api_error) is
                            // read until the call's deadline.
                            core.attempt_deadline = core.deadline;
                            this.state.set(State::Reading {
                                parts: Some(parts),
                                body: Some(Box::pin(body)),
                                collector: Collector::default(),
                            });
                            continue;
                        }
                        let c = core
                            .config
                            .classifier
                            .classify_response(&core.parts, &parts, None);
                        match core.decide(c, Some(&parts), None) {
                            // A custom classifier may retry a 2xx. Its body is dropped
                            // unread (releasing the connection), but its head is held, so
                            // that a call stopped before the retry still returns it.
                            Next::Retry(delay) => {
                                core.held = Some(Box::new(Held {
                                    parts,
                                    bytes: Bytes::new(),
                                    trailers: None,
                                    complete: body.is_end_stream(),
                                }));
                                delay
                            }
                            Next::Stop(stop) => {
                                this.state.set(State::Done);
                                let body = ResponseBody::streaming(body);
                                return Poll::Ready(
                                    core.finish_response(c, stop, parts, body, None),
                                );
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        let e: BoxError = e.into();
                        let c = classify_failure(&core.config.classifier, &core.parts, &*e);
                        match core.decide(c, None, None) {
                            Next::Retry(delay) => delay,
                            Next::Stop(stop) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(core.finish_error(c.outcome(), stop, e)));
                            }
                        }
                    }
                    Poll::Pending => {
                        if !expired(this.timer.as_mut(), core.attempt_deadline, cx) {
                            return Poll::Pending;
                        }
                        // The in-flight attempt is dropped below, by the state change.
                        let (c, forced, elapsed) = core.timed_out();
                        match core.decide(c, None, forced) {
                            Next::Retry(delay) => delay,
                            Next::Stop(stop) => {
                                this.state.set(State::Done);
                                let e = Box::new(elapsed);
                                return Poll::Ready(Err(core.finish_error(c.outcome(), stop, e)));
                            }
                        }
                    }
                },
                StateProj::Reading {
                    parts,
                    body,
                    collector,
                } => {
                    let limit = core.config.response_body_limit;
                    let mut stream = body.as_mut().expect("body is held while reading").as_mut();
                    let (complete, failure, forced) =
                        match collector.poll_collect(stream.as_mut(), limit, cx) {
                            Poll::Ready(Collected::Complete) => (true, None, None),
                            // Too large to classify, but perhaps read to its end already
                            // (one large frame): then it is whole, for the caller.
                            Poll::Ready(Collected::OverLimit) => {
                                (stream.is_end_stream(), None, None)
                            }
                            Poll::Ready(Collected::Failed(e)) => (false, Some(e), None),
                            Poll::Pending => {
                                if !expired(this.timer.as_mut(), core.attempt_deadline, cx) {
                                    return Poll::Pending;
                                }
                                // Out of time while reading the body: classify by status and
                                // hand back the unread rest as it is.
                                (false, None, core.timed_out().1)
                            }
                        };
                    let parts = parts.take().expect("parts are held while reading");
                    let rest = body.take().expect("body is held while reading");
                    let bytes = collector.bytes();
                    let whole = classifiable(&bytes, complete, limit);
                    let c = core
                        .config
                        .classifier
                        .classify_response(&core.parts, &parts, whole);
                    match core.decide(c, Some(&parts), forced) {
                        // Dropping `rest` here releases the connection: a complete body
                        // was read to its end already, an unfinished one is abandoned on
                        // purpose rather than left pinning a connection while we sleep.
                        Next::Retry(delay) => {
                            core.held = Some(Box::new(Held {
                                parts,
                                bytes,
                                trailers: collector.trailers.take().map(|t| *t),
                                complete,
                            }));
                            delay
                        }
                        Next::Stop(stop) => {
                            let stripe = whole.and_then(StripeError::from_body);
                            let body = match (complete, failure) {
                                (true, _) => ResponseBody::buffered(
                                    bytes,
                                    collector.trailers.take().map(|t| *t),
                                    None,
                                ),
                                (false, Some(e)) => ResponseBody::buffered(bytes, None, Some(e)),
                                (false, None) => ResponseBody::prefixed(bytes, rest),
                            };
                            this.state.set(State::Done);
                            return Poll::Ready(core.finish_response(c, stop, parts, body, stripe));
                        }
                    }
                }
                StateProj::Sleeping => {
                    if !expired(this.timer.as_mut(), core.wake, cx) {
                        return Poll::Pending;
                    }
                    match core.send_slot() {
                        Ok(None) => this.state.set(State::Readying),
                        // Paced by the throttle: sleep on until the slot.
                        Ok(Some(wake)) => core.wake = wake,
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                    continue;
                }
                StateProj::Readying => match core.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) if Instant::now() >= core.deadline => {
                        // Ready too late: an attempt now would be abandoned at once.
                        this.state.set(State::Done);
                        return Poll::Ready(Err(core.deadline_passed()));
                    }
                    Poll::Ready(Ok(())) => {
                        let future = core.start_attempt();
                        this.state.set(State::Calling { future });
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        this.state.set(State::Done);
                        let stop = StopReason::ServiceNotReady;
                        return Poll::Ready(Err(core.finish_stalled(stop, e.into())));
                    }
                    Poll::Pending => {
                        // The deadline applies to getting ready, too.
                        if !expired(this.timer.as_mut(), core.deadline, cx) {
                            return Poll::Pending;
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(Err(core.deadline_passed()));
                    }
                },
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
            };
            // A retry: wait, then get ready again. The state change drops the finished
            // attempt (its future, or its response body).
            core.wake = Instant::now() + next;
            this.state.set(State::Sleeping);
        }
    }
}

impl<S, C> Core<S, C>
where
    S: Service<Request<Full<Bytes>>>,
{
    /// The key, for logs.
    fn key_str(&self) -> Option<&str> {
        self.key.as_ref().map(IdempotencyKey::as_str)
    }

    fn attempt_limit(&self) -> Instant {
        match self.config.attempt_timeout {
            Some(t) => Instant::now()
                .checked_add(t)
                .map_or(self.deadline, |at| at.min(self.deadline)),
            None => self.deadline,
        }
    }

    /// Takes the next attempt's send slot from the adaptive throttle, if there is one:
    /// `None` to send now, the time to send at, or the error ending a call that would have
    /// to queue too long or past its deadline.
    fn send_slot(&mut self) -> Result<Option<Instant>, Error> {
        let Some(throttle) = &self.config.throttle else {
            return Ok(None);
        };
        if let Some(reservation) = self.slot {
            if throttle.still_valid(reservation) {
                return Ok(None);
            }
        }
        let now = Instant::now();
        // A slot must come a timer tick before the deadline, or its wake-up would be late.
        let latest = self
            .deadline
            .checked_sub(TIMER_TICK)
            .unwrap_or(self.deadline);
        match throttle.acquire(now, latest) {
            Ok((wait, reservation)) => {
                self.slot = Some(reservation);
                Ok((!wait.is_zero()).then(|| now + wait))
            }
            Err(refusal) => {
                self.slot = None;
                tracing::debug!(target: "resilient_http::retry", "{refusal}");
                Err(self.finish_stalled(StopReason::Throttled, Box::new(refusal)))
            }
        }
    }

    fn start_attempt(&mut self) -> S::Future {
        if self.attempts.as_slice().is_empty() {
            if let Some(budget) = &self.config.budget {
                budget.deposit();
            }
        }
        // The retry's budget token and throttle slot are spent now.
        self.retry_token = false;
        self.slot = None;
        self.held = None;
        self.attempt_deadline = self.attempt_limit();
        // The head itself goes out and a copy stays for a replay: the caller's header map
        // has room for what a client adds (hyper's `host`), a fresh copy has none.
        let copy = self.parts.clone();
        let parts = std::mem::replace(&mut self.parts, copy);
        let request = Request::from_parts(parts, Full::new(self.body.clone()));
        self.service.call(request)
    }

    /// The attempt's time limit ran out: the classification, whether the call must stop,
    /// and the cause to report.
    fn timed_out(&self) -> (Classification, Option<StopReason>, Elapsed) {
        let c = Classification::indeterminate(Class::Timeout, true);
        if self.attempt_deadline < self.deadline {
            let timeout = self.config.attempt_timeout.unwrap_or_default();
            (c, None, Elapsed::Attempt(timeout))
        } else {
            (
                c,
                Some(StopReason::DeadlineExceeded),
                Elapsed::Deadline(self.config.deadline),
            )
        }
    }

    fn last_outcome(&self) -> Outcome {
        self.last.map_or(Outcome::GaveUp, |c| c.outcome())
    }

    /// Records the attempt that just ended and decides whether to retry it.
    fn decide(
        &mut self,
        c: Classification,
        response: Option<&response::Parts>,
        forced: Option<StopReason>,
    ) -> Next
    where
        C: Classify,
    {
        let number = self.attempts.as_slice().len() as u32 + 1;
        self.last = Some(c);
        self.maybe_applied |= c.outcome() == Outcome::Indeterminate;
        if let (Some(throttle), Some(_)) = (&self.config.throttle, response) {
            throttle.on_response(Instant::now(), c.class() == Class::RateLimited);
        }
        let next = match forced {
            Some(stop) => Next::Stop(stop),
            None => self.next_step(c, number, response),
        };
        let delay = match next {
            Next::Retry(d) => Some(d),
            Next::Stop(_) => None,
        };
        let attempt = Attempt {
            number,
            class: c.class(),
            status: response.map(|r| r.status),
            request_id: response.and_then(|r| RequestId::from_headers(&r.headers)),
            delay,
        };
        tracing::debug!(
            target: "resilient_http::retry",
            attempt = number,
            class = %attempt.class,
            status = %Maybe(attempt.status.map(|s| s.as_u16())),
            outcome = %c.outcome(),
            retry_in_ms = %Maybe(delay.map(|d| d.as_millis())),
            idempotency_key = %Maybe(self.key_str()),
            request_id = %Maybe(attempt.request_id.as_ref()),
            "attempt finished"
        );
        self.attempts.push(attempt);
        next
    }

    fn next_step(
        &mut self,
        c: Classification,
        number: u32,
        response: Option<&response::Parts>,
    ) -> Next {
        if !c.should_retry() {
            return Next::Stop(StopReason::Final);
        }
        let replayable = self.key.is_some() || is_idempotent(&self.parts.method);
        if c.outcome() == Outcome::Indeterminate && !replayable {
            return Next::Stop(StopReason::NotReplayable);
        }
        if number >= self.config.max_attempts {
            return Next::Stop(StopReason::AttemptsExhausted);
        }
        let hint = response.and_then(|r| headers::retry_after(&r.headers));
        if let Some(retry_after) = hint.filter(|h| *h > self.config.retry_after_cap) {
            return Next::Stop(StopReason::RetryAfterTooLong { retry_after });
        }
        let backoff = &self.config.backoff;
        let computed = self
            .delays
            .get_or_insert_with(|| Box::new(backoff.delays()))
            .next()
            .unwrap_or_default();
        // At least one timer tick: a zero backoff (a zero base, or a draw of 0) would retry
        // in the same instant, flooding the server on real time and never letting a
        // paused clock reach the deadline.
        let delay = computed.max(hint.unwrap_or_default()).max(TIMER_TICK);
        // tokio's timers fire on millisecond ticks, rounded up: a retry due less than a
        // tick before the deadline would wake at or after it and never be sent.
        // Checked additions: a server hint may be as long as `Duration::MAX`.
        let wake = delay
            .checked_add(TIMER_TICK)
            .and_then(|d| Instant::now().checked_add(d));
        match wake {
            Some(wake) if wake < self.deadline => {}
            _ => return Next::Stop(StopReason::DeadlineExceeded),
        }
        // Last, so that a retry refused for another reason costs no token; given back if
        // the retry is not sent after all (see `give_back`).
        match &self.config.budget {
            Some(budget) if !budget.try_withdraw() => Next::Stop(StopReason::BudgetExhausted),
            Some(_) => {
                self.retry_token = true;
                Next::Retry(delay)
            }
            None => Next::Retry(delay),
        }
    }

    /// The call's report; `stripe_answered`: its final response carried a Stripe error
    /// object of a type Stripe answers after looking at the request (invalid request,
    /// card error, idempotency error).
    fn report(
        &mut self,
        outcome: Outcome,
        stop: StopReason,
        replayed: bool,
        stripe_answered: bool,
    ) -> CallReport {
        let outcome = match outcome {
            Outcome::GaveUp if self.maybe_applied => Outcome::Indeterminate,
            // A later definite failure settles the call only if it answers for the earlier
            // attempt: Stripe's answer to the replay of a keyed POST or PATCH (it answers
            // for the first attempt), or any failure of a safe method, which had no work
            // to do. Otherwise (a DELETE that timed out, then got a 404, as Stripe ignores
            // keys on DELETE; a keyed POST that timed out, then got a 401) the earlier
            // attempt may have done the work.
            Outcome::DefiniteFailure
                if self.maybe_applied && !self.failure_settles(stripe_answered) =>
            {
                Outcome::Indeterminate
            }
            other => other,
        };
        let report = CallReport {
            outcome,
            stop,
            idempotency_key: self.key.clone(),
            attempts: std::mem::take(&mut self.attempts),
            replayed,
        };
        match outcome {
            Outcome::Success => {}
            Outcome::Indeterminate => tracing::warn!(
                target: "resilient_http::retry",
                idempotency_key = %Maybe(report.idempotency_key.as_ref()),
                "{report}"
            ),
            _ => tracing::debug!(target: "resilient_http::retry", "{report}"),
        }
        report
    }

    /// Whether a definite failure answers for every earlier attempt of the call (see
    /// `report`): any failure of a safe method; for a keyed `POST` or `PATCH`, only
    /// Stripe's own answer from past its idempotency layer (which would have replayed the
    /// first attempt's result, had it run): a rejected request, a decline, a misused key,
    /// each with Stripe's error object. A 401/403, or a bare 4xx or 3xx (from a proxy,
    /// say), is refused before that layer and says nothing about the first attempt.
    fn failure_settles(&self, stripe_answered: bool) -> bool {
        let method = &self.parts.method;
        if is_safe(method) {
            return true;
        }
        let past_idempotency = self.attempts.as_slice().last().is_some_and(|last| {
            matches!(
                last.class,
                Class::InvalidRequest | Class::CardError | Class::IdempotencyError
            )
        });
        stripe_answered && past_idempotency && self.key.is_some() && needs_key(method)
    }

    fn reject(&mut self, cause: BoxError) -> Error {
        tracing::debug!(target: "resilient_http::retry", error = %cause, "request rejected before sending");
        let report = self.report(Outcome::DefiniteFailure, StopReason::Rejected, false, false);
        Error::new(report, None, None, Some(cause))
    }

    fn finish_error(&mut self, outcome: Outcome, stop: StopReason, cause: BoxError) -> Error {
        let report = self.report(outcome, stop, false, false);
        Error::new(report, None, None, Some(cause))
    }

    /// Ends a call whose deadline passed before its next attempt could be sent (while
    /// reading the request body, or getting ready).
    fn deadline_passed(&mut self) -> Error {
        let cause = Box::new(Elapsed::Deadline(self.config.deadline));
        self.finish_stalled(StopReason::DeadlineExceeded, cause)
    }

    /// Ends a call that stopped before its next attempt could be sent: the outcome is the
    /// last attempt's ("gave up" if nothing was sent), and so is the response, if it had
    /// one.
    fn finish_stalled(&mut self, stop: StopReason, cause: BoxError) -> Error {
        // The retry the last attempt was waiting for was never sent.
        if let Some(last) = self.attempts.last_mut() {
            last.delay = None;
        }
        self.give_back();
        let outcome = self.last_outcome();
        let Some(held) = self.held.take() else {
            return self.finish_error(outcome, stop, cause);
        };
        let limit = self.config.response_body_limit;
        let stripe =
            classifiable(&held.bytes, held.complete, limit).and_then(StripeError::from_body);
        let body: ResponseBody<Empty<Bytes>> = if held.complete {
            ResponseBody::buffered(held.bytes, held.trailers, None)
        } else {
            ResponseBody::buffered(held.bytes, None, Some(Box::new(BodyAbandoned)))
        };
        self.finish_with_response(outcome, stop, held.parts, body, stripe, Some(cause))
    }

    /// Ends a call in an error that carries its final response (and Stripe's error object
    /// from it, tagged with the response's request id).
    fn finish_with_response<B>(
        &mut self,
        outcome: Outcome,
        stop: StopReason,
        parts: response::Parts,
        body: ResponseBody<B>,
        stripe: Option<StripeError>,
        cause: Option<BoxError>,
    ) -> Error
    where
        B: Body + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let replayed = headers::is_replayed(&parts.headers);
        // Stripe's own answer to a request it looked at, not a gateway's lookalike.
        let stripe_answered = stripe.as_ref().is_some_and(|e| {
            matches!(
                e.error_type,
                ErrorType::InvalidRequestError | ErrorType::CardError | ErrorType::IdempotencyError
            )
        });
        let report = self.report(outcome, stop, replayed, stripe_answered);
        let stripe = stripe.map(|e| e.with_request_id(RequestId::from_headers(&parts.headers)));
        let response = Response::from_parts(parts, body.boxed());
        Error::new(report, Some(response), stripe, cause)
    }

    fn finish_response<B>(
        &mut self,
        c: Classification,
        stop: StopReason,
        parts: response::Parts,
        body: ResponseBody<B>,
        stripe: Option<StripeError>,
    ) -> Result<Response<ResponseBody<B>>, Error>
    where
        B: Body + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        if c.outcome() != Outcome::Success {
            return Err(self.finish_with_response(c.outcome(), stop, parts, body, stripe, None));
        }
        let replayed = headers::is_replayed(&parts.headers);
        let report = self.report(Outcome::Success, stop, replayed, false);
        let mut response = Response::from_parts(parts, body);
        response.extensions_mut().insert(report);
        Ok(response)
    }
}

impl<S, C> Core<S, C> {
    /// Gives back what the next attempt held (a retry budget token, a throttle slot) when
    /// it will not be sent: the call stopped first, or was dropped while it waited.
    fn give_back(&mut self) {
        if std::mem::take(&mut self.retry_token) {
            if let Some(budget) = &self.config.budget {
                budget.refund();
            }
        }
        if let (Some(slot), Some(throttle)) = (self.slot.take(), &self.config.throttle) {
            throttle.release(slot);
        }
    }
}

impl<S, C> Drop for Core<S, C> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The body a classifier (and Stripe's error parser) may read: all of it, if it was read
/// whole and within the limit for classifying; none of it otherwise.
fn classifiable(bytes: &Bytes, complete: bool, limit: usize) -> Option<&[u8]> {
    (complete && bytes.len() <= limit).then_some(&bytes[..])
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

impl<S, C, ReqB, ResB> fmt::Debug for ResponseFuture<S, C, ReqB, ResB>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Rejected { .. } => "rejected",
            State::Buffering { .. } => "buffering",
            State::Calling { .. } => "calling",
            State::Reading { .. } => "reading",
            State::Sleeping => "sleeping",
            State::Readying => "readying",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("method", &self.core.parts.method)
            .field("uri", &self.core.parts.uri)
            .field("idempotency_key", &self.core.key_str())
            .field("attempts", &self.core.attempts.as_slice().len())
            .finish()
    }
}
