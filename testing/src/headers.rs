//! The header names the server reads and writes, its own so that it shares nothing with
//! the clients it tests.

use http::HeaderName;

/// `Idempotency-Key`: the key a request is saved and replayed under.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Idempotent-Replayed: true`: this response is a saved result, sent again.
pub(crate) const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// `Request-Id`: the server's id for the request, on every response.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// `Original-Request`: on a replay, the `Request-Id` of the request whose result it is.
pub(crate) const ORIGINAL_REQUEST: HeaderName = HeaderName::from_static("original-request");
