//! [`ResilientLayer`]: the whole stack as one layer, in the right order.

use crate::body::{BoxError, ResponseBody};
use crate::classify::Classify;
use crate::error::Error;
use crate::idempotency::{attach_key, MakeIdempotencyKey, RandomKey, SetIdempotencyKeyLayer};
use crate::retry::future::ResponseFuture;
use crate::retry::{Retry, RetryLayer};
use crate::stripe::StripeClassifier;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use std::fmt;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The service [`ResilientLayer`] makes: keys set once, above the retry loop.
///
/// It does what [`SetIdempotencyKey`](crate::idempotency::SetIdempotencyKey) over
/// [`Retry`] does, in one step: the key it attaches goes to the retry loop as it is, not
/// looked up again in the header and checked (a key the caller set is still checked).
pub struct Resilient<S, C = StripeClassifier, M = RandomKey> {
    retry: Retry<S, C>,
    make: M,
}

impl<S, C, M> Resilient<S, C, M> {
    /// The client service below the stack.
    pub fn get_ref(&self) -> &S {
        self.retry.get_ref()
    }

    /// The client service below the stack, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.retry.get_mut()
    }

    /// Unwraps the client service below the stack.
    pub fn into_inner(self) -> S {
        self.retry.into_inner()
    }
}

impl<S: Clone, C, M: Clone> Clone for Resilient<S, C, M> {
    fn clone(&self) -> Self {
        Resilient {
            retry: self.retry.clone(),
            make: self.make.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, M> fmt::Debug for Resilient<S, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("retry", &self.retry)
            .field("make", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S, C, M, ReqB, ResB> Service<Request<ReqB>> for Resilient<S, C, M>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify,
    M: MakeIdempotencyKey,
    ReqB: Body,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S, C, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<ReqB>>::poll_ready(&mut self.retry, cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let attached = attach_key(&mut self.make, &mut parts);
        self.retry
            .call_keyed(Request::from_parts(parts, body), attached)
    }
}

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
        Resilient {
            retry: self.retry.layer(inner),
            make: self.keys.maker().clone(),
        }
    }
}
