//! Bad input (SPEC section 6, invariant 6; issue 5 section 5): one test per row of the
//! bad-input table in the crate docs. Each pins down exactly what the caller gets: the
//! error and its message naming the limit, the outcome and stop reason, or the safe
//! fallback, and that nothing panics.
//!
//! All on paused time through the whole default stack, with the test kit's backoff
//! (no jitter, 100 ms base), so a fallback to the computed backoff shows as exactly 100 ms.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use resilient_http::body::RequestBodyError;
use resilient_http::classify::Class;
use resilient_http::error::StopReason;
use resilient_http::headers::{self, IDEMPOTENCY_KEY};
use resilient_http::idempotency::{IdempotencyKey, InvalidIdempotencyKey};
use resilient_http::{BoxError, Error, Outcome, ResilientLayer};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const MIB: usize = 1024 * 1024;

fn post_with_key(key: HeaderValue) -> Request<Full<Bytes>> {
    let mut req = post_charge();
    req.headers_mut().insert(IDEMPOTENCY_KEY, key);
    req
}

/// The invalid-key rejection every key row ends in: nothing sent, a definite failure,
/// stopped as rejected, with the key's error as the cause.
fn assert_key_rejected(err: &Error, inner: &Scripted, want: &InvalidIdempotencyKey) {
    assert_eq!(inner.calls(), 0, "nothing is sent");
    assert!(err.is_rejected());
    assert!(err.is_definite_failure());
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Rejected);
    assert!(err.report().attempts().is_empty());
    assert!(err.idempotency_key().is_none(), "an invalid key is no key");
    assert!(err.response().is_none());
    let cause = err
        .cause()
        .and_then(|c| c.downcast_ref::<InvalidIdempotencyKey>())
        .unwrap_or_else(|| panic!("an InvalidIdempotencyKey cause, got {err:?}"));
    assert_eq!(cause, want);
}

