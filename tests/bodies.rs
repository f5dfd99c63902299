//! Bodies: bad or huge error bodies are classified by status without panicking and
//! reach the caller whole; 2xx bodies stream through, and a 2xx body that fails midway
//! names the call's key and request id; request bodies are replayed byte for byte, and
//! bodies that cannot be held for replay are refused before anything is sent.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use resilient_http::body::{RequestBodyError, ResponseBodyError};
use resilient_http::headers::IDEMPOTENCY_KEY;
use resilient_http::{BoxError, Class, Error, Outcome, RetryLayer, StopReason};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tower::{Layer, ServiceExt};

/// The final response inside an error: status, headers and whole body.
async fn final_response(err: &mut Error) -> (StatusCode, HeaderMap, Bytes) {
    let status = err.status().expect("a status");
    let headers = err.headers().expect("headers").clone();
    let res = err.take_response().expect("the final response is kept");
    assert_eq!(res.status(), status);
    let (parts, body) = res.into_parts();
    assert_eq!(parts.headers, headers);
    (parts.status, parts.headers, read(body).await)
}

/// A Stripe-looking error body of about `size` bytes: a valid error object whose
/// `message` is padded.
fn big_stripe_body(error_type: &str, code: &str, size: usize) -> Bytes {
    let head = format!(r#"{{"error":{{"type":"{error_type}","code":"{code}","message":""#);
    let tail = r#""}}"#;
    let pad = size - head.len() - tail.len();
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(b'x', pad));
    body.extend_from_slice(tail.as_bytes());
    let body = Bytes::from(body);
    assert_eq!(body.len(), size);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    body
}

/// Bytes of every value, repeated to `len`.
fn binary(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 7 % 256) as u8)
        .collect::<Vec<u8>>()
        .into()
}

const KIB: usize = 1024;

// ---------------------------------------------------------------------------------------
// Error bodies: classified by status, no panic, delivered whole
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn malformed_json_500_is_retried_by_status_and_delivered_whole() {
    let bodies = [
        r#"{"error": {"type": "api_error", "mess"#,
        r#"{"error": {"type": "api_error",,}}"#,
        r#"{"error": {"type": "api_error", "message": "truncated"#,
    ];
    let inner = Scripted::new(
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| Step::body(500, *b).header("request-id", format!("req_{i}"))),
    );
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    // Not parsable as Stripe's error object, so the status decides: a 5xx without a
    // Stripe error body is replayed with the same key, then indeterminate.
    assert_eq!(inner.calls(), 3);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert_eq!(err.report().last_class(), Some(Class::Unavailable));
    assert!(err.stripe_error().is_none());
    let (status, headers, body) = final_response(&mut err).await;
    assert_eq!(status, 500);
    assert_eq!(headers["request-id"], "req_2");
    assert_eq!(
        body,
        bodies[2].as_bytes(),
        "the final attempt's body, whole"
    );
}

#[tokio::test(start_paused = true)]
async fn garbage_402_is_a_definite_failure_with_its_body() {
    let garbage: &[u8] = b"\xff\xfe{{not json at all\x00\x01}";
    let inner = Scripted::new([Step::body(402, Bytes::from_static(garbage))
        .header("content-type", "application/json")
        .header("request-id", "req_garbage")]);
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert_eq!(err.report().stop_reason(), StopReason::Final);
    assert!(err.stripe_error().is_none());
    let (status, headers, body) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["request-id"], "req_garbage");
    assert_eq!(body, garbage);
}

