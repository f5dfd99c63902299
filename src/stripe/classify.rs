//! The Stripe profile's classifier.

use super::error::{ErrorCode, ErrorType, StripeError};
use crate::classify::{classify_status, Classify, SentRequest};
use crate::headers::{self, IDEMPOTENCY_KEY};
use crate::outcome::{Class, Classification, Outcome};
use http::header::{HeaderMap, HeaderName};
use http::{response, Method, StatusCode};

/// `Stripe-Should-Retry`: Stripe's own verdict on whether a retry can succeed.
pub const STRIPE_SHOULD_RETRY: HeaderName = HeaderName::from_static("stripe-should-retry");

/// Reads `Stripe-Should-Retry`: `Some(true)` or `Some(false)` when the header holds exactly
/// that word (ASCII case ignored), `None` when it is absent or holds anything else.
///
/// ```
/// use http::HeaderMap;
/// use resilient_http::stripe::{should_retry, STRIPE_SHOULD_RETRY};
///
/// let mut map = HeaderMap::new();
/// map.insert(STRIPE_SHOULD_RETRY, "false".parse().unwrap());
/// assert_eq!(should_retry(&map), Some(false));
/// ```
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let value = headers::trim(headers.get(STRIPE_SHOULD_RETRY)?.as_bytes());
    if value.eq_ignore_ascii_case(b"true") {
        Some(true)
    } else if value.eq_ignore_ascii_case(b"false") {
        Some(false)
    } else {
        None
    }
}

/// Classifies Stripe API responses, in this order:
///
/// 1. `Stripe-Should-Retry: true|false`, when present, decides retry or no retry (it never
///    turns a success into a failure, and never retries an `idempotency_error`, which
///    only a change in the caller can fix).
/// 2. The JSON error body of a non-2xx response, parsed once into a [`StripeError`] that
///    rides along as the classification's detail (the caller reads it with
///    [`Error::stripe_error`](crate::Error::stripe_error)).
/// 3. The HTTP status, when the body is absent, not JSON, or of an unknown `type`.
///
/// | signal | class | outcome if final | retried |
/// |---|---|---|---|
/// | `code` `rate_limit`, or 429 | rate limited | gave up | yes |
/// | `code` `lock_timeout` | locked | gave up | yes |
/// | 409, or `code` `idempotency_key_in_use` | conflict | gave up | yes |
/// | `type` `idempotency_error` | key reused | definite failure | never |
/// | `type` `card_error` | declined | definite failure | no |
/// | `type` `invalid_request_error` (401/403 or `secret_key_required`: unauthorized) | rejected | definite failure | no |
/// | `type` `api_error` (500) | server error | indeterminate | yes, with the same key, unless `Stripe-Should-Retry: false` |
/// | `type` `api_error` with 502/503/504, or a 5xx without Stripe's error object | unavailable | indeterminate | yes |
/// | other 4xx, 1xx/3xx without a known body | as [`HttpClassifier`](crate::classify::HttpClassifier) | definite failure | no |
///
/// Why an `api_error` is replayed with the same key: Stripe saves the result of a keyed
/// request once its endpoint has begun to run, 500s included, so the replay of such a
/// request only returns the same saved 500 (the key makes it harmless); a 500 raised
/// before that has no saved result, and the replay may settle the call. Stripe's official
/// clients retry it the same way, and Stripe sends `Stripe-Should-Retry: false` when it
/// knows a replay cannot help.
///
/// **Earlier attempts.** Stripe's own error object of type `invalid_request_error`,
/// `card_error` or `idempotency_error`, answering a keyed `POST` or `PATCH` with a 4xx
/// other than 401/403, comes from past Stripe's idempotency layer, which would have
/// replayed an earlier attempt's saved result had that attempt run: such an answer settles
/// the call as a definite failure even after an attempt that timed out. A 401/403, or a
/// 4xx without Stripe's error object (a proxy's), is refused before that layer and leaves
/// such a call indeterminate.
///
/// Transport errors: a connection never made is retried ("gave up" if it persists); any
/// other is indeterminate and retried with the same key.
///
/// ```
/// use http::{Request, Response};
/// use resilient_http::classify::Classify;
/// use resilient_http::stripe::{Category, StripeClassifier, StripeError};
/// use resilient_http::{Class, Outcome};
///
/// let request = Request::post("/v1/charges").body(()).unwrap();
/// let (response, _) = Response::builder().status(402).body(()).unwrap().into_parts();
/// let body = br#"{"error":{"type":"card_error","code":"card_declined"}}"#;
/// let c = StripeClassifier.classify_response((&request).into(), &response, Some(body));
/// assert_eq!(c.class(), Class::Declined);
/// assert_eq!(c.outcome(), Outcome::DefiniteFailure);
/// assert!(!c.should_retry());
/// let error = c.detail().unwrap().downcast_ref::<StripeError>().unwrap();
/// assert_eq!(error.category(), Category::CardDeclined);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StripeClassifier;

