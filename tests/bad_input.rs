//! Bad input the stack must survive: the rows of the bad-input table of the crate's
//! contract (`resilient_http::contract`) that no other test file covers. Each pins down
//! exactly what the caller gets: the error and the message under it naming the limit, the
//! outcome and stop reason, or the safe fallback, and that nothing panics.
//!
//! The table's other rows are tested where their subject lives: unreadable and over-cap
//! `Retry-After` values and malformed error bodies in `tests/classification.rs`, the
//! parsers on arbitrary bytes in `tests/fuzz.rs`, a 2xx body failing midway and request
//! bodies over the limit or with trailers in `tests/bodies.rs`, per-call options that
//! cannot work in `tests/limits.rs`.
//!
//! All on paused time through the whole default stack, with the test kit's backoff
//! (no jitter, 100 ms base), so a fallback to the computed backoff shows as exactly 100 ms.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use resilient_http::body::RequestBodyError;
use resilient_http::headers::IDEMPOTENCY_KEY;
use resilient_http::idempotency::{IdempotencyKey, InvalidIdempotencyKey};
use resilient_http::{BoxError, Class, Error, Outcome, StopReason};
use std::error::Error as _;
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;

const MIB: usize = 1024 * 1024;

fn post_with_key(key: HeaderValue) -> Request<Full<Bytes>> {
    let mut req = post_charge();
    req.headers_mut().insert(IDEMPOTENCY_KEY, key);
    req
}

/// The report line of a call rejected before sending, without a key.
const REJECTED: &str = "definite failure after 0 attempts (rejected before sending)";

/// The invalid-key rejection every key row ends in: nothing sent, a definite failure,
/// stopped as rejected, with the key's error under it; returns that error's message, as
/// an error reporter walking the chain shows it.
fn assert_key_rejected(err: &Error, inner: &Scripted, want: &InvalidIdempotencyKey) -> String {
    assert_eq!(inner.calls(), 0, "nothing is sent");
    assert!(err.is_rejected());
    assert!(err.is_definite_failure());
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Rejected);
    assert!(err.report().attempts().is_empty());
    assert!(err.idempotency_key().is_none(), "an invalid key is no key");
    assert!(err.status().is_none() && err.headers().is_none());
    assert_eq!(err.to_string(), REJECTED, "the report line alone");
    let cause = err
        .underlying_error()
        .and_then(|c| c.downcast_ref::<InvalidIdempotencyKey>())
        .unwrap_or_else(|| panic!("an InvalidIdempotencyKey under the error, got {err:?}"));
    assert_eq!(cause, want);
    let source = err.source().expect("the key's error is the source");
    assert!(
        source.source().is_none(),
        "the chain ends at the key's error"
    );
    source.to_string()
}

// ---------------------------------------------------------------------------------------
// Idempotency keys
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn key_of_256_characters_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let key = HeaderValue::from_str(&"k".repeat(256)).unwrap();
    let err = stack(inner.clone())
        .oneshot(post_with_key(key))
        .await
        .unwrap_err();
    let shown = assert_key_rejected(&err, &inner, &InvalidIdempotencyKey::TooLong { len: 256 });
    assert_eq!(
        shown,
        "invalid idempotency key: 256 characters is over the limit of 255 visible ASCII characters"
    );
    // Nor can such a key be built for the request's extensions.
    assert_eq!(
        IdempotencyKey::new("k".repeat(256)).unwrap_err(),
        InvalidIdempotencyKey::TooLong { len: 256 }
    );
    // 255 is the limit, not over it.
    let inner = Scripted::new([]);
    let key = HeaderValue::from_str(&"k".repeat(255)).unwrap();
    stack(inner.clone())
        .oneshot(post_with_key(key.clone()))
        .await
        .unwrap();
    assert_eq!(inner.seen()[0].headers[IDEMPOTENCY_KEY], key);
}

#[tokio::test(start_paused = true)]
async fn key_with_a_newline_cannot_be_built_or_sent() {
    // The http crate refuses a header value with a newline: the request cannot be built,
    // so it never reaches the stack.
    let built = Request::post("http://stripe.test/v1/charges")
        .header(IDEMPOTENCY_KEY, "order-1234\n")
        .body(Full::new(Bytes::new()));
    assert!(built.is_err());
    assert!(HeaderValue::from_str("order\n1234").is_err());
    // A key for the extensions is refused with the byte and the limit named.
    let err = IdempotencyKey::new("order\n1234").unwrap_err();
    assert_eq!(err, InvalidIdempotencyKey::InvalidCharacter { index: 5 });
    assert_eq!(
        err.to_string(),
        "invalid idempotency key: byte 5 is not visible ASCII; keys are 1 to 255 visible ASCII characters"
    );
}

