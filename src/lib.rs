//! Tower middleware that makes any HTTP client safe to retry against payment-grade APIs
//! such as Stripe's.
//!
//! Calling a payments API over a network has three hard parts: knowing whether a failed
//! call did the work, retrying without doing the work twice, and retrying without turning
//! an outage into a retry storm. This crate does all three as [tower] layers around any
//! client service that speaks `http::Request` (hyper-util's `Client`, or your own):
//!
//! - **Every call ends in one of four [`Outcome`]s**, and only success is `Ok`:
//!   a definite failure (card declined, bad request, idempotency key misuse) is never
//!   retried; an *indeterminate* outcome (Stripe's `api_error`, a connection reset after
//!   sending, a timeout) is an error carrying the idempotency key and the request id of
//!   every attempt, so you can reconcile; a retryable failure the stack gave up on is told
//!   apart from both.
//! - **Every `POST`/`PATCH` gets an `Idempotency-Key`**, chosen once per call and sent
//!   byte for byte on every attempt.
//! - **Retries are bounded**: attempts, a whole-call deadline, exponential backoff with
//!   full jitter, and the server's `Retry-After` and `Stripe-Should-Retry` hints.
//! - **Retries cannot multiply load**: a [retry budget](budget) shared by every clone of
//!   the service lets retries add about 10% to the calls offered (under a total outage a
//!   client sends about 1.1 requests per call, not 3), and optional
//!   [adaptive throttling](throttle) paces a client that a server keeps rate limiting.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use resilient_http::{CallReport, ResilientLayer};
//! use resilient_http::headers::IDEMPOTENCY_KEY;
//! use std::sync::{Arc, Mutex};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A stand-in for Stripe: a lock_timeout, then success. Records the keys it sees.
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let stripe = service_fn(move |req: Request<Full<Bytes>>| {
//!     let mut log = log.lock().unwrap();
//!     log.push(req.headers()[IDEMPOTENCY_KEY].clone());
//!     let first = log.len() == 1;
//!     async move {
//!         let res = if first {
//!             Response::builder().status(429).body(Full::new(Bytes::from(
//!                 r#"{"error":{"type":"invalid_request_error","code":"lock_timeout"}}"#,
//!             )))
//!         } else {
//!             Response::builder().status(200).body(Full::new(Bytes::from(r#"{"id":"ch_1"}"#)))
//!         };
//!         Ok::<_, std::convert::Infallible>(res.unwrap())
//!     }
//! });
//!
//! let svc = ServiceBuilder::new()
//!     .layer(ResilientLayer::stripe())
//!     .service(stripe);
//!
//! let req = Request::post("https://api.stripe.com/v1/charges")
//!     .body(Full::new(Bytes::from("amount=2000&currency=usd")))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//!
//! let report = res.extensions().get::<CallReport>().unwrap();
//! assert_eq!(report.attempts().len(), 2);
//! let seen = seen.lock().unwrap();
//! assert_eq!(seen[0], seen[1], "both attempts carry the same key");
//! assert_eq!(report.idempotency_key().unwrap().as_str(), seen[0]);
//! # }
//! ```
//!
//! With a real client, the same stack goes over hyper-util's `Client` (see
//! [`ResilientLayer`]); `examples/demo.rs` runs it against a flaky Stripe-like server on
//! loopback.
//!
//! # Modules
//!
//! | module | concern |
//! |---|---|
//! | [`classify`] | what one attempt means: [`Classify`](classify::Classify), [`StripeClassifier`](classify::StripeClassifier), [`HttpClassifier`](classify::HttpClassifier) |
//! | [`stripe_error`] | Stripe's error object, parsed with serde_json |
//! | [`idempotency`] | keys, key makers, and the layer that attaches them |
//! | [`backoff`] | exponential backoff with jitter, as a pure schedule |
//! | [`retry`] | the retry layer, service and future |
//! | [`budget`] | the retry budget shared across calls |
//! | [`throttle`] | adaptive client-side throttling on 429 |
//! | [`body`] | replayable request bodies and the response body |
//! | [`error`] | outcomes, call reports and the error type |
//! | [`headers`] | header names and parsers for server hints |
//! | `reqwest` (feature `reqwest`) | `ReqwestService`: a reqwest `Client` under the layers |
//! | `testing` (feature `testing`) | a Stripe-like server with faults, for your own tests |
//!
//! # Decisions where the spec is silent
//!
//! - A 1xx or 3xx final response is a definite failure: Stripe never redirects an API
//!   call, and a redirect answered by a proxy did not do the work.
//! - An indeterminate outcome is replayed only if the request is idempotent by method or
//!   carries an idempotency key, whatever the classifier says.
//! - `Retry-After` is a floor on the computed delay (as in Stripe's Python client), never a
//!   way to retry sooner; a value over the cap (60 s) ends the call at once: as
//!   [`Outcome::GaveUp`] when the attempt was retryable and did not happen (a 429), but
//!   still [`Outcome::Indeterminate`] when it may have happened (a 503): a server hint
//!   never hides a possible effect.
//! - Once an attempt may have taken effect, the call stays [`Outcome::Indeterminate`] even
//!   if a later attempt is only turned away (a 429, or a 409 because the first attempt is
//!   still running): being refused later says nothing about the earlier attempt. A later
//!   success or definite failure does settle it: with the same key, Stripe answers for the
//!   first attempt.
//! - The retry budget is on by default; adaptive throttling is off by default.
//! - `Stripe-Should-Retry: true` makes a definite failure retryable (so its outcome becomes
//!   "gave up" if retries run out), except `idempotency_error`, which only a change in the
//!   caller can fix.
//!
//! [tower]: https://docs.rs/tower

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod backoff;
pub mod body;
pub mod budget;
pub mod classify;
pub mod error;
pub mod headers;
pub mod idempotency;
#[cfg(feature = "reqwest")]
pub mod reqwest;
pub mod retry;
mod stack;
pub mod stripe_error;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;

pub use crate::body::BoxError;
pub use crate::error::{CallReport, Error, Outcome};
pub use crate::idempotency::{IdempotencyKey, SetIdempotencyKeyLayer};
pub use crate::retry::{Retry, RetryLayer};
pub use crate::stack::{Resilient, ResilientLayer};

// Compiles the README's examples as doc tests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
