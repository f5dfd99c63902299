//! The Stripe classification table, row by row, through the whole stack (keys + retry)
//! over a scripted inner service, on paused tokio time. With `Jitter::None`, retry n
//! sleeps exactly `BASE * 2^(n-1)` (capped at `CAP`), so every gap between attempts is
//! asserted exactly.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use resilient_http::backoff::ExponentialBackoff;
use resilient_http::stripe::{Category, ErrorCode, ErrorType};
use resilient_http::{CallReport, Class, Elapsed, Error, Jitter, Outcome, RetryLayer, StopReason};
use std::io;
use std::time::Duration;
use tower::{Layer, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The gaps of a call that used every one of its 3 default attempts, without hints.
fn full_backoff() -> Vec<Duration> {
    vec![BASE, BASE * 2]
}

/// Sends one request through `stack(inner)`.
async fn send(
    inner: &Scripted,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<resilient_http::body::ResponseBody<Full<Bytes>>>, Error> {
    stack(inner.clone()).oneshot(req).await
}

/// Sends one request and expects an error.
async fn fail(inner: &Scripted, req: Request<Full<Bytes>>) -> Error {
    match send(inner, req).await {
        Ok(res) => panic!(
            "expected an error, got {} with {:?}",
            res.status(),
            res.body().report()
        ),
        Err(e) => e,
    }
}

/// Sends one request and expects success; returns its report.
async fn succeed(inner: &Scripted, req: Request<Full<Bytes>>) -> CallReport {
    let res = send(inner, req)
        .await
        .unwrap_or_else(|e| panic!("expected success, got {e}"));
    assert_eq!(res.status(), StatusCode::OK);
    let report = res
        .body()
        .report()
        .expect("a successful response carries its CallReport")
        .clone();
    assert_eq!(report.outcome(), Outcome::Success);
    assert_eq!(report.stop_reason(), StopReason::Final);
    report
}

/// Asserts that every attempt carried the same, present key, and returns it.
fn one_key(inner: &Scripted) -> String {
    let keys = inner.keys();
    let first = keys[0].clone().expect("a POST carries an Idempotency-Key");
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(k.as_deref(), Some(first.as_str()), "attempt {} key", i + 1);
    }
    first
}

fn classes(report: &CallReport) -> Vec<Class> {
    report.attempts().iter().map(|a| a.class).collect()
}

fn request_ids(report: &CallReport) -> Vec<String> {
    report.request_ids().map(|id| id.to_string()).collect()
}

fn assert_outcome(e: &Error, outcome: Outcome) {
    assert_eq!(e.outcome(), outcome, "{e}");
    assert_eq!(e.report().outcome(), outcome);
    assert_eq!(e.is_indeterminate(), outcome == Outcome::Indeterminate);
    assert_eq!(e.is_definite_failure(), outcome == Outcome::DefiniteFailure);
    assert_eq!(e.is_gave_up(), outcome == Outcome::GaveUp);
}

/// Asserts that a call made all 3 of its attempts, each classified as `class` and a full
/// backoff apart, and ended in `outcome` because the attempts ran out.
fn assert_exhausted(inner: &Scripted, e: &Error, outcome: Outcome, class: Class) {
    assert_eq!(inner.calls(), 3);
    assert_eq!(inner.gaps(), full_backoff());
    assert_outcome(e, outcome);
    assert_eq!(e.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(classes(e.report()), vec![class; 3]);
}

/// Asserts that a call was attempted exactly once, classified as `class`, and ended there
/// in `outcome` because that attempt's answer was final.
fn assert_attempted_once(inner: &Scripted, e: &Error, outcome: Outcome, class: Class) {
    assert_eq!(inner.calls(), 1);
    assert!(inner.gaps().is_empty());
    assert_outcome(e, outcome);
    assert_eq!(e.report().stop_reason(), StopReason::Final);
    assert_eq!(classes(e.report()), vec![class]);
}

/// Asserts that a call was attempted exactly once, classified as `class`, and ended there
/// in `outcome` because the server said a retry cannot help (`Stripe-Should-Retry: false`)
/// about an answer that would otherwise have been retried.
fn assert_refused_once(inner: &Scripted, e: &Error, outcome: Outcome, class: Class) {
    assert_eq!(inner.calls(), 1);
    assert!(inner.gaps().is_empty());
    assert_outcome(e, outcome);
    assert_eq!(e.report().stop_reason(), StopReason::ServerRefusedRetry);
    assert_eq!(classes(e.report()), vec![class]);
    assert!(
        e.to_string().contains("server said a retry cannot help"),
        "the report line says who stopped the retries: {e}"
    );
}

// ---------------------------------------------------------------------------------------
// rate_limit / lock_timeout / 429 / 409: retried with backoff, "gave up" when exhausted
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn rate_limit_429_is_retried_with_backoff_then_gives_up() {
    let inner = Scripted::new(vec![
        Step::stripe(429, "invalid_request_error", "rate_limit");
        3
    ]);
    let start = tokio::time::Instant::now();
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::GaveUp, Class::RateLimited);
    // No sleep after the last attempt: the call took exactly its two backoffs.
    assert_eq!(start.elapsed(), BASE + BASE * 2);
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    let stripe = e.stripe_error().expect("the 429 body is parsed");
    assert_eq!(stripe.code, Some(ErrorCode::RateLimit));
    assert_eq!(stripe.category(), Category::RateLimited);
    let key = one_key(&inner);
    assert_eq!(e.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_429_then_success_is_ok_after_one_retry() {
    let inner = Scripted::new([
        Step::stripe(429, "invalid_request_error", "rate_limit"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(classes(&report), vec![Class::RateLimited, Class::Success]);
    assert_eq!(report.attempts()[0].delay, Some(BASE));
    assert_eq!(report.attempts()[1].delay, None);
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_429_is_retried_with_backoff_then_gives_up() {
    let inner = Scripted::new(vec![
        Step::stripe(
            429,
            "invalid_request_error",
            "lock_timeout"
        );
        3
    ]);
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::GaveUp, Class::Locked);
    assert_eq!(e.stripe_error().unwrap().code, Some(ErrorCode::LockTimeout));
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_then_success_is_ok() {
    let inner = Scripted::new([
        Step::stripe(429, "invalid_request_error", "lock_timeout"),
        Step::stripe(429, "invalid_request_error", "lock_timeout"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 3);
    assert_eq!(inner.gaps(), full_backoff());
    assert_eq!(report.attempts().len(), 3);
    let key = one_key(&inner);
    assert_eq!(report.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn status_429_without_body_is_retried_then_gives_up() {
    let inner = Scripted::new(vec![Step::status(429); 3]);
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::GaveUp, Class::RateLimited);
    assert!(e.stripe_error().is_none(), "no body, no Stripe error");
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn status_429_with_a_non_json_body_is_retried() {
    let inner = Scripted::new([
        Step::body(429, "<html>Too Many Requests</html>"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_eq!(report.attempts()[0].class, Class::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn conflict_409_is_retried_with_backoff_then_gives_up() {
    let inner = Scripted::new(vec![Step::status(409); 3]);
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::GaveUp, Class::Conflict);
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn conflict_409_with_stripes_key_in_use_body_is_retried_then_succeeds() {
    // Stripe answers a concurrent request with the same key like this.
    let inner = Scripted::new([
        Step::stripe(409, "idempotency_error", "idempotency_key_in_use"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_eq!(classes(&report), vec![Class::Conflict, Class::Success]);
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn a_409_key_in_use_that_persists_is_gave_up_and_not_called_a_caller_bug() {
    let inner = Scripted::new(vec![
        Step::stripe(
            409,
            "idempotency_error",
            "idempotency_key_in_use"
        );
        3
    ]);
    let e = fail(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 3);
    assert_outcome(&e, Outcome::GaveUp);
    assert!(
        !e.is_idempotency_error(),
        "a concurrent request is transient"
    );
    assert!(!e.to_string().contains("bug in the caller"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Definite failures: attempted exactly once
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn idempotency_error_400_is_never_retried() {
    let body = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#;
    let inner = Scripted::new([Step::body(400, body), Step::ok()]);
    let e = fail(&inner, post_charge()).await;
    assert_attempted_once(&inner, &e, Outcome::DefiniteFailure, Class::KeyReused);
    assert!(e.is_idempotency_error());
    assert_eq!(e.stripe_error().unwrap().category(), Category::Idempotency);
    let shown = e.to_string();
    assert!(
        shown.contains("bug in the caller"),
        "the error says it is the caller's bug: {shown}"
    );
}

#[tokio::test(start_paused = true)]
async fn idempotency_error_is_not_retried_even_with_should_retry_true() {
    let inner = Scripted::new([
        Step::stripe(400, "idempotency_error", "").header("stripe-should-retry", "true"),
        Step::ok(),
    ]);
    let e = fail(&inner, post_charge()).await;
    assert_attempted_once(&inner, &e, Outcome::DefiniteFailure, Class::KeyReused);
    assert!(e.is_idempotency_error());
}

#[tokio::test(start_paused = true)]
async fn card_errors_402_are_never_retried() {
    let cases = [
        (
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds.","param":""}}"#,
            Some(ErrorCode::CardDeclined),
            Some("insufficient_funds"),
            Category::CardDeclined,
        ),
        (
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"fraudulent","message":"Your card was declined."}}"#,
            Some(ErrorCode::CardDeclined),
            Some("fraudulent"),
            Category::CardBlocked,
        ),
        (
            r#"{"error":{"type":"card_error","code":"expired_card","message":"Your card has expired.","param":"exp_month"}}"#,
            Some(ErrorCode::ExpiredCard),
            None,
            Category::CardOther,
        ),
    ];
    for (body, code, decline, category) in cases {
        let inner = Scripted::new([
            Step::body(402, body).header("request-id", "req_card"),
            Step::ok(),
        ]);
        let e = fail(&inner, post_charge()).await;
        println!("case: {body}");
        assert_attempted_once(&inner, &e, Outcome::DefiniteFailure, Class::Declined);
        assert_eq!(e.status(), Some(StatusCode::PAYMENT_REQUIRED));
        let stripe = e.stripe_error().expect("card error parsed");
        assert_eq!(stripe.error_type, ErrorType::CardError);
        assert_eq!(stripe.code, code);
        assert_eq!(stripe.decline_code.as_deref(), decline);
        assert_eq!(stripe.category(), category);
        assert_eq!(stripe.request_id.as_ref().unwrap().to_string(), "req_card");
        assert!(!e.is_idempotency_error());
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_request_errors_are_never_retried() {
    // A 401 or 403 is the credentials' fault whatever the code: the class and the
    // category of Stripe's guide agree on it.
    let cases = [
        (
            400,
            "parameter_missing",
            Class::Rejected,
            Category::InvalidRequest,
        ),
        (
            400,
            "secret_key_required",
            Class::Unauthorized,
            Category::Authentication,
        ),
        (401, "", Class::Unauthorized, Category::Authentication),
        (
            401,
            "secret_key_required",
            Class::Unauthorized,
            Category::Authentication,
        ),
        (403, "", Class::Unauthorized, Category::Authentication),
        (
            404,
            "resource_missing",
            Class::Rejected,
            Category::InvalidRequest,
        ),
    ];
    for (status, code, class, category) in cases {
        let inner = Scripted::new([
            Step::stripe(status, "invalid_request_error", code),
            Step::ok(),
        ]);
        let e = fail(&inner, post_charge()).await;
        println!("case: {status} {code}");
        assert_attempted_once(&inner, &e, Outcome::DefiniteFailure, class);
        assert_eq!(e.status().map(|s| s.as_u16()), Some(status));
        let stripe = e.stripe_error().expect("parsed");
        assert_eq!(stripe.error_type, ErrorType::InvalidRequestError);
        assert_eq!(
            stripe.code.as_ref().map(|c| c.as_str().to_owned()),
            (!code.is_empty()).then(|| code.to_owned())
        );
        assert_eq!(stripe.category(), category, "{status} {code}");
        assert_eq!(stripe.http_status.map(|s| s.as_u16()), Some(status));
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_request_errors_on_get_are_never_retried_either() {
    for status in [400, 401, 403, 404] {
        let inner = Scripted::new([
            Step::stripe(status, "invalid_request_error", ""),
            Step::ok(),
        ]);
        let e = fail(&inner, request(Method::GET)).await;
        assert_eq!(inner.calls(), 1, "{status}");
        assert_outcome(&e, Outcome::DefiniteFailure);
    }
}

// ---------------------------------------------------------------------------------------
// api_error and 5xx
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn api_error_500_on_post_is_retried_with_the_same_key_then_indeterminate() {
    // Stripe saves a keyed request's 500 once its endpoint has begun to run, so a replay
    // with the same key cannot do the work twice: it is retried, and when the attempts run
    // out the work may or may not have happened.
    let inner = Scripted::new(
        (1..=3)
            .map(|n| Step::stripe(500, "api_error", "").header("request-id", format!("req_{n}"))),
    );
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::Indeterminate, Class::ServerError);
    // Every attempt carried the one key, and the error carries it and every request id,
    // for reconciliation.
    let key = one_key(&inner);
    assert_eq!(e.idempotency_key().unwrap().as_str(), key);
    assert_eq!(e.report().idempotency_key().unwrap().as_str(), key);
    assert_eq!(request_ids(e.report()), vec!["req_1", "req_2", "req_3"]);
    assert!(!e.is_idempotency_error());
    let stripe = e.stripe_error().unwrap();
    assert_eq!(stripe.error_type, ErrorType::ApiError);
    assert_eq!(stripe.category(), Category::Api);
    assert_eq!(stripe.request_id.as_ref().unwrap().to_string(), "req_3");
    assert_eq!(stripe.http_status, Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
}

#[tokio::test(start_paused = true)]
async fn api_error_500_then_success_is_ok_with_the_same_key() {
    let inner = Scripted::new([
        Step::stripe(500, "api_error", "").header("request-id", "req_500"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_eq!(classes(&report), vec![Class::ServerError, Class::Success]);
    assert_eq!(request_ids(&report), vec!["req_500"]);
    let key = one_key(&inner);
    assert_eq!(report.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn api_error_500_on_patch_is_retried_with_the_same_key_too() {
    let inner = Scripted::new(vec![Step::stripe(500, "api_error", ""); 3]);
    let req = Request::patch("http://stripe.test/v1/customers/cus_1")
        .body(Full::new(Bytes::from_static(b"name=x")))
        .unwrap();
    let e = fail(&inner, req).await;
    assert_exhausted(&inner, &e, Outcome::Indeterminate, Class::ServerError);
    assert!(inner.seen().iter().all(|s| s.method == Method::PATCH));
    let key = one_key(&inner);
    assert_eq!(key.len(), 36, "a generated UUID v4");
    assert_eq!(e.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn api_error_500_with_should_retry_false_stops_at_once_as_refused() {
    let inner = Scripted::new([
        Step::stripe(500, "api_error", "")
            .header("stripe-should-retry", "false")
            .header("request-id", "req_500"),
        Step::ok(),
    ]);
    let start = tokio::time::Instant::now();
    let e = fail(&inner, post_charge()).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep before stopping");
    // The server refused the retry, not the work: still indeterminate.
    assert_refused_once(&inner, &e, Outcome::Indeterminate, Class::ServerError);
    let key = one_key(&inner);
    assert_eq!(e.idempotency_key().unwrap().as_str(), key);
    assert_eq!(request_ids(e.report()), vec!["req_500"]);
    assert_eq!(e.stripe_error().unwrap().error_type, ErrorType::ApiError);
}

#[tokio::test(start_paused = true)]
async fn api_error_500_retried_then_refused_stops_with_the_same_key_on_every_attempt() {
    let inner = Scripted::new([
        Step::stripe(500, "api_error", "").header("request-id", "req_1"),
        Step::stripe(500, "api_error", "")
            .header("stripe-should-retry", "false")
            .header("request-id", "req_2"),
        Step::ok(),
    ]);
    let e = fail(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2, "no attempt after the refusal");
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_outcome(&e, Outcome::Indeterminate);
    assert_eq!(e.report().stop_reason(), StopReason::ServerRefusedRetry);
    assert_eq!(classes(e.report()), vec![Class::ServerError; 2]);
    assert_eq!(request_ids(e.report()), vec!["req_1", "req_2"]);
    let key = one_key(&inner);
    assert_eq!(e.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn api_error_500_with_should_retry_true_is_retried() {
    let inner = Scripted::new([
        Step::stripe(500, "api_error", "")
            .header("stripe-should-retry", "true")
            .header("request-id", "req_a"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_eq!(classes(&report), vec![Class::ServerError, Class::Success]);
    assert_eq!(request_ids(&report), vec!["req_a"]);
    let key = one_key(&inner);
    assert_eq!(report.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn api_error_500_with_should_retry_true_every_time_ends_indeterminate() {
    let inner = Scripted::new((1..=3).map(|n| {
        Step::stripe(500, "api_error", "")
            .header("stripe-should-retry", "true")
            .header("request-id", format!("req_{n}"))
    }));
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::Indeterminate, Class::ServerError);
    assert_eq!(request_ids(e.report()), vec!["req_1", "req_2", "req_3"]);
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn should_retry_false_on_a_429_stops_retrying() {
    let inner = Scripted::new([
        Step::stripe(429, "invalid_request_error", "rate_limit")
            .header("stripe-should-retry", "false"),
        Step::ok(),
    ]);
    let e = fail(&inner, post_charge()).await;
    // The work did not happen: still "gave up while retryable", but no retry was made.
    assert_refused_once(&inner, &e, Outcome::GaveUp, Class::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn should_retry_false_on_a_bare_429_stops_retrying() {
    let inner = Scripted::new([
        Step::status(429).header("stripe-should-retry", "false"),
        Step::ok(),
    ]);
    let e = fail(&inner, post_charge()).await;
    assert_refused_once(&inner, &e, Outcome::GaveUp, Class::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn should_retry_false_on_a_503_stops_and_stays_indeterminate() {
    let inner = Scripted::new([
        Step::status(503).header("stripe-should-retry", "false"),
        Step::ok(),
    ]);
    let e = fail(&inner, post_charge()).await;
    assert_refused_once(&inner, &e, Outcome::Indeterminate, Class::Unavailable);
}

#[tokio::test(start_paused = true)]
async fn gateway_and_bare_5xx_are_retried_with_the_same_key_then_indeterminate() {
    let cases: Vec<(&str, Step)> = vec![
        ("502 api_error", Step::stripe(502, "api_error", "")),
        ("503 api_error", Step::stripe(503, "api_error", "")),
        ("504 api_error", Step::stripe(504, "api_error", "")),
        ("502 bare", Step::status(502)),
        ("503 bare", Step::status(503)),
        ("504 html", Step::body(504, "<html>Gateway Timeout</html>")),
        ("500 bare", Step::status(500)),
        (
            "500 html",
            Step::body(500, "<html>Internal Server Error</html>"),
        ),
        ("599 bare", Step::status(599)),
    ];
    for (name, step) in cases {
        let steps = (1..=3).map(|n| step.clone().header("request-id", format!("req_{n}")));
        let inner = Scripted::new(steps);
        let e = fail(&inner, post_charge()).await;
        println!("case: {name}");
        assert_exhausted(&inner, &e, Outcome::Indeterminate, Class::Unavailable);
        let key = one_key(&inner);
        assert_eq!(e.idempotency_key().unwrap().as_str(), key, "{name}");
        assert_eq!(
            request_ids(e.report()),
            vec!["req_1", "req_2", "req_3"],
            "{name}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn bare_503_then_success_is_ok_with_the_same_key() {
    let inner = Scripted::new([Step::status(503), Step::status(502), Step::ok()]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 3);
    assert_eq!(inner.gaps(), full_backoff());
    let key = one_key(&inner);
    assert_eq!(report.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn server_errors_on_get_and_delete_are_retried_without_a_key_then_indeterminate() {
    let cases = [
        (
            Method::GET,
            Step::stripe(500, "api_error", ""),
            Class::ServerError,
        ),
        (Method::GET, Step::status(503), Class::Unavailable),
        (
            Method::DELETE,
            Step::stripe(500, "api_error", ""),
            Class::ServerError,
        ),
        (Method::DELETE, Step::status(502), Class::Unavailable),
        (Method::HEAD, Step::status(500), Class::Unavailable),
    ];
    for (method, step, class) in cases {
        let inner = Scripted::new(vec![step; 3]);
        let e = fail(&inner, request(method.clone())).await;
        println!("case: {method} {class:?}");
        assert_exhausted(&inner, &e, Outcome::Indeterminate, class);
        assert_eq!(inner.keys(), vec![None; 3], "{method} never carries a key");
        assert!(e.idempotency_key().is_none());
        assert!(inner.seen().iter().all(|s| s.method == method));
    }
}

#[tokio::test(start_paused = true)]
async fn server_error_on_get_then_success_is_ok() {
    let inner = Scripted::new([Step::stripe(500, "api_error", ""), Step::ok()]);
    let report = succeed(&inner, request(Method::GET)).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert!(report.idempotency_key().is_none());
}

// ---------------------------------------------------------------------------------------
// Transport errors and timeouts
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn connect_error_is_retried_then_gives_up() {
    let inner = Scripted::new(vec![Step::Fail(io::ErrorKind::ConnectionRefused); 3]);
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::GaveUp, Class::Connect);
    assert!(e.status().is_none());
    let cause = e.underlying_error().expect("the transport error is kept");
    let io = cause
        .downcast_ref::<io::Error>()
        .expect("the cause is the io::Error");
    assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn connect_error_then_success_is_ok() {
    let inner = Scripted::new([Step::Fail(io::ErrorKind::ConnectionRefused), Step::ok()]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_eq!(classes(&report), vec![Class::Connect, Class::Success]);
}

#[tokio::test(start_paused = true)]
async fn error_after_send_is_indeterminate_and_retried_with_the_same_key() {
    let inner = Scripted::new(vec![Step::Fail(io::ErrorKind::ConnectionReset); 3]);
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::Indeterminate, Class::Transport);
    let key = one_key(&inner);
    assert_eq!(e.idempotency_key().unwrap().as_str(), key);
    let io = e
        .underlying_error()
        .unwrap()
        .downcast_ref::<io::Error>()
        .unwrap();
    assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(start_paused = true)]
async fn error_after_send_then_success_is_ok() {
    let inner = Scripted::new([Step::Fail(io::ErrorKind::ConnectionReset), Step::ok()]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![BASE]);
    assert_eq!(classes(&report), vec![Class::Transport, Class::Success]);
    let key = one_key(&inner);
    assert_eq!(report.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_is_indeterminate_and_retried_with_the_same_key() {
    let timeout = secs(1);
    let inner = Scripted::new(vec![Step::ok().after(secs(10)); 3]);
    let e = stack_with(inner.clone(), builder().attempt_timeout(timeout))
        .oneshot(post_charge())
        .await
        .expect_err("every attempt times out");
    assert_eq!(inner.calls(), 3);
    // Each gap is the timed-out attempt plus the backoff after it.
    assert_eq!(inner.gaps(), vec![timeout + BASE, timeout + BASE * 2]);
    assert_outcome(&e, Outcome::Indeterminate);
    assert_eq!(e.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(classes(e.report()), vec![Class::Timeout; 3]);
    let key = one_key(&inner);
    assert_eq!(e.idempotency_key().unwrap().as_str(), key);
    let elapsed = e
        .underlying_error()
        .unwrap()
        .downcast_ref::<Elapsed>()
        .unwrap();
    assert_eq!(*elapsed, Elapsed::Attempt(timeout));
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_then_fast_answer_is_ok() {
    let timeout = secs(1);
    let inner = Scripted::new([Step::ok().after(secs(5)), Step::ok().after(ms(999))]);
    let res = stack_with(inner.clone(), builder().attempt_timeout(timeout))
        .oneshot(post_charge())
        .await
        .unwrap();
    let report = res.body().report().unwrap();
    assert_eq!(report.outcome(), Outcome::Success);
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![timeout + BASE]);
    assert_eq!(classes(report), vec![Class::Timeout, Class::Success]);
    one_key(&inner);
}

// ---------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_a_floor_on_the_backoff() {
    let inner = Scripted::new([
        // Longer than the backoff (100 ms): the hint wins.
        Step::status(429).header("retry-after", "1"),
        // Shorter than the backoff (200 ms): the backoff wins.
        Step::status(429).header("retry-after", "0"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 3);
    assert_eq!(inner.gaps(), vec![secs(1), BASE * 2]);
    let waits: Vec<_> = report.attempts().iter().map(|a| a.delay).collect();
    assert_eq!(waits, vec![Some(secs(1)), Some(BASE * 2), None]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_a_503_is_honoured_too() {
    let inner = Scripted::new([
        Step::status(503).header("retry-after", "7"),
        Step::status(503).header("retry-after", "3"),
        Step::status(503),
    ]);
    let e = fail(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 3);
    assert_eq!(inner.gaps(), vec![secs(7), secs(3)]);
    assert_outcome(&e, Outcome::Indeterminate);
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_measured_from_the_responses_date() {
    let inner = Scripted::new([
        Step::status(429)
            .header("date", "Wed, 21 Oct 2015 07:28:00 GMT")
            .header("retry-after", "Wed, 21 Oct 2015 07:28:03 GMT"),
        Step::ok(),
    ]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![secs(3)]);
    assert_eq!(report.attempts()[0].delay, Some(secs(3)));
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_in_the_past_falls_back_to_the_backoff() {
    // A wait of zero, measured from the response's own Date, and without one from this
    // machine's clock: the computed backoff is the delay.
    let past = "Wed, 21 Oct 2015 07:27:00 GMT";
    for date in [None, Some("Wed, 21 Oct 2015 07:28:00 GMT")] {
        let mut first = Step::status(429).header("retry-after", past);
        if let Some(date) = date {
            first = first.header("date", date);
        }
        let inner = Scripted::new([first, Step::ok()]);
        let report = succeed(&inner, post_charge()).await;
        assert_eq!(inner.gaps(), vec![BASE], "Date {date:?}");
        assert_eq!(report.attempts()[0].delay, Some(BASE), "Date {date:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_at_the_60s_cap_is_honoured() {
    let inner = Scripted::new([Step::status(429).header("retry-after", "60"), Step::ok()]);
    succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 2);
    assert_eq!(inner.gaps(), vec![secs(60)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_60s_cap_gives_up_at_once() {
    let inner = Scripted::new([Step::status(429).header("retry-after", "61"), Step::ok()]);
    let start = tokio::time::Instant::now();
    let e = fail(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 1);
    assert!(inner.gaps().is_empty());
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep before giving up");
    assert_outcome(&e, Outcome::GaveUp);
    assert_eq!(
        e.report().stop_reason(),
        StopReason::RetryAfterTooLong {
            retry_after: secs(61)
        }
    );
    assert_eq!(e.report().attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_cap_on_a_503_stops_at_once_and_stays_indeterminate() {
    let cases = [
        (Step::status(503).header("retry-after", "61"), secs(61)),
        (
            Step::status(503)
                .header("date", "Wed, 21 Oct 2015 07:28:00 GMT")
                .header("retry-after", "Wed, 21 Oct 2015 08:28:00 GMT"),
            secs(3600),
        ),
    ];
    for (step, retry_after) in cases {
        let inner = Scripted::new([step, Step::ok()]);
        let start = tokio::time::Instant::now();
        let e = fail(&inner, post_charge()).await;
        assert_eq!(inner.calls(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO, "no sleep before stopping");
        assert_eq!(
            e.report().stop_reason(),
            StopReason::RetryAfterTooLong { retry_after }
        );
        // An over-cap hint ends the call, but it does not make a 503 "gave up while
        // retryable": the work may have happened, and reporting that it did not would be
        // unsafe. The 503's own outcome is kept.
        assert_outcome(&e, Outcome::Indeterminate);
        assert_eq!(e.report().attempts().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn unreadable_retry_after_values_are_ignored_and_the_backoff_decides() {
    // Neither delay-seconds nor an HTTP date (a sign, an exponent, a fraction, a word, two
    // values, a date with day 32, nothing): ignored, with or without the response's Date,
    // so the computed backoff alone is the delay and the call goes on.
    let unreadable = [
        "-1",
        "1e30",
        "1.5",
        "soon",
        "3, 4",
        "Wed, 32 Oct 2015 07:28:30 GMT",
        "",
    ];
    for bad in unreadable {
        for date in [None, Some("Wed, 21 Oct 2015 07:28:00 GMT")] {
            let mut first = Step::status(429).header("retry-after", bad);
            if let Some(date) = date {
                first = first.header("date", date);
            }
            let inner = Scripted::new([first, Step::ok()]);
            let report = succeed(&inner, post_charge()).await;
            assert_eq!(inner.calls(), 2, "{bad:?}");
            assert_eq!(inner.gaps(), vec![BASE], "{bad:?}");
            assert_eq!(report.attempts()[0].delay, Some(BASE), "{bad:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_more_seconds_than_a_u64_ends_the_call_at_once() {
    // Saturates to `Duration::MAX`, which is over any cap: no sleep at all.
    let huge = "99999999999999999999999";
    let inner = Scripted::new([Step::status(429).header("retry-after", huge), Step::ok()]);
    let start = tokio::time::Instant::now();
    let e = fail(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep at all");
    assert_outcome(&e, Outcome::GaveUp);
    assert_eq!(
        e.report().stop_reason(),
        StopReason::RetryAfterTooLong {
            retry_after: Duration::MAX
        }
    );
    assert_eq!(e.report().attempts()[0].delay, None);
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(
        e.to_string()
            .contains("server asked to retry after 18446744073709551615s, over the cap"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// The Stripe error object is available for every non-2xx
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stripe_error_fields_are_available_for_every_non_2xx_and_unknown_strings_kept() {
    let body = r#"{"error":{"type":"brand_new_error","code":"brand_new_code","decline_code":"new_decline","message":"Something new happened.","param":"amount","doc_url":"https://stripe.com/docs/error-codes/brand-new-code","request_log_url":"https://dashboard.stripe.com/logs/req_new","future_field":{"x":1}}}"#;
    for status in [400, 401, 402, 403, 404, 409, 429, 500, 502, 503, 504] {
        let inner = Scripted::new(vec![
            Step::body(status, body).header("request-id", "req_new");
            3
        ]);
        let mut e = fail(&inner, post_charge()).await;
        let stripe = e
            .stripe_error()
            .unwrap_or_else(|| panic!("{status}: no Stripe error"))
            .clone();
        assert_eq!(
            stripe.error_type,
            ErrorType::Other("brand_new_error".into())
        );
        assert_eq!(stripe.error_type.as_str(), "brand_new_error");
        assert_eq!(stripe.code, Some(ErrorCode::Other("brand_new_code".into())));
        assert_eq!(stripe.code.as_ref().unwrap().as_str(), "brand_new_code");
        assert_eq!(stripe.decline_code.as_deref(), Some("new_decline"));
        assert_eq!(stripe.message.as_deref(), Some("Something new happened."));
        assert_eq!(stripe.param.as_deref(), Some("amount"));
        assert_eq!(
            stripe.doc_url.as_deref(),
            Some("https://stripe.com/docs/error-codes/brand-new-code")
        );
        assert_eq!(
            stripe.request_log_url.as_deref(),
            Some("https://dashboard.stripe.com/logs/req_new")
        );
        assert_eq!(stripe.request_id.as_ref().unwrap().to_string(), "req_new");
        assert_eq!(stripe.category(), Category::Unknown);
        // An unknown type falls back to the status: 4xx other than 409/429 are final,
        // the rest are retried.
        let expected_calls = match status {
            409 | 429 | 500..=599 => 3,
            _ => 1,
        };
        assert_eq!(inner.calls(), expected_calls, "{status}");
        // The caller still gets the full body and status.
        assert_eq!(e.status().map(|s| s.as_u16()), Some(status));
        let res = e.take_response().expect("the final response is kept");
        assert_eq!(read(res.into_body()).await, Bytes::from(body));
    }
}

#[tokio::test(start_paused = true)]
async fn known_stripe_error_fields_are_all_read() {
    let body = r#"{"error":{"type":"invalid_request_error","code":"parameter_missing","message":"Missing required param: currency.","param":"currency","doc_url":"https://stripe.com/docs/error-codes/parameter-missing","request_log_url":"https://dashboard.stripe.com/logs/req_9"}}"#;
    let inner = Scripted::new([Step::body(400, body).header("request-id", "req_9")]);
    let e = fail(&inner, post_charge()).await;
    let stripe = e.stripe_error().unwrap();
    assert_eq!(stripe.error_type, ErrorType::InvalidRequestError);
    assert_eq!(
        stripe.code,
        Some(ErrorCode::Other("parameter_missing".into()))
    );
    assert_eq!(stripe.decline_code, None);
    assert_eq!(
        stripe.message.as_deref(),
        Some("Missing required param: currency.")
    );
    assert_eq!(stripe.param.as_deref(), Some("currency"));
    assert_eq!(
        stripe.doc_url.as_deref(),
        Some("https://stripe.com/docs/error-codes/parameter-missing")
    );
    assert_eq!(
        stripe.request_log_url.as_deref(),
        Some("https://dashboard.stripe.com/logs/req_9")
    );
    assert_eq!(stripe.request_id.as_ref().unwrap().to_string(), "req_9");
    assert_eq!(request_ids(e.report()), vec!["req_9"]);
}

#[tokio::test(start_paused = true)]
async fn malformed_error_bodies_fall_back_to_the_status() {
    // Not Stripe's error object, so the status alone decides: a 4xx is final, and by its
    // status a 402 is only "rejected" (a decline needs Stripe's card_error to say so).
    for (status, body) in [
        (400, r#"{"error":"#),
        (400, r#"{"error":{"type":7}}"#),
        (400, "null"),
        (400, "\u{0}\u{1}garbage"),
        // A card_error cut short: no closing braces.
        (
            402,
            r#"{"error":{"type":"card_error","code":"card_declined""#,
        ),
    ] {
        let inner = Scripted::new([Step::body(status, body), Step::ok()]);
        let mut e = fail(&inner, post_charge()).await;
        assert_attempted_once(&inner, &e, Outcome::DefiniteFailure, Class::Rejected);
        assert!(e.stripe_error().is_none(), "{body:?}");
        let res = e.take_response().unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(read(res.into_body()).await, Bytes::from(body));
    }
}

// ---------------------------------------------------------------------------------------
// Jitter
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn seeded_full_jitter_sleeps_exactly_the_seeded_schedule() {
    const SEED: u64 = 0x5eed;
    let base = ms(500);
    let cap = secs(5);
    let backoff = || ExponentialBackoff::new(base, cap).seeded(SEED);
    assert_eq!(backoff().jitter_strategy(), Jitter::Full);
    // The schedule the first call made through a fresh seeded backoff will draw.
    let expected: Vec<Duration> = backoff().delays().take(2).collect();
    for (n, d) in (1..).zip(&expected) {
        assert!(*d <= backoff().ceiling(n), "retry {n}: {d:?}");
    }

    let inner = Scripted::new(vec![Step::status(503); 3]);
    let e = stack_with(inner.clone(), RetryLayer::builder().backoff(backoff()))
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 3);
    let chosen: Vec<Duration> = e
        .report()
        .attempts()
        .iter()
        .filter_map(|a| a.delay)
        .collect();
    assert_eq!(
        chosen, expected,
        "the retry layer draws the seeded schedule"
    );
    // Tokio's timer fires on whole milliseconds: each sleep lasts its delay rounded up.
    let gaps = inner.gaps();
    assert_eq!(gaps.len(), 2);
    for (n, (gap, delay)) in (1..).zip(gaps.iter().zip(&expected)) {
        assert!(
            *gap >= *delay && *gap <= *delay + ms(1),
            "retry {n}: slept {gap:?} for a delay of {delay:?}"
        );
        assert!(*gap <= backoff().ceiling(n) + ms(1));
    }
    // Not unjittered: full jitter almost surely differs from the ceilings.
    assert_ne!(expected, vec![base, base * 2]);
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_gives_each_call_of_a_service_its_own_schedule() {
    let make = || ExponentialBackoff::new(ms(500), secs(5)).seeded(99);
    let reference = make();
    let first: Vec<Duration> = reference.delays().take(2).collect();
    let second: Vec<Duration> = reference.delays().take(2).collect();
    assert_ne!(first, second, "two calls must not back off in lockstep");

    let inner = Scripted::new(vec![Step::status(503); 6]);
    let svc = stack_with(inner.clone(), RetryLayer::builder().backoff(make()));
    let mut chosen = Vec::new();
    for _ in 0..2 {
        let e = svc.clone().oneshot(post_charge()).await.unwrap_err();
        assert_eq!(e.report().attempts().len(), 3);
        let delays: Vec<Duration> = e
            .report()
            .attempts()
            .iter()
            .filter_map(|a| a.delay)
            .collect();
        chosen.push(delays);
    }
    assert_eq!(inner.calls(), 6);
    assert_eq!(chosen, vec![first, second]);
}

// ---------------------------------------------------------------------------------------
// Stripe-Should-Retry decides, in both directions, but never turns a success into a failure
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn should_retry_true_makes_an_invalid_request_retryable() {
    let step = Step::stripe(400, "invalid_request_error", "parameter_invalid")
        .header("stripe-should-retry", "true");
    let inner = Scripted::new(vec![step; 3]);
    let e = fail(&inner, post_charge()).await;
    assert_exhausted(&inner, &e, Outcome::GaveUp, Class::Rejected);
    one_key(&inner);
}

#[tokio::test(start_paused = true)]
async fn should_retry_false_on_a_200_is_still_a_success() {
    let inner = Scripted::new([Step::ok().header("stripe-should-retry", "false")]);
    let report = succeed(&inner, post_charge()).await;
    assert_eq!(inner.calls(), 1);
    assert_eq!(classes(&report), vec![Class::Success]);
}

// ---------------------------------------------------------------------------------------
// Without a key, a request that may have taken effect is never replayed
// ---------------------------------------------------------------------------------------

/// The retry layer alone: no key layer above it.
async fn send_unkeyed(inner: &Scripted, req: Request<Full<Bytes>>) -> Result<(), Error> {
    retry_layer()
        .layer(inner.clone())
        .oneshot(req)
        .await
        .map(|_| ())
}

#[tokio::test(start_paused = true)]
async fn an_unkeyed_post_is_not_replayed_after_a_5xx() {
    let inner = Scripted::new(vec![Step::status(503); 3]);
    let e = send_unkeyed(&inner, post_charge()).await.unwrap_err();
    assert_eq!(
        inner.calls(),
        1,
        "a replay without a key could charge twice"
    );
    assert_eq!(inner.seen()[0].key(), None);
    assert_outcome(&e, Outcome::Indeterminate);
    assert_eq!(e.report().stop_reason(), StopReason::NotReplayable);
}

#[tokio::test(start_paused = true)]
async fn an_unkeyed_post_is_not_replayed_after_a_reset() {
    let inner = Scripted::new(vec![Step::Fail(io::ErrorKind::ConnectionReset); 3]);
    let e = send_unkeyed(&inner, post_charge()).await.unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_outcome(&e, Outcome::Indeterminate);
    assert_eq!(e.report().stop_reason(), StopReason::NotReplayable);
}

#[tokio::test(start_paused = true)]
async fn an_unkeyed_post_is_still_retried_when_nothing_happened() {
    // A 429 and a refused connection did not take effect: replaying them is safe.
    let inner = Scripted::new([
        Step::status(429),
        Step::Fail(io::ErrorKind::ConnectionRefused),
        Step::ok(),
    ]);
    assert!(send_unkeyed(&inner, post_charge()).await.is_ok());
    assert_eq!(inner.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_keyed_post_and_idempotent_methods_are_replayed_after_a_5xx() {
    let keyed = Request::post("http://stripe.test/v1/charges")
        .header("idempotency-key", "caller-key-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    for req in [keyed, request(Method::PUT), request(Method::GET)] {
        let method = req.method().clone();
        let inner = Scripted::new([Step::status(503), Step::ok()]);
        assert!(send_unkeyed(&inner, req).await.is_ok(), "{method}");
        assert_eq!(inner.calls(), 2, "{method}");
    }
}
