use super::{Config, Retry, Settings};
use crate::backoff::{ExponentialBackoff, Jitter};
use crate::body::{DEFAULT_REQUEST_BODY_LIMIT, DEFAULT_RESPONSE_BODY_LIMIT};
use crate::budget::RetryBudget;
use crate::classify::{HttpClassifier, IetfClassifier};
use crate::error::ConfigError;
use crate::throttle::AdaptiveThrottle;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Attempts per call by default: 3, as Stripe's official clients retry twice.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Whole-call deadline by default: 80 s, the request timeout of Stripe's official clients.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(80);

/// Longest `Retry-After` honoured by default: 60 s, as in Stripe's Python client. A server
/// asking for longer ends the call at once: "gave up while retryable" if the attempt did
/// not take effect (a 429), still indeterminate if it may have (a 503).
pub(crate) const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// The shortest deadline or attempt timeout accepted: one tick of tokio's timer.
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Applies [`Retry`] to a service; holds the configuration. Cheap to clone.
///
/// `RetryLayer::stripe()` (or `Default`), [`RetryLayer::ietf`] and [`RetryLayer::http`]
/// give each profile's defaults; `RetryLayer::builder()` (Stripe's profile) or
/// [`Builder::new`] (any classifier) changes them, and refuses a setting that cannot
/// work:
///
/// ```
/// use resilient_http::{Jitter, RetryLayer};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), resilient_http::ConfigError> {
/// let layer = RetryLayer::builder()
///     .max_attempts(5)
///     .base_delay(Duration::from_millis(200))
///     .jitter(Jitter::Equal)
///     .deadline(Duration::from_secs(30))
///     .attempt_timeout(Duration::from_secs(10))
///     .build()?;
/// # let _ = layer;
/// assert!(RetryLayer::builder().max_attempts(0).build().is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer<C> {
    config: Arc<Config<C>>,
}

impl RetryLayer<IetfClassifier> {
    /// The same defaults with [`IetfClassifier`], for APIs that follow the IETF
    /// `Idempotency-Key` draft.
    pub fn ietf() -> Self {
        Self::new(IetfClassifier)
    }
}

impl RetryLayer<HttpClassifier> {
    /// The same defaults with [`HttpClassifier`], for any other HTTP API.
    pub fn http() -> Self {
        Self::new(HttpClassifier)
    }
}

impl<C> RetryLayer<C> {
    /// The default settings with `classifier`.
    pub fn new(classifier: C) -> Self {
        RetryLayer {
            config: Arc::new(Config {
                classifier,
                settings: Settings::default(),
            }),
        }
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_config(inner, self.config.clone())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backoff: ExponentialBackoff::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            deadline: DEFAULT_DEADLINE,
            attempt_timeout: None,
            retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
            request_body_limit: DEFAULT_REQUEST_BODY_LIMIT,
            response_body_limit: DEFAULT_RESPONSE_BODY_LIMIT,
            budget: Some(RetryBudget::default()),
            throttle: None,
            on_indeterminate: None,
            send_limit: None,
        }
    }
}

/// Builds a [`RetryLayer`]; [`build`](Self::build) refuses settings that cannot work.
#[derive(Clone, Debug)]
pub struct Builder<C> {
    classifier: C,
    settings: Settings,
}

impl<C> Builder<C> {
    /// The default settings with `classifier`.
    pub fn new(classifier: C) -> Self {
        Builder {
            classifier,
            settings: Settings::default(),
        }
    }

