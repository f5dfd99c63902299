//! tower-http's `TraceLayer` with `TraceClassifier`, above the stack (one verdict per
//! call) and below it (one per attempt). Needs the `tower-http` feature.
#![cfg(feature = "tower-http")]

mod common;

use bytes::Bytes;
use common::*;
use resilient_http::classify::trace::{Failure, TraceClassifier};
use resilient_http::stripe::StripeClassifier;
use resilient_http::{Class, Outcome, StopReason};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_http::trace::TraceLayer;

type Failures = Arc<Mutex<Vec<Failure>>>;

/// A `TraceLayer` that records every failure it classifies.
macro_rules! trace_layer {
    ($failures:expr) => {{
        let failures: Failures = $failures.clone();
        TraceLayer::new(TraceClassifier::new(StripeClassifier)).on_failure(
            move |failure: Failure, _: Duration, _: &tracing::Span| {
                failures.lock().unwrap().push(failure);
            },
        )
    }};
}

#[tokio::test(start_paused = true)]
async fn above_the_stack_a_card_decline_is_one_definite_failure() {
    let failures = Failures::default();
    let inner = Scripted::new([Step::stripe(402, "card_error", "card_declined")]);
    let svc = ServiceBuilder::new()
        .layer(trace_layer!(failures))
        .service(stack(inner));

    let res = svc.oneshot(post_charge()).await;

    assert!(res.is_err());
    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].outcome, Outcome::DefiniteFailure);
    assert_eq!(failures[0].class, Some(Class::Declined));
    assert_eq!(failures[0].status.map(|s| s.as_u16()), Some(402));
    assert_eq!(failures[0].to_string(), "definite failure (declined, 402)");
}

#[tokio::test(start_paused = true)]
async fn above_the_stack_an_api_error_is_indeterminate_and_a_retried_success_is_no_failure() {
    let failures = Failures::default();
    // The first call: Stripe's api_error on every attempt (it is replayed with the same
    // key while attempts remain). The second: a lock_timeout, then success.
    let inner = Scripted::new([
        Step::stripe(500, "api_error", ""),
        Step::stripe(500, "api_error", ""),
        Step::stripe(500, "api_error", ""),
        Step::stripe(429, "invalid_request_error", "lock_timeout"),
        Step::ok(),
    ]);
    let svc = ServiceBuilder::new()
        .layer(trace_layer!(failures))
        .service(stack(inner.clone()));

    let Err(err) = svc.clone().oneshot(post_charge()).await else {
        panic!("an api_error on every attempt is no success");
    };
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(inner.calls(), 3);
    assert!(svc.oneshot(post_charge()).await.is_ok());
    assert_eq!(inner.calls(), 5);

    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1, "one verdict per call: {failures:?}");
    assert_eq!(failures[0].outcome, Outcome::Indeterminate);
    assert_eq!(failures[0].class, Some(Class::ServerError));
    assert_eq!(failures[0].status.map(|s| s.as_u16()), Some(500));
}

#[tokio::test(start_paused = true)]
async fn below_the_stack_every_failed_attempt_is_traced() {
    let failures = Failures::default();
    let inner = Scripted::new([
        Step::status(429),
        Step::status(503),
        Step::body(200, Bytes::from_static(b"{}")),
    ]);
    let svc = stack_with(trace_layer!(failures).layer(inner), builder());

    let res = svc.oneshot(post_charge()).await.unwrap();
    assert_eq!(res.status(), 200);

    let failures = failures.lock().unwrap().clone();
    let seen: Vec<_> = failures.iter().map(|f| (f.outcome, f.class)).collect();
    assert_eq!(
        seen,
        [
            (Outcome::GaveUp, Some(Class::RateLimited)),
            (Outcome::Indeterminate, Some(Class::Unavailable)),
        ]
    );
}

/// An address where nothing listens: a free port, taken and closed.
#[cfg(feature = "hyper-util")]
async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[cfg(feature = "hyper-util")]
fn charge_at(addr: std::net::SocketAddr) -> http::Request<http_body_util::Full<Bytes>> {
    http::Request::post(format!("http://{addr}/v1/charges"))
        .body(http_body_util::Full::new(Bytes::from_static(
            b"amount=2000",
        )))
        .unwrap()
}

/// Below the stack over a real client, each refused connection is traced as the retry
/// layer sees it (nothing sent), not as "may have charged": `TraceClassifier` looks into
/// the client's own error type. (A macro: the stack's bounds over each client's types.)
#[cfg(feature = "hyper-util")]
macro_rules! assert_refusals_traced_as_connect {
    ($client:expr) => {{
        let failures = Failures::default();
        let svc = stack_with(
            trace_layer!(failures).layer($client),
            builder().base_delay(Duration::from_millis(1)),
        );

        let err = svc
            .oneshot(charge_at(closed_port().await))
            .await
            .unwrap_err();

        assert_never_connected(&err);
        let failures = failures.lock().unwrap().clone();
        let seen: Vec<_> = failures.iter().map(|f| (f.outcome, f.class)).collect();
        assert_eq!(seen, [(Outcome::GaveUp, Some(Class::Connect)); 3]);
    }};
}

#[cfg(feature = "hyper-util")]
#[tokio::test]
async fn below_the_stack_hyper_util_refusals_are_traced_as_nothing_sent() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
    assert_refusals_traced_as_connect!(client);
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn below_the_stack_reqwest_refusals_are_traced_as_nothing_sent() {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_refusals_traced_as_connect!(resilient_http::reqwest::ReqwestService::new(client));
}

#[tokio::test(start_paused = true)]
async fn below_the_stack_an_error_is_never_traced_as_a_success() {
    let failures = Failures::default();
    let recorded = failures.clone();
    let traced = TraceLayer::new(TraceClassifier::new(ErrorsAreFine)).on_failure(
        move |failure: Failure, _: Duration, _: &tracing::Span| {
            recorded.lock().unwrap().push(failure);
        },
    );
    let inner = tower::service_fn(|_: http::Request<http_body_util::Full<Bytes>>| async {
        Err::<http::Response<http_body_util::Full<Bytes>>, _>(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ))
    });
    let svc = traced.layer(inner);

    let _ = svc.oneshot(post_charge()).await;

    let failures = failures.lock().unwrap().clone();
    let seen: Vec<_> = failures.iter().map(|f| (f.outcome, f.class)).collect();
    assert_eq!(seen, [(Outcome::Indeterminate, Some(Class::Transport))]);
}
