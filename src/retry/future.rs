//! The [`ResponseFuture`] of [`Retry`](super::Retry): a hand-written state machine that
//! carries out the decisions of the retry policy. Classifying an attempt, deciding and
//! building the caller's result live in `finish.rs`.

use super::finish::{Answer, Received};
use super::head::Head;
use super::policy::{Action, TIMER_TICK};
use super::{CallOptions, Config};
use crate::backoff::Delays;
use crate::body::{BoxError, Collected, Collector, RequestBodyError, ResponseBody};
use crate::budget::RetryPermit;
use crate::classify::{Classify, SentRequest};
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::outcome::Classification;
use crate::report::{Attempts, Elapsed, StopReason};
use crate::throttle::SendSlot;
use bytes::Bytes;
use http::{response, Request, Response};
use http_body::Body;
use http_body_util::Full;
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
    /// its timer, and gives back the retry budget token or send slot the next attempt
    /// held: nothing keeps running.
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
        Rejected { cause: Option<BoxError> },
        Buffering { #[pin] body: ReqB, collector: Collector },
        Calling { #[pin] future: F },
        Reading { read: Reading<ResB> },
        Sleeping,
        Readying,
        Done,
    }
}

/// What the future does next, as the call's logic tells it.
// Unboxed on purpose: the final result is moved once, and boxing it would cost every call
// an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step<B> {
    /// Send the next attempt now.
    Send,
    /// Wait until then, then take a send slot and get ready.
    Sleep(Instant),
    /// Wait for the inner service to be ready, then send.
    Ready,
    /// The call is over.
    Done(Result<Response<ResponseBody<B>>, Error>),
}

/// What the future knows between states: everything that is not pinned.
pub(super) struct Core<S, C> {
    pub(super) service: S,
    pub(super) config: Arc<Config<C>>,
    pub(super) head: Head,
    pub(super) body: Bytes,
    // The request's `Idempotency-Key`, if it carries a valid one: a clone of the header's
    // value (usually a reference count), so that the log and the report need no look-up.
    pub(super) key: Option<IdempotencyKey>,
    pub(super) attempts: Attempts,
    // The call's own limits: the layer's, or the request's `CallOptions`.
    pub(super) max_attempts: u32,
    pub(super) attempt_timeout: Option<Duration>,
    pub(super) deadline_after: Duration,
    pub(super) deadline: Instant,
    pub(super) attempt_deadline: Instant,
    pub(super) wake: Instant,
    // Boxed: only a call that retries needs its backoff schedule (over 100 bytes), and
    // the future is moved as a whole on every call.
    pub(super) delays: Option<Box<Delays>>,
    // The last attempt's classification, with the detail the caller gets if the call
    // ends on it.
    pub(super) last: Option<Classification>,
    // Whether an attempt so far may have taken effect.
    pub(super) maybe_applied: bool,
    // Whether the last attempt's response says it was replayed from the server's saved
    // result, for the report of a call that ends on it.
    pub(super) replayed: bool,
    // What the next attempt holds: a send slot from the throttle, a retry budget token.
    // Each gives itself back when dropped unspent (the call stopped, or was dropped).
    pub(super) slot: Option<SendSlot>,
    pub(super) permit: Option<RetryPermit>,
    // Whether the shared send limit has given the next attempt its slot.
    pub(super) reserved: bool,
    // The last attempt's response (what was read of it) while the call backs off and gets
    // ready, so that a call stopped before its next attempt still hands it to the caller.
    // Boxed: only a call that retries has one, and the future is moved as a whole.
    pub(super) held: Option<Box<Held>>,
}

pub(super) struct Held {
    pub(super) parts: response::Parts,
    pub(super) bytes: Bytes,
    pub(super) trailers: Option<Box<http::HeaderMap>>,
    // Whether `bytes` is the whole body (it may still be over the limit for classifying).
    pub(super) complete: bool,
}

