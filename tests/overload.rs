//! Overload safety: the retry budget, adaptive throttling, and the outcome of a call
//! whose attempts disagree. Paused tokio time throughout, and every jitter drawn from a
//! seeded RNG; the two overload figures (retry amplification under a total outage, and
//! the share of requests a rate-limited server turns away) are printed (run with
//! `--nocapture` to see them).

mod common;

use bytes::Bytes;
use common::{builder, post_charge, request, stack_with, Scripted, Step};
use http::{Method, Request, Response};
use http_body_util::Full;
use resilient_http::backoff::ExponentialBackoff;
use resilient_http::budget::RetryBudget;
use resilient_http::retry::Builder;
use resilient_http::stripe::StripeClassifier;
use resilient_http::throttle::Throttled;
use resilient_http::{BoxError, CallOptions, ConfigError, Error, Outcome, RetryLayer, StopReason};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// Sends `req` through the whole stack with the retry layer `settings` make over `inner`,
/// and expects the call to fail.
async fn fail(
    settings: Builder<StripeClassifier>,
    inner: Scripted,
    req: Request<Full<Bytes>>,
) -> Error {
    match stack_with(inner, settings).oneshot(req).await {
        Ok(res) => panic!("expected an error, got {}", res.status()),
        Err(e) => e,
    }
}

/// A budget with `ratio` and `reserve`, both valid.
fn budget(ratio: f64, reserve: u32) -> RetryBudget {
    RetryBudget::new(ratio, reserve).expect("a valid budget")
}

/// Stripe's defaults as a user gets them (base 500 ms, cap 5 s, full jitter, the default
/// budget), except that the jitter is drawn from RNGs seeded from `seed`, so that every
/// run sees the same delays.
fn stripe_defaults(seed: u64) -> Builder<StripeClassifier> {
    RetryLayer::builder().backoff(ExponentialBackoff::stripe().seeded(seed))
}

fn unavailable() -> Step {
    Step::status(503)
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_ends_the_call_at_once_as_gave_up() {
    let inner = Scripted::new([Step::stripe(429, "invalid_request_error", "rate_limit")]);
    let layer = builder().retry_budget(budget(0.0, 0));
    let svc = stack_with(inner.clone(), layer);
    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(err.report().stop_reason(), StopReason::BudgetExhausted);
    assert_eq!(inner.calls(), 1);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "an empty budget never waits"
    );
    assert_eq!(err.status().map(|s| s.as_u16()), Some(429));
    assert!(err.to_string().contains("retry budget exhausted"), "{err}");
}