impl Classify for StripeClassifier {
    fn classify_response(
        &self,
        request: SentRequest<'_>,
        response: &response::Parts,
        body: Option<&[u8]>,
    ) -> Classification {
        let status = response.status;
        if status.is_success() {
            return Classification::success();
        }
        let error = body.and_then(|b| StripeError::from_response(response, b));
        let mut c = error
            .as_ref()
            .and_then(|e| classify_error_body(status, e))
            .unwrap_or_else(|| classify_stripe_status(status));
        match should_retry(&response.headers) {
            Some(verdict) if c.class() != Class::KeyReused => c = c.with_server_verdict(verdict),
            _ => {}
        }
        let Some(error) = error else { return c };
        if answers_for_earlier_attempts(request, &c, &error) {
            c = c.settling_earlier_attempts();
        }
        c.with_detail(error)
    }
}

/// Whether Stripe's answer comes from past its idempotency layer, so that it speaks for
/// every earlier attempt with the same key (see [`StripeClassifier`]).
fn answers_for_earlier_attempts(
    request: SentRequest<'_>,
    c: &Classification,
    error: &StripeError,
) -> bool {
    let looked_at = matches!(
        error.error_type,
        ErrorType::InvalidRequestError | ErrorType::CardError | ErrorType::IdempotencyError
    );
    let past_idempotency = c.outcome() == Outcome::DefiniteFailure
        && matches!(
            c.class(),
            Class::Rejected | Class::Declined | Class::KeyReused
        );
    let keyed = matches!(*request.method(), Method::POST | Method::PATCH)
        && request.header(&IDEMPOTENCY_KEY).is_some();
    looked_at && past_idempotency && keyed
}

fn classify_stripe_status(status: StatusCode) -> Classification {
    match status.as_u16() {
        409 => Classification::retryable(Class::Conflict),
        // A 5xx without Stripe's error object: most likely from in front of Stripe.
        500..=599 => Classification::indeterminate(Class::Unavailable, true),
        _ => classify_status(status),
    }
}

