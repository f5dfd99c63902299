//! Limits of the retry loop: attempts and the whole-call deadline are never exceeded,
//! limits that cannot work are refused rather than quietly changed, nothing sleeps after
//! the last attempt, dropping a call leaves nothing running, and every attempt waits for
//! `poll_ready`.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use resilient_http::retry::Builder;
use resilient_http::{
    BoxError, CallOptions, Class, ConfigError, Elapsed, Outcome, Resilient, StopReason,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;
use tower_test::mock;

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

fn repeat(step: Step, n: usize) -> Vec<Step> {
    std::iter::repeat_n(step, n).collect()
}

fn response(status: u16) -> Res {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Lets spawned tasks and timers that are due run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Max attempts
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn always_503_makes_exactly_max_attempts() {
    for max in [1u32, 3, 5] {
        let inner = Scripted::new(repeat(Step::status(503), 20));
        let svc = stack_with(inner.clone(), builder().max_attempts(max));
        let err = svc.oneshot(post_charge()).await.unwrap_err();

        assert_eq!(inner.calls(), max as usize, "max_attempts({max})");
        assert_eq!(err.report().attempts().len(), max as usize);
        assert_eq!(
            err.report().stop_reason(),
            StopReason::AttemptsExhausted,
            "max_attempts({max})"
        );
        assert_eq!(err.outcome(), Outcome::Indeterminate, "max_attempts({max})");
        assert_eq!(err.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
        let numbers: Vec<u32> = err.report().attempts().iter().map(|a| a.number).collect();
        assert_eq!(numbers, (1..=max).collect::<Vec<_>>());
    }
}

#[tokio::test(start_paused = true)]
async fn always_429_gives_up_after_max_attempts() {
    for max in [1u32, 3, 5] {
        let inner = Scripted::new(repeat(Step::status(429), 20));
        let svc = stack_with(inner.clone(), builder().max_attempts(max));
        let err = svc.oneshot(post_charge()).await.unwrap_err();

        assert_eq!(inner.calls(), max as usize, "max_attempts({max})");
        assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
        assert_eq!(err.outcome(), Outcome::GaveUp, "max_attempts({max})");
        assert!(err.is_gave_up());
        assert_eq!(err.status(), Some(http::StatusCode::TOO_MANY_REQUESTS));
    }
}

/// Sends a charge carrying `options` through the default stack, over a server that
/// answers 503 to everything; checks that the call is rejected at once with nothing sent,
/// and returns the setting it was rejected for.
async fn rejected_before_sending(options: CallOptions) -> ConfigError {
    let inner = Scripted::new(repeat(Step::status(503), 5));
    let mut req = post_charge();
    req.extensions_mut().insert(options);

    let start = Instant::now();
    let err = stack(inner.clone()).oneshot(req).await.unwrap_err();

    assert_eq!(inner.calls(), 0, "nothing is sent: {err}");
    assert_eq!(start.elapsed(), Duration::ZERO, "rejected at once");
    assert!(err.is_rejected(), "{err}");
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Rejected);
    assert!(err.report().attempts().is_empty());
    assert!(err.to_string().contains("rejected before sending"), "{err}");
    *err.underlying_error()
        .and_then(|e| e.downcast_ref::<ConfigError>())
        .expect("the refused setting, as a ConfigError")
}

#[tokio::test(start_paused = true)]
async fn max_attempts_zero_is_refused_not_raised_to_one() {
    // The layer refuses to be built with it, naming the setting.
    let refused = builder().max_attempts(0).build().unwrap_err();
    assert_eq!(refused, ConfigError::ZeroAttempts);
    assert_eq!(refused.to_string(), "max attempts must be at least 1");

    // Per call, the call is rejected before anything is sent.
    let refused = rejected_before_sending(CallOptions::new().max_attempts(0)).await;
    assert_eq!(refused, ConfigError::ZeroAttempts);

    // One attempt, the least accepted, makes exactly one.
    let inner = Scripted::new(repeat(Step::status(503), 5));
    let mut req = post_charge();
    req.extensions_mut()
        .insert(CallOptions::new().max_attempts(1));
    let err = stack(inner.clone()).oneshot(req).await.unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_also_respect_max_attempts() {
    let inner = Scripted::new(repeat(Step::Fail(std::io::ErrorKind::ConnectionReset), 20));
    let svc = stack_with(inner.clone(), builder().max_attempts(4));
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(inner.calls(), 4);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert!(
        err.underlying_error().is_some(),
        "the transport error is kept"
    );
}

// ---------------------------------------------------------------------------------------
// Deadline
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_call_first_polled_after_its_deadline_sends_nothing() {
    // A stalled runtime: the call's future is made, then polled only after its deadline.
    let inner = Scripted::new([Step::ok().after(Duration::from_secs(100))]);
    let mut svc = stack_with(inner.clone(), builder().deadline(Duration::from_secs(5)));
    std::future::poll_fn(|cx| Service::<Req>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let call = svc.call(post_charge());
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = call.await.unwrap_err();
    assert_eq!(inner.calls(), 0, "sent after its deadline: {err}");
    assert_eq!(err.outcome(), Outcome::GaveUp, "{err}");
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn deadline_stops_before_a_sleep_would_pass_it() {
    let deadline = Duration::from_millis(250);
    let inner = Scripted::new(repeat(Step::status(503), 20));
    let svc = stack_with(inner.clone(), builder().max_attempts(10).deadline(deadline));

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    let elapsed = start.elapsed();

    // Attempt 1 at 0 ms, sleep 100 ms, attempt 2 at 100 ms; the next sleep (200 ms)
    // would end at 300 ms, past the 250 ms deadline: stop at once.
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(inner.calls(), 2);
    assert!(elapsed <= deadline, "call took {elapsed:?}");
    assert_eq!(elapsed, BASE, "no sleep after the last attempt");
    for seen in inner.seen() {
        assert!(
            seen.at - start < deadline,
            "an attempt started after the deadline"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_with_rate_limits_is_gave_up() {
    let deadline = Duration::from_millis(250);
    let inner = Scripted::new(repeat(Step::status(429), 20));
    let svc = stack_with(inner.clone(), builder().max_attempts(10).deadline(deadline));

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert!(start.elapsed() <= deadline);
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_a_slow_attempt() {
    let deadline = Duration::from_millis(250);
    let inner = Scripted::new([Step::ok().after(Duration::from_secs(10))]);
    let svc = stack_with(inner.clone(), builder().deadline(deadline));

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(elapsed, deadline, "the call ends exactly at its deadline");
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(inner.calls(), 1);
    let cause = err.underlying_error().expect("a cause");
    assert_eq!(
        cause.downcast_ref::<Elapsed>(),
        Some(&Elapsed::Deadline(deadline))
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_counts_attempt_time_and_sleeps() {
    // Each attempt takes 60 ms. Attempt 1: 0..60, sleep 100, attempt 2: 160..220; the
    // next sleep of 200 ms would end at 420 ms, past 400 ms: stop at 220 ms.
    let deadline = Duration::from_millis(400);
    let slow_503 = Step::status(503).after(Duration::from_millis(60));
    let inner = Scripted::new(repeat(slow_503, 20));
    let svc = stack_with(inner.clone(), builder().max_attempts(10).deadline(deadline));

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![Duration::from_millis(160)]);
    assert_eq!(elapsed, Duration::from_millis(220));
    assert!(elapsed <= deadline);
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_an_attempt_that_started_in_time() {
    // Attempt 1 at 0 (503), sleep 100, attempt 2 at 100 takes 10 s: the deadline of
    // 250 ms ends it, and nothing runs past it.
    let deadline = Duration::from_millis(250);
    let inner = Scripted::new([
        Step::status(503),
        Step::status(503).after(Duration::from_secs(10)),
    ]);
    let svc = stack_with(inner.clone(), builder().max_attempts(10).deadline(deadline));

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(start.elapsed(), deadline);
    assert_eq!(inner.calls(), 2);
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_stops_without_sleeping() {
    let deadline = Duration::from_millis(500);
    let inner = Scripted::new(repeat(Step::status(429).header("retry-after", "1"), 5));
    let svc = stack_with(inner.clone(), builder().deadline(deadline));

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no sleep that cannot be used"
    );
    assert_eq!(inner.calls(), 1);
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::GaveUp);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_stay_within_attempts_and_deadline() {
    // Every attempt hangs. Per-attempt timeout 1 s, deadline 2.5 s: attempt 1 at 0 s
    // (times out at 1 s), sleep 100 ms, attempt 2 at 1.1 s (times out at 2.1 s), sleep
    // 200 ms, attempt 3 at 2.3 s, cut by the deadline at 2.5 s.
    let deadline = Duration::from_millis(2500);
    let inner = Scripted::new(repeat(Step::ok().after(Duration::from_secs(100)), 10));
    let svc = stack_with(
        inner.clone(),
        builder()
            .max_attempts(10)
            .attempt_timeout(Duration::from_secs(1))
            .deadline(deadline),
    );

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(elapsed, deadline);
    assert_eq!(
        inner.offsets(),
        vec![
            Duration::ZERO,
            Duration::from_millis(1100),
            Duration::from_millis(2300)
        ]
    );
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
}

/// A body that yields one chunk, then never ends (and never wakes its task); it counts
/// its drops.
struct Stalled {
    first: Option<Bytes>,
    _dropped: OnDrop,
}

impl Stalled {
    fn new(dropped: &Arc<AtomicUsize>) -> Self {
        Stalled {
            first: Some(Bytes::from_static(b"{\"error\":")),
            _dropped: OnDrop(dropped.clone()),
        }
    }
}

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.first.take() {
            Some(b) => Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_reading_a_stalled_error_body() {
    let deadline = Duration::from_millis(300);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let inner = tower::service_fn(move |_req: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(402)
                    .body(Stalled::new(&Arc::default()))
                    .unwrap(),
            )
        }
    });
    let svc = stack_with(inner, builder().deadline(deadline));

    let start = Instant::now();
    let mut err = tokio::time::timeout(Duration::from_secs(60), svc.oneshot(post_charge()))
        .await
        .expect("the deadline ends a stalled body read")
        .unwrap_err();
    assert_eq!(start.elapsed(), deadline);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure, "402 by its status");
    // The part read so far is handed back first.
    let mut body = err.take_response().expect("the response").into_body();
    let first = http_body_util::BodyExt::frame(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "{\"error\":");
}

// ---------------------------------------------------------------------------------------
// No sleep after the last attempt
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn exhausting_three_attempts_takes_exactly_the_two_delays() {
    let inner = Scripted::new(repeat(Step::status(503), 10));
    let svc = stack(inner.clone());

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(inner.calls(), 3);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(inner.gaps(), vec![BASE, BASE * 2]);
    assert_eq!(elapsed, BASE + BASE * 2);
}

#[tokio::test(start_paused = true)]
async fn no_sleep_after_the_last_attempt_with_slow_attempts() {
    let latency = Duration::from_millis(50);
    let inner = Scripted::new(repeat(Step::status(429).after(latency), 10));
    let svc = stack(inner.clone());

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(inner.calls(), 3);
    assert_eq!(start.elapsed(), latency * 3 + BASE + BASE * 2);
}

#[tokio::test(start_paused = true)]
async fn no_sleep_after_a_final_answer() {
    let inner = Scripted::new([
        Step::status(503),
        Step::status(503),
        Step::stripe(402, "card_error", "card_declined"),
    ]);
    let svc = stack_with(inner.clone(), builder().max_attempts(5));

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Final);
    assert_eq!(inner.calls(), 3);
    assert_eq!(start.elapsed(), BASE + BASE * 2);
}

// ---------------------------------------------------------------------------------------
// Dropping the call's future
// ---------------------------------------------------------------------------------------

/// A marker whose strong count shows who still holds a request or a service.
#[derive(Clone, Debug)]
struct Token(#[allow(dead_code)] Arc<()>);

/// [`Scripted`] plus a token held by every clone of the service.
#[derive(Clone, Debug)]
struct Tracked {
    inner: Scripted,
    _token: Arc<()>,
}

impl Service<Req> for Tracked {
    type Response = Res;
    type Error = BoxError;
    type Future = <Scripted as Service<Req>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

fn post_with_token(token: &Arc<()>) -> Req {
    let mut req = post_charge();
    req.extensions_mut().insert(Token(token.clone()));
    req
}

#[tokio::test(start_paused = true)]
async fn dropping_mid_sleep_leaves_nothing_running() {
    let scripted = Scripted::new(repeat(Step::status(503), 10));
    let service_token = Arc::new(());
    let request_token = Arc::new(());
    let svc = stack_with(
        Tracked {
            inner: scripted.clone(),
            _token: service_token.clone(),
        },
        builder(),
    );
    let service_baseline = Arc::strong_count(&service_token);
    assert_eq!(Arc::strong_count(&request_token), 1);

    let mut call = tokio_test::task::spawn(svc.clone().oneshot(post_with_token(&request_token)));
    assert!(call.poll().is_pending());
    assert_eq!(scripted.calls(), 1, "the first attempt was made");
    // Halfway through the 100 ms backoff: still sleeping.
    tokio::time::advance(BASE / 2).await;
    assert!(call.poll().is_pending());
    assert_eq!(scripted.calls(), 1);
    assert!(
        Arc::strong_count(&request_token) > 1,
        "the call holds the request"
    );
    assert!(Arc::strong_count(&service_token) > service_baseline);

    drop(call);
    assert_eq!(Arc::strong_count(&request_token), 1, "request released");
    assert_eq!(
        Arc::strong_count(&service_token),
        service_baseline,
        "service clone released"
    );

    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(scripted.calls(), 1, "no attempt after the drop");
}

/// A service whose answer takes 10 s; it counts calls, completions and dropped futures.
#[derive(Clone, Debug, Default)]
struct Slow {
    calls: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

struct OnDrop(Arc<AtomicUsize>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Service<Req> for Slow {
    type Response = Res;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let guard = OnDrop(self.dropped.clone());
        let completed = self.completed.clone();
        Box::pin(async move {
            let _guard = guard;
            let _req = req;
            tokio::time::sleep(Duration::from_secs(10)).await;
            completed.fetch_add(1, Ordering::SeqCst);
            Ok(response(200))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_mid_request_drops_the_inner_future() {
    let slow = Slow::default();
    let token = Arc::new(());
    let svc = stack_with(slow.clone(), builder());

    let mut call = tokio_test::task::spawn(svc.oneshot(post_with_token(&token)));
    assert!(call.poll().is_pending());
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(call.poll().is_pending());
    assert_eq!(slow.dropped.load(Ordering::SeqCst), 0, "attempt in flight");

    drop(call);
    assert_eq!(
        slow.dropped.load(Ordering::SeqCst),
        1,
        "the in-flight attempt is dropped with the call"
    );
    assert_eq!(Arc::strong_count(&token), 1, "the request is released");

    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1, "no further attempt");
    assert_eq!(
        slow.completed.load(Ordering::SeqCst),
        0,
        "the attempt did not keep running in the background"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_while_reading_a_stalled_error_body_drops_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let inner = tower::service_fn({
        let (calls, dropped) = (calls.clone(), dropped.clone());
        move |_: Req| {
            calls.fetch_add(1, Ordering::SeqCst);
            let body = Stalled::new(&dropped);
            async move { Ok::<_, BoxError>(Response::builder().status(503).body(body).unwrap()) }
        }
    });
    let svc = stack_with(inner, builder());

    let mut call = tokio_test::task::spawn(svc.oneshot(post_charge()));
    assert!(call.poll().is_pending(), "reading the 503's body");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(call.poll().is_pending());
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "the body is being read");

    drop_the_call(call, &dropped).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no further attempt");
}

/// Drops a call stalled on a body, checks that the body went with it, then lets a minute
/// of paused time pass, for anything left running to show itself.
async fn drop_the_call<F: Future>(call: tokio_test::task::Spawn<F>, dropped: &AtomicUsize) {
    drop(call);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the body goes with the call"
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_while_reading_a_stalled_request_body_sends_nothing() {
    let slow = Slow::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let svc = stack_with(slow.clone(), builder());
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Stalled::new(&dropped))
        .unwrap();

    let mut call = tokio_test::task::spawn(svc.oneshot(req));
    assert!(call.poll().is_pending(), "buffering the request body");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(call.poll().is_pending());

    drop_the_call(call, &dropped).await;
    assert_eq!(slow.calls.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[tokio::test(start_paused = true)]
async fn dropping_while_waiting_for_readiness_sends_nothing() {
    let (mock, mut handle) = mock::pair::<Req, Res>();
    handle.allow(1);
    let svc = stack_with(mock, builder());

    let mut call = tokio_test::task::spawn(svc.oneshot(post_charge()));
    assert!(call.poll().is_pending());
    let (_, send) = handle.next_request().await.expect("first attempt");
    send.send_response(response(429));
    assert!(call.poll().is_pending(), "sleeping");
    tokio::time::advance(BASE * 2).await;
    assert!(call.poll().is_pending(), "waiting for readiness");

    drop(call);
    handle.allow(1);
    let next = tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await;
    assert!(
        !matches!(next, Ok(Some(_))),
        "no request after the call was dropped"
    );
}

// ---------------------------------------------------------------------------------------
// poll_ready before every attempt
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_retry_waits_for_readiness() {
    let (mock, mut handle) = mock::pair::<Req, Res>();
    handle.allow(1);
    let svc = stack_with(mock, builder());

    let start = Instant::now();
    let call = tokio::spawn(svc.oneshot(post_charge()));
    let (first, send) = handle.next_request().await.expect("first attempt");
    send.send_response(response(429));

    // The backoff is 100 ms; without a new permit the retry must not be sent.
    let waited = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
    assert!(waited.is_err(), "a retry was sent without poll_ready");
    assert!(!call.is_finished());

    handle.allow(1);
    let (second, send) = tokio::time::timeout(Duration::from_secs(1), handle.next_request())
        .await
        .expect("the retry goes out once ready")
        .expect("a request");
    assert!(start.elapsed() >= Duration::from_secs(5));
    send.send_response(response(429));

    // And again for the third attempt.
    let waited = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
    assert!(
        waited.is_err(),
        "the third attempt was sent without poll_ready"
    );
    handle.allow(1);
    let (third, send) = tokio::time::timeout(Duration::from_secs(1), handle.next_request())
        .await
        .expect("the third attempt goes out once ready")
        .expect("a request");
    send.send_response(response(200));

    let res = call.await.expect("no panic").expect("success");
    let report = res.body().report().unwrap();
    assert_eq!(report.attempts().len(), 3);
    let key = |r: &Req| r.headers()["idempotency-key"].clone();
    assert_eq!(key(&first), key(&second));
    assert_eq!(key(&second), key(&third));
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_waiting_for_readiness() {
    let deadline = Duration::from_secs(1);
    let (mock, mut handle) = mock::pair::<Req, Res>();
    handle.allow(1);
    let svc = stack_with(mock, builder().deadline(deadline));

    let start = Instant::now();
    let call = tokio::spawn(svc.oneshot(post_charge()));
    let (_, send) = handle.next_request().await.expect("first attempt");
    send.send_response(response(429));

    let err = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the deadline ends the wait for readiness")
        .expect("no panic")
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(elapsed <= deadline, "waited {elapsed:?} for readiness");
    assert_eq!(
        elapsed, deadline,
        "the call ends at its deadline, not later"
    );
    assert!(
        elapsed > BASE,
        "it did wait for readiness after the backoff"
    );
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(err.report().attempts().len(), 1);
    assert!(matches!(
        handle.poll_request(),
        Poll::Pending | Poll::Ready(None)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failing_poll_ready_before_the_first_attempt_is_an_error() {
    let (mock, mut handle) = mock::pair::<Req, Res>();
    handle.send_error("pool shut down");
    let svc = stack_with(mock, builder());

    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(err.report().stop_reason(), StopReason::ServiceNotReady);
    assert!(err.report().attempts().is_empty());
    assert_ne!(err.outcome(), Outcome::Success);
    // The message is the call's report alone; the readiness error lies under it, once.
    let shown = err.to_string();
    assert!(shown.contains("inner service failed"), "{shown}");
    assert!(!shown.contains("pool shut down"), "{shown}");
    let source = std::error::Error::source(&err).expect("the readiness error");
    assert!(source.to_string().contains("pool shut down"), "{source}");
    assert!(err.underlying_error().is_some());
    assert!(matches!(
        handle.poll_request(),
        Poll::Pending | Poll::Ready(None)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failing_poll_ready_before_a_retry_ends_the_call() {
    let (mock, mut handle) = mock::pair::<Req, Res>();
    let svc = stack_with(mock, builder());

    let call = tokio::spawn(svc.oneshot(post_charge()));
    let (_, send) = handle.next_request().await.expect("first attempt");
    handle.send_error("pool shut down");
    send.send_response(response(503));

    let err = call.await.expect("no panic").unwrap_err();
    assert_eq!(err.report().stop_reason(), StopReason::ServiceNotReady);
    assert_eq!(
        err.outcome(),
        Outcome::Indeterminate,
        "the 503 already sent may have taken effect"
    );
    assert_eq!(err.report().attempts().len(), 1);
    assert!(err.idempotency_key().is_some());
    let cause = err.underlying_error().expect("the readiness error");
    assert!(cause.to_string().contains("pool shut down"), "{cause}");
    assert!(matches!(
        handle.poll_request(),
        Poll::Pending | Poll::Ready(None)
    ));
}

// ---------------------------------------------------------------------------------------
// Edges found in review
// ---------------------------------------------------------------------------------------

/// A request body that never yields a frame (and never wakes its task).
struct NeverBody;

impl http_body::Body for NeverBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_reading_a_stalled_request_body() {
    let deadline = Duration::from_secs(1);
    let inner = Scripted::new([Step::ok()]);
    let svc = stack_with(inner.clone(), builder().deadline(deadline));
    let req = Request::post("http://stripe.test/v1/charges")
        .body(NeverBody)
        .unwrap();

    let start = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(600), svc.oneshot(req))
        .await
        .expect("the deadline ends a stalled request body")
        .unwrap_err();

    assert_eq!(start.elapsed(), deadline);
    assert_eq!(inner.calls(), 0, "nothing was sent");
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert!(err.report().attempts().is_empty());
}

/// Ready for `n` calls, then never ready again (the call's deadline timer wakes it).
#[derive(Clone)]
struct ReadyFor<S = Scripted> {
    inner: S,
    left: Arc<AtomicUsize>,
}

impl<S: Service<Req>> Service<Req> for ReadyFor<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.left.load(Ordering::SeqCst) == 0 {
            return Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> S::Future {
        self.left.fetch_sub(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

/// Sends a charge through `layer` (with a 2 s deadline) over `inner`, which is ready for
/// the first attempt only: a call that decides to retry is stopped by its deadline while
/// it waits for readiness.
async fn stopped_while_getting_ready<S, C>(settings: Builder<C>, inner: S) -> resilient_http::Error
where
    Resilient<ReadyFor<S>, C>: Service<Req, Error = resilient_http::Error>,
{
    let ready_once = ReadyFor {
        inner,
        left: Arc::new(AtomicUsize::new(1)),
    };
    let svc = stack_with(ready_once, settings.deadline(Duration::from_secs(2)));
    match svc.oneshot(post_charge()).await {
        Ok(_) => panic!("expected the call to stop while getting ready"),
        Err(e) => e,
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_stopped_while_getting_ready_keeps_the_last_response() {
    const BODY: &str = r#"{"error":{"type":"api_error","message":"upstream"}}"#;
    let inner = Scripted::new([Step::body(503, BODY).header("request-id", "req_1")]);
    let mut err = stopped_while_getting_ready(builder(), inner.clone()).await;

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert!(err.is_indeterminate(), "{err}");
    assert_eq!(err.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
    let stripe = err
        .stripe_error()
        .expect("the last response's Stripe error");
    assert_eq!(stripe.message.as_deref(), Some("upstream"));
    let res = err.take_response().expect("the last response is kept");
    assert_eq!(res.headers()["request-id"], "req_1");
    assert_eq!(read(res.into_body()).await, BODY.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn a_call_stopped_while_getting_ready_keeps_a_large_last_body_read_whole() {
    // A Stripe api_error padded past the 64 KiB read for classifying, in one frame: it is
    // classified by status (a bare 503, retried), and was read to its end all the same.
    let body = format!(
        r#"{{"error":{{"type":"api_error","message":"{}"}}}}"#,
        "x".repeat(100 * 1024)
    );
    let inner = Scripted::new([Step::body(503, body.clone())]);
    let mut err = stopped_while_getting_ready(builder(), inner.clone()).await;

    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert!(err.stripe_error().is_none(), "over the limit: not parsed");
    let res = err.take_response().expect("the last response is kept");
    let got = res
        .into_body()
        .collect()
        .await
        .expect("the whole body, no error");
    assert_eq!(got.to_bytes(), body.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn a_call_stopped_while_getting_ready_hands_back_what_it_read_of_a_large_stream() {
    // Over the limit in several frames: the rest was released unread when the retry was
    // decided (not held through the backoff, pinning a connection). The caller gets the
    // bytes read, then an error that says so: never a silently short body.
    static CHUNK: std::sync::LazyLock<&'static str> =
        std::sync::LazyLock::new(|| Box::leak("x".repeat(16 * 1024).into_boxed_str()));
    let inner = Streaming::new(|_| {
        Response::builder()
            .status(503)
            .body(Chunks::new(&[*CHUNK; 7]))
            .unwrap()
    });
    let mut err = stopped_while_getting_ready(builder(), inner.clone()).await;

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    let res = err.take_response().expect("the last response is kept");
    let mut body = res.into_body();
    let mut read = 0;
    let e = loop {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.into_data().map_or(0, |d| d.len()),
            Some(Err(e)) => break e,
            None => panic!("the body ended as if whole, after {read} bytes"),
        }
    };
    assert!(e.is::<resilient_http::body::BodyAbandoned>(), "{e}");
    assert!(
        read > 64 * 1024 && read < 7 * 16 * 1024,
        "{read} bytes read"
    );
}

/// The default classifier, except that it retries a 2xx as if it were a bare 503.
#[derive(Clone, Copy)]
struct RetriesOk;

impl resilient_http::classify::Classify for RetriesOk {
    fn classify_response(
        &self,
        request: resilient_http::classify::SentRequest<'_>,
        response: &http::response::Parts,
        body: Option<&[u8]>,
    ) -> resilient_http::Classification {
        use resilient_http::stripe::StripeClassifier;
        use resilient_http::Classification;
        match response.status.is_success() {
            true => Classification::indeterminate(Class::Unavailable, true),
            false => StripeClassifier.classify_response(request, response, body),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_stopped_before_retrying_a_2xx_keeps_its_head() {
    for body in [r#"{"id":"ch_1"}"#, ""] {
        let inner = Scripted::new([Step::body(200, body).header("request-id", "req_ok")]);
        let settings = builder().classifier(RetriesOk);
        let mut err = stopped_while_getting_ready(settings, inner.clone()).await;

        assert_eq!(inner.calls(), 1);
        assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
        assert!(err.is_indeterminate(), "{err}");
        assert_eq!(err.status(), Some(http::StatusCode::OK));
        let res = err
            .take_response()
            .expect("the last response's head is kept");
        assert_eq!(res.headers()["request-id"], "req_ok");
        let read = res.into_body().collect().await;
        if body.is_empty() {
            // Known to be empty when the retry was decided: whole.
            assert!(read.expect("an empty body").to_bytes().is_empty());
        } else {
            // Released unread when the retry was decided: the caller is told so.
            let e = read.expect_err("the body was abandoned");
            assert!(e.is::<resilient_http::body::BodyAbandoned>(), "{e}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_classifier_cannot_turn_a_transport_error_into_success() {
    let inner = Scripted::new(repeat(Step::Fail(std::io::ErrorKind::ConnectionReset), 5));
    let svc = stack_with(inner.clone(), builder().classifier(ErrorsAreFine));

    let err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert!(err.underlying_error().is_some());
}

/// A body that arrives whole `delay` after the response's head.
struct SlowBody {
    sleep: Pin<Box<tokio::time::Sleep>>,
    data: Option<Bytes>,
}

impl http_body::Body for SlowBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }
}

/// A server whose every answer is a Stripe `api_error` (500) with `headers`, its head at
/// once and its body 5 s later. Sends a charge through a stack with a 2 s attempt timeout,
/// and returns the call's error and the idempotency key of every attempt sent.
async fn slow_api_errors(
    headers: &'static [(&'static str, &'static str)],
) -> (resilient_http::Error, Vec<Option<String>>) {
    const BODY: &str = r#"{"error":{"type":"api_error","message":"saved 500"}}"#;
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = keys.clone();
    let inner = tower::service_fn(move |req: Req| {
        let key = req.headers().get("idempotency-key");
        let key = key.map(|k| k.to_str().unwrap().to_owned());
        log.lock().unwrap().push(key);
        async move {
            let body = SlowBody {
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(5))),
                data: Some(Bytes::from_static(BODY.as_bytes())),
            };
            let mut res = Response::builder().status(500);
            for (name, value) in headers {
                res = res.header(*name, *value);
            }
            Ok::<_, BoxError>(res.body(body).unwrap())
        }
    });
    let svc = stack_with(inner, builder().attempt_timeout(Duration::from_secs(2)));
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    let keys = keys.lock().unwrap().clone();
    (err, keys)
}

fn classes(err: &resilient_http::Error) -> Vec<Class> {
    err.report().attempts().iter().map(|a| a.class).collect()
}

#[tokio::test(start_paused = true)]
async fn a_slow_api_error_body_is_read_past_the_attempt_timeout_and_replayed_with_its_key() {
    // The head came within the attempt timeout, so the body is read past it, to the call's
    // deadline: each attempt is Stripe's server error, not a timeout. Stripe's api_error is
    // replayed with the same key while attempts remain (a saved 500 only answers again).
    let start = Instant::now();
    let (err, keys) = slow_api_errors(&[]).await;

    assert_eq!(keys.len(), 3, "replayed while attempts remain: {err}");
    assert!(keys[0].is_some());
    assert!(keys.iter().all(|k| *k == keys[0]), "one key: {keys:?}");
    assert_eq!(classes(&err), [Class::ServerError; 3]);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert!(err.is_indeterminate(), "{err}");
    assert_eq!(
        err.stripe_error().and_then(|e| e.message.as_deref()),
        Some("saved 500")
    );
    // Three bodies of 5 s each, and the two backoffs between them.
    assert_eq!(start.elapsed(), Duration::from_secs(15) + BASE + BASE * 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_api_error_the_server_says_not_to_retry_is_read_past_the_attempt_timeout() {
    let (err, keys) = slow_api_errors(&[("stripe-should-retry", "false")]).await;

    assert_eq!(keys.len(), 1, "the server said a retry cannot help: {err}");
    assert_eq!(classes(&err), [Class::ServerError]);
    assert_eq!(err.report().stop_reason(), StopReason::ServerRefusedRetry);
    assert!(err.is_indeterminate(), "{err}");
    assert_eq!(
        err.stripe_error().and_then(|e| e.message.as_deref()),
        Some("saved 500")
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_or_attempt_timeout_under_a_millisecond_is_refused_not_raised() {
    let under = Duration::from_micros(999);
    let rows = [
        (
            builder().deadline(Duration::ZERO),
            ConfigError::Deadline(Duration::ZERO),
            "a deadline of 0ns is under the shortest accepted, 1ms",
        ),
        (
            builder().deadline(under),
            ConfigError::Deadline(under),
            "a deadline of 999\u{b5}s is under the shortest accepted, 1ms",
        ),
        (
            builder().attempt_timeout(Duration::ZERO),
            ConfigError::AttemptTimeout(Duration::ZERO),
            "an attempt timeout of 0ns is under the shortest accepted, 1ms",
        ),
        (
            builder().attempt_timeout(under),
            ConfigError::AttemptTimeout(under),
            "an attempt timeout of 999\u{b5}s is under the shortest accepted, 1ms",
        ),
    ];
    for (settings, expected, message) in rows {
        let refused = settings.build().unwrap_err();
        assert_eq!(refused, expected);
        assert_eq!(refused.to_string(), message);
    }

    // Per call, the call is rejected before anything is sent.
    let per_call = [
        (
            CallOptions::new().deadline(Duration::ZERO),
            ConfigError::Deadline(Duration::ZERO),
        ),
        (
            CallOptions::new().attempt_timeout(Duration::ZERO),
            ConfigError::AttemptTimeout(Duration::ZERO),
        ),
        (
            CallOptions::new().attempt_timeout(under),
            ConfigError::AttemptTimeout(under),
        ),
    ];
    for (options, expected) in per_call {
        assert_eq!(rejected_before_sending(options).await, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn a_one_millisecond_deadline_and_attempt_timeout_are_kept_as_given() {
    let ms = Duration::from_millis(1);
    let settings = || builder().deadline(ms).attempt_timeout(ms);

    // The shortest accepted: a 0.5 ms answer fits in it.
    let inner = Scripted::new(repeat(Step::ok().after(Duration::from_micros(500)), 3));
    let res = stack_with(inner.clone(), settings())
        .oneshot(post_charge())
        .await;
    assert!(res.is_ok(), "a 0.5 ms answer fits in 1 ms");
    assert_eq!(inner.calls(), 1);

    // And not raised: a 2 ms answer does not.
    let inner = Scripted::new(repeat(Step::ok().after(ms * 2), 3));
    let start = Instant::now();
    let err = stack_with(inner.clone(), settings())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), ms, "{err}");
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_backoff_still_waits_a_timer_tick_so_the_deadline_ends_the_call() {
    // No budget, no attempt limit to speak of, a zero backoff: only the deadline can end
    // the call. Each retry waits one tick (1 ms) of the paused clock, so it does, after
    // about a thousand attempts rather than never.
    let deadline = Duration::from_secs(1);
    let inner = Scripted::new(repeat(Step::status(503), 2000));
    let svc = stack_with(
        inner.clone(),
        builder()
            .base_delay(Duration::ZERO)
            .max_attempts(u32::MAX)
            .without_retry_budget()
            .deadline(deadline),
    );

    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert!(start.elapsed() < deadline);
    assert!(inner.calls() < 1000, "{} attempts", inner.calls());
    assert!(inner.calls() > 900, "{} attempts", inner.calls());
}
