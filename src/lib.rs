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
//! [`ResilientLayer`]; turn on feature `hyper-util` so that its DNS, TLS and connect-timeout
//! failures count as "nothing sent", see [`classify::is_connect_error`]);
//! `examples/demo.rs` runs it against a flaky Stripe-like server on loopback.
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
//!
//! # Decisions where the spec is silent
//!
//! - A 1xx or 3xx final response is a definite failure: Stripe never redirects an API
//!   call, and a redirect answered by a proxy did not do the work.
//! - An indeterminate outcome is replayed only if the request is idempotent by method or
//!   carries an idempotency key, whatever the classifier says.
//! - A retry waits at least one tick of tokio's timer (1 ms), whatever the backoff draws
//!   (SPEC section 4's formula gives 0 for a zero base or cap, and full jitter can draw
//!   0): a retry in the same instant would flood the server, and under paused time would
//!   never let the clock reach the deadline.
//! - `Retry-After` is a floor on the computed delay (as in Stripe's Python client), never a
//!   way to retry sooner; a value over the cap (60 s) ends the call at once: as
//!   [`Outcome::GaveUp`] when the attempt was retryable and did not happen (a 429), but
//!   still [`Outcome::Indeterminate`] when it may have happened (a 503): a server hint
//!   never hides a possible effect.
//! - Once an attempt may have taken effect, the call stays [`Outcome::Indeterminate`] even
//!   if a later attempt is only turned away (a 429, or a 409 because the first attempt is
//!   still running): being refused later says nothing about the earlier attempt. A later
//!   success settles it. A later definite failure settles it only when it answers for the
//!   earlier attempt: Stripe's answer to the replay of a keyed `POST` or `PATCH` (a 400, a
//!   decline, an `idempotency_error`: past its idempotency layer, which would have replayed
//!   the first attempt's result had it run), or any failure of a safe method (`GET`,
//!   `HEAD`), which had no work to do. A keyed `POST` that timed out and then got a 401 or
//!   403 (the API key was rolled meanwhile), or a 3xx or 4xx without Stripe's error object
//!   (a proxy's), stays indeterminate: those are refused before the idempotency layer. So
//!   does a `DELETE` that timed out and then got a 404: it may well have deleted (Stripe
//!   ignores keys on `DELETE`). The rule is the retry layer's, whatever the classifier:
//!   with another API's classifier, a `POST` in that position stays indeterminate.
//! - The caller gets the final response's whole body, with two exceptions, both where
//!   SPEC section 6.4 meets section 7's "do not let a retried response pin a connection",
//!   and both only when the call stops before a retry it had decided on is sent (the
//!   service never gets ready, the throttle refuses, the deadline passes):
//!   - a non-2xx body that arrives in several frames and runs past the 64 KiB read for
//!     classifying: its unread rest was released when the retry was decided, not held
//!     through the backoff. The body yields the bytes read, then a
//!     [`BodyAbandoned`](body::BodyAbandoned) error: short, and saying so. Stripe's error
//!     bodies are far smaller than the limit;
//!   - a 2xx that a custom classifier chose to retry: its body was released unread. The
//!     caller gets its status and headers, and a body that yields `BodyAbandoned` (unless
//!     the body was already known to be empty).
//! - A 409 or 429 is retried whatever its body's `type` says (Stripe answers a request
//!   whose key is in use with a 409 `idempotency_error`), as Stripe's own clients retry
//!   every 409. `idempotency_error` on any other status is never retried.
//! - The retry budget is on by default; adaptive throttling is off by default.
//! - `Stripe-Should-Retry: true` makes a definite failure retryable (so its outcome becomes
//!   "gave up" if retries run out), except `idempotency_error`, which only a change in the
//!   caller can fix.
//!
//! # Bad input
//!
//! Each row is one test in `tests/bad_input.rs` (whole default stack, paused time). "Rejected"
//! means: `Err(Error)` with `is_rejected()`, `Outcome::DefiniteFailure`,
//! `StopReason::Rejected`, no attempt in the report, and nothing sent.
//!
//! | bad input | what the caller gets | test |
//! |---|---|---|
//! | `Idempotency-Key` of 256 characters | Rejected; cause `InvalidIdempotencyKey::TooLong { len: 256 }`; message `definite failure after 0 attempts (rejected before sending): invalid idempotency key: 256 characters is over the limit of 255 visible ASCII characters`; `error.idempotency_key()` is `None`. `IdempotencyKey::new` refuses it the same way; 255 characters are sent | `key_of_256_characters_is_rejected_before_sending` |
//! | key with a newline | cannot be built: `http` refuses the header value (`Request::builder` returns `Err`), so it never reaches the stack; `IdempotencyKey::new("order\n1234")` is `Err(InvalidCharacter { index: 5 })`, `invalid idempotency key: byte 5 is not visible ASCII; keys are 1 to 255 visible ASCII characters` | `key_with_a_newline_cannot_be_built_or_sent` |
//! | key with a tab or a space (valid in a header, not in a key) | Rejected; cause `InvalidCharacter { index }`, message ending `invalid idempotency key: byte 5 is not visible ASCII; keys are 1 to 255 visible ASCII characters` | `key_with_a_tab_or_space_is_rejected_before_sending` |
//! | key with non-ASCII (`clé`) | Rejected; cause `InvalidCharacter { index: 2 }`, message ending `byte 2 is not visible ASCII; keys are 1 to 255 visible ASCII characters`; `IdempotencyKey::new("clé")` the same | `key_with_non_ascii_is_rejected_before_sending` |
//! | empty key; two `Idempotency-Key` headers | Rejected; `InvalidIdempotencyKey::Empty` (`... it is empty; keys are 1 to 255 visible ASCII characters`) / `Repeated` (`... the request has more than one idempotency-key header`) | `empty_or_repeated_key_is_rejected_before_sending` |
//! | `Retry-After: -1` | ignored (`headers::retry_after` is `None`): the computed backoff alone decides the delay; the call goes on | `retry_after_minus_one_is_ignored` |
//! | `Retry-After: 1e30` | ignored, as above | `retry_after_1e30_is_ignored` |
//! | `Retry-After` garbage (`soon`, `1.5`, `3, 4`, a date with day 32, empty) | ignored, as above | `retry_after_garbage_is_ignored` |
//! | `Retry-After` an HTTP date in the past | a wait of zero (measured from the response's `Date`, else this machine's clock): the computed backoff is the delay | `retry_after_date_in_the_past_is_a_wait_of_zero` |
//! | `Retry-After` over the cap (60 s), up to more seconds than a `u64` holds | the call ends at once, no sleep: `StopReason::RetryAfterTooLong { retry_after }` (`Duration::MAX` when it saturates; message `server asked to retry after 18446744073709551615s, over the cap`); outcome gave up on a 429, still indeterminate on a 503 | `retry_after_of_more_seconds_than_a_u64_ends_the_call_at_once` |
//! | `Retry-After` of more seconds than a `u64` holds, with the cap and the deadline both set to `Duration::MAX` | no overflow, no panic: the wait cannot end before the deadline, so the call ends at once with `StopReason::DeadlineExceeded` (gave up on a 429), and no delay is reported | `retry_after_of_duration_max_with_no_cap_and_no_deadline_does_not_panic` |
//! | `Stripe-Should-Retry` neither `true` nor `false` (`maybe`, `yes`) | ignored: the body and status decide (a 402 `card_error` is a definite failure; a 500 `api_error` on `POST` is indeterminate, not replayed) | `stripe_should_retry_garbage_is_ignored` |
//! | `Request-Id` with non-ASCII bytes | kept as sent (`RequestId::as_header_value`), `to_str()` is `None`, shown lossily (`req_\u{fffd}\u{fffd}`) in the report and the error message | `request_id_with_non_ascii_bytes_is_kept_and_shown_lossily` |
//! | a 10 MiB error body (a valid Stripe `card_error`, padded) | over the 64 KiB read for classification: classified by status (402: definite failure, class `invalid_request`), `stripe_error()` is `None`, one attempt; `take_response()` gives status, headers and all 10 MiB byte for byte | `ten_mib_error_body_is_classified_by_status_and_delivered_whole` |
//! | a truncated error body stream (a 500 `api_error` cut mid-JSON, ending short of its size hint) | not a Stripe body: a 5xx without one, retried with the same key; after 3 attempts indeterminate (`AttemptsExhausted`, class `unavailable`), `stripe_error()` `None`, the body as sent | `truncated_error_body_stream_falls_back_to_status_and_is_delivered_as_sent` |
//! | a truncated request body stream (ends short of its size hint) | indistinguishable from a short body: sent as read, the same bytes on every attempt | `truncated_request_body_stream_is_sent_as_read` |
//! | a request body stream that errors | Rejected (nothing sent); cause `RequestBodyError::Failed`; message `definite failure after 0 attempts (rejected before sending), idempotency key <key>: request body failed: disk read failed` | `request_body_stream_that_errors_is_rejected_before_sending` |
//! | an error response body stream that errors midway (503) | classified by status (retried; indeterminate after 3 attempts, `AttemptsExhausted`); the final body yields the bytes read, then the stream's error | `error_body_stream_that_errors_is_classified_by_status_then_passed_on` |
//! | a 2xx response body stream that errors midway | `Ok(response)` (the work was done); the body streams through unread by the stack and yields its error to the caller | `success_body_stream_that_errors_is_passed_through` |
//! | an error body with a JSON array in place of Stripe's error object (`{"error":["api_error"]}` on a 500) | not a Stripe error object: a 5xx without a Stripe body, retried with the same key; after 3 attempts indeterminate (`AttemptsExhausted`, class `unavailable`), `stripe_error()` `None`, the body whole | `json_array_in_place_of_the_error_object_falls_back_to_status` |
//! | an error body that is malformed JSON (402) | classified by status (definite failure, class `invalid_request`), `stripe_error()` `None`, the body delivered whole | `malformed_json_error_body_falls_back_to_status_and_is_delivered_whole` |
//!
//! Parsers on arbitrary bytes (`tests/fuzz.rs`, plus the corpus in `tests/corpus/`): no panic;
//! a body that is not a Stripe error object is `None` and classifies exactly as no body;
//! numbers out of range, invalid UTF-8 or lone surrogates in a string, a byte-order mark,
//! trailing bytes or a repeated `error` key make the whole body "not Stripe JSON" (classified
//! by status); nesting deeper than serde_json's limit is refused, not recursed into.
//!
//! [tower]: https://docs.rs/tower

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod backoff;
pub mod body;
pub mod budget;
pub mod classify;
mod error;
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
pub use crate::outcome::{Class, Classification, Detail, Outcome};
pub use crate::report::{Attempt, CallReport, Elapsed, StopReason};
pub use crate::retry::{CallOptions, RetryLayer};
pub use crate::stack::{Resilient, ResilientLayer};

// Compiles the README's examples as doc tests, so they cannot drift from the API. They use
// the reqwest feature, as the README's test command (`--all-features`) has, and the
// resilient-http-testing dev-dependency.
#[cfg(all(doctest, feature = "reqwest"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