#[test]
fn a_budget_ratio_that_is_not_a_share_is_refused() {
    for ratio in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let refused = RetryBudget::new(ratio, 10).map(|_| ()).unwrap_err();
        assert!(
            matches!(refused, ConfigError::Ratio(r) if r.to_bits() == ratio.to_bits()),
            "{ratio}: {refused:?}"
        );
        assert!(
            refused.to_string().contains("not a share from 0 to 1"),
            "{refused}"
        );
    }
    for ratio in [0.0, 0.1, 1.0] {
        let budget = budget(ratio, 10);
        assert_eq!(budget.ratio(), ratio);
        assert_eq!(
            budget.available(),
            10.0,
            "a new budget starts with its reserve"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_keeps_an_indeterminate_call_indeterminate() {
    let inner = Scripted::new([unavailable()]);
    let layer = builder().retry_budget(budget(0.0, 0));
    let err = fail(layer, inner.clone(), post_charge()).await;
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::BudgetExhausted);
    assert!(err.idempotency_key().is_some());
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_share_one_budget() {
    // A reserve of two retries, no deposits: three failing calls on three clones.
    let inner = Scripted::new(std::iter::repeat_n(unavailable(), 20));
    let layer = builder().max_attempts(5).retry_budget(budget(0.0, 2));
    let svc = stack_with(inner.clone(), layer);
    for _ in 0..3 {
        let err = svc.clone().oneshot(post_charge()).await.unwrap_err();
        assert!(err.is_indeterminate());
    }
    assert_eq!(
        inner.calls(),
        3 + 2,
        "three first attempts, two retries in all"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_budget_every_attempt_is_made() {
    let inner = Scripted::new(std::iter::repeat_n(unavailable(), 20));
    let layer = builder()
        .max_attempts(4)
        .retry_budget(budget(0.0, 0))
        .without_retry_budget();
    let err = fail(layer, inner.clone(), post_charge()).await;
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(inner.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_then_a_conflict_is_indeterminate() {
    // The first attempt is still running on the server when the timeout fires; the retry
    // finds its key in use (409) and the attempts run out. The first may have charged.
    let inner = Scripted::new([
        Step::ok().after(Duration::from_secs(10)),
        Step::stripe(409, "idempotency_error", "idempotency_key_in_use"),
    ]);
    let layer = builder()
        .max_attempts(2)
        .attempt_timeout(Duration::from_secs(1));
    let err = fail(layer, inner.clone(), post_charge()).await;
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409));
    assert!(err.idempotency_key().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_then_a_decline_is_a_definite_failure() {
    let inner = Scripted::new([
        Step::status(429),
        Step::stripe(402, "card_error", "card_declined"),
    ]);
    let err = fail(builder(), inner, post_charge()).await;
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_timed_out_then_got_a_404_stays_indeterminate() {
    // Stripe's everyday case: the delete ran but its answer was lost; the retry finds
    // nothing to delete. The 404 says nothing about the first attempt, key or not (Stripe
    // ignores keys on DELETE). A GET that timed out changed nothing, so its 404 stands.
    for (method, key, expected) in [
        (Method::DELETE, None, Outcome::Indeterminate),
        (Method::DELETE, Some("cus_1/delete"), Outcome::Indeterminate),
        (Method::PUT, None, Outcome::Indeterminate),
        (Method::GET, None, Outcome::DefiniteFailure),
    ] {
        let inner = Scripted::new([
            Step::ok().after(Duration::from_secs(10)),
            Step::stripe(404, "invalid_request_error", "resource_missing"),
        ]);
        let layer = builder().attempt_timeout(Duration::from_secs(1));
        let mut req = request(method.clone());
        if let Some(key) = key {
            req.headers_mut()
                .insert("idempotency-key", http::HeaderValue::from_static(key));
        }
        let err = fail(layer, inner.clone(), req).await;
        assert_eq!(inner.calls(), 2, "{method}");
        assert_eq!(err.outcome(), expected, "{method} {key:?}: {err}");
        assert_eq!(err.report().stop_reason(), StopReason::Final);
        assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    }
}

#[tokio::test(start_paused = true)]
async fn a_keyed_post_that_timed_out_is_settled_only_by_an_answer_for_the_first_attempt() {
    // With the same key, Stripe answers a replay for the first attempt, from past its
    // idempotency layer: its 400 or decline means the first never did the work. A 401 or
    // 403 (the API key rolled between attempts), or a 3xx or 4xx without Stripe's error
    // object (from a proxy), is refused before that layer and says nothing about the
    // first attempt.
    for (second, expected) in [
        (
            Step::stripe(400, "invalid_request_error", "parameter_missing"),
            Outcome::DefiniteFailure,
        ),
        (
            Step::stripe(402, "card_error", "card_declined"),
            Outcome::DefiniteFailure,
        ),
        (
            Step::stripe(400, "idempotency_error", ""),
            Outcome::DefiniteFailure,
        ),
        (
            Step::stripe(401, "invalid_request_error", ""),
            Outcome::Indeterminate,
        ),
        (
            Step::stripe(403, "invalid_request_error", ""),
            Outcome::Indeterminate,
        ),
        (Step::status(302), Outcome::Indeterminate),
        (Step::status(400), Outcome::Indeterminate),
        // A gateway's lookalike error object, not one of Stripe's types.
        (Step::stripe(400, "bad_gateway", ""), Outcome::Indeterminate),
    ] {
        let inner = Scripted::new([Step::ok().after(Duration::from_secs(10)), second]);
        let layer = builder().attempt_timeout(Duration::from_secs(1));
        let err = fail(layer, inner.clone(), post_charge()).await;
        assert_eq!(inner.calls(), 2);
        assert_eq!(err.outcome(), expected, "{err}");
        assert!(err.idempotency_key().is_some(), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_error_then_a_rate_limit_stays_indeterminate() {
    let inner = Scripted::new([unavailable(), Step::status(429)]);
    let layer = builder().max_attempts(2);
    let err = fail(layer, inner, post_charge()).await;
    assert_eq!(err.outcome(), Outcome::Indeterminate);
}

#[tokio::test(start_paused = true)]
async fn a_retry_the_throttle_refuses_gives_its_budget_token_back() {
    // Two calls rate limited at once: the throttle turns on at its floor, and neither
    // retry can get a send slot within the queue limit. No retry was sent, so the budget
    // must be as full as before.
    let budget = budget(0.0, 2);
    let inner = Scripted::new([Step::status(429), Step::status(429), Step::ok(), Step::ok()]);
    let layer = builder().retry_budget(budget.clone()).adaptive_throttling();
    let svc = stack_with(inner.clone(), layer);
    let (a, b) = tokio::join!(
        svc.clone().oneshot(post_charge()),
        svc.clone().oneshot(post_charge())
    );
    let refused = [a, b]
        .into_iter()
        .filter_map(Result::err)
        .filter(|e| e.report().stop_reason() == StopReason::Throttled)
        .inspect(|e| {
            // The message is the call's report; the throttle's reason lies under it.
            assert!(e.to_string().contains("throttled"), "{e}");
            let why = e
                .underlying_error()
                .and_then(|u| u.downcast_ref::<Throttled>());
            assert!(matches!(why, Some(Throttled::QueueFull(_))), "{e:?}");
            assert!(why.unwrap().to_string().contains("queue limit"), "{e:?}");
            // The last response (the 429) is handed back, as on every stop.
            assert_eq!(e.status().map(|s| s.as_u16()), Some(429));
        })
        .count();
    assert!(refused >= 1, "at least one retry was refused a slot");
    assert_eq!(
        budget.available(),
        2.0 - (inner.calls() - 2) as f64,
        "only retries actually sent cost a token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_it_backs_off_gives_its_budget_token_back() {
    let budget = budget(0.0, 1);
    let inner = Scripted::new([unavailable(), Step::ok()]);
    let svc = stack_with(inner.clone(), builder().retry_budget(budget.clone()));
    // The first attempt fails at once; the retry waits 100 ms; the caller gives up at 50.
    let res = tokio::time::timeout(Duration::from_millis(50), svc.oneshot(post_charge())).await;
    assert!(res.is_err(), "dropped mid-sleep");
    assert_eq!(inner.calls(), 1);
    assert_eq!(budget.available(), 1.0, "the unsent retry's token is back");
}

/// Offers `calls` calls, ten a second, to a server that answers 503 to everything, and
/// returns attempts sent per call offered.
async fn outage_amplification(settings: Builder<StripeClassifier>, calls: usize) -> f64 {
    let inner = Scripted::new(std::iter::repeat_n(unavailable(), calls * 10));
    let svc = stack_with(inner.clone(), settings);
    let mut tasks = Vec::with_capacity(calls);
    for _ in 0..calls {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.oneshot(post_charge()).await.map(|_| ())
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        let err = task.await.expect("no panic").unwrap_err();
        assert!(err.is_indeterminate(), "{err}");
    }
    inner.calls() as f64 / calls as f64
}

#[tokio::test(start_paused = true)]
async fn under_a_total_outage_the_budget_keeps_load_near_what_was_offered() {
    const CALLS: usize = 1_000;
    // Stripe's timings, as a user gets them (jitter seeded alike); only the budget differs.
    let budget = outage_amplification(stripe_defaults(5), CALLS).await;
    let naive = outage_amplification(stripe_defaults(5).without_retry_budget(), CALLS).await;
    println!("amplification: budget={budget:.2} naive={naive:.2}");
    assert!(budget <= 1.2, "budget amplification {budget}");
    assert!(
        budget >= 1.05,
        "the budget still allows ~10% retries: {budget}"
    );
    assert!((naive - 3.0).abs() < 1e-9, "naive amplification {naive}");
}

/// A server that accepts `rate` requests per second (fixed one-second windows) and answers
/// 429 `rate_limit` to the rest.
#[derive(Clone)]
struct Capped {
    rate: u32,
    start: Instant,
    log: Arc<Mutex<CappedLog>>,
}

#[derive(Default)]
struct CappedLog {
    window: u64,
    in_window: u32,
    // (second since start, accepted)
    answers: Vec<(u64, bool)>,
}

impl Capped {
    fn new(rate: u32) -> Self {
        Capped {
            rate,
            start: Instant::now(),
            log: Arc::default(),
        }
    }

    fn answer(&self) -> Response<Full<Bytes>> {
        let second = self.start.elapsed().as_secs();
        let mut log = self.log.lock().unwrap();
        if log.window != second {
            log.window = second;
            log.in_window = 0;
        }
        let accepted = log.in_window < self.rate;
        log.in_window += u32::from(accepted);
        log.answers.push((second, accepted));
        let (status, body) = if accepted {
            (200, r#"{"id":"ch_1"}"#)
        } else {
            (
                429,
                r#"{"error":{"type":"invalid_request_error","code":"rate_limit"}}"#,
            )
        };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    /// From second `from` to `to`: the share of requests the server turned away, and the
    /// share of its capacity it used.
    fn steady_state(&self, from: u64, to: u64) -> (f64, f64) {
        let log = self.log.lock().unwrap();
        let steady: Vec<_> = log
            .answers
            .iter()
            .filter(|(s, _)| (from..to).contains(s))
            .collect();
        let accepted = steady.iter().filter(|(_, ok)| *ok).count();
        let rejected = steady.len() - accepted;
        let capacity = f64::from(self.rate) * (to - from) as f64;
        (
            rejected as f64 / steady.len().max(1) as f64,
            accepted as f64 / capacity,
        )
    }
}

impl Service<Request<Full<Bytes>>> for Capped {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Ok(self.answer()))
    }
}

/// Offers five times what a server capped at 40 requests a second accepts, for a minute,
/// and returns the calls offered, and the server's rejected share and used share of its
/// capacity over the last half.
async fn offered_five_times_capacity(settings: Builder<StripeClassifier>) -> (usize, f64, f64) {
    const RATE: u32 = 40;
    const SECONDS: u64 = 60;
    let server = Capped::new(RATE);
    let start = Instant::now();
    let svc = stack_with(server.clone(), settings.deadline(Duration::from_secs(10)));
    let offered_per_second = 5 * RATE as u64;
    let gap = Duration::from_micros(1_000_000 / offered_per_second);
    let mut tasks = Vec::new();
    while start.elapsed() < Duration::from_secs(SECONDS) {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.oneshot(post_charge()).await.map(|_| ())
        }));
        tokio::time::sleep(gap).await;
    }
    let offered = tasks.len();
    for task in tasks {
        // Every call ends (success, or gave up while retryable): none is lost.
        let _ = task.await.expect("no panic");
    }
    let (rejected, used) = server.steady_state(SECONDS / 2, SECONDS);
    (offered, rejected, used)
}

#[tokio::test(start_paused = true)]
async fn adaptive_throttling_stops_a_client_hammering_a_rate_limited_server() {
    let (offered, off, used_off) = offered_five_times_capacity(stripe_defaults(40)).await;
    println!("throttling: offered={offered} rejected_by_server={off:.2} adaptive=off");
    let (offered, on, used_on) =
        offered_five_times_capacity(stripe_defaults(40).adaptive_throttling()).await;
    println!("throttling: offered={offered} rejected_by_server={on:.2} adaptive=on");
    println!("throttling: capacity_used off={used_off:.2} on={used_on:.2}");
    assert!(
        off > 0.5,
        "without throttling most requests are turned away: {off}"
    );
    assert!(on <= 0.10, "with throttling the server rejects {on}");
    // Not by starving the client: it still uses most of what the server allows.
    assert!(
        used_on >= 0.5,
        "with throttling the server's capacity used is {used_on}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_call_that_would_wait_past_its_deadline_ends_at_once() {
    // One 429 turns pacing on at its floor (one token, then one every two seconds).
    let inner = Scripted::new([Step::status(429), Step::ok(), Step::ok(), Step::ok()]);
    let layer = builder()
        .adaptive_throttling()
        .deadline(Duration::from_secs(1));
    let svc = stack_with(inner.clone(), layer);
    let first = svc.clone().oneshot(post_charge()).await;
    assert!(first.is_ok(), "the retry used the bucket's one token");
    let start = Instant::now();
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(err.report().stop_reason(), StopReason::Throttled);
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert!(err.report().attempts().is_empty(), "nothing was sent");
    assert_eq!(start.elapsed(), Duration::ZERO, "it did not wait");
    assert_eq!(inner.calls(), 2);
    // The next slot is two seconds away: past the deadline (and over the queue limit).
    let why = err
        .underlying_error()
        .and_then(|u| u.downcast_ref::<Throttled>());
    let wait = match why {
        Some(Throttled::QueueFull(wait) | Throttled::Deadline(wait)) => *wait,
        other => panic!("{other:?}"),
    };
    assert!(wait > Duration::from_secs(1), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_call_whose_next_slot_comes_after_its_own_deadline_ends_at_once() {
    // As above, but the second call comes 1.5 s later: its slot is half a second away,
    // within the queue limit (1 s), and past the call's own deadline of 250 ms.
    let inner = Scripted::new([Step::status(429), Step::ok(), Step::ok(), Step::ok()]);
    let svc = stack_with(inner.clone(), builder().adaptive_throttling());
    let first = svc.clone().oneshot(post_charge()).await;
    assert!(first.is_ok(), "the retry used the bucket's one token");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut req = post_charge();
    req.extensions_mut()
        .insert(CallOptions::new().deadline(Duration::from_millis(250)));
    let start = Instant::now();
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(err.report().stop_reason(), StopReason::Throttled);
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert!(err.report().attempts().is_empty(), "nothing was sent");
    assert_eq!(start.elapsed(), Duration::ZERO, "it did not wait");
    let why = err
        .underlying_error()
        .and_then(|u| u.downcast_ref::<Throttled>());
    assert_eq!(why, Some(&Throttled::Deadline(Duration::from_millis(500))));
    assert!(
        why.unwrap().to_string().contains("past the deadline"),
        "{err:?}"
    );
    // Without that deadline, the same call waits for its slot and is sent.
    let start = Instant::now();
    let res = svc.oneshot(post_charge()).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(500),
        "it waited for its slot"
    );
    assert_eq!(inner.calls(), 3);
}

/// A shared send limit that asks every attempt to wait `wait`, or refuses past `latest`;
/// it counts the slots it gives.
#[derive(Clone)]
struct FixedWait {
    wait: Duration,
    given: Arc<Mutex<Vec<Instant>>>,
}

#[derive(Debug)]
struct NoSlot;

impl std::fmt::Display for NoSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no fleet slot before the deadline")
    }
}

impl std::error::Error for NoSlot {}

impl resilient_http::retry::SendLimit for FixedWait {
    fn reserve(&self, now: Instant, latest: Instant) -> Result<Duration, BoxError> {
        if now + self.wait >= latest {
            return Err(Box::new(NoSlot));
        }
        self.given.lock().unwrap().push(now);
        Ok(self.wait)
    }
}

#[tokio::test(start_paused = true)]
async fn a_shared_send_limit_paces_every_attempt_once() {
    let limit = FixedWait {
        wait: Duration::from_millis(300),
        given: Arc::default(),
    };
    let inner = Scripted::new([Step::status(429), Step::ok()]);
    let svc = stack_with(inner.clone(), builder().send_limit(limit.clone()));
    let start = Instant::now();
    let res = svc.oneshot(post_charge()).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = inner.seen();
    // Attempt 1 waits for its slot; attempt 2 backs off (100 ms), then waits for its own.
    assert_eq!(seen[0].at - start, Duration::from_millis(300));
    assert_eq!(seen[1].at - start, Duration::from_millis(300 + 100 + 300));
    assert_eq!(limit.given.lock().unwrap().len(), 2, "one slot per attempt");
}

#[tokio::test(start_paused = true)]
async fn a_shared_send_limit_that_refuses_ends_the_call_before_sending() {
    let limit = FixedWait {
        wait: Duration::from_secs(100),
        given: Arc::default(),
    };
    let inner = Scripted::new([Step::ok()]);
    let svc = stack_with(inner.clone(), builder().send_limit(limit));
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(err.report().stop_reason(), StopReason::Throttled);
    assert!(err.underlying_error().unwrap().is::<NoSlot>());
    assert_eq!(inner.calls(), 0, "nothing sent");
}
