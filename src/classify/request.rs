//! What a classifier sees of the request: a borrowed view of its head.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Uri};
use std::fmt;

/// The head of the request an attempt sent, as a [`Classify`](super::Classify) sees it:
/// its method, URI and headers, borrowed. Build one from a request or its parts with
/// `From`:
///
/// ```
/// use http::Request;
/// use resilient_http::classify::SentRequest;
///
/// let request = Request::post("/v1/charges")
///     .header("idempotency-key", "order-1")
///     .body(())
///     .unwrap();
/// let sent = SentRequest::from(&request);
/// assert_eq!(sent.method(), "POST");
/// assert_eq!(sent.uri().path(), "/v1/charges");
/// assert_eq!(sent.header(&http::HeaderName::from_static("idempotency-key")).unwrap(), "order-1");
/// assert_eq!(sent.headers().count(), 1);
/// ```
#[derive(Clone, Copy)]
pub struct SentRequest<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl<'a> SentRequest<'a> {
    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The first value of the header `name`, if the request has one.
    pub fn header(&self, name: &HeaderName) -> Option<&'a HeaderValue> {
        self.headers.get(name)
    }

    /// Every header, one pair per value.
    pub fn headers(&self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
        self.headers.iter()
    }
}

impl<'a> From<&'a request::Parts> for SentRequest<'a> {
    fn from(parts: &'a request::Parts) -> Self {
        SentRequest {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }
}

impl<'a, B> From<&'a Request<B>> for SentRequest<'a> {
    fn from(request: &'a Request<B>) -> Self {
        SentRequest {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }
}

impl fmt::Debug for SentRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentRequest")
            .field("method", self.method)
            .field("uri", self.uri)
            .field("headers", &HeadersDebug(*self))
            .finish()
    }
}

struct HeadersDebug<'a>(SentRequest<'a>);

impl fmt::Debug for HeadersDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.headers()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_head() {
        let request = Request::post("/v1/charges")
            .header("authorization", "Bearer sk_test")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let (parts, ()) = request.clone().into_parts();
        for sent in [SentRequest::from(&request), SentRequest::from(&parts)] {
            assert_eq!(sent.method(), Method::POST);
            assert_eq!(sent.uri(), "/v1/charges");
            let x_a = HeaderName::from_static("x-a");
            assert_eq!(sent.header(&x_a).unwrap(), "1");
            assert!(sent.header(&http::header::AUTHORIZATION).is_some());
            assert!(sent.header(&http::header::CONTENT_TYPE).is_none());
            assert_eq!(sent.headers().count(), 3);
        }
    }
}
