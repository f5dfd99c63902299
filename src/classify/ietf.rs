//! The IETF `Idempotency-Key` profile (draft-ietf-httpapi-idempotency-key-header).

use super::{classify_status, Classify, SentRequest};
use crate::headers::IDEMPOTENCY_KEY;
use crate::outcome::{Class, Classification};
use http::response;

/// A classifier for APIs that follow the IETF `Idempotency-Key` header draft
/// (draft-ietf-httpapi-idempotency-key-header), whose status codes say what became of a
/// keyed request.
///
/// | status | class | outcome if final | retried |
/// |---|---|---|---|
/// | 2xx | success | success | no |
/// | 409 | conflict: a request with the same key is still being processed | gave up | yes, with backoff |
/// | 422 on a keyed request | key reused: the key was used with another payload, a bug in the caller | definite failure | no |
/// | 400 (a keyed request the server refused, or one missing a required key) | rejected | definite failure | no |
/// | 429 | rate limited | gave up | yes |
/// | 502, 503, 504 | unavailable | indeterminate | yes, with the same key |
/// | other 5xx | server error | indeterminate | yes, with the same key |
/// | other statuses | as [`HttpClassifier`](super::HttpClassifier) | | |
///
/// The draft does not say whether a failure answers for an earlier attempt with the same
/// key, so nothing but a success settles an attempt that may have taken effect: a timeout
/// followed by a 4xx stays indeterminate.
///
/// ```
/// use http::{Request, Response};
/// use resilient_http::classify::{Classify, IetfClassifier};
/// use resilient_http::{Class, Outcome};
///
/// let request = Request::post("/orders")
///     .header("idempotency-key", "order-1")
///     .body(())
///     .unwrap();
/// let (response, _) = Response::builder().status(422).body(()).unwrap().into_parts();
/// let c = IetfClassifier.classify_response((&request).into(), &response, None);
/// assert_eq!((c.class(), c.outcome()), (Class::KeyReused, Outcome::DefiniteFailure));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct IetfClassifier;

impl Classify for IetfClassifier {
    fn classify_response(
        &self,
        request: SentRequest<'_>,
        response: &response::Parts,
        _: Option<&[u8]>,
    ) -> Classification {
        let keyed = request.header(&IDEMPOTENCY_KEY).is_some();
        match response.status.as_u16() {
            409 => Classification::retryable(Class::Conflict),
            422 if keyed => Classification::definite(Class::KeyReused),
            _ => classify_status(response.status),
        }
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
            (true, 201, Class::Success, Success, false),
            (true, 409, Class::Conflict, GaveUp, true),
            (true, 422, Class::KeyReused, DefiniteFailure, false),
            (false, 422, Class::Rejected, DefiniteFailure, false),
            (true, 400, Class::Rejected, DefiniteFailure, false),
            (true, 429, Class::RateLimited, GaveUp, true),
            (true, 503, Class::Unavailable, Indeterminate, true),
            (true, 500, Class::ServerError, Indeterminate, true),
        ];
        for (keyed, status, class, outcome, retry) in rows {
            let mut req = Request::builder().method(Method::POST);
            if keyed {
                req = req.header(IDEMPOTENCY_KEY, "k");
            }
            let (req, _) = req.body(()).unwrap().into_parts();
            let (res, _) = Response::builder()
                .status(status)
                .body(())
                .unwrap()
                .into_parts();
            let c = IetfClassifier.classify_response((&req).into(), &res, None);
            assert_eq!(
                (
                    c.class(),
                    c.outcome(),
                    c.should_retry(),
                    c.settles_earlier()
                ),
                (class, outcome, retry, false),
                "keyed={keyed} {status}"
            );
        }
    }
}
