use super::{Config, Retry};
use crate::backoff::{ExponentialBackoff, Jitter};
use crate::body::{DEFAULT_REQUEST_BODY_LIMIT, DEFAULT_RESPONSE_BODY_LIMIT};
use crate::budget::RetryBudget;
use crate::classify::{HttpClassifier, StripeClassifier};
use crate::throttle::AdaptiveThrottle;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Attempts per call by default: 3, as Stripe's official clients retry twice.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Whole-call deadline by default: 80 s, the request timeout of Stripe's official clients.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(80);

/// Longest `Retry-After` honoured by default: 60 s, as in Stripe's Python client. A server
/// asking for longer ends the call at once: "gave up while retryable" if the attempt did
/// not take effect (a 429), still indeterminate if it may have (a 503).
pub const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// The shortest deadline or attempt timeout accepted: 1 ms. Shorter values are raised to it.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Applies [`Retry`] to a service; holds the configuration.
///
/// Cheap to clone. Build it from [`RetryLayer::stripe`] (or `Default`) and adjust:
///
/// ```
/// use resilient_http::RetryLayer;
/// use resilient_http::backoff::Jitter;
/// use std::time::Duration;
///
/// let layer = RetryLayer::stripe()
///     .max_attempts(5)
///     .base_delay(Duration::from_millis(200))
///     .jitter(Jitter::Equal)
///     .deadline(Duration::from_secs(30))
///     .attempt_timeout(Duration::from_secs(10));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer<C = StripeClassifier> {
    config: Config<C>,
}

impl RetryLayer<StripeClassifier> {
    /// Stripe's defaults: [`StripeClassifier`], 3 attempts, backoff from 500 ms to 5 s
    /// with full jitter, an 80 s deadline, `Retry-After` honoured up to 60 s.
    pub fn stripe() -> Self {
        Self::new(StripeClassifier)
    }
}

impl RetryLayer<HttpClassifier> {
    /// The same defaults with [`HttpClassifier`], for APIs other than Stripe's.
    pub fn http() -> Self {
        Self::new(HttpClassifier)
    }
}

impl Default for RetryLayer<StripeClassifier> {
    fn default() -> Self {
        Self::stripe()
    }
}

impl<C> RetryLayer<C> {
    /// The default configuration with `classifier`.
    pub fn new(classifier: C) -> Self {
        RetryLayer {
            config: Config {
                classifier,
                backoff: ExponentialBackoff::stripe(),
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                deadline: DEFAULT_DEADLINE,
                attempt_timeout: None,
                retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
                request_body_limit: DEFAULT_REQUEST_BODY_LIMIT,
                response_body_limit: DEFAULT_RESPONSE_BODY_LIMIT,
                budget: Some(RetryBudget::default()),
                throttle: None,
            },
        }
    }

    /// Replaces the classifier, keeping the rest.
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        let c = self.config;
        RetryLayer {
            config: Config {
                classifier,
                backoff: c.backoff,
                max_attempts: c.max_attempts,
                deadline: c.deadline,
                attempt_timeout: c.attempt_timeout,
                retry_after_cap: c.retry_after_cap,
                request_body_limit: c.request_body_limit,
                response_body_limit: c.response_body_limit,
                budget: c.budget,
                throttle: c.throttle,
            },
        }
    }

    /// Sets the most attempts per call, the first included; 0 counts as 1 (a call is
    /// always attempted once). Defaults to 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// Sets the backoff schedule. Defaults to [`ExponentialBackoff::stripe`].
    pub fn backoff(mut self, backoff: ExponentialBackoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Sets the first backoff ceiling. Defaults to 500 ms. Whatever the backoff draws, a
    /// retry waits at least one tick of tokio's timer (1 ms), so a zero base never
    /// retries in a tight loop.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.config.backoff = self.config.backoff.base(base);
        self
    }

    /// Sets the largest backoff delay. Defaults to 5 s.
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.config.backoff = self.config.backoff.cap(cap);
        self
    }

    /// Sets the jitter strategy. Defaults to [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.backoff = self.config.backoff.jitter(jitter);
        self
    }

    /// Sets the whole-call deadline, across reading the request body, every attempt and
    /// every sleep. Values under [`MIN_TIMEOUT`] are raised to it (a zero deadline would
    /// abandon every call as soon as it was sent); one too far away for tokio's clock
    /// (`Duration::MAX`) means about 30 years, as tokio's own "never" does. Defaults to
    /// 80 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = deadline.max(MIN_TIMEOUT);
        self
    }

    /// Sets a per-attempt timeout, from sending the request to the response head. An
    /// attempt that runs past it is indeterminate and retried with the same key; a non-2xx
    /// body that has started to arrive is read until the call's deadline instead, so that
    /// a slow Stripe `api_error` body is still seen. Values under [`MIN_TIMEOUT`] are
    /// raised to it. Defaults to none (the deadline bounds every attempt).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout.max(MIN_TIMEOUT));
        self
    }

    /// Sets the longest `Retry-After` honoured; a server asking for longer ends the call.
    /// Defaults to 60 s.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.config.retry_after_cap = cap;
        self
    }

    /// Sets the largest request body held for replay. Defaults to 1 MiB.
    pub fn request_body_limit(mut self, limit: usize) -> Self {
        self.config.request_body_limit = limit;
        self
    }

    /// Sets how much of a non-2xx response body is read for classification. Defaults to
    /// 64 KiB.
    pub fn response_body_limit(mut self, limit: usize) -> Self {
        self.config.response_body_limit = limit;
        self
    }

    /// Sets the retry budget shared by every call of the services this layer makes (and
    /// their clones). Defaults to [`RetryBudget::default`]: retries may add 10% to the
    /// calls offered, plus a reserve of 10. See [`budget`](crate::budget).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Turns the retry budget off: each call retries up to its own limits, whatever the
    /// others do. Only for a client that is alone in talking to its server.
    pub fn without_retry_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Turns on [adaptive throttling](crate::throttle) with a fresh
    /// [`AdaptiveThrottle`], shared by every call of the services this layer makes. Off by
    /// default.
    pub fn adaptive_throttling(self) -> Self {
        self.throttle(AdaptiveThrottle::new())
    }

    /// Turns on adaptive throttling with `throttle`, which may be shared with other layers.
    /// Defaults to off.
    pub fn throttle(mut self, throttle: AdaptiveThrottle) -> Self {
        self.config.throttle = Some(throttle);
        self
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_config(inner, Arc::new(self.config.clone()))
    }
}