#[tokio::test(start_paused = true)]
async fn html_502_from_a_proxy_is_retried_and_delivered_whole() {
    let html = "<html><head><title>502 Bad Gateway</title></head>\r\n<body><center>\
                <h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\r\n";
    let step = Step::body(502, html)
        .header("content-type", "text/html")
        .header("server", "nginx");
    let inner = Scripted::new([step.clone(), step.clone(), step]);
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 3);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert!(err.stripe_error().is_none());
    let (status, headers, body) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(headers["server"], "nginx");
    assert_eq!(body, html.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn html_404_is_a_definite_failure_with_its_body() {
    let html = "<!DOCTYPE html><html><body>Not Found</body></html>";
    let inner = Scripted::new([Step::body(404, html).header("content-type", "text/html")]);
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    let (status, headers, body) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(body, html.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn empty_500_body_is_retried_and_delivered_empty() {
    let inner = Scripted::new([
        Step::status(500),
        Step::status(500),
        Step::status(500).header("request-id", "req_last"),
    ]);
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 3);
    assert_eq!(err.outcome(), Outcome::Indeterminate);
    let (status, headers, body) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["request-id"], "req_last");
    assert!(body.is_empty());
}

#[tokio::test(start_paused = true)]
async fn empty_402_body_is_a_definite_failure() {
    let inner = Scripted::new([Step::status(402)]);
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();
    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    let (status, _, body) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(body.is_empty());
}

#[tokio::test(start_paused = true)]
async fn oversized_stripe_card_error_falls_back_to_status_and_is_delivered_whole() {
    let body = big_stripe_body("card_error", "card_declined", 200 * KIB);
    let inner = Scripted::new([Step::body(402, body.clone()).header("request-id", "req_big")]);
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert!(err.stripe_error().is_none(), "over the limit: not parsed");
    assert_ne!(
        err.report().last_class(),
        Some(Class::Declined),
        "by status alone"
    );
    let (status, headers, got) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers["request-id"], "req_big");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the 200 KiB body arrives byte for byte");
}

#[tokio::test(start_paused = true)]
async fn oversized_stripe_api_error_500_is_classified_by_status() {
    // Over the 64 KiB limit the body is not parsed: the 500 counts as a 5xx without a
    // Stripe error body, which is replayed with the same key.
    let bodies: Vec<Bytes> = (0..3)
        .map(|i| {
            let mut b = big_stripe_body("api_error", "", 200 * KIB).to_vec();
            b[1000] = b'0' + i; // each attempt's body differs, inside the padding: still JSON
            assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
            Bytes::from(b)
        })
        .collect();
    let inner = Scripted::new(bodies.iter().map(|b| Step::body(500, b.clone())));
    let svc = stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(err.outcome(), Outcome::Indeterminate);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    // Parsed, this api_error would be a server error (retried too, but with Stripe's
    // error object as detail); by status alone it is a 5xx without one.
    assert_eq!(err.report().last_class(), Some(Class::Unavailable));
    assert!(err.stripe_error().is_none(), "over the limit: not parsed");
    assert_eq!(inner.calls(), 3);
    let (status, _, got) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        got == bodies[2],
        "the last attempt's 200 KiB body, byte for byte"
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_chunked_error_body_is_delivered_whole() {
    // In 4 KiB chunks: the retry layer reads past 64 KiB, stops, and must hand back the
    // bytes it read followed by the unread rest.
    let body = big_stripe_body("card_error", "card_declined", 200 * KIB);
    let expected = body.clone();
    let inner = Streaming::new(move |_| {
        Response::builder()
            .status(402)
            .header("request-id", "req_chunked")
            .body(Chunks::split(&body, 4 * KIB))
            .unwrap()
    });
    let svc = streaming_stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    let (status, headers, got) = final_response(&mut err).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers["request-id"], "req_chunked");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "prefix and rest, byte for byte");
}

#[tokio::test(start_paused = true)]
async fn small_response_body_limit_falls_back_to_status() {
    // A card_error body over a 16-byte limit is not parsed: 402 by status is still a
    // definite failure, and the body is whole.
    let step = Step::stripe(402, "card_error", "card_declined");
    let Step::Respond { body, .. } = step.clone() else {
        unreachable!()
    };
    let inner = Scripted::new([step]);
    let svc = stack_with(inner.clone(), builder().response_body_limit(16));
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert!(err.stripe_error().is_none(), "over the limit: not parsed");
    assert_ne!(
        err.report().last_class(),
        Some(Class::Declined),
        "by status alone"
    );
    let (_, _, got) = final_response(&mut err).await;
    assert_eq!(got, body);
}

