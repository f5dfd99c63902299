//! The Stripe classifier (SPEC section 2).

use super::{classify_status, is_idempotent, Class, Classification, Classify};
use crate::headers;
use crate::stripe_error::{ErrorCode, ErrorType, StripeError};
use http::{request, response, Method, StatusCode};

/// Classifies Stripe API responses, in this order:
///
/// 1. `Stripe-Should-Retry: true|false`, when present, decides retry or no retry (it never
///    turns a success into a failure, and never retries an `idempotency_error`, which
///    only a change in the caller can fix).
/// 2. The JSON error body of a non-2xx response.
/// 3. The HTTP status, when the body is absent, not JSON, or of an unknown `type`.
///
/// | signal | class | outcome if final | retried |
/// |---|---|---|---|
/// | `code` `rate_limit` / `lock_timeout`, or 429 | rate limited / lock timeout | gave up | yes |
/// | 409, or `code` `idempotency_key_in_use` | conflict | gave up | yes |
/// | `type` `idempotency_error` | idempotency error | definite failure | never |
/// | `type` `card_error` | card error | definite failure | no |
/// | `type` `invalid_request_error` (401/403 or `secret_key_required`: authentication) | invalid request | definite failure | no |
/// | `type` `api_error` on a `POST`/`PATCH` (500) | api error | indeterminate | no: a replay returns Stripe's saved 500 |
/// | `type` `api_error` on `GET`/`HEAD`/`DELETE`/..., or with 502/503/504 | api error / unavailable | indeterminate | yes |
/// | 5xx without a Stripe error body | unavailable | indeterminate | yes |
/// | other 4xx, 1xx/3xx without a known body | as [`HttpClassifier`](super::HttpClassifier) | definite failure | no |
///
/// Transport errors: a connection never made is retried ("gave up" if it persists); any
/// other is indeterminate and retried with the same key.
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use resilient_http::classify::{Class, Classify, StripeClassifier};
/// use resilient_http::Outcome;
///
/// let (request, _) = Request::post("/v1/charges").body(()).unwrap().into_parts();
/// let (response, _) = Response::builder().status(402).body(()).unwrap().into_parts();
/// let body = br#"{"error":{"type":"card_error","code":"card_declined"}}"#;
/// let c = StripeClassifier.classify_response(&request, &response, Some(body));
/// assert_eq!(c.class(), Class::CardError);
/// assert_eq!(c.outcome(), Outcome::DefiniteFailure);
/// assert!(!c.should_retry());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StripeClassifier;

impl Classify for StripeClassifier {
    fn classify_response(
        &self,
        request: &request::Parts,
        response: &response::Parts,
        body: Option<&[u8]>,
    ) -> Classification {
        let status = response.status;
        if status.is_success() {
            return Classification::success();
        }
        let error = body.and_then(StripeError::from_body);
        let base = error
            .as_ref()
            .and_then(|e| classify_error_body(&request.method, status, e))
            .unwrap_or_else(|| classify_stripe_status(status));
        match headers::should_retry(&response.headers) {
            Some(verdict) if base.class() != Class::IdempotencyError => {
                base.with_server_verdict(verdict)
            }
            _ => base,
        }
    }
}

fn classify_stripe_status(status: StatusCode) -> Classification {
    match status.as_u16() {
        409 => Classification::retryable(Class::Conflict),
        _ => classify_status(status),
    }
}

