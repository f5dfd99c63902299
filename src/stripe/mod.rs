//! The Stripe profile: everything this crate knows about Stripe's API, and nothing the
//! generic retry engine needs.
//!
//! - [`StripeClassifier`]: what each of Stripe's answers means, read from
//!   `Stripe-Should-Retry`, the error object in the body, then the status.
//! - [`StripeError`]: Stripe's error object, parsed once per answer and handed to the
//!   caller with the call's error ([`Error::stripe_error`](crate::Error::stripe_error)),
//!   with the [`Category`] of Stripe's error-handling guide it falls in.
//! - [`should_retry`]: the `Stripe-Should-Retry` header's parser.
//!
//! [`RetryLayer::stripe`](crate::RetryLayer::stripe) and
//! [`ResilientLayer::stripe`](crate::ResilientLayer::stripe) put it to work with Stripe's
//! defaults (3 attempts, backoff from 500 ms to 5 s, an 80 s deadline).
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use resilient_http::stripe::Category;
//! use resilient_http::ResilientLayer;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let stripe = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let body = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder().status(402).header("request-id", "req_1").body(Full::new(Bytes::from(body))).unwrap(),
//!     )
//! });
//! let svc = ResilientLayer::stripe().layer(stripe);
//! let req = Request::post("https://api.stripe.com/v1/charges").body(Full::new(Bytes::new())).unwrap();
//! let err = svc.oneshot(req).await.unwrap_err();
//! let stripe_error = err.stripe_error().unwrap();
//! assert_eq!(stripe_error.category(), Category::CardDeclined);
//! assert_eq!(stripe_error.decline_code.as_deref(), Some("insufficient_funds"));
//! assert_eq!(stripe_error.request_id.as_ref().unwrap().to_string(), "req_1");
//! # }
//! ```

mod classify;
mod error;
#[cfg(feature = "webhooks")]
pub mod reconcile;
#[cfg(feature = "webhooks")]
pub mod webhook;

pub use self::classify::{should_retry, StripeClassifier, STRIPE_SHOULD_RETRY};
pub use self::error::{Category, ErrorCode, ErrorType, StripeError};

impl crate::RetryLayer<StripeClassifier> {
    /// Stripe's defaults: [`StripeClassifier`], 3 attempts, backoff from 500 ms to 5 s
    /// with full jitter, an 80 s deadline, `Retry-After` honoured up to 60 s, the default
    /// retry budget.
    pub fn stripe() -> Self {
        Self::new(StripeClassifier)
    }

    /// A builder that starts from Stripe's defaults; [`Builder::classifier`](crate::retry::Builder::classifier) swaps the
    /// classifier.
    pub fn builder() -> crate::retry::Builder<StripeClassifier> {
        crate::retry::Builder::new(StripeClassifier)
    }
}

impl Default for crate::RetryLayer<StripeClassifier> {
    fn default() -> Self {
        Self::stripe()
    }
}

impl crate::Error {
    /// Stripe's error object from the final response's body, if it had one (and the call
    /// ran under the Stripe profile): a shortcut for downcasting
    /// [`detail()`](crate::Error::detail).
    pub fn stripe_error(&self) -> Option<&StripeError> {
        self.detail()?.downcast_ref()
    }
}