impl<S, C, ReqB, ResB> ResponseFuture<S, C, ReqB, ResB>
where
    S: Service<Request<Full<Bytes>>>,
    ReqB: Body,
{
    pub(crate) fn new(
        service: S,
        config: Arc<Config<C>>,
        req: Request<ReqB>,
        attached: Option<IdempotencyKey>,
    ) -> Self {
        let (parts, body) = req.into_parts();
        let now = Instant::now();
        let settings = &config.settings;
        let given = parts.extensions.get::<CallOptions>().copied();
        let options = given.unwrap_or_default();
        let deadline_after = options.deadline.unwrap_or(settings.deadline);
        let deadline = now.checked_add(deadline_after).unwrap_or_else(far_future);
        let max_attempts = options.max_attempts.unwrap_or(settings.max_attempts);
        let attempt_timeout = options.attempt_timeout.or(settings.attempt_timeout);
        let checked = match attached {
            Some(key) => Ok(Some(key)),
            None => IdempotencyKey::from_headers(&parts.headers),
        };
        let (key, invalid) = match checked {
            // The defaults are valid: only a request's own options are checked.
            Ok(key) => (
                key,
                given.and_then(|o| o.validate().err()).map(BoxError::from),
            ),
            Err(e) => (None, Some(e.into())),
        };
        let limit = settings.request_body_limit;
        let invalid = invalid.or_else(|| {
            (body.size_hint().lower() > limit as u64)
                .then(|| RequestBodyError::TooLarge { limit }.into())
        });
        // A request refused before sending is logged now, and ends on the first poll with
        // its report.
        let state = match invalid {
            Some(cause) => {
                tracing::debug!(target: "resilient_http::retry", error = %cause, "request rejected before sending");
                State::Rejected { cause: Some(cause) }
            }
            None => State::Buffering {
                body,
                collector: Collector::default(),
            },
        };
        // Built in one expression: the future is large, and every move of it costs.
        ResponseFuture {
            state,
            timer: None,
            core: Core {
                service,
                config,
                head: Head::new(parts),
                body: Bytes::new(),
                key,
                attempts: Attempts::None,
                max_attempts,
                attempt_timeout,
                deadline_after,
                deadline,
                attempt_deadline: deadline,
                wake: now,
                delays: None,
                last: None,
                maybe_applied: false,
                replayed: false,
                slot: None,
                permit: None,
                reserved: false,
                held: None,
            },
        }
    }
}