/// A 429 with `Retry-After: value`, then a 200: the hint decides only the one delay.
async fn rate_limited_with_retry_after(value: &str) -> (Vec<Duration>, Option<Duration>) {
    let inner = Scripted::new([
        Step::status(429)
            .header("retry-after", value)
            .header("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
        Step::ok(),
    ]);
    let res = stack(inner.clone()).oneshot(post_charge()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let report = res
        .extensions()
        .get::<resilient_http::CallReport>()
        .unwrap();
    assert_eq!(report.attempts().len(), 2);
    (inner.gaps(), report.attempts()[0].delay)
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    let mut map = HeaderMap::new();
    map.insert(headers::RETRY_AFTER, HeaderValue::from_str(value).unwrap());
    headers::retry_after(&map)
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
    assert_key_rejected(&err, &inner, &InvalidIdempotencyKey::TooLong { len: 256 });
    assert_eq!(
        err.to_string(),
        "definite failure after 0 attempts (rejected before sending): invalid idempotency key: \
         256 characters is over the limit of 255 visible ASCII characters"
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
        assert_key_rejected(
            &err,
            &inner,
            &InvalidIdempotencyKey::InvalidCharacter { index },
        );
        assert!(
            err.to_string()
                .ends_with("invalid idempotency key: byte 5 is not visible ASCII; keys are 1 to 255 visible ASCII characters"),
            "{err}"
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
    assert_key_rejected(
        &err,
        &inner,
        &InvalidIdempotencyKey::InvalidCharacter { index: 2 },
    );
    assert!(
        err.to_string().ends_with(
            "invalid idempotency key: byte 2 is not visible ASCII; keys are 1 to 255 visible ASCII characters"
        ),
        "{err}"
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
    assert_key_rejected(&err, &inner, &InvalidIdempotencyKey::Empty);
    assert!(err.to_string().ends_with(
        "invalid idempotency key: it is empty; keys are 1 to 255 visible ASCII characters"
    ));

    let inner = Scripted::new([]);
    let mut req = post_with_key(HeaderValue::from_static("a"));
    req.headers_mut()
        .append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
    let err = stack(inner.clone()).oneshot(req).await.unwrap_err();
    assert_key_rejected(&err, &inner, &InvalidIdempotencyKey::Repeated);
    assert!(err.to_string().ends_with(
        "invalid idempotency key: the request has more than one idempotency-key header"
    ));
}

// ---------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_after_minus_one_is_ignored() {
    assert_eq!(parse_retry_after("-1"), None);
    let (gaps, delay) = rate_limited_with_retry_after("-1").await;
    assert_eq!(gaps, [BASE], "the computed backoff alone");
    assert_eq!(delay, Some(BASE));
}

#[tokio::test(start_paused = true)]
async fn retry_after_1e30_is_ignored() {
    assert_eq!(parse_retry_after("1e30"), None);
    let (gaps, delay) = rate_limited_with_retry_after("1e30").await;
    assert_eq!(gaps, [BASE]);
    assert_eq!(delay, Some(BASE));
}

#[tokio::test(start_paused = true)]
async fn retry_after_garbage_is_ignored() {
    for garbage in ["soon", "1.5", "3, 4", "Wed, 32 Oct 2015 07:28:30 GMT", ""] {
        assert_eq!(parse_retry_after(garbage), None, "{garbage:?}");
        let (gaps, delay) = rate_limited_with_retry_after(garbage).await;
        assert_eq!(gaps, [BASE], "{garbage:?}");
        assert_eq!(delay, Some(BASE), "{garbage:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_date_in_the_past_is_a_wait_of_zero() {
    // Measured from the response's own Date (07:28:00), and without one from this clock.
    let past = "Wed, 21 Oct 2015 07:27:00 GMT";
    assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
    let (gaps, delay) = rate_limited_with_retry_after(past).await;
    assert_eq!(gaps, [BASE], "the backoff is the floor");
    assert_eq!(delay, Some(BASE));
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_more_seconds_than_a_u64_ends_the_call_at_once() {
    let huge = "99999999999999999999999";
    assert_eq!(parse_retry_after(huge), Some(Duration::MAX));
    let start = Instant::now();
    let inner = Scripted::new([Step::status(429).header("retry-after", huge), Step::ok()]);
    let err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep at all");
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(
        err.report().stop_reason(),
        StopReason::RetryAfterTooLong {
            retry_after: Duration::MAX
        }
    );
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(
        err.to_string()
            .contains("server asked to retry after 18446744073709551615s, over the cap"),
        "{err}"
    );

    // On a 503 the attempt may have taken effect: still indeterminate.
    let inner = Scripted::new([Step::status(503).header("retry-after", "61")]);
    let err = stack(inner).oneshot(post_charge()).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(
        err.report().stop_reason(),
        StopReason::RetryAfterTooLong {
            retry_after: Duration::from_secs(61)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_duration_max_with_no_cap_and_no_deadline_does_not_panic() {
    // A caller that turns both limits off: the hint is honoured as a wait that can never
    // end before the (unreachable) deadline, so the call stops at once instead of
    // overflowing the clock.
    let huge = "99999999999999999999999";
    let inner = Scripted::new([Step::status(429).header("retry-after", huge), Step::ok()]);
    let layer = retry_layer()
        .retry_after_cap(Duration::MAX)
        .deadline(Duration::MAX);
    let start = Instant::now();
    let err = ResilientLayer::new(layer)
        .layer(inner.clone())
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
    // "maybe" is neither true nor false: the body decides. A card_error is then final,
    // and an api_error on a POST is not replayed.
    let inner = Scripted::new([
        Step::stripe(402, "card_error", "card_declined").header("stripe-should-retry", "maybe")
    ]);
    let err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().last_class(), Some(Class::CardError));

    let inner =
        Scripted::new([Step::stripe(500, "api_error", "").header("stripe-should-retry", "yes")]);
    let err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::Final);
}

#[tokio::test(start_paused = true)]
async fn request_id_with_non_ascii_bytes_is_kept_and_shown_lossily() {
    let svc = ResilientLayer::stripe()
        .retry(|_| retry_layer())
        .layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
            *res.status_mut() = StatusCode::NOT_FOUND;
            res.headers_mut().insert(
                "request-id",
                HeaderValue::from_bytes(b"req_\xff\xfe").unwrap(),
            );
            Ok::<_, BoxError>(res)
        }));
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
    assert_eq!(err.report().last_class(), Some(Class::InvalidRequest));
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
        .cause()
        .and_then(|c| c.downcast_ref::<RequestBodyError>())
        .expect("a RequestBodyError");
    assert!(matches!(cause, RequestBodyError::Failed(_)), "{cause:?}");
    let key = err.idempotency_key().unwrap().to_string();
    assert_eq!(
        err.to_string(),
        format!(
            "definite failure after 0 attempts (rejected before sending), idempotency key {key}: \
             request body failed: disk read failed"
        )
    );
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
async fn success_body_stream_that_errors_is_passed_through() {
    // A 2xx body streams to the caller unread: the work was done (Ok), and the body's
    // failure reaches the caller as it happens.
    let inner = Streaming::new(|_| {
        Response::builder()
            .status(200)
            .body(Chunks::new(&[r#"{"id":"ch_1","#]).then_error("connection reset"))
            .unwrap()
    });
    let res = streaming_stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap();
    assert_eq!(inner.calls(), 1);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, r#"{"id":"ch_1","#);
    let e = body.frame().await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), "connection reset");
}

#[tokio::test(start_paused = true)]
async fn malformed_json_error_body_falls_back_to_status_and_is_delivered_whole() {
    let bad = r#"{"error":{"type":"card_error","code":"card_declined""#; // no closing braces
    let inner = Scripted::new([Step::body(402, bad)]);
    let mut err = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().last_class(), Some(Class::InvalidRequest));
    assert!(err.stripe_error().is_none());
    let body = read(err.take_response().unwrap().into_body()).await;
    assert_eq!(body, bad);
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
    let keys: Vec<_> = inner.seen().iter().map(|s| s.key().unwrap()).collect();
    assert!(keys.iter().all(|k| *k == keys[0]));
    let body = read(err.take_response().unwrap().into_body()).await;
    assert_eq!(body, array);
}