fn classify_error_body(status: StatusCode, error: &StripeError) -> Option<Classification> {
    match &error.code {
        Some(ErrorCode::RateLimit) => return Some(Classification::retryable(Class::RateLimited)),
        Some(ErrorCode::LockTimeout) => return Some(Classification::retryable(Class::Locked)),
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
        ErrorType::IdempotencyError => Classification::definite(Class::KeyReused),
        ErrorType::CardError => Classification::definite(Class::Declined),
        ErrorType::InvalidRequestError => {
            let auth = matches!(status.as_u16(), 401 | 403)
                || error.code == Some(ErrorCode::SecretKeyRequired);
            Classification::definite(if auth {
                Class::Unauthorized
            } else {
                Class::Rejected
            })
        }
        ErrorType::ApiError => match status.as_u16() {
            // A proxy or load balancer answered: the request most likely never reached
            // Stripe's idempotency layer, so a replay with the same key is safe and useful.
            502..=504 => Classification::indeterminate(Class::Unavailable, true),
            // Saved under the key if Stripe had begun to run the request (a replay then
            // returns it again, harmlessly), not saved otherwise (a replay may settle it).
            _ => Classification::indeterminate(Class::ServerError, true),
        },
        ErrorType::Other(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};

    fn classify(
        method: Method,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Classification {
        classify_keyed(method, false, status, headers, body)
    }

    fn classify_keyed(
        method: Method,
        keyed: bool,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Classification {
        let mut req = Request::builder().method(method).uri("/v1/x");
        if keyed {
            req = req.header(IDEMPOTENCY_KEY, "key-1");
        }
        let (req, _) = req.body(()).unwrap().into_parts();
        let mut res = Response::builder().status(status);
        for (k, v) in headers {
            res = res.header(*k, *v);
        }
        let (res, _) = res.body(()).unwrap().into_parts();
        StripeClassifier.classify_response((&req).into(), &res, body.map(str::as_bytes))
    }

    fn body(inner: &str) -> String {
        format!(r#"{{"error":{{{inner}}}}}"#)
    }

    fn verdict(c: Classification) -> (Class, Outcome, bool) {
        (c.class(), c.outcome(), c.should_retry())
    }

    #[test]
    fn api_error_is_indeterminate_and_replayed_with_the_same_key() {
        let b = body(r#""type":"api_error""#);
        for method in [Method::POST, Method::GET] {
            assert_eq!(
                verdict(classify(method, 500, &[], Some(&b))),
                (Class::ServerError, Outcome::Indeterminate, true)
            );
        }
        let refused = classify(
            Method::POST,
            500,
            &[("stripe-should-retry", "false")],
            Some(&b),
        );
        assert!(refused.server_refused_retry());
        assert_eq!(
            verdict(refused),
            (Class::ServerError, Outcome::Indeterminate, false)
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
            (Class::Rejected, Outcome::GaveUp, true)
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
            (Class::KeyReused, Outcome::DefiniteFailure, false)
        );
    }

    #[test]
    fn conflicts_and_lock_timeouts_are_retried() {
        assert_eq!(
            verdict(classify(Method::POST, 409, &[], None)),
            (Class::Conflict, Outcome::GaveUp, true)
        );
        let b = body(r#""type":"idempotency_error","code":"idempotency_key_in_use""#);
        assert_eq!(
            verdict(classify(Method::POST, 409, &[], Some(&b))),
            (Class::Conflict, Outcome::GaveUp, true)
        );
        let b = body(r#""type":"invalid_request_error","code":"lock_timeout""#);
        assert_eq!(
            verdict(classify(Method::POST, 429, &[], Some(&b))),
            (Class::Locked, Outcome::GaveUp, true)
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
            (Class::Rejected, Outcome::DefiniteFailure, false)
        );
    }

    #[test]
    fn authentication_failures_are_definite() {
        let b = body(r#""type":"invalid_request_error","code":"secret_key_required""#);
        assert_eq!(
            verdict(classify(Method::POST, 400, &[], Some(&b))),
            (Class::Unauthorized, Outcome::DefiniteFailure, false)
        );
        let b = body(r#""type":"invalid_request_error","message":"Invalid API Key provided""#);
        assert_eq!(
            verdict(classify(Method::POST, 401, &[], Some(&b))),
            (Class::Unauthorized, Outcome::DefiniteFailure, false)
        );
    }

    #[test]
    fn only_stripes_own_answer_to_a_keyed_write_settles_earlier_attempts() {
        let invalid = body(r#""type":"invalid_request_error","code":"parameter_missing""#);
        let card = body(r#""type":"card_error","code":"card_declined""#);
        let key = body(r#""type":"idempotency_error""#);
        // (method, keyed, status, body) -> settles
        let rows: [(Method, bool, u16, Option<&str>, bool); 9] = [
            (Method::POST, true, 400, Some(&invalid), true),
            (Method::POST, true, 402, Some(&card), true),
            (Method::POST, true, 400, Some(&key), true),
            (Method::PATCH, true, 400, Some(&invalid), true),
            // Refused before the idempotency layer: a rolled API key, a proxy's 4xx.
            (Method::POST, true, 401, Some(&invalid), false),
            (Method::POST, true, 400, None, false),
            // Without a key there is no saved result to answer for.
            (Method::POST, false, 400, Some(&invalid), false),
            // Stripe ignores keys on DELETE.
            (Method::DELETE, true, 404, Some(&invalid), false),
            // Not a definite failure at all.
            (
                Method::POST,
                true,
                500,
                Some(r#"{"error":{"type":"api_error"}}"#),
                false,
            ),
        ];
        for (method, keyed, status, b, settles) in rows {
            let label = format!("{method} keyed={keyed} {status} {b:?}");
            let c = classify_keyed(method, keyed, status, &[], b);
            assert_eq!(c.settles_earlier(), settles, "{label}");
        }
    }

    #[test]
    fn the_error_object_rides_along_parsed_once_with_the_request_id() {
        let b = body(r#""type":"card_error","code":"card_declined""#);
        let c = classify(Method::POST, 402, &[("request-id", "req_7")], Some(&b));
        let e = c.detail().unwrap().downcast_ref::<StripeError>().unwrap();
        assert_eq!(e.request_id.as_ref().unwrap().to_string(), "req_7");
        assert_eq!(e.http_status, Some(StatusCode::PAYMENT_REQUIRED));
    }

    #[test]
    fn should_retry_reads_only_true_and_false() {
        let map = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(STRIPE_SHOULD_RETRY, v.parse().unwrap());
            m
        };
        assert_eq!(should_retry(&map("true")), Some(true));
        assert_eq!(should_retry(&map(" FALSE ")), Some(false));
        assert_eq!(should_retry(&map("maybe")), None);
        assert_eq!(should_retry(&HeaderMap::new()), None);
    }
}
