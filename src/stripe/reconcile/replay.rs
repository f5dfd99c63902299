//! Replaying pending calls with their keys: Stripe answers a repeated key with the result
//! it saved, so the replay's answer is the call's.

use super::settlement::{self, Settlement};
use super::{Reconciler, StoreError};
use crate::body::BoxError;
use crate::headers::RequestId;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use std::time::{Duration, SystemTime};
use tower_service::Service;

/// How long Stripe keeps the result saved under a key: at least 24 hours. A call recorded
/// longer ago is not replayed: Stripe may have forgotten its key, and would run the
/// request again (a second charge, if the first went through).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How much of a replay's successful answer is read for its object: 1 MiB, far more than
/// any Stripe object.
const OBJECT_LIMIT: usize = 1024 * 1024;

/// What one [`Reconciler::replay`] did, key by key.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The calls this replay settled, with their settlements.
    pub settled: Vec<(String, Settlement)>,
    /// The calls replayed whose answer said nothing certain (indeterminate again, gave
    /// up, credentials refused): still pending.
    pub still_pending: Vec<String>,
    /// The calls recorded too recently (under the `older_than` given): not replayed yet.
    pub not_yet: Vec<String>,
    /// The calls recorded more than [`REPLAY_WINDOW`] ago: never replayed, still pending.
    /// Settle them by their events, or by hand from the Dashboard.
    pub expired: Vec<String>,
}

impl Reconciler {
    /// Replays every pending call recorded at least `older_than` ago through `service`,
    /// one at a time: the same method, URI, headers (its `Idempotency-Key` among them) and
    /// body. Stripe answers a key it has seen with the result it saved (for at least 24
    /// hours, [`REPLAY_WINDOW`]), and runs the request if it never reached it, so the
    /// replay's answer is the call's.
    ///
    /// `service` is the stack (keys and retries over the client), so that a replay is
    /// classified as a call is: a success settles the call as done, a definite failure
    /// (a declined card) as failed with Stripe's error; an answer that is still
    /// indeterminate, a retryable failure the stack gave up on, a refusal of the
    /// credentials or an `idempotency_error` leave it pending. A bare client works too,
    /// but then only a 2xx settles anything. Credentials are not recorded (see
    /// [`Pending`](super::Pending)): `service` must add them.
    ///
    /// `older_than` gives the call's webhook a chance to settle it first (a replay is one
    /// more request); a minute or so is plenty. Ages are read from this machine's clock.
    /// A call that an event settles while its replay is under way keeps the event's
    /// settlement.
    ///
    /// # Errors
    ///
    /// The store could not list the pending calls; nothing was replayed.
    pub async fn replay<S, B>(
        &self,
        mut service: S,
        older_than: Duration,
    ) -> Result<ReplayReport, StoreError>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        let now = SystemTime::now();
        let mut report = ReplayReport::default();
        let mut broken = false;
        for pending in self.pending()? {
            let key = pending.idempotency_key.clone();
            // A record from the future (the clock was set back) counts as just made.
            let age = now.duration_since(pending.recorded_at).unwrap_or_default();
            if age > REPLAY_WINDOW {
                report.expired.push(key);
                continue;
            }
            if age < older_than {
                report.not_yet.push(key);
                continue;
            }
            let Some(request) = pending.to_request() else {
                tracing::warn!(
                    target: "resilient_http::reconcile",
                    idempotency_key = %key,
                    "not replayed: the record's key is not a valid idempotency key"
                );
                report.still_pending.push(key);
                continue;
            };
            if broken {
                report.still_pending.push(key);
                continue;
            }
            if let Err(error) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
                let error: BoxError = error.into();
                tracing::warn!(
                    target: "resilient_http::reconcile",
                    %error,
                    "replay stopped: the service failed to get ready"
                );
                // A service that failed to get ready is not to be called again.
                broken = true;
                report.still_pending.push(key);
                continue;
            }
            self.book().replaying.insert(key.clone(), pending.clone());
            let verdict = answer(service.call(request).await).await;
            self.book().replaying.remove(&key);
            tracing::debug!(
                target: "resilient_http::reconcile",
                idempotency_key = %key,
                settled = verdict.is_some(),
                "replayed"
            );
            match verdict {
                Some(settlement) => {
                    if let Some(settlement) = self.settle(&key, settlement) {
                        report.settled.push((key, settlement));
                    }
                }
                None => report.still_pending.push(key),
            }
        }
        Ok(report)
    }
}

/// What a replay's answer settles, if anything.
async fn answer<B, E>(result: Result<Response<B>, E>) -> Option<Settlement>
where
    B: Body,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    match result {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let request_id = RequestId::from_headers(&parts.headers).map(|id| lossy(&id));
            let body = if parts.status.is_success() {
                // The work was done whatever the body does: an unreadable one only leaves
                // the object unknown.
                Limited::new(body, OBJECT_LIMIT)
                    .collect()
                    .await
                    .ok()
                    .map(|collected| collected.to_bytes())
            } else {
                None
            };
            settlement::from_answer(parts.status, request_id, body.as_deref())
        }
        Err(error) => {
            let error: BoxError = error.into();
            let error = error.downcast_ref::<crate::Error>()?;
            let request_id = error.report().request_ids().last().map(lossy);
            settlement::from_error(error, request_id)
        }
    }
}

fn lossy(id: &RequestId) -> String {
    String::from_utf8_lossy(id.as_header_value().as_bytes()).into_owned()
}
