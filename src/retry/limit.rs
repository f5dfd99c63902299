use crate::body::BoxError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A limit on sending that is shared beyond one call: a fleet-wide rate limit, say, kept
/// in a store every process of an application reads.
///
/// Give one to the retry layer with [`Builder::send_limit`](super::Builder::send_limit).
/// Before every attempt (the first included) the call asks it for a slot, once: it sends
/// after the wait the limit names, or ends at once with the limit's refusal as "gave up
/// while retryable" (or indeterminate if an earlier attempt may have taken effect), with
/// [`StopReason::Throttled`](crate::StopReason::Throttled). `reserve` runs on the call's
/// task: it must answer from what it knows now, never wait on the network itself.
///
/// ```
/// use resilient_http::retry::SendLimit;
/// use resilient_http::BoxError;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// /// Lets every attempt go at once: the same as no limit.
/// struct Unlimited;
///
/// impl SendLimit for Unlimited {
///     fn reserve(&self, _now: Instant, _latest: Instant) -> Result<Duration, BoxError> {
///         Ok(Duration::ZERO)
///     }
/// }
/// ```
pub trait SendLimit: Send + Sync + 'static {
    /// A slot for an attempt asked for at `now`: `Ok(wait)` to send once `wait` has
    /// passed (zero: now), or the refusal that ends the call, when the slot would come at
    /// `latest` or later (the call's deadline, less a timer tick) or the limit cannot say.
    fn reserve(&self, now: Instant, latest: Instant) -> Result<Duration, BoxError>;
}

/// The layer's send limit, shared by every call.
#[derive(Clone)]
pub(crate) struct Limit(pub(crate) Arc<dyn SendLimit>);

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendLimit")
    }
}