#[tokio::test(start_paused = true)]
async fn key_with_a_tab_or_space_is_rejected_before_sending() {
    // A tab and a space are valid in a header value, not in a key.
    for (key, index) in [("order\t1234", 5), ("order 1234", 5)] {
        let inner = Scripted::new([]);
        let err = stack(inner.clone())
            .oneshot(post_with_key(HeaderValue::from_str(key).unwrap()))
            .await
            .unwrap_err();
        let shown = assert_key_rejected(
            &err,
            &inner,
            &InvalidIdempotencyKey::InvalidCharacter { index },
        );
        assert_eq!(
            shown,
            "invalid idempotency key: byte 5 is not visible ASCII; keys are 1 to 255 visible ASCII characters",
            "{key:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn key_with_non_ascii_is_rejected_before_sending() {
    // "clé" in UTF-8: a valid header value (obs-text), not a valid key.
    let inner = Scripted::new([]);
    let key = HeaderValue::from_bytes("clé".as_bytes()).unwrap();
    let err = stack(inner.clone())
        .oneshot(post_with_key(key))
        .await
        .unwrap_err();
    let shown = assert_key_rejected(
        &err,
        &inner,
        &InvalidIdempotencyKey::InvalidCharacter { index: 2 },
    );
    assert_eq!(
        shown,
        "invalid idempotency key: byte 2 is not visible ASCII; keys are 1 to 255 visible ASCII characters"
    );
    assert_eq!(
        IdempotencyKey::new("clé").unwrap_err(),
        InvalidIdempotencyKey::InvalidCharacter { index: 2 }
    );
}

#[tokio::test(start_paused = true)]
async fn empty_or_repeated_key_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let err = stack(inner.clone())
        .oneshot(post_with_key(HeaderValue::from_static("")))
        .await
        .unwrap_err();
    let shown = assert_key_rejected(&err, &inner, &InvalidIdempotencyKey::Empty);
    assert_eq!(
        shown,
        "invalid idempotency key: it is empty; keys are 1 to 255 visible ASCII characters"
    );

    let inner = Scripted::new([]);
    let mut req = post_with_key(HeaderValue::from_static("a"));
    req.headers_mut()
        .append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
    let err = stack(inner.clone()).oneshot(req).await.unwrap_err();
    let shown = assert_key_rejected(&err, &inner, &InvalidIdempotencyKey::Repeated);
    assert_eq!(
        shown,
        "invalid idempotency key: the request has more than one idempotency-key header"
    );
}

// ---------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_after_of_duration_max_with_no_cap_and_no_deadline_does_not_panic() {
    // A caller that turns both limits off: the hint is honoured as a wait that can never
    // end before the (unreachable) deadline, so the call stops at once instead of
    // overflowing the clock.
    let huge = "99999999999999999999999";
    let inner = Scripted::new([Step::status(429).header("retry-after", huge), Step::ok()]);
    let settings = builder()
        .retry_after_cap(Duration::MAX)
        .deadline(Duration::MAX);
    let start = Instant::now();
    let err = stack_with(inner.clone(), settings)
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep at all");
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.report().attempts()[0].delay, None);
}

