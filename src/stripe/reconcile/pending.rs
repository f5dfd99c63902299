//! [`Pending`]: the record of a call that ended indeterminate.

use crate::headers::IDEMPOTENCY_KEY;
use crate::idempotency::IdempotencyKey;
use crate::retry::IndeterminateCall;
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use std::time::SystemTime;

/// A call that ended indeterminate and is not settled yet: who it was (its key and the
/// request id of every attempt), when, and what a replay sends again.
///
/// A plain record with public fields, so that a [`PendingStore`](super::PendingStore) can
/// rebuild it from what it saved.
///
/// Credentials are left out: the `Authorization`, `Proxy-Authorization` and `Cookie`
/// headers, and any header value marked sensitive, are not recorded, so that a store on
/// disk never holds an API key. The service given to
/// [`replay`](super::Reconciler::replay) adds them again, as a client's own auth layer
/// does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The `Idempotency-Key` every attempt carried, and the one a replay carries.
    pub idempotency_key: String,
    /// The `Request-Id` of every attempt that got an answer, in order (shown lossily if
    /// not text): what Stripe's support asks for.
    pub request_ids: Vec<String>,
    /// The request's method.
    pub method: Method,
    /// The request's URI (path and query, with scheme and host if the request had them).
    pub uri: Uri,
    /// The request's headers, the key included, credentials left out.
    pub headers: HeaderMap,
    /// The request's body, the bytes every attempt sent.
    pub body: Bytes,
    /// When the call ended, by this machine's clock (kept across a restart, which an
    /// `Instant` is not).
    pub recorded_at: SystemTime,
}

impl Pending {
    /// A record of `method uri` with key `idempotency_key`, no headers but the key, no
    /// body and no request ids.
    pub fn new(
        idempotency_key: impl Into<String>,
        method: Method,
        uri: Uri,
        recorded_at: SystemTime,
    ) -> Self {
        let idempotency_key = idempotency_key.into();
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&idempotency_key) {
            headers.insert(IDEMPOTENCY_KEY, value);
        }
        Pending {
            idempotency_key,
            request_ids: Vec::new(),
            method,
            uri,
            headers,
            body: Bytes::new(),
            recorded_at,
        }
    }

    /// The record of a call the retry layer says ended indeterminate; `None` for a call
    /// without an idempotency key (a `GET`, a `DELETE`), which can be repeated safely and
    /// has nothing to settle.
    pub(crate) fn from_call(call: &IndeterminateCall<'_>, now: SystemTime) -> Option<Self> {
        let key = call.report().idempotency_key()?;
        let request = call.request();
        let mut headers = request.headers.clone();
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
            headers.remove(name);
        }
        let sensitive: Vec<_> = headers
            .iter()
            .filter(|(_, value)| value.is_sensitive())
            .map(|(name, _)| name.clone())
            .collect();
        for name in sensitive {
            headers.remove(name);
        }
        headers.insert(IDEMPOTENCY_KEY, key.as_header_value().clone());
        Some(Pending {
            idempotency_key: key.as_str().to_owned(),
            request_ids: call
                .report()
                .request_ids()
                .map(|id| String::from_utf8_lossy(id.as_header_value().as_bytes()).into_owned())
                .collect(),
            method: request.method.clone(),
            uri: request.uri.clone(),
            headers,
            body: call.body().clone(),
            recorded_at: now,
        })
    }

    /// The same request again: method, URI, headers and body, with the record's key in
    /// `Idempotency-Key`. `None` if the record's key is not a valid idempotency key (a
    /// store gave back something else): without its key, a replay would not be safe.
    pub fn to_request(&self) -> Option<Request<Full<Bytes>>> {
        let key = IdempotencyKey::new(&self.idempotency_key).ok()?;
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
            .headers_mut()
            .insert(IDEMPOTENCY_KEY, key.into_header_value());
        Some(request)
    }
}