#[tokio::test(start_paused = true)]
async fn error_body_that_fails_midway_delivers_the_prefix_then_the_error() {
    let inner = Streaming::new(|_| {
        Response::builder()
            .status(402)
            .body(Chunks::data([Bytes::from_static(b"{\"error\":")]).then_error("connection reset"))
            .unwrap()
    });
    let svc = streaming_stack(inner.clone());
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();

    assert_eq!(inner.calls(), 1);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    let mut body = err.take_response().expect("response").into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().unwrap(), "{\"error\":");
    let second = body.frame().await.expect("the error frame");
    let e = second.expect_err("the body's failure is passed on");
    assert!(e.to_string().contains("connection reset"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn error_body_trailers_are_kept() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let t = trailers.clone();
    let inner = Streaming::new(move |_| {
        Response::builder()
            .status(400)
            .body(Chunks::data([Bytes::from_static(b"bad")]).then_trailers(t.clone()))
            .unwrap()
    });
    let svc = streaming_stack(inner);
    let mut err = svc.oneshot(post_charge()).await.unwrap_err();
    let collected = err
        .take_response()
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(collected.to_bytes(), "bad");
}

// ---------------------------------------------------------------------------------------
// 2xx bodies stream through
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn small_2xx_body_and_headers_pass_through() {
    let json = r#"{"id":"ch_123","object":"charge","amount":2000}"#;
    let inner = Scripted::new([Step::body(201, json)
        .header("request-id", "req_ok")
        .header("content-type", "application/json")]);
    let svc = stack(inner.clone());
    let res = svc.oneshot(post_charge()).await.unwrap();

    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["request-id"], "req_ok");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.body().report().unwrap().outcome(), Outcome::Success);
    assert_eq!(read(res.into_body()).await, json.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn one_mib_2xx_body_is_intact() {
    let big = binary(1024 * KIB);
    let inner = Scripted::new([Step::status(503), Step::body(200, big.clone())]);
    let svc = stack(inner.clone());
    let res = svc.oneshot(post_charge()).await.unwrap();

    assert_eq!(inner.calls(), 2);
    assert_eq!(res.status(), StatusCode::OK);
    let got = read(res.into_body()).await;
    assert_eq!(got.len(), big.len());
    assert!(got == big, "1 MiB body byte for byte");
}

#[tokio::test(start_paused = true)]
async fn chunked_2xx_body_is_streamed_not_buffered() {
    let big = binary(1024 * KIB);
    let polled = Arc::new(AtomicUsize::new(0));
    let (b, p) = (big.clone(), polled.clone());
    let inner = Streaming::new(move |_| {
        Response::builder()
            .status(200)
            .body(Chunks::split(&b, 16 * KIB).counting(p.clone()))
            .unwrap()
    });
    let svc = streaming_stack(inner);
    let res = svc.oneshot(post_charge()).await.unwrap();

    assert_eq!(
        polled.load(Ordering::SeqCst),
        0,
        "a 2xx body is handed over unread"
    );
    let got = read(res.into_body()).await;
    assert_eq!(polled.load(Ordering::SeqCst), 64);
    assert!(got == big, "1 MiB in 64 chunks, byte for byte");
}

/// A 2xx body that yields one data frame, then fails with an I/O error of its own type.
struct DataThenReset {
    data: Option<Bytes>,
    failed: bool,
}

impl Body for DataThenReset {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if self.failed {
            return std::task::Poll::Ready(None);
        }
        self.failed = true;
        std::task::Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "peer reset midway",
        ))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_2xx_body_that_fails_midway_names_the_key_and_request_id() {
    // The server did the work; only reading its answer failed. The caller, holding the
    // body alone, must still be able to reconcile.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let seen = sent.clone();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        seen.lock()
            .unwrap()
            .push(req.headers().get(IDEMPOTENCY_KEY).cloned());
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(200)
                    .header("request-id", "req_midway")
                    .body(DataThenReset {
                        data: Some(Bytes::from_static(b"{\"id\":\"ch_")),
                        failed: false,
                    })
                    .unwrap(),
            )
        }
    });
    let res = stack_with(inner, builder())
        .oneshot(post_charge())
        .await
        .expect("a 2xx is a success: the work was done");

    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one attempt");
    let sent_key = sent[0].clone().expect("a POST carries a key");
    let report = res.body().report().unwrap().clone();
    assert_eq!(report.outcome(), Outcome::Success);
    assert_eq!(res.headers()["request-id"], "req_midway");

    let mut body = res.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().unwrap(), "{\"id\":\"ch_");
    let e = body
        .frame()
        .await
        .expect("the error frame")
        .expect_err("the body's failure is passed on");
    let failure = e
        .downcast_ref::<ResponseBodyError>()
        .unwrap_or_else(|| panic!("expected a ResponseBodyError, got {e:?}"));
    let key = failure.idempotency_key().expect("names the key");
    assert_eq!(key.as_header_value(), &sent_key, "the key the server saw");
    assert_eq!(Some(key), report.idempotency_key());
    let request_id = failure.request_id().expect("names the request id");
    assert_eq!(request_id.to_str(), Some("req_midway"));
    let shown = failure.to_string();
    assert!(shown.contains(key.as_str()), "{shown}");
    assert!(shown.contains("req_midway"), "{shown}");
    let source = std::error::Error::source(failure).expect("the stream's own error");
    let io = source
        .downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("the stream's io::Error, got {source:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(io.to_string(), "peer reset midway");
}

