//! [`ResilientLayer`]: the whole stack as one layer, in the right order.

use crate::idempotency::{RandomKey, SetIdempotencyKey, SetIdempotencyKeyLayer};
use crate::retry::{Retry, RetryLayer};
use crate::stripe::StripeClassifier;
use std::fmt;
use tower_layer::Layer;

/// The service [`ResilientLayer`] makes: keys set once, above the retry loop.
pub type Resilient<S, C = StripeClassifier, M = RandomKey> = SetIdempotencyKey<Retry<S, C>, M>;

/// Idempotency keys and retries in one layer: [`SetIdempotencyKeyLayer`] above
/// [`RetryLayer`], so the key is fixed before the first attempt and every retry repeats it.
///
/// This is the one way to build the stack: [`ResilientLayer::new`] takes the retry layer
/// (a profile's defaults, or one from [`RetryLayer`]'s builder), and
/// [`key_maker`](Self::key_maker) changes how keys are made.
///
/// Put it once, directly above the client: retrying at several layers multiplies attempts.
/// Over hyper-util's `Client`, turn on this crate's `hyper-util` feature, so that the
/// client's DNS, TLS and connect-timeout failures count as connect errors (nothing sent).
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use resilient_http::ResilientLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let stripe = ServiceBuilder::new()
///     .layer(ResilientLayer::stripe())
///     .service(client);
///
/// let req = http::Request::post("http://127.0.0.1:12111/v1/charges")
///     .header("authorization", "Bearer sk_test_123")
///     .body(Full::new(Bytes::from("amount=2000&currency=usd")))?;
/// match stripe.oneshot(req).await {
///     Ok(res) => println!("charged: {}", res.status()),
///     Err(e) if e.is_indeterminate() => println!("unknown, reconcile with {:?}", e.idempotency_key()),
///     Err(e) => println!("failed: {e}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ResilientLayer<C = StripeClassifier, M = RandomKey> {
    keys: SetIdempotencyKeyLayer<M>,
    retry: RetryLayer<C>,
}

impl<C: fmt::Debug, M> fmt::Debug for ResilientLayer<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientLayer")
            .field("keys", &self.keys)
            .field("retry", &self.retry)
            .finish()
    }
}

impl ResilientLayer<StripeClassifier, RandomKey> {
    /// Stripe's defaults: random UUID v4 keys and [`RetryLayer::stripe`].
    pub fn stripe() -> Self {
        Self::new(RetryLayer::stripe())
    }
}

impl Default for ResilientLayer<StripeClassifier, RandomKey> {
    fn default() -> Self {
        Self::stripe()
    }
}

impl<C> ResilientLayer<C, RandomKey> {
    /// Random UUID v4 keys above `retry`.
    pub fn new(retry: RetryLayer<C>) -> Self {
        ResilientLayer {
            keys: SetIdempotencyKeyLayer::random(),
            retry,
        }
    }
}

impl<C, M> ResilientLayer<C, M> {
    /// Makes keys with `make` instead. Defaults to [`RandomKey`].
    pub fn key_maker<M2>(self, make: M2) -> ResilientLayer<C, M2> {
        ResilientLayer {
            keys: SetIdempotencyKeyLayer::new(make),
            retry: self.retry,
        }
    }
}

impl<S, C, M: Clone> Layer<S> for ResilientLayer<C, M> {
    type Service = Resilient<S, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        self.keys.layer(self.retry.layer(inner))
    }
}