fn classify_error_body(
    method: &Method,
    status: StatusCode,
    error: &StripeError,
) -> Option<Classification> {
    match &error.code {
        Some(ErrorCode::RateLimit) => return Some(Classification::retryable(Class::RateLimited)),
        Some(ErrorCode::LockTimeout) => return Some(Classification::retryable(Class::LockTimeout)),
        Some(ErrorCode::IdempotencyKeyInUse) => {
            return Some(Classification::retryable(Class::Conflict))
        }
        _ => {}
    }
    match status.as_u16() {
        409 => return Some(Classification::retryable(Class::Conflict)),
        429 => return Some(Classification::retryable(Class::RateLimited)),
        _ => {}
    }
    Some(match &error.error_type {
        ErrorType::IdempotencyError => Classification::definite(Class::IdempotencyError),
        ErrorType::CardError => Classification::definite(Class::CardError),
        ErrorType::InvalidRequestError => {
            let auth = matches!(status.as_u16(), 401 | 403)
                || error.code == Some(ErrorCode::SecretKeyRequired);
            Classification::definite(if auth {
                Class::Authentication
            } else {
                Class::InvalidRequest
            })
        }
        ErrorType::ApiError => match status.as_u16() {
            // A proxy or load balancer answered: the request most likely never reached
            // Stripe's idempotency layer, so a replay with the same key is safe and useful.
            502..=504 => Classification::indeterminate(Class::Unavailable, true),
            // Stripe saved this 500 under the key: a replay only returns it again. Methods
            // that are idempotent by definition carry no key and are safe to repeat.
            _ => Classification::indeterminate(Class::ApiError, is_idempotent(method)),
        },
        ErrorType::Other(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;
    use http::{Request, Response};

    fn classify(
        method: Method,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Classification {
        let (req, _) = Request::builder()
            .method(method)
            .uri("/v1/x")
            .body(())
            .unwrap()
            .into_parts();
        let mut res = Response::builder().status(status);
        for (k, v) in headers {
            res = res.header(*k, *v);
        }
        let (res, _) = res.body(()).unwrap().into_parts();
        StripeClassifier.classify_response(&req, &res, body.map(str::as_bytes))
    }

    fn body(inner: &str) -> String {
        format!(r#"{{"error":{{{inner}}}}}"#)
    }

    fn verdict(c: Classification) -> (Class, Outcome, bool) {
        (c.class(), c.outcome(), c.should_retry())
    }

    #[test]
    fn api_error_on_post_is_indeterminate_and_not_retried() {
        let b = body(r#""type":"api_error""#);
        assert_eq!(
            verdict(classify(Method::POST, 500, &[], Some(&b))),
            (Class::ApiError, Outcome::Indeterminate, false)
        );
        assert_eq!(
            verdict(classify(Method::GET, 500, &[], Some(&b))),
            (Class::ApiError, Outcome::Indeterminate, true)
        );
        assert_eq!(
            verdict(classify(
                Method::POST,
                500,
                &[("stripe-should-retry", "true")],
                Some(&b)
            )),
            (Class::ApiError, Outcome::Indeterminate, true)
        );
    }

    #[test]
    fn should_retry_header_decides_first() {
        let b = body(r#""type":"invalid_request_error","code":"rate_limit""#);
        assert_eq!(
            verdict(classify(
                Method::POST,
                429,
                &[("stripe-should-retry", "false")],
                Some(&b)
            )),
            (Class::RateLimited, Outcome::GaveUp, false)
        );
        assert_eq!(
            verdict(classify(
                Method::POST,
                400,
                &[("stripe-should-retry", "true")],
                None
            )),
            (Class::InvalidRequest, Outcome::GaveUp, true)
        );
        assert_eq!(
            verdict(classify(
                Method::POST,
                200,
                &[("stripe-should-retry", "true")],
                None
            )),
            (Class::Success, Outcome::Success, false)
        );
    }

    #[test]
    fn idempotency_errors_are_never_retried_even_if_told_to() {
        let b = body(
            r#""type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters""#,
        );
        assert_eq!(
            verdict(classify(
                Method::POST,
                400,
                &[("stripe-should-retry", "true")],
                Some(&b)
            )),
            (Class::IdempotencyError, Outcome::DefiniteFailure, false)
        );
    }

    #[test]
    fn conflicts_are_retried() {
        assert_eq!(
            verdict(classify(Method::POST, 409, &[], None)),
            (Class::Conflict, Outcome::GaveUp, true)
        );
        let b = body(r#""type":"idempotency_error","code":"idempotency_key_in_use""#);
        assert_eq!(
            verdict(classify(Method::POST, 409, &[], Some(&b))),
            (Class::Conflict, Outcome::GaveUp, true)
        );
    }

    #[test]
    fn unknown_types_fall_back_to_status() {
        let b = body(r#""type":"future_error""#);
        assert_eq!(
            verdict(classify(Method::POST, 503, &[], Some(&b))),
            (Class::Unavailable, Outcome::Indeterminate, true)
        );
        assert_eq!(
            verdict(classify(Method::POST, 400, &[], Some(&b))),
            (Class::InvalidRequest, Outcome::DefiniteFailure, false)
        );
    }

    #[test]
    fn authentication_failures_are_definite() {
        let b = body(r#""type":"invalid_request_error","code":"secret_key_required""#);
        assert_eq!(
            verdict(classify(Method::POST, 400, &[], Some(&b))),
            (Class::Authentication, Outcome::DefiniteFailure, false)
        );
        let b = body(r#""type":"invalid_request_error","message":"Invalid API Key provided""#);
        assert_eq!(
            verdict(classify(Method::POST, 401, &[], Some(&b))),
            (Class::Authentication, Outcome::DefiniteFailure, false)
        );
    }
}