// ---------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn request_body_is_replayed_byte_for_byte() {
    let payload = binary(10 * KIB);
    let inner = Scripted::new([Step::status(503), Step::status(429), Step::ok()]);
    let svc = stack(inner.clone());
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Full::new(payload.clone()))
        .unwrap();
    svc.oneshot(req).await.unwrap();

    let seen = inner.seen();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        assert!(s.body == payload, "attempt {} body differs", i + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn streamed_request_body_is_buffered_once_and_replayed() {
    let payload = binary(100 * KIB);
    let polled = Arc::new(AtomicUsize::new(0));
    let body = Chunks::split(&payload, 3 * KIB + 7).counting(polled.clone());
    let frames = payload.len().div_ceil(3 * KIB + 7);
    let inner = Scripted::new([Step::status(502), Step::status(503), Step::ok()]);
    let svc = stack(inner.clone());
    let req = Request::post("http://stripe.test/v1/charges")
        .body(body)
        .unwrap();
    svc.oneshot(req).await.unwrap();

    assert_eq!(
        polled.load(Ordering::SeqCst),
        frames,
        "the stream is read exactly once"
    );
    let seen = inner.seen();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.body.len(), payload.len(), "attempt {}", i + 1);
        assert!(s.body == payload, "attempt {} body differs", i + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn empty_request_body_is_replayed_empty() {
    let inner = Scripted::new([Step::status(503), Step::ok()]);
    let svc = stack(inner.clone());
    let req = Request::post("http://stripe.test/v1/payouts")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    svc.oneshot(req).await.unwrap();
    let seen = inner.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body.is_empty()));
}

fn rejected_body_error(err: &Error) -> &RequestBodyError {
    err.underlying_error()
        .and_then(|c| c.downcast_ref::<RequestBodyError>())
        .unwrap_or_else(|| panic!("expected a RequestBodyError cause, got {err:?}"))
}

/// The message of the error under `err`, as an error reporter walking the chain shows it
/// (`Display` of the error itself is the call's report line alone).
fn cause_message(err: &Error) -> String {
    std::error::Error::source(err)
        .unwrap_or_else(|| panic!("no source under {err:?}"))
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn request_body_over_the_limit_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let svc = stack_with(inner.clone(), builder().request_body_limit(1024));
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Full::new(binary(2048)))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();

    assert_eq!(inner.calls(), 0, "nothing was sent");
    assert!(err.is_rejected());
    assert_eq!(err.report().stop_reason(), StopReason::Rejected);
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    assert!(err.report().attempts().is_empty());
    assert!(matches!(
        rejected_body_error(&err),
        RequestBodyError::TooLarge { limit: 1024 }
    ));
    let cause = cause_message(&err);
    assert!(cause.contains("1024"), "names the limit: {cause}");
}

#[tokio::test(start_paused = true)]
async fn streamed_request_body_over_the_limit_is_rejected_before_sending() {
    // No size hint: the limit is found while reading.
    let inner = Scripted::new([]);
    let svc = stack_with(inner.clone(), builder().request_body_limit(10 * KIB));
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Chunks::split(&binary(64 * KIB), KIB))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();

    assert_eq!(inner.calls(), 0);
    assert!(err.is_rejected());
    assert!(matches!(
        rejected_body_error(&err),
        RequestBodyError::TooLarge { limit } if *limit == 10 * KIB
    ));
    let cause = cause_message(&err);
    assert!(cause.contains("10240"), "names the limit: {cause}");
}

