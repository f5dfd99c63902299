use crate::error::ConfigError;
use std::time::Duration;

/// Per-call overrides of the retry layer's settings, put in the request's extensions.
///
/// Each setting given wins over the layer's for this call only; the next call runs under
/// the layer's settings again. A value that cannot work (no attempt, a time limit under
/// 1 ms) ends the call before anything is sent, with a
/// [`ConfigError`] as its [underlying error](crate::Error::underlying_error).
///
/// The call's idempotency key is chosen per call too: set the `Idempotency-Key` header,
/// put an [`IdempotencyKey`](crate::IdempotencyKey) in the extensions, or (with
/// [`DeriveKey`](crate::idempotency::DeriveKey)) an
/// [`OperationId`](crate::idempotency::OperationId).
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use resilient_http::{CallOptions, CallReport, RetryLayer};
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let down = service_fn(|_req: Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
/// });
/// let svc = RetryLayer::stripe().layer(down);
///
/// let mut req = Request::get("/v1/balance").body(Full::new(Bytes::new())).unwrap();
/// req.extensions_mut().insert(CallOptions::new().no_retry());
/// let err = svc.oneshot(req).await.unwrap_err();
/// assert_eq!(err.report().attempts().len(), 1);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
}

impl CallOptions {
    /// No overrides: the layer's settings.
    pub const fn new() -> Self {
        CallOptions {
            max_attempts: None,
            deadline: None,
            attempt_timeout: None,
        }
    }

    /// The most attempts for this call, the first included; at least 1.
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sends this call once, whatever the answer: the same as `max_attempts(1)`.
    pub const fn no_retry(self) -> Self {
        self.max_attempts(1)
    }

    /// This call's whole-call deadline; at least 1 ms.
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// This call's per-attempt timeout; at least 1 ms.
    pub const fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        super::layer::check(self.max_attempts, self.deadline, self.attempt_timeout)
    }
}
