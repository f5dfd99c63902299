//! The retry loop: classify every attempt, back off, replay the same bytes with the same
//! key, and end in exactly one [`Outcome`].
//!
//! [`Retry`] wraps any client service that speaks `http::Request<Full<Bytes>>`. For each
//! call it:
//!
//! 1. validates the `Idempotency-Key` header, if any (an invalid key is an error, and
//!    nothing is sent);
//! 2. reads the request body into `Bytes`, up to a limit, so it can be replayed;
//! 3. sends an attempt; reads a non-2xx response body (up to a limit) and asks the
//!    [`Classify`] what it means;
//! 4. retries while the classification says a retry may help, attempts remain, the
//!    `Retry-After` hint is within its cap, and the next attempt can start before the
//!    deadline; never replays a request that may have taken effect unless it is idempotent
//!    or carries an idempotency key;
//! 5. returns the success response (whose [`ResponseBody`] carries the [`CallReport`])
//!    or an [`Error`] holding the final response.
//!
//! The engine knows no API: what an answer means comes from the [`Classify`] profile,
//! and the decisions themselves are pure functions of the attempt, the call's limits and
//! its history, which the future only carries out. Settings come from the layer, and a
//! request may override some of them for itself with [`CallOptions`] in its extensions.
//!
//! Each retry waits for the inner service's `poll_ready` again before calling it. Each
//! attempt emits one `tracing` event (target `resilient_http::retry`) with the attempt
//! number, class, status, delay, key and request id.
//!
//! Delays are `max(backoff, Retry-After)`: the server's hint is a floor, and never lets a
//! retry come sooner than the backoff would.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use resilient_http::{RetryLayer, CallReport};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! // Rate limited once, then fine.
//! let inner = service_fn(move |_req: Request<Full<Bytes>>| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let status = if n == 0 { 429 } else { 200 };
//!         Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
//!     }
//! });
//! let layer = RetryLayer::builder().base_delay(Duration::from_millis(10)).build().unwrap();
//! let svc = layer.layer(inner);
//! let res = svc.oneshot(Request::get("/v1/balance").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.body().report().unwrap().attempts().len(), 2);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```

mod finish;
pub mod future;
mod head;
mod layer;
mod limit;
mod observe;
mod options;
mod policy;

pub use self::future::ResponseFuture;
pub use self::layer::{Builder, RetryLayer};
pub use self::limit::SendLimit;
pub use self::observe::{IndeterminateCall, OnIndeterminate};
pub use self::options::CallOptions;

use crate::backoff::ExponentialBackoff;
use crate::body::{BoxError, ResponseBody};
use crate::budget::RetryBudget;
use crate::classify::Classify;
use crate::error::Error;
use crate::outcome::Outcome;
use crate::report::{CallReport, StopReason};
use crate::throttle::AdaptiveThrottle;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The layer's settings: everything but the classifier, so that a new setting is one
/// field here and one builder method.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) backoff: ExponentialBackoff,
    pub(crate) max_attempts: u32,
    pub(crate) deadline: Duration,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) retry_after_cap: Duration,
    pub(crate) request_body_limit: usize,
    pub(crate) response_body_limit: usize,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) throttle: Option<AdaptiveThrottle>,
    pub(crate) on_indeterminate: Option<observe::Observer>,
    pub(crate) send_limit: Option<limit::Limit>,
}

#[derive(Debug)]
pub(crate) struct Config<C> {
    pub(crate) classifier: C,
    pub(crate) settings: Settings,
}

/// Middleware that retries a call while it is safe and useful. See the
/// [module docs](self).
pub struct Retry<S, C> {
    inner: S,
    config: Arc<Config<C>>,
}

impl<S, C> Retry<S, C> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<C>>) -> Self {
        Retry { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Retry<S, C> {
    /// Starts a call; `attached`: the key the layer above has just put in the request's
    /// header (valid by construction), so that it is not looked up and checked again.
    pub(crate) fn call_keyed<ReqB>(
        &mut self,
        req: Request<ReqB>,
        attached: Option<crate::IdempotencyKey>,
    ) -> ResponseFuture<S, C, ReqB, <S::Response as ResponseOf>::Body>
    where
        S: Service<Request<Full<Bytes>>>,
        S::Response: ResponseOf,
        ReqB: Body,
    {
        // Keep the service that was polled ready for this call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner, self.config.clone(), req, attached)
    }
}

/// The body type of a service's `http::Response`.
pub(crate) trait ResponseOf {
    type Body;
}

impl<B> ResponseOf for Response<B> {
    type Body = B;
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Retry<S, C>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify,
    ReqB: Body,
    ReqB::Error: Into<BoxError>,
    ResB: Body + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S, C, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| {
            let report = CallReport {
                outcome: Outcome::GaveUp,
                stop: StopReason::ServiceNotReady,
                idempotency_key: None,
                attempts: Default::default(),
                replayed: false,
            };
            Error::new(report, None, None, Some(e.into()))
        })
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        self.call_keyed(req, None)
    }
}
