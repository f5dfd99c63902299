//! The plain HTTP profile: a verdict from the status and the method alone.

use super::{is_idempotent, Classify, SentRequest};
use crate::outcome::{Class, Classification};
use http::{response, StatusCode};

/// A classifier for plain HTTP APIs, which says nothing about a response body.
///
/// | status | class | outcome if final | retried |
/// |---|---|---|---|
/// | 2xx | success | success | no |
/// | 1xx, 3xx | unexpected status | definite failure | no |
/// | 429 | rate limited | gave up | yes |
/// | 408 | timeout | indeterminate | yes |
/// | 502, 503, 504 | unavailable | indeterminate | yes |
/// | other 5xx | server error | indeterminate | only for idempotent methods (`GET`, `PUT`, `DELETE`, ...) |
/// | 401, 403 | unauthorized | definite failure | no |
/// | other 4xx | rejected | definite failure | no |
///
/// Transport errors: a connection never made is retried; any other is indeterminate and
/// retried. Nothing this classifier sees speaks for an earlier attempt: once an attempt
/// may have taken effect, only a success settles the call. The retry layer replays an
/// indeterminate attempt only for an idempotent method or a request with an idempotency
/// key, whatever a classifier says.
///
/// ```
/// use http::{Request, Response};
/// use resilient_http::classify::{Classify, HttpClassifier};
/// use resilient_http::{Class, Outcome};
///
/// let post = Request::post("/v1/orders").body(()).unwrap();
/// let (response, _) = Response::builder().status(500).body(()).unwrap().into_parts();
/// let c = HttpClassifier.classify_response((&post).into(), &response, None);
/// assert_eq!((c.class(), c.outcome(), c.should_retry()), (Class::ServerError, Outcome::Indeterminate, false));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl Classify for HttpClassifier {
    fn classify_response(
        &self,
        request: SentRequest<'_>,
        response: &response::Parts,
        _: Option<&[u8]>,
    ) -> Classification {
        match response.status.as_u16() {
            500..=599 if !matches!(response.status.as_u16(), 502..=504) => {
                Classification::indeterminate(Class::ServerError, is_idempotent(request.method()))
            }
            _ => classify_status(response.status),
        }
    }
}

/// The status rules every profile falls back on (see [`HttpClassifier`]); a 5xx is
/// retryable here, and each profile narrows that.
pub(crate) fn classify_status(status: StatusCode) -> Classification {
    match status.as_u16() {
        200..=299 => Classification::success(),
        429 => Classification::retryable(Class::RateLimited),
        408 => Classification::indeterminate(Class::Timeout, true),
        401 | 403 => Classification::definite(Class::Unauthorized),
        400..=499 => Classification::definite(Class::Rejected),
        502..=504 => Classification::indeterminate(Class::Unavailable, true),
        500..=599 => Classification::indeterminate(Class::ServerError, true),
        _ => Classification::definite(Class::UnexpectedStatus),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use http::{Method, Request, Response};

    #[test]
    fn status_table() {
        use Outcome::*;
        let rows = [
            (Method::POST, 200, Class::Success, Success, false),
            (Method::POST, 204, Class::Success, Success, false),
            (
                Method::GET,
                302,
                Class::UnexpectedStatus,
                DefiniteFailure,
                false,
            ),
            (Method::POST, 400, Class::Rejected, DefiniteFailure, false),
            (
                Method::POST,
                401,
                Class::Unauthorized,
                DefiniteFailure,
                false,
            ),
            (Method::POST, 404, Class::Rejected, DefiniteFailure, false),
            (Method::POST, 408, Class::Timeout, Indeterminate, true),
            (Method::POST, 429, Class::RateLimited, GaveUp, true),
            (Method::POST, 500, Class::ServerError, Indeterminate, false),
            (Method::GET, 500, Class::ServerError, Indeterminate, true),
            (Method::DELETE, 501, Class::ServerError, Indeterminate, true),
            (Method::POST, 502, Class::Unavailable, Indeterminate, true),
            (Method::POST, 503, Class::Unavailable, Indeterminate, true),
            (Method::POST, 504, Class::Unavailable, Indeterminate, true),
        ];
        for (method, status, class, outcome, retry) in rows {
            let (req, _) = Request::builder()
                .method(method.clone())
                .body(())
                .unwrap()
                .into_parts();
            let (res, _) = Response::builder()
                .status(status)
                .body(())
                .unwrap()
                .into_parts();
            let c = HttpClassifier.classify_response((&req).into(), &res, Some(b"{}"));
            assert_eq!(
                (
                    c.class(),
                    c.outcome(),
                    c.should_retry(),
                    c.settles_earlier()
                ),
                (class, outcome, retry, false),
                "{method} {status}"
            );
        }
    }
}