// ---------------------------------------------------------------------------------------
// Other server hints
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stripe_should_retry_garbage_is_ignored() {
    // "maybe" is neither true nor false: the body decides, as if the header were absent.
    // A card_error is then final, and an api_error is replayed with the same key until
    // the attempts run out (where `false` would have stopped it at once).
    let inner = Scripted::new([
        Step::stripe(402, "card_error", "card_declined").header("stripe-should-retry", "maybe")
    ]);
    let err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Final);
    assert_eq!(err.report().last_class(), Some(Class::Declined));

    let inner = Scripted::new(vec![
        Step::stripe(500, "api_error", "")
            .header("stripe-should-retry", "yes");
        3
    ]);
    let err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 3);
    assert_eq!(inner.gaps(), [BASE, BASE * 2]);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.report().last_class(), Some(Class::ServerError));
    let keys = inner.keys();
    assert!(
        keys[0].is_some() && keys.iter().all(|k| *k == keys[0]),
        "{keys:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn request_id_with_non_ascii_bytes_is_kept_and_shown_lossily() {
    let inner = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
        *res.status_mut() = StatusCode::NOT_FOUND;
        res.headers_mut().insert(
            "request-id",
            HeaderValue::from_bytes(b"req_\xff\xfe").unwrap(),
        );
        Ok::<_, BoxError>(res)
    });
    let svc = stack_with(inner, builder());
    let err = svc.oneshot(post_charge()).await.unwrap_err();
    let id = err.report().request_ids().next().expect("the id is kept");
    assert_eq!(id.as_header_value().as_bytes(), b"req_\xff\xfe");
    assert_eq!(id.to_str(), None);
    assert_eq!(id.to_string(), "req_\u{fffd}\u{fffd}");
    assert!(
        err.to_string().contains("request ids req_\u{fffd}\u{fffd}"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn ten_mib_error_body_is_classified_by_status_and_delivered_whole() {
    // A valid Stripe card_error, padded to 10 MiB: too long to read for classification
    // (64 KiB), so the 402 is classified by status, and the caller gets every byte.
    let head = r#"{"error":{"type":"card_error","code":"card_declined","message":""#;
    let tail = r#""}}"#;
    let mut body = head.as_bytes().to_vec();
    body.resize(10 * MIB - tail.len(), b'x');
    body.extend_from_slice(tail.as_bytes());
    let body = Bytes::from(body);
    let inner = Scripted::new([Step::body(402, body.clone()).header("request-id", "req_big")]);
    let mut err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Final);
    assert_eq!(err.report().last_class(), Some(Class::Rejected));
    assert!(err.stripe_error().is_none(), "not read, so not parsed");
    let res = err.take_response().unwrap();
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(res.headers()["request-id"], "req_big");
    let got = read(res.into_body()).await;
    assert_eq!(got.len(), 10 * MIB);
    assert!(got == body, "the body is delivered byte for byte");
}

#[tokio::test(start_paused = true)]
async fn truncated_error_body_stream_falls_back_to_status_and_is_delivered_as_sent() {
    // A proxy cut Stripe's api_error short (the stream ended cleanly, short of its size
    // hint). Not JSON: a 5xx without a Stripe body, so retried with the same key.
    let inner = Streaming::new(|_| {
        Response::builder()
            .status(500)
            .body(Chunks::new(&[r#"{"error":{"type":"api_"#, r#"error","mess"#]).claiming(200))
            .unwrap()
    });
    let mut err = streaming_stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();

    assert_eq!(inner.calls(), 3);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.report().last_class(), Some(Class::Unavailable));
    assert!(err.stripe_error().is_none());
    assert!(err.idempotency_key().is_some());
    let body = read(err.take_response().unwrap().into_body()).await;
    assert_eq!(body, r#"{"error":{"type":"api_error","mess"#);
}

#[tokio::test(start_paused = true)]
async fn truncated_request_body_stream_is_sent_as_read() {
    // A request body that ends short of its size hint cannot be told from a short body:
    // it is sent as read, the same bytes on every attempt, with its real length.
    let inner = Scripted::new([Step::status(503)]);
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Chunks::new(&["amount=20", "00&curr"]).claiming(24))
        .unwrap();
    stack(inner.clone()).oneshot(req).await.unwrap();
    let seen = inner.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.body, "amount=2000&curr");
    }
}

#[tokio::test(start_paused = true)]
async fn request_body_stream_that_errors_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Chunks::new(&["amount=2000&"]).then_error("disk read failed"))
        .unwrap();
    let err = stack(inner.clone()).oneshot(req).await.unwrap_err();

    assert_eq!(inner.calls(), 0, "nothing is sent");
    assert!(err.is_rejected());
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Rejected);
    assert!(
        err.idempotency_key().is_some(),
        "the key it would have used"
    );
    let cause = err
        .underlying_error()
        .and_then(|c| c.downcast_ref::<RequestBodyError>())
        .expect("a RequestBodyError");
    assert!(matches!(cause, RequestBodyError::Failed(_)), "{cause:?}");
    // The report line names the key it would have used; the body's failure is under it.
    let key = err.idempotency_key().unwrap().to_string();
    assert_eq!(
        err.to_string(),
        format!("{REJECTED}, idempotency key {key}")
    );
    let source = err.source().expect("the body's error is the source");
    assert_eq!(source.to_string(), "request body failed: disk read failed");
}

#[tokio::test(start_paused = true)]
async fn error_body_stream_that_errors_is_classified_by_status_then_passed_on() {
    // A 503 whose body fails midway: retried by status; the last attempt's body reaches
    // the caller as the bytes read, then the error.
    let inner = Streaming::new(|_| {
        Response::builder()
            .status(503)
            .body(Chunks::new(&["<html>Service Unav"]).then_error("connection reset"))
            .unwrap()
    });
    let mut err = streaming_stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();

    assert_eq!(inner.calls(), 3);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.report().last_class(), Some(Class::Unavailable));
    let mut body = err.take_response().unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "<html>Service Unav");
    let e = body.frame().await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), "connection reset");
    assert!(body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn json_array_in_place_of_the_error_object_falls_back_to_status() {
    // Not a Stripe error object (regression for 3f0786f): a 500 without a Stripe body,
    // retried with the same key, then indeterminate; the body delivered whole.
    let array = r#"{"error":["api_error"]}"#;
    let inner = Scripted::new(vec![Step::body(500, array); 3]);
    let mut err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 3);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.report().last_class(), Some(Class::Unavailable));
    assert!(err.stripe_error().is_none());
    let keys = inner.keys();
    assert!(
        keys[0].is_some() && keys.iter().all(|k| *k == keys[0]),
        "{keys:?}"
    );
    let body = read(err.take_response().unwrap().into_body()).await;
    assert_eq!(body, array);
}