fn far_future() -> Instant {
    // About 30 years, as tokio itself uses for "never".
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Whether the time limit `at` has passed, polling the one timer of the call (made on
/// first need, inside the runtime; moved only when the limit changes). An attempt that
/// answers at once never touches the timer.
fn expired(mut timer: Pin<&mut Option<Sleep>>, at: Instant, cx: &mut Context<'_>) -> bool {
    match timer.as_mut().as_pin_mut() {
        Some(mut sleep) if sleep.deadline() != at => sleep.as_mut().reset(at),
        Some(_) => {}
        None => timer.set(Some(sleep_until(at))),
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
    ResB: Body + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let core = this.core;
        loop {
            let step = match this.state.as_mut().project() {
                StateProj::Rejected { cause } => {
                    let cause = cause.take().expect("a rejected call holds its cause");
                    Step::Done(Err(core.reject(cause)))
                }
                StateProj::Buffering { body, collector } => {
                    let limit = core.config.settings.request_body_limit;
                    match collector.poll_collect(body, limit, cx) {
                        Poll::Ready(collected) => core.buffered(collected, collector),
                        // The deadline covers reading the body, too.
                        Poll::Pending if !expired(this.timer.as_mut(), core.deadline, cx) => {
                            return Poll::Pending
                        }
                        Poll::Pending => Step::Done(Err(core.deadline_passed())),
                    }
                }
                StateProj::Calling { future } => match future.poll(cx) {
                    Poll::Ready(Ok(response)) => {
                        let (parts, body) = response.into_parts();
                        if parts.status.is_success() {
                            // Most calls end here: judged on the borrowed head, and the
                            // response goes straight to the caller.
                            match core.judge_response(&parts, None, None) {
                                Action::Stop(stop) => {
                                    this.state.set(State::Done);
                                    return Poll::Ready(core.finish_streaming(parts, body, stop));
                                }
                                Action::Retry(delay) => {
                                    let answer = Answer::Response(parts, Received::Streaming(body));
                                    core.retry_after(answer, delay)
                                }
                            }
                        } else {
                            // The head is in: the attempt timeout has done its job, and the
                            // body (which may say whether the server saved its failure) is
                            // read until the call's deadline.
                            core.attempt_deadline = core.deadline;
                            let read = Reading {
                                parts: Some(parts),
                                body: Some(Box::pin(body)),
                                collector: Collector::default(),
                            };
                            this.state.set(State::Reading { read });
                            continue;
                        }
                    }
                    Poll::Ready(Err(e)) => core.conclude(Answer::Failed(e.into()), None),
                    Poll::Pending if !expired(this.timer.as_mut(), core.attempt_deadline, cx) => {
                        return Poll::Pending
                    }
                    // The in-flight attempt is dropped below, by the state change.
                    Poll::Pending => core.conclude(Answer::TimedOut, None),
                },
                StateProj::Reading { read } => {
                    let (limit, deadline) =
                        (core.config.settings.response_body_limit, core.deadline);
                    let timer = this.timer.as_mut();
                    match read.poll_read(limit, cx, |cx| expired(timer, deadline, cx)) {
                        Poll::Ready((answer, forced)) => core.conclude(answer, forced),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                StateProj::Sleeping if !expired(this.timer.as_mut(), core.wake, cx) => {
                    return Poll::Pending
                }
                StateProj::Sleeping => match core.paced() {
                    Ok(None) => Step::Ready,
                    Ok(Some(wake)) => Step::Sleep(wake),
                    Err(e) => Step::Done(Err(e)),
                },
                StateProj::Readying => match core.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => core.ready(),
                    Poll::Ready(Err(e)) => Step::Done(Err(
                        core.finish_stalled(StopReason::ServiceNotReady, e.into())
                    )),
                    // The deadline applies to getting ready, too.
                    Poll::Pending if !expired(this.timer.as_mut(), core.deadline, cx) => {
                        return Poll::Pending
                    }
                    Poll::Pending => Step::Done(Err(core.deadline_passed())),
                },
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
            };
            // Each state change drops what the last state held (a finished attempt's future
            // or response body).
            match step {
                Step::Send => {
                    let future = core.start_attempt();
                    this.state.set(State::Calling { future });
                }
                Step::Sleep(wake) => {
                    core.wake = wake;
                    this.state.set(State::Sleeping);
                }
                Step::Ready => this.state.set(State::Readying),
                Step::Done(result) => {
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
            }
        }
    }
}

/// A non-2xx response whose body is being read for classifying.
struct Reading<B> {
    parts: Option<response::Parts>,
    body: Option<Pin<Box<B>>>,
    collector: Collector,
}

impl<B> Reading<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Reads the body up to `limit`: the answer once it is whole, over the limit, failed,
    /// or out of time (`out_of_time` polls the call's deadline), with the stop that being
    /// out of time forces.
    fn poll_read(
        &mut self,
        limit: usize,
        cx: &mut Context<'_>,
        out_of_time: impl FnOnce(&mut Context<'_>) -> bool,
    ) -> Poll<(Answer<B>, Option<StopReason>)> {
        let stream = self.body.as_mut().expect("body is held while reading");
        let (complete, failure, forced) =
            match self.collector.poll_collect(stream.as_mut(), limit, cx) {
                Poll::Ready(Collected::Complete) => (true, None, None),
                // Too large to classify, but perhaps read to its end already (one large
                // frame): then it is whole, for the caller.
                Poll::Ready(Collected::OverLimit) => (stream.is_end_stream(), None, None),
                Poll::Ready(Collected::Failed(e)) => (false, Some(e), None),
                Poll::Pending if !out_of_time(cx) => return Poll::Pending,
                // Out of time while reading the body: classify by status and hand back the
                // unread rest as it is.
                Poll::Pending => (false, None, Some(StopReason::DeadlineExceeded)),
            };
        let received = Received::Read {
            bytes: self.collector.take_bytes(),
            trailers: self.collector.trailers.take(),
            complete,
            failure,
            rest: self.body.take().expect("body is held while reading"),
        };
        let parts = self.parts.take().expect("parts are held while reading");
        Poll::Ready((Answer::Response(parts, received), forced))
    }
}

impl<S, C> Core<S, C>
where
    S: Service<Request<Full<Bytes>>>,
{
    /// The request body has been read: reject it, or go on to send.
    fn buffered<B>(&mut self, collected: Collected, collector: &mut Collector) -> Step<B> {
        let limit = self.config.settings.request_body_limit;
        let problem = match collected {
            Collected::Complete if collector.trailers.is_some() => Some(RequestBodyError::Trailers),
            Collected::Complete => None,
            Collected::OverLimit => Some(RequestBodyError::TooLarge { limit }),
            Collected::Failed(e) => Some(RequestBodyError::Failed(e)),
        };
        if let Some(problem) = problem {
            return Step::Done(Err(self.reject(problem.into())));
        }
        self.body = collector.take_bytes();
        // Polled first after its deadline (a stalled runtime), or the body's last bytes
        // came on the deadline's tick: an attempt now would be abandoned at once, leaving a
        // call that did nothing indeterminate.
        if Instant::now() >= self.deadline {
            return Step::Done(Err(self.deadline_passed()));
        }
        // The caller got the service ready for this call: no need to ask again.
        match self.paced() {
            Ok(None) => Step::Send,
            Ok(Some(wake)) => Step::Sleep(wake),
            Err(e) => Step::Done(Err(e)),
        }
    }

    /// The inner service is ready: send, unless the deadline has passed meanwhile.
    fn ready<B>(&mut self) -> Step<B> {
        if Instant::now() >= self.deadline {
            // Ready too late: an attempt now would be abandoned at once.
            return Step::Done(Err(self.deadline_passed()));
        }
        Step::Send
    }

    /// Whether the next attempt may go: at once (`None`) once the adaptive throttle (if
    /// any) gives it a send slot, at a wake-up time, or never (the call would queue too
    /// long, and ends in this error). Not a `Step`: a large type to pass in and out.
    #[inline]
    fn paced(&mut self) -> Result<Option<Instant>, Error> {
        let settings = &self.config.settings;
        if settings.throttle.is_none() && settings.send_limit.is_none() {
            // Nothing paces the call: no need to read the clock.
            return Ok(None);
        }
        self.pace()
    }

    /// [`paced`](Self::paced) for a call that a throttle or a send limit paces.
    fn pace(&mut self) -> Result<Option<Instant>, Error> {
        let now = Instant::now();
        // A slot must come a timer tick before the deadline, or its wake-up would be late.
        let latest = self
            .deadline
            .checked_sub(TIMER_TICK)
            .unwrap_or(self.deadline);
        let wait = match self.throttle_wait(now, latest) {
            Ok(Duration::ZERO) => self.limit_wait(now, latest),
            other => other,
        };
        match wait {
            Ok(Duration::ZERO) => Ok(None),
            Ok(wait) => Ok(Some(now + wait)),
            Err(refusal) => {
                tracing::debug!(target: "resilient_http::retry", "{refusal}");
                Err(self.finish_stalled(StopReason::Throttled, refusal))
            }
        }
    }

    /// The wait the adaptive throttle (if any) asks before the next attempt, holding its
    /// send slot; or its refusal.
    fn throttle_wait(&mut self, now: Instant, latest: Instant) -> Result<Duration, BoxError> {
        let Some(throttle) = &self.config.settings.throttle else {
            return Ok(Duration::ZERO);
        };
        if self.slot.as_ref().is_some_and(|s| throttle.still_valid(s)) {
            return Ok(Duration::ZERO);
        }
        match throttle.acquire(now, latest) {
            Ok((wait, slot)) => {
                self.slot = Some(slot);
                Ok(wait)
            }
            Err(refusal) => {
                self.slot = None;
                Err(Box::new(refusal))
            }
        }
    }

    /// The wait a shared send limit (if any) asks before the next attempt, once per
    /// attempt; or its refusal.
    fn limit_wait(&mut self, now: Instant, latest: Instant) -> Result<Duration, BoxError> {
        match &self.config.settings.send_limit {
            Some(limit) if !self.reserved => {
                let wait = limit.0.reserve(now, latest)?;
                self.reserved = true;
                Ok(wait)
            }
            _ => Ok(Duration::ZERO),
        }
    }

    fn start_attempt(&mut self) -> S::Future {
        let settings = &self.config.settings;
        if self.attempts.as_slice().is_empty() {
            if let Some(budget) = &settings.budget {
                budget.record_call();
            }
        }
        // The retry's budget token and send slots are used up now.
        self.reserved = false;
        if let Some(permit) = self.permit.take() {
            permit.spend();
        }
        if let Some(slot) = self.slot.take() {
            slot.spend();
        }
        self.held = None;
        self.attempt_deadline = match self.attempt_timeout {
            Some(t) => Instant::now()
                .checked_add(t)
                .map_or(self.deadline, |at| at.min(self.deadline)),
            None => self.deadline,
        };
        // The caller's own head goes out first (its header map has room for what a client
        // adds, hyper's `host`), and a copy stays for a replay.
        let key = self.key.as_ref().map(IdempotencyKey::as_header_value);
        let parts = self.head.for_attempt(key);
        let request = Request::from_parts(parts, Full::new(self.body.clone()));
        self.service.call(request)
    }

    /// The request as classifiers see it.
    pub(super) fn sent(&self) -> SentRequest<'_> {
        self.head
            .view(self.key.as_ref().map(IdempotencyKey::as_header_value))
    }

    /// The time limit that ran out on the attempt in flight.
    pub(super) fn elapsed(&self) -> Elapsed {
        if self.attempt_deadline < self.deadline {
            Elapsed::Attempt(self.attempt_timeout.unwrap_or_default())
        } else {
            Elapsed::Deadline(self.deadline_after)
        }
    }

    /// Ends a call whose deadline passed before its next attempt could be sent (while
    /// reading the request body, or getting ready).
    fn deadline_passed(&mut self) -> Error {
        let cause = Box::new(Elapsed::Deadline(self.deadline_after));
        self.finish_stalled(StopReason::DeadlineExceeded, cause)
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
            .field("method", self.core.head.method())
            .field("uri", self.core.head.uri())
            .field("idempotency_key", &self.core.key)
            .field("attempts", &self.core.attempts.as_slice().len())
            .finish()
    }
}
