//! Stripe webhooks (feature `webhooks`): verifying `Stripe-Signature`, the event envelope,
//! the failures stored on objects, and an endpoint as a tower service.
//!
//! A call that ended indeterminate (the crate's errors say so, with the idempotency key)
//! did or did not take effect, and only Stripe knows which. Stripe's guide answers: rely
//! on webhooks to learn the outcome, and read the failure stored on the affected object.
//! This module is that half:
//!
//! - [`Verifier`] checks that Stripe sent a request, from its `Stripe-Signature` header
//!   and its raw body, before anything parses the body: an HMAC-SHA256 under your
//!   endpoint's secret (or one of several, while a secret rolls), compared in constant
//!   time, with a timestamp within 5 minutes of now in either direction, and a body of at
//!   most 64 KiB. Each refusal is a [`WebhookError`].
//! - [`Event`] is the envelope: `id`, `type`, `data.object` (raw JSON, or a type of yours
//!   through [`Event::object_as`]), and `request.idempotency_key`, which ties an event to
//!   the call that caused it. Unknown event types and fields are kept, never rejected.
//! - [`stored_failure`] reads the error stored on a PaymentIntent, SetupIntent, Invoice
//!   or SetupAttempt into a [`StripeError`](crate::stripe::StripeError), with the same
//!   [`Category`](crate::stripe::Category) as an error body.
//! - [`Webhook`] is an endpoint: a tower service that mounts under hyper or axum, answers
//!   400 (413 for an oversized body) without calling your handler, and hands your handler
//!   each verified event once, however often Stripe redelivers it.
//!
//! # Reading a failed payment
//!
//! The guide's example: a `payment_intent.payment_failed` event, whose PaymentIntent
//! stores the `card_error` that failed it.
//!
//! ```
//! use http::HeaderValue;
//! use resilient_http::stripe::webhook::{Verifier, WebhookError};
//! use resilient_http::stripe::{Category, ErrorType};
//! use std::time::{Duration, UNIX_EPOCH};
//!
//! // The raw body and header, as Stripe posts them.
//! let body = concat!(
//!     r#"{"id":"evt_1","object":"event","type":"payment_intent.payment_failed","#,
//!     r#""created":1700000000,"livemode":false,"api_version":"2024-06-20","#,
//!     r#""request":{"id":"req_1","idempotency_key":"order-1234"},"#,
//!     r#""data":{"object":{"id":"pi_1","object":"payment_intent","#,
//!     r#""status":"requires_payment_method","last_payment_error":{"type":"card_error","#,
//!     r#""code":"card_declined","decline_code":"generic_decline","#,
//!     r#""message":"Your card was declined."}}}}"#,
//! );
//! // printf '%s' "1700000000.$BODY" | openssl dgst -sha256 -hmac whsec_test_secret
//! let signature = HeaderValue::from_static(
//!     "t=1700000000,v1=7e6926fd603baa45f1213cb09a058777e869e3e0c4bd402bc81cc0c834e57e4f",
//! );
//!
//! // In production, `Verifier::new(secret)` alone: the clock is the system's.
//! let verifier = Verifier::new("whsec_test_secret")
//!     .clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_060));
//! let event = verifier.construct_event(Some(&signature), body.as_bytes())?;
//!
//! // Use its type to find out what happened.
//! assert_eq!(event.event_type, "payment_intent.payment_failed");
//! assert_eq!(event.idempotency_key(), Some("order-1234"));
//!
//! // Get the affected object, with the fields you need...
//! #[derive(serde::Deserialize)]
//! struct PaymentIntent {
//!     id: String,
//!     status: String,
//! }
//! let intent: PaymentIntent = event.object_as().map_err(WebhookError::NotJson)?;
//! assert_eq!((intent.id.as_str(), intent.status.as_str()), ("pi_1", "requires_payment_method"));
//!
//! // ...and the error stored on it; use its type to choose a response.
//! let error = event.stored_failure().expect("a failed PaymentIntent stores its error");
//! let said = match error.error_type {
//!     ErrorType::CardError => format!("A payment error occurred: {}", error.message.as_deref().unwrap_or("")),
//!     ErrorType::InvalidRequestError => "An invalid request occurred.".to_owned(),
//!     _ => "Another problem occurred, maybe unrelated to Stripe.".to_owned(),
//! };
//! assert_eq!(said, "A payment error occurred: Your card was declined.");
//! assert_eq!(error.category(), Category::CardDeclined);
//!
//! // The same bytes, altered, or signed too long ago, are refused.
//! let altered = body.replace("card_declined", "card_approved");
//! assert!(matches!(
//!     verifier.verify(Some(&signature), altered.as_bytes()),
//!     Err(WebhookError::NoSignatureMatched)
//! ));
//! let later = verifier.clone().clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_301));
//! assert_eq!(
//!     later.verify(Some(&signature), body.as_bytes()).unwrap_err().to_string(),
//!     "webhook timestamp 1700000000 is 301s behind now, over the tolerance of 300s"
//! );
//! # Ok::<(), WebhookError>(())
//! ```
//!
//! # An endpoint
//!
//! [`Webhook`] wraps a handler, any `Service<Event, Response = ()>`; here a closure that
//! counts the events it sees. The same endpoint mounts under axum with
//! `Router::new().route_service("/webhook", endpoint)`, and under hyper through a
//! `service_fn` that calls it.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, StatusCode};
//! use http_body_util::Full;
//! use resilient_http::stripe::webhook::{Event, Verifier, Webhook, STRIPE_SIGNATURE};
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::{Duration, UNIX_EPOCH};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let handled = Arc::new(AtomicUsize::new(0));
//! let count = handled.clone();
//! let handler = service_fn(move |event: Event| {
//!     count.fetch_add(1, Ordering::SeqCst);
//!     assert_eq!(event.object_id(), Some("pi_1"));
//!     async { Ok::<_, Infallible>(()) }
//! });
//! let verifier = Verifier::new("whsec_test_secret")
//!     .clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_060));
//! let endpoint = Webhook::new(verifier, handler);
//!
//! let body = concat!(
//!     r#"{"id":"evt_1","object":"event","type":"payment_intent.payment_failed","#,
//!     r#""created":1700000000,"livemode":false,"api_version":"2024-06-20","#,
//!     r#""request":{"id":"req_1","idempotency_key":"order-1234"},"#,
//!     r#""data":{"object":{"id":"pi_1","object":"payment_intent","#,
//!     r#""status":"requires_payment_method","last_payment_error":{"type":"card_error","#,
//!     r#""code":"card_declined","decline_code":"generic_decline","#,
//!     r#""message":"Your card was declined."}}}}"#,
//! );
//! let post = |signature: &'static str| {
//!     Request::post("/webhook")
//!         .header(STRIPE_SIGNATURE, signature)
//!         .body(Full::new(Bytes::from_static(body.as_bytes())))
//!         .unwrap()
//! };
//! let signed = "t=1700000000,v1=7e6926fd603baa45f1213cb09a058777e869e3e0c4bd402bc81cc0c834e57e4f";
//! let forged = "t=1700000000,v1=0000000000000000000000000000000000000000000000000000000000000000";
//!
//! let answer = endpoint.clone().oneshot(post(signed)).await.unwrap();
//! assert_eq!(answer.status(), StatusCode::OK);
//! // Stripe redelivers: answered 200 again, the handler is not called again.
//! let answer = endpoint.clone().oneshot(post(signed)).await.unwrap();
//! assert_eq!(answer.status(), StatusCode::OK);
//! // A forged signature: 400, the handler is not called.
//! let answer = endpoint.clone().oneshot(post(forged)).await.unwrap();
//! assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
//! assert_eq!(handled.load(Ordering::SeqCst), 1);
//! # }
//! ```

mod endpoint;
mod event;
mod signature;

pub use self::endpoint::{ResponseFuture, Webhook, WebhookLayer, DEFAULT_REMEMBERED_EVENTS};
pub use self::event::{stored_failure, Event, EventData, EventRequest};
pub use self::signature::{
    MalformedReason, Verifier, WebhookError, DEFAULT_BODY_LIMIT, DEFAULT_TOLERANCE,
    STRIPE_SIGNATURE,
};