#[tokio::test(start_paused = true)]
async fn request_body_at_the_limit_is_sent() {
    let inner = Scripted::new([]);
    let svc = stack_with(inner.clone(), builder().request_body_limit(1024));
    let payload = binary(1024);
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Chunks::split(&payload, 100))
        .unwrap();
    svc.oneshot(req).await.unwrap();
    assert_eq!(inner.calls(), 1);
    assert!(inner.seen()[0].body == payload);
}

#[tokio::test(start_paused = true)]
async fn failing_request_body_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let svc = stack(inner.clone());
    let body = Chunks::data([Bytes::from_static(b"amount=2000&")]).then_error("disk read failed");
    let req = Request::post("http://stripe.test/v1/charges")
        .body(body)
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();

    assert_eq!(inner.calls(), 0);
    assert!(err.is_rejected());
    assert_eq!(err.outcome(), Outcome::DefiniteFailure);
    let cause = rejected_body_error(&err);
    assert!(matches!(cause, RequestBodyError::Failed(_)), "{cause:?}");
    let shown = cause_message(&err);
    assert!(
        shown.contains("disk read failed"),
        "the stream's error is shown: {shown}"
    );
    let stream_error = std::error::Error::source(cause).expect("the stream's own error");
    assert_eq!(stream_error.to_string(), "disk read failed");
}

#[tokio::test(start_paused = true)]
async fn request_body_with_trailers_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let svc = stack(inner.clone());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "123".parse().unwrap());
    let body = Chunks::data([Bytes::from_static(b"amount=2000")]).then_trailers(trailers);
    let req = Request::post("http://stripe.test/v1/charges")
        .body(body)
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();

    assert_eq!(inner.calls(), 0);
    assert!(err.is_rejected());
    assert!(matches!(
        rejected_body_error(&err),
        RequestBodyError::Trailers
    ));
    let cause = cause_message(&err);
    assert!(cause.contains("trailers"), "{cause}");
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_a_fresh_full_body_with_exact_size() {
    // The inner service sees a `Full` body whose size hint is exact on every attempt,
    // so a client can send a Content-Length on replays too.
    let hints = Arc::new(Mutex::new(Vec::new()));
    let h = hints.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        h.lock().unwrap().push(req.body().size_hint().exact());
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let status = if n < 2 { 503 } else { 200 };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        }
    });
    let svc = stack_with(inner, builder());
    let payload = binary(5000);
    let req = Request::post("http://stripe.test/v1/charges")
        .body(Chunks::split(&payload, 999))
        .unwrap();
    svc.oneshot(req).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(*hints.lock().unwrap(), vec![Some(5000); 3]);
}

/// A body that is always ready and never grows: an empty data frame on every poll.
struct EmptyFramesForever;

impl Body for EmptyFramesForever {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::new()))))
    }
}

/// Runs `call` on a runtime of its own thread (real time: the deadline must fire while
/// the body never stops being ready) and waits at most 5 s for it to end.
fn ends_in_time<F>(call: F) -> Error
where
    F: std::future::Future<Output = Error> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(call));
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("the deadline ends a call whose body is always ready and never grows")
}

#[test]
fn a_request_body_of_endless_empty_frames_ends_at_the_deadline() {
    let deadline = std::time::Duration::from_millis(20);
    let inner = Scripted::new([Step::ok()]);
    let svc = stack_with(inner.clone(), builder().deadline(deadline));
    let err = ends_in_time(async move {
        let req = Request::post("https://api.stripe.com/v1/charges")
            .body(EmptyFramesForever)
            .unwrap();
        svc.oneshot(req).await.unwrap_err()
    });
    assert_eq!(inner.calls(), 0, "nothing sent: {err}");
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
}

async fn endless_503(
    _: Request<Full<Bytes>>,
) -> Result<Response<EmptyFramesForever>, std::convert::Infallible> {
    let mut res = Response::new(EmptyFramesForever);
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    Ok(res)
}

#[test]
fn an_error_body_of_endless_empty_frames_ends_at_the_deadline() {
    let deadline = std::time::Duration::from_millis(20);
    let svc = RetryLayer::builder()
        .deadline(deadline)
        .build()
        .unwrap()
        .layer(tower::service_fn(endless_503));
    let err = ends_in_time(async move { svc.oneshot(post_charge()).await.unwrap_err() });
    assert_eq!(err.report().stop_reason(), StopReason::DeadlineExceeded);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
}
