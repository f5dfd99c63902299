//! What a classifier sees of the request: a borrowed view of its head.

use crate::header_copy::KeptHeaders;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{request, Extensions, Method, Request, Uri, Version};
use std::fmt;

/// The head of the request an attempt sent, as a [`Classify`](super::Classify) sees it:
/// its method, URI, version, headers and extensions, borrowed (as the caller gave them to
/// the retry layer: what the inner client adds, such as hyper's `host`, is not there).
///
/// The retry layer keeps its own copy of a request's head for replays, not an
/// `http::request::Parts`; this view reads either. Build one from a request or its parts
/// with `From`:
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
    version: Version,
    headers: Headers<'a>,
    extensions: &'a Extensions,
}

/// Where the headers are: a request's own map, or the retry layer's copy of them.
#[derive(Clone, Copy)]
pub(crate) enum Headers<'a> {
    Map(&'a HeaderMap),
    Kept(KeptHeaders<'a>),
}

impl<'a> SentRequest<'a> {
    /// A view of a head, its headers in a map or in the retry layer's copy.
    pub(crate) fn new(
        method: &'a Method,
        uri: &'a Uri,
        version: Version,
        headers: Headers<'a>,
        extensions: &'a Extensions,
    ) -> Self {
        SentRequest {
            method,
            uri,
            version,
            headers,
            extensions,
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The request's extensions: a per-call marker a classifier may read.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// The first value of the header `name`, if the request has one.
    pub fn header(&self, name: &HeaderName) -> Option<&'a HeaderValue> {
        match self.headers {
            Headers::Map(map) => map.get(name),
            Headers::Kept(kept) => kept.get(name),
        }
    }

    /// Every header, one pair per value.
    pub fn headers(&self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
        let (map, list) = match self.headers {
            Headers::Map(map) => (Some(map.iter()), None),
            Headers::Kept(kept) => (None, Some(kept.iter())),
        };
        map.into_iter().flatten().chain(list.into_iter().flatten())
    }
}

impl<'a> From<&'a request::Parts> for SentRequest<'a> {
    fn from(parts: &'a request::Parts) -> Self {
        SentRequest::new(
            &parts.method,
            &parts.uri,
            parts.version,
            Headers::Map(&parts.headers),
            &parts.extensions,
        )
    }
}

impl<'a, B> From<&'a Request<B>> for SentRequest<'a> {
    fn from(request: &'a Request<B>) -> Self {
        SentRequest::new(
            request.method(),
            request.uri(),
            request.version(),
            Headers::Map(request.headers()),
            request.extensions(),
        )
    }
}

impl fmt::Debug for SentRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentRequest")
            .field("method", self.method)
            .field("uri", self.uri)
            .field("version", &self.version)
            .field("headers", &HeadersDebug(*self))
            .finish_non_exhaustive()
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
    fn a_copy_and_a_map_read_alike() {
        let request = Request::post("/v1/charges")
            .extension(7u8)
            .header("authorization", "Bearer sk_test")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let mut copy = crate::header_copy::HeaderCopy::new();
        copy.extend_from(request.headers(), None);
        let from_map = SentRequest::from(&request);
        let from_copy = SentRequest::new(
            request.method(),
            request.uri(),
            request.version(),
            Headers::Kept(copy.with_key(None)),
            request.extensions(),
        );
        for sent in [from_map, from_copy] {
            assert_eq!(sent.method(), Method::POST);
            assert_eq!(sent.uri(), "/v1/charges");
            let x_a = HeaderName::from_static("x-a");
            assert_eq!(sent.header(&x_a).unwrap(), "1");
            assert!(sent.header(&http::header::AUTHORIZATION).is_some());
            assert!(sent.header(&http::header::CONTENT_TYPE).is_none());
            assert_eq!(sent.headers().count(), 3);
            assert_eq!(sent.version(), Version::HTTP_11);
            assert_eq!(sent.extensions().get::<u8>(), Some(&7));
        }
        assert_eq!(format!("{from_map:?}"), format!("{from_copy:?}"));
    }
}
