//! The three classifier profiles through the whole stack (keys + retry), on paused time,
//! and per-call overrides of the layer's settings.

mod common;

use common::{builder, stack_with, Scripted, Step};
use http::Request;
use resilient_http::classify::{Classify, HttpClassifier, IetfClassifier};
use resilient_http::retry::Builder;
use resilient_http::stripe::{Category, StripeClassifier};
use resilient_http::{CallOptions, Class, ConfigError, IdempotencyKey, Outcome, StopReason};
use std::time::Duration;
use tower::ServiceExt;

/// An error body in another API's shape (OpenAI's): it looks much like Stripe's.
const FOREIGN_400: &str =
    r#"{"error":{"message":"bad param","type":"invalid_request_error","param":"x","code":null}}"#;

fn classes(err: &resilient_http::Error) -> Vec<Class> {
    err.report().attempts().iter().map(|a| a.class).collect()
}

/// Attempt 1 outlives a 1 s attempt timeout (the server may have done the work); attempt 2
/// is turned away with a 400. Returns the call's error.
async fn timeout_then_400<C>(builder: Builder<C>) -> resilient_http::Error
where
    C: Classify + Send + Sync + 'static,
{
    let inner = Scripted::new([
        Step::ok().after(Duration::from_secs(5)),
        Step::body(400, FOREIGN_400),
    ]);
    let svc = stack_with(
        inner.clone(),
        builder.attempt_timeout(Duration::from_secs(1)),
    );
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    let keys = inner.keys();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
    assert_eq!(classes(&err), [Class::Timeout, Class::Rejected]);
    err
}

