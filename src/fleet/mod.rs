//! Limits shared by every process of an application, kept in Redis (feature `redis`).
//!
//! A payments API limits an *account* (Stripe: 100 requests a second in live mode, 25 in
//! test mode), but an application runs as many processes, each with its own
//! [retry budget](crate::budget) and [throttle](crate::throttle): a fleet of eight can offer
//! eight times what the account allows, and retry eight times as much. This module keeps
//! the limits in one Redis that every process reaches, with the in-process versions as the
//! fallback.
//!
//! | what | type | shared as |
//! |---|---|---|
//! | a rate limit per key (an account, or an account and an endpoint) | [`FleetRateLimit`], a [`SendLimit`](crate::retry::SendLimit) for [`Builder::send_limit`](crate::retry::Builder::send_limit) | GCRA in one Lua script on Redis's clock; slots leased a few at a time |
//! | the retry budget | [`FleetBudget`], which builds a [`RetryBudget`](crate::budget::RetryBudget) | one bucket; deposits batched, tokens leased |
//! | the reconciler's pending calls (with feature `webhooks`) | `RedisStore`, a `PendingStore` | one hash, one field per idempotency key |
//!
//! The retry layer asks its limits on the call's own task and never waits on the network
//! for them: each process reaches Redis from a background task (a thread for the store) and
//! answers calls from what it holds, so the happy path pays no round trip per call. A call
//! that ends indeterminate queues its record for the store's writer thread.
//!
//! # When Redis is slow or down
//!
//! Every Redis operation has a short time limit (50 to 100 ms). When one fails or runs out,
//! the process goes on under its in-process limits (the same rate, ratio and reserve, for
//! itself alone), logs one `warn` event for the outage (target `resilient_http::fleet`),
//! not one per call, and shares the limits again as soon as Redis answers. No call waits
//! on Redis past its own deadline, and no pending record is dropped while the process
//! lives (one is queued in the process until Redis takes it). While Redis is down, a
//! fleet of N processes may send up to N times the rate: the account's own limit (and the
//! [adaptive throttle](crate::throttle), if on) is then the backstop.
//!
//! # Example
//!
//! One URL turns the fleet rate limit on. Building it needs a tokio runtime (its lease task
//! is spawned there), not a Redis server: with none at the URL, as here, the first lease
//! fails and the process paces itself alone at the same rate.
//!
//! ```
//! use resilient_http::fleet::FleetRateLimit;
//! use resilient_http::retry::SendLimit;
//! use resilient_http::RetryLayer;
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Every process of the fleet: 100 requests a second in all on account acct_123.
//! let limit = FleetRateLimit::builder("redis://127.0.0.1:1/", "acct_123", 100).build()?;
//! let layer = RetryLayer::builder().send_limit(limit.clone()).build()?;
//! # let _ = layer;
//!
//! // Nothing listens on port 1. The first call goes at once (on credit, paced by the
//! // process's own limit), and its lease fails:
//! let now = Instant::now();
//! assert_eq!(limit.reserve(now, now + Duration::from_secs(1))?, Duration::ZERO);
//! while limit.is_shared() {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! // From then on the process alone keeps to 100 a second: one send every 10 ms.
//! let now = Instant::now();
//! let first = limit.reserve(now, now + Duration::from_secs(1))?;
//! let second = limit.reserve(now, now + Duration::from_secs(1))?;
//! assert_eq!(second - first, Duration::from_millis(10));
//! # Ok(()) }
//! ```
//!
//! # Redis keys
//!
//! A rate limit keeps one string under `resilient_http:rate:<key>`: the GCRA's next
//! theoretical arrival time in microseconds of Redis's clock, expiring a second after the
//! fleet goes quiet. Give every process the same key, rate and burst.

mod budget;
#[cfg(feature = "webhooks")]
mod pending;
mod rate_limit;

pub use self::budget::{FleetBudget, FleetBudgetError};
#[cfg(feature = "webhooks")]
pub use self::pending::{RedisStore, RedisStoreBuilder};
pub use self::rate_limit::{
    FleetLimited, FleetRateLimit, FleetRateLimitBuilder, FleetRateLimitError,
};