    /// Replaces the classifier, keeping the settings.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            classifier,
            settings: self.settings,
        }
    }

    /// Sets the most attempts per call, the first included; at least 1. Defaults to 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.max_attempts = attempts;
        self
    }

    /// Sets the backoff schedule. Defaults to [`ExponentialBackoff::default`]: 500 ms to 5 s,
    /// full jitter.
    pub fn backoff(mut self, backoff: ExponentialBackoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Sets the first backoff ceiling. Whatever the backoff draws, a retry waits at least
    /// one tick of tokio's timer (1 ms), so a zero base never retries in a tight loop.
    /// Defaults to 500 ms.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.settings.backoff = self.settings.backoff.base(base);
        self
    }

    /// Sets the largest backoff delay. Defaults to 5 s.
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.settings.backoff = self.settings.backoff.cap(cap);
        self
    }

    /// Sets the jitter strategy. Defaults to [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.settings.backoff = self.settings.backoff.jitter(jitter);
        self
    }

    /// Sets the whole-call deadline, across reading the request body, every attempt and
    /// every sleep; at least 1 ms. One too far away for tokio's clock (`Duration::MAX`)
    /// means about 30 years, as tokio's own "never" does. Defaults to 80 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = deadline;
        self
    }

    /// Sets a per-attempt timeout, from sending the request to the response head; at
    /// least 1 ms. An attempt that runs past it is indeterminate and retried with the same
    /// key; a non-2xx body that has started to arrive is read until the call's deadline
    /// instead, so that a slow error body is still seen. Defaults to none (the deadline
    /// bounds every attempt).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.settings.attempt_timeout = Some(timeout);
        self
    }

    /// Sets the longest `Retry-After` honoured; a server asking for longer ends the call.
    /// Defaults to 60 s.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.settings.retry_after_cap = cap;
        self
    }

    /// Sets the largest request body held for replay. Defaults to 1 MiB.
    pub fn request_body_limit(mut self, limit: usize) -> Self {
        self.settings.request_body_limit = limit;
        self
    }

    /// Sets how much of a non-2xx response body is read for classification. Defaults to
    /// 64 KiB.
    pub fn response_body_limit(mut self, limit: usize) -> Self {
        self.settings.response_body_limit = limit;
        self
    }

    /// Sets the retry budget shared by every call of the services this layer makes (and
    /// their clones). Defaults to [`RetryBudget::default`]: retries may add 10% to the
    /// calls offered, plus a reserve of 10. See [`budget`](crate::budget).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.settings.budget = Some(budget);
        self
    }

    /// Turns the retry budget off: each call retries up to its own limits, whatever the
    /// others do. Only for a client that is alone in talking to its server.
    pub fn without_retry_budget(mut self) -> Self {
        self.settings.budget = None;
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
        self.settings.throttle = Some(throttle);
        self
    }

    /// Paces every attempt by `limit`, a limit shared beyond this process (a fleet-wide
    /// rate limit, say): see [`SendLimit`](super::SendLimit). Defaults to none.
    pub fn send_limit(mut self, limit: impl super::SendLimit) -> Self {
        self.settings.send_limit = Some(super::limit::Limit(Arc::new(limit)));
        self
    }

    /// Tells `observer` of every call that ends indeterminate, with its request and
    /// report, so that it can be reconciled later. Defaults to none.
    pub fn on_indeterminate(mut self, observer: impl super::OnIndeterminate) -> Self {
        self.settings.on_indeterminate = Some(super::observe::Observer(Arc::new(observer)));
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that cannot work: no attempt at all, or
    /// a deadline or attempt timeout under 1 ms.
    pub fn build(self) -> Result<RetryLayer<C>, ConfigError> {
        self.settings.validate()?;
        Ok(RetryLayer {
            config: Arc::new(Config {
                classifier: self.classifier,
                settings: self.settings,
            }),
        })
    }
}

impl Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        check(
            Some(self.max_attempts),
            Some(self.deadline),
            self.attempt_timeout,
        )
    }
}

/// Refuses the values no call can run under (shared by the layer and per-call options).
pub(crate) fn check(
    max_attempts: Option<u32>,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
) -> Result<(), ConfigError> {
    if max_attempts == Some(0) {
        return Err(ConfigError::ZeroAttempts);
    }
    if let Some(d) = deadline.filter(|d| *d < MIN_TIMEOUT) {
        return Err(ConfigError::Deadline(d));
    }
    if let Some(t) = attempt_timeout.filter(|t| *t < MIN_TIMEOUT) {
        return Err(ConfigError::AttemptTimeout(t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let rows = [
            (
                RetryLayer::builder().max_attempts(0),
                ConfigError::ZeroAttempts,
            ),
            (
                RetryLayer::builder().deadline(Duration::ZERO),
                ConfigError::Deadline(Duration::ZERO),
            ),
            (
                RetryLayer::builder().attempt_timeout(Duration::from_micros(999)),
                ConfigError::AttemptTimeout(Duration::from_micros(999)),
            ),
        ];
        for (builder, expected) in rows {
            assert_eq!(builder.build().unwrap_err(), expected);
        }
        assert!(RetryLayer::builder()
            .max_attempts(1)
            .deadline(MIN_TIMEOUT)
            .attempt_timeout(MIN_TIMEOUT)
            .deadline(Duration::MAX)
            .build()
            .is_ok());
        assert_eq!(
            ConfigError::ZeroAttempts.to_string(),
            "max attempts must be at least 1"
        );
    }

    #[test]
    fn swapping_the_classifier_keeps_every_setting() {
        let b = RetryLayer::builder()
            .max_attempts(7)
            .classifier(HttpClassifier);
        assert_eq!(b.settings.max_attempts, 7);
    }
}