#[tokio::test(start_paused = true)]
async fn a_timeout_then_a_4xx_stays_indeterminate_under_the_http_profile() {
    let err = timeout_then_400(builder().classifier(HttpClassifier)).await;
    assert_eq!(err.outcome(), Outcome::Indeterminate, "{err}");
    assert!(
        err.stripe_error().is_none(),
        "no Stripe reading of a foreign body"
    );
    assert!(err.detail().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_timeout_then_a_4xx_stays_indeterminate_under_the_ietf_profile() {
    let err = timeout_then_400(builder().classifier(IetfClassifier)).await;
    assert_eq!(err.outcome(), Outcome::Indeterminate, "{err}");
    assert!(err.stripe_error().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_timeout_then_stripes_own_400_is_definite_under_the_stripe_profile() {
    // The same bytes are a Stripe error object: Stripe answered the replay from past its
    // idempotency layer, which would have replayed the first attempt had it run.
    let err = timeout_then_400(builder()).await;
    assert_eq!(err.outcome(), Outcome::DefiniteFailure, "{err}");
    let stripe = err
        .stripe_error()
        .expect("Stripe's error object, parsed once");
    assert_eq!(stripe.category(), Category::InvalidRequest);
}

#[tokio::test(start_paused = true)]
async fn ietf_409_is_retried_with_the_same_key_until_it_succeeds() {
    let inner = Scripted::new([Step::status(409), Step::status(409), Step::status(201)]);
    let svc = stack_with(inner.clone(), builder().classifier(IetfClassifier));
    let res = svc.oneshot(common::post_charge()).await.unwrap();
    assert_eq!(res.status(), 201);
    let keys = inner.keys();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k.is_some() && *k == keys[0]),
        "{keys:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn ietf_422_on_a_keyed_request_is_a_reused_key_and_never_retried() {
    let inner = Scripted::new([Step::status(422)]);
    let svc = stack_with(inner.clone(), builder().classifier(IetfClassifier));
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert!(err.is_idempotency_error());
    assert!(err.to_string().contains("a bug in the caller"), "{err}");
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn ietf_5xx_is_replayed_with_the_same_key_then_indeterminate() {
    let inner = Scripted::new([Step::status(500), Step::status(503), Step::status(500)]);
    let svc = stack_with(inner.clone(), builder().classifier(IetfClassifier));
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(
        classes(&err),
        [Class::ServerError, Class::Unavailable, Class::ServerError]
    );
    assert!(inner.keys().iter().all(|k| *k == inner.keys()[0]));
}

#[tokio::test(start_paused = true)]
async fn http_500_on_a_post_is_indeterminate_and_not_retried() {
    let inner = Scripted::new([Step::status(500)]);
    let svc = stack_with(inner.clone(), builder().classifier(HttpClassifier));
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::Final);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn http_500_on_a_get_and_502_on_a_post_are_retried() {
    let inner = Scripted::new([Step::status(500), Step::ok()]);
    let svc = stack_with(inner.clone(), builder().classifier(HttpClassifier));
    let get = Request::get("http://api.test/v1/orders/1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(svc.oneshot(get).await.unwrap().status(), 200);
    assert_eq!(inner.calls(), 2);

    let inner = Scripted::new([Step::status(502), Step::ok()]);
    let svc = stack_with(inner.clone(), builder().classifier(HttpClassifier));
    assert_eq!(
        svc.oneshot(common::post_charge()).await.unwrap().status(),
        200
    );
    assert_eq!(inner.keys()[0], inner.keys()[1]);
}

#[tokio::test(start_paused = true)]
async fn stripe_api_error_is_replayed_with_the_same_key_then_indeterminate() {
    let api_error = || Step::stripe(500, "api_error", "");
    let inner = Scripted::new([api_error(), api_error(), api_error()]);
    let svc = stack_with(inner.clone(), builder());
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(classes(&err), [Class::ServerError; 3]);
    let keys = inner.keys();
    assert!(keys[0].is_some() && keys.iter().all(|k| *k == keys[0]));
    assert_eq!(err.stripe_error().unwrap().category(), Category::Api);
}

#[tokio::test(start_paused = true)]
async fn stripe_should_retry_false_stops_with_its_own_reason() {
    let inner =
        Scripted::new([Step::stripe(500, "api_error", "").header("stripe-should-retry", "false")]);
    let svc = stack_with(inner.clone(), builder());
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::ServerRefusedRetry);
    assert!(
        err.to_string().contains("server said a retry cannot help"),
        "{err}"
    );
    assert_eq!(inner.calls(), 1);
}

#[test]
fn every_profile_is_a_classifier_the_stack_accepts() {
    fn accepts<C: Classify>(_: Builder<C>) {}
    accepts(Builder::new(StripeClassifier));
    accepts(Builder::new(IetfClassifier));
    accepts(Builder::new(HttpClassifier));
}

// Per-call overrides: each wins over the layer's setting for its call, and the next call
// runs under the layer's setting again.

fn down() -> Scripted {
    Scripted::new(std::iter::repeat_n(Step::status(503), 20))
}

fn with_options(options: CallOptions) -> Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = common::post_charge();
    req.extensions_mut().insert(options);
    req
}

#[tokio::test(start_paused = true)]
async fn per_call_max_attempts_wins_and_does_not_leak() {
    let inner = down();
    let svc = stack_with(inner.clone(), builder().without_retry_budget());
    let err = svc
        .clone()
        .oneshot(with_options(CallOptions::new().max_attempts(5)))
        .await
        .unwrap_err();
    assert_eq!(err.report().attempts().len(), 5);
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.report().attempts().len(), 3, "the layer's 3 again");
}

#[tokio::test(start_paused = true)]
async fn per_call_no_retry_wins_and_does_not_leak() {
    let inner = down();
    let svc = stack_with(inner.clone(), builder().without_retry_budget());
    let err = svc
        .clone()
        .oneshot(with_options(CallOptions::new().no_retry()))
        .await
        .unwrap_err();
    assert_eq!(err.report().attempts().len(), 1);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.report().attempts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn per_call_deadline_wins_and_does_not_leak() {
    // Backoff without jitter: 100 ms, then 200 ms. A 250 ms deadline leaves no room for
    // the second retry.
    let inner = down();
    let svc = stack_with(inner.clone(), builder().without_retry_budget());
    let err = svc
        .clone()
        .oneshot(with_options(
            CallOptions::new().deadline(Duration::from_millis(250)),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.report().attempts().len(), 2);
    let err = svc.oneshot(common::post_charge()).await.unwrap_err();
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.report().attempts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn per_call_attempt_timeout_wins_and_does_not_leak() {
    let slow = || Step::ok().after(Duration::from_secs(2));
    let inner = Scripted::new([slow(), Step::ok(), slow()]);
    let svc = stack_with(inner.clone(), builder());
    let res = svc
        .clone()
        .oneshot(with_options(
            CallOptions::new().attempt_timeout(Duration::from_secs(1)),
        ))
        .await
        .unwrap();
    let report = res.body().report().unwrap();
    let classes: Vec<Class> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes, [Class::Timeout, Class::Success]);
    // The layer has no attempt timeout: the next slow answer is waited for.
    let res = svc.oneshot(common::post_charge()).await.unwrap();
    let report = res.body().report().unwrap();
    assert_eq!(report.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn per_call_key_wins_and_the_next_call_gets_a_fresh_one() {
    let inner = Scripted::new([Step::ok(), Step::ok()]);
    let svc = stack_with(inner.clone(), builder());
    let mut req = common::post_charge();
    req.extensions_mut()
        .insert(IdempotencyKey::new("order-77/charge").unwrap());
    svc.clone().oneshot(req).await.unwrap();
    svc.oneshot(common::post_charge()).await.unwrap();
    let keys = inner.keys();
    assert_eq!(keys[0].as_deref(), Some("order-77/charge"));
    assert_eq!(keys[1].as_ref().map(String::len), Some(36), "a fresh UUID");
}

#[tokio::test(start_paused = true)]
async fn invalid_per_call_options_are_rejected_before_sending() {
    let rows = [
        (
            CallOptions::new().max_attempts(0),
            ConfigError::ZeroAttempts,
        ),
        (
            CallOptions::new().deadline(Duration::ZERO),
            ConfigError::Deadline(Duration::ZERO),
        ),
        (
            CallOptions::new().attempt_timeout(Duration::from_micros(10)),
            ConfigError::AttemptTimeout(Duration::from_micros(10)),
        ),
    ];
    for (options, expected) in rows {
        let inner = Scripted::new([Step::ok()]);
        let svc = stack_with(inner.clone(), builder());
        let err = svc.oneshot(with_options(options)).await.unwrap_err();
        assert!(err.is_rejected(), "{err}");
        let cause = err.underlying_error().unwrap();
        assert_eq!(cause.downcast_ref::<ConfigError>(), Some(&expected));
        assert_eq!(inner.calls(), 0, "nothing sent");
    }
}

/// Records what it is told, for the observer test.
#[derive(Clone, Default)]
struct Told(std::sync::Arc<std::sync::Mutex<Vec<(String, usize, bytes::Bytes)>>>);

impl resilient_http::retry::OnIndeterminate for Told {
    fn indeterminate(&self, call: &resilient_http::retry::IndeterminateCall<'_>) {
        let key = call.report().idempotency_key().unwrap().as_str().to_owned();
        assert_eq!(
            call.request().headers["idempotency-key"],
            key.as_str(),
            "the head as sent"
        );
        let ids = call.report().request_ids().count();
        self.0.lock().unwrap().push((key, ids, call.body().clone()));
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_hears_of_every_indeterminate_call_and_of_no_other() {
    let told = Told::default();
    let inner = Scripted::new([
        Step::stripe(500, "api_error", "")
            .header("stripe-should-retry", "false")
            .header("request-id", "req_1"),
        Step::stripe(402, "card_error", "card_declined"),
        Step::ok(),
        Step::status(429),
        Step::status(429),
        Step::status(429),
    ]);
    let svc = stack_with(
        inner.clone(),
        builder()
            .without_retry_budget()
            .on_indeterminate(told.clone()),
    );
    let err = svc
        .clone()
        .oneshot(common::post_charge())
        .await
        .unwrap_err();
    assert!(err.is_indeterminate());
    for _ in 0..3 {
        let _ = svc.clone().oneshot(common::post_charge()).await;
    }
    let told = told.0.lock().unwrap();
    assert_eq!(told.len(), 1, "only the indeterminate call");
    let (key, ids, body) = &told[0];
    assert_eq!(
        Some(key.as_str()),
        err.idempotency_key().map(|k| k.as_str())
    );
    assert_eq!(*ids, 1);
    assert_eq!(&body[..], b"amount=2000&currency=usd");
}
