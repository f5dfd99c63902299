//! A Stripe-like server for tests: [`StripeServer`].
//!
//! A real hyper HTTP/1 server on `127.0.0.1:0` that behaves like Stripe's API where it
//! matters for retries, so that a test can prove what a client stack does to a payments
//! API: how many charges a call made, whether the caller was told the truth about it, and
//! what every attempt sent. It was written to test the retry layers of `resilient-http`,
//! but depends on no client: any HTTP client can be pointed at [`StripeServer::url`].
//!
//! Here a plain hyper-util client, with no retry layer, does by hand what a retrying
//! client must do after a dropped connection: send the same request again, with the same
//! `Idempotency-Key`.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use resilient_http_testing::{Answer, Fault, Faults, StripeServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The first charge is made, then its connection drops before the response.
//! let server = StripeServer::builder()
//!     .faults(Faults::script([Some(Fault::DropAfterEffect)]))
//!     .start()
//!     .await?;
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let charge = || {
//!     http::Request::post(format!("{}/v1/charges", server.url()))
//!         .header("content-type", "application/x-www-form-urlencoded")
//!         .header("idempotency-key", "order-1001")
//!         .body(Full::new(Bytes::from("amount=2000&currency=usd")))
//! };
//!
//! // No response: did the charge happen?
//! assert!(client.request(charge()?).await.is_err());
//! // The same request with the same key gets the saved result: one charge, not two.
//! let res = client.request(charge()?).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["idempotent-replayed"], "true");
//! assert_eq!(server.ledger().by_key("order-1001").count(), 1);
//!
//! let log = server.log();
//! assert_eq!(log.requests()[0].answer, Answer::Dropped);
//! assert!(log.requests()[1].replayed);
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! - `POST /v1/charges`, form (`application/x-www-form-urlencoded`) or flat JSON body:
//!   `amount` (a positive integer) and `currency` (three letters) are required; `source`
//!   `tok_chargeDeclined` is declined (402 `card_error`, `card_declined`, and a failed
//!   charge in [`Ledger::failed`]); a `customer` parameter locks that customer while the
//!   charge runs. Every other parameter is kept
//!   for the idempotency comparison. A success makes a [`Charge`] in the [`Ledger`].
//! - `GET /v1/charges/{id}`: the charge (a failed one too), or 404 `resource_missing`.
//! - Anything else: 404 `invalid_request_error`.
//!
//! Every response carries a `Request-Id`; every error is a Stripe error object
//! (`{"error":{"type","code","message","param"}}`). A malformed or oversized body, a bad
//! key or a bad parameter gets a 400 `invalid_request_error`, never a panic.
//!
//! Keys are checked by the server's own rules, not by a client library's validator, so
//! that a client that sends a key it should have refused is caught: a key is 1 to 255
//! characters, each visible ASCII (bytes 0x21 to 0x7E), in one `Idempotency-Key` header.
//!
//! # Stripe's rules it follows
//!
//! | request | answer | saved under its key | `Stripe-Should-Retry` |
//! |---|---|---|---|
//! | past the rate limit ([`Builder::rate_limit`]) | 429 `rate_limit` | no | none (clients retry a 429 anyway) |
//! | an invalid key (empty, over 255 characters, a byte outside visible ASCII `!` to `~`, or two `Idempotency-Key` headers) | 400 `invalid_request_error` saying what is wrong and what a key must be | no | none |
//! | a key still executing (same parameters) | 409 `idempotency_key_in_use` | no | `true` |
//! | a key reused with other parameters or another endpoint | 400 `idempotency_error` | no | none |
//! | a key whose result is saved | the saved result, `Idempotent-Replayed: true`, `Original-Request` | (already) | as first sent |
//! | fails validation | 400 `invalid_request_error` | no | none |
//! | its customer stays locked past [`Builder::lock_timeout`] | 429 `lock_timeout` | no | `true` |
//! | declined card | 402 `card_error`, one failed charge | yes | none |
//! | [`Fault::ApiErrorBeforeEffect`] | 500 `api_error`, no charge | no | `true` |
//! | [`Fault::ApiErrorAfterEffect`] | 500 `api_error`, one charge | yes, the 500 | `false` |
//! | [`Fault::ApiErrorAfterEffectNoHint`] | 500 `api_error`, one charge | yes, the 500 | none |
//! | [`Fault::DropAfterEffect`] | no response, one charge | yes, a 200 | none |
//! | [`Fault::Delay`] | a 200 after the delay, one charge; the key counts as executing until then | yes, a 200 | none |
//! | otherwise | 200 and the charge | yes | none |
//!
//! Faults ([`Faults`]) are drawn for every charge that passed validation, got its
//! customer's lock and was not declined (declined ones too with
//! [`Builder::fault_declines`]), with or without an idempotency key; a replay, a
//! conflict or a rejected request never gets one. Delays run on tokio's clock.
//!
//! # Reading what happened
//!
//! [`StripeServer::ledger`] gives the charges made ([`Ledger::by_key`] finds those of a
//! key); [`StripeServer::log`] gives every request received, with its key, parameters,
//! answer, fault and whether it was a replay. Both are snapshots.
//!
//! # Webhook events
//!
//! With [`Builder::webhooks`], every charge made (declined ones included, and those whose
//! answer was lost) also sends a Stripe event, `charge.succeeded` or `charge.failed`,
//! to the endpoint a test names: `data.object` is the charge, `request.id` and
//! `request.idempotency_key` name the request that made it. Each is signed as Stripe
//! signs (`Stripe-Signature: t=...,v1=...`, by this crate's own [`sign`]), and can be
//! sent late, twice, and again while the endpoint answers other than 2xx: the events
//! cross each other as Stripe's do. [`StripeServer::deliveries`] tells what was sent
//! and how it was answered; [`StripeServer::deliveries_finished`] waits for the last.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod faults;
mod headers;
mod key;
mod ledger;
mod params;
mod server;
mod sign;
mod store;
mod webhooks;

pub use crate::faults::{Fault, Faults};
pub use crate::ledger::{Answer, Charge, Ledger, LoggedRequest, RequestLog};
pub use crate::params::Params;
pub use crate::server::{Builder, StripeServer, DEFAULT_BODY_LIMIT, DEFAULT_LOCK_TIMEOUT};
pub use crate::sign::sign;
pub use crate::webhooks::{
    Deliveries, Delivery, DeliveryState, Webhooks, API_VERSION, DEFAULT_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
};
