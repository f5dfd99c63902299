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
//!   full jitter, and the server's hints (`Retry-After`; Stripe's `Stripe-Should-Retry`).
//! - **One engine, many APIs**: the engine knows no vendor. Stripe is one profile
//!   ([`stripe`]); the IETF `Idempotency-Key` draft and plain HTTP are others
//!   ([`classify`]), and your own API is a [`Classify`](classify::Classify) away.
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
//! let report = res.body().report().unwrap();
//! assert_eq!(report.attempts().len(), 2);
//! let seen = seen.lock().unwrap();
//! assert_eq!(seen[0], seen[1], "both attempts carry the same key");
//! assert_eq!(report.idempotency_key().unwrap().as_str(), seen[0]);
//! # }
//! ```
//!
//! With a real client, the same stack goes over hyper-util's `Client` (see
//! [`ResilientLayer`]; turn on feature `hyper-util` so that its DNS, TLS and
//! connect-timeout failures count as "nothing sent", see [`classify::is_connect_error`]) or
//! reqwest's (feature `reqwest`, `reqwest::ReqwestService`). `examples/demo.rs` in the
//! repository runs it against a flaky Stripe-like server on loopback.
//!
//! **The whole contract** (outcomes, what each profile's answers mean, keys, backoff,
//! overload safety, bad input) is in [`contract`].
//!
//! # Modules
//!
//! | module | concern |
//! |---|---|
//! | [`contract`] | the behaviour this crate promises, in one place |
//! | [`classify`] | what one attempt means: the [`Classify`](classify::Classify) trait, the IETF and plain HTTP profiles |
//! | [`stripe`] | the Stripe profile: its classifier and its error object |
//! | `stripe::webhook`, `stripe::reconcile` (feature `webhooks`) | verified webhooks, stored failures, and the `Reconciler` that settles indeterminate calls |
//! | [`retry`] | the generic retry engine: layer, builder, per-call options, future |
//! | [`idempotency`] | keys, key makers, and the layer that attaches them |
//! | [`backoff`] | exponential backoff with jitter, as a pure schedule |
//! | [`budget`] | the retry budget shared across calls |
//! | [`throttle`] | adaptive client-side throttling on 429 |
//! | [`body`] | replayable request bodies and the response body |
//! | [`headers`] | header names and parsers for generic server hints |
//! | `reqwest` (feature `reqwest`) | `ReqwestService`: a reqwest `Client` under the layers |
//! | `classify::trace` (feature `tower-http`) | the same verdicts for tower-http's `TraceLayer` |
//! | `fleet` (feature `redis`) | a rate limit, retry budget and pending store shared by a fleet of processes in Redis |
//!
//! The vocabulary every module shares is at the root: [`Outcome`], [`Class`],
//! [`Classification`], [`CallReport`], [`Attempt`], [`StopReason`], [`Error`].
//!
//! [tower]: https://docs.rs/tower

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod backoff;
pub mod body;
pub mod budget;
pub mod classify;
pub mod contract {
    #![doc = include_str!("../docs/contract.md")]
}
mod error;
#[cfg(feature = "redis")]
pub mod fleet;
mod header_copy;
pub mod headers;
pub mod idempotency;
mod outcome;
mod report;
#[cfg(feature = "reqwest")]
pub mod reqwest;
pub mod retry;
mod stack;
pub mod stripe;
pub mod throttle;

pub use crate::backoff::Jitter;
pub use crate::body::{BoxError, ErrorBody, ResponseBody};
pub use crate::error::{ConfigError, Error};
pub use crate::idempotency::IdempotencyKey;
pub use crate::outcome::{Class, Classification, Outcome};
pub use crate::report::{Attempt, CallReport, Elapsed, StopReason};
pub use crate::retry::{CallOptions, RetryLayer};
pub use crate::stack::{Resilient, ResilientLayer};

// Compiles the README's examples as doc tests, so they cannot drift from the API. They use
// the reqwest feature, as the README's test command (`--all-features`) has, and the
// resilient-http-testing dev-dependency.
#[cfg(all(doctest, feature = "reqwest"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// The test server's README shows it under this stack: compiled here, where both are.
#[cfg(all(doctest, feature = "reqwest"))]
#[doc = include_str!("../testing/README.md")]
struct TestingReadmeDoctests;
