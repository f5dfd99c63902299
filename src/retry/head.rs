//! The request head of a call: the caller's own until the first attempt sends it, then a
//! copy kept for replays, from which a head is rebuilt only when a retry goes out.

use crate::classify::request::Headers;
use crate::classify::SentRequest;
use crate::header_copy::HeaderCopy;
use http::header::HeaderMap;
use http::{request, Extensions, Method, Request, Uri, Version};

/// The head of a call's request, for sending and for classifying its attempts: the
/// caller's own method, URI, version and extensions, with its header map until the first
/// attempt takes it, and from then on a copy of the headers that were sent.
///
/// The copy is made in place as the first attempt goes out, so a call that never retries
/// moves no head other than the one it sends.
pub(super) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    // The caller's own until the first attempt takes them, a clone for replays from then
    // on (cloned as they are: an empty map clones without allocating).
    extensions: Extensions,
    headers: Sent,
}

/// A head's headers: the caller's map until the first attempt sends it, then a copy.
/// One or the other, in the same place: the future that holds them is moved whole.
// Unboxed on purpose: every call makes the copy, and boxing it would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Sent {
    Not(HeaderMap),
    // The headers the first attempt sent, rather than a copy of the header map (whose two
    // blocks would cost two allocations on every call).
    Kept(HeaderCopy),
}

impl Head {
    pub(super) fn new(parts: request::Parts) -> Self {
        Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            extensions: parts.extensions,
            headers: Sent::Not(parts.headers),
        }
    }

    /// The head the next attempt sends: the caller's own header map the first time (a
    /// copy of its headers is kept), then a map rebuilt from that copy.
    pub(super) fn for_attempt(&mut self) -> request::Parts {
        if let Sent::Kept(kept) = &self.headers {
            return self.parts_with(kept.to_map(), self.extensions.clone());
        }
        // The copy is written in place of the map it is made from.
        let headers = match std::mem::replace(&mut self.headers, Sent::Kept(HeaderCopy::new())) {
            Sent::Not(map) => map,
            // Not reached: a kept copy was replayed above.
            Sent::Kept(_) => HeaderMap::new(),
        };
        if let Sent::Kept(kept) = &mut self.headers {
            kept.extend_from(&headers);
        }
        // The caller's own extensions go with the first attempt (a clone stays for
        // replays), as its own header map does.
        let extensions = std::mem::take(&mut self.extensions);
        self.extensions = extensions.clone();
        self.parts_with(headers, extensions)
    }

    /// The head as a classifier sees it.
    pub(super) fn view(&self) -> SentRequest<'_> {
        let headers = match &self.headers {
            Sent::Not(map) => Headers::Map(map),
            Sent::Kept(kept) => Headers::Kept(kept),
        };
        SentRequest::new(
            &self.method,
            &self.uri,
            self.version,
            headers,
            &self.extensions,
        )
    }

    pub(super) fn method(&self) -> &Method {
        &self.method
    }

    pub(super) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Calls `f` with the head as `request::Parts` (a copy: a cold path).
    pub(super) fn with_parts<R>(&self, f: impl FnOnce(&request::Parts) -> R) -> R {
        let headers = match &self.headers {
            Sent::Not(map) => map.clone(),
            Sent::Kept(kept) => kept.to_map(),
        };
        f(&self.parts_with(headers, self.extensions.clone()))
    }

    fn parts_with(&self, headers: HeaderMap, extensions: Extensions) -> request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        // The map `Request::new` made has no capacity, so nothing to free (`HeaderMap::new`
        // does not allocate, http documents it): forgotten, not dropped. Checked all the
        // same, so that a map that did allocate is dropped as usual.
        let empty = std::mem::replace(&mut parts.headers, headers);
        if empty.capacity() == 0 {
            std::mem::forget(empty);
        }
        parts.extensions = extensions;
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[derive(Clone, Debug, PartialEq)]
    struct Tag(u32);

    fn head(headers: usize) -> request::Parts {
        let mut builder = Request::put("https://api.example.com/v1/x?y=1")
            .version(Version::HTTP_2)
            .extension(Tag(7));
        for i in 0..headers {
            builder = builder.header("x-same", format!("value-{i}"));
        }
        let mut parts = builder.body(()).unwrap().into_parts().0;
        parts
            .headers
            .insert("authorization", "Bearer k".parse().unwrap());
        parts
    }

    #[test]
    fn replays_send_the_head_the_first_attempt_sent() {
        for n in [0, 1, 4, 12] {
            let original = head(n);
            let mut head = Head::new(original.clone());
            let first = head.for_attempt();
            for sent in [first, head.for_attempt(), head.for_attempt()] {
                assert_eq!(sent.method, original.method);
                assert_eq!(sent.uri, original.uri);
                assert_eq!(sent.version, original.version);
                assert_eq!(sent.headers, original.headers, "{n} headers");
                let order = |h: &HeaderMap| h.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
                assert_eq!(order(&sent.headers), order(&original.headers));
                assert_eq!(sent.extensions.get::<Tag>(), Some(&Tag(7)));
            }
            assert_eq!(head.method(), Method::PUT);
            assert_eq!(head.view().headers().count(), n + 1);
            head.with_parts(|p| assert_eq!(p.headers, original.headers));
        }
    }

    #[test]
    fn a_head_with_more_values_than_a_map_reserves_is_replayed_not_a_panic() {
        let mut original = head(0);
        for i in 0..30_000 {
            original
                .headers
                .append("x-many", HeaderValue::from(i as u32));
        }
        let mut head = Head::new(original.clone());
        let _first = head.for_attempt();
        let replay = head.for_attempt();
        assert_eq!(replay.headers, original.headers);
        head.with_parts(|p| assert_eq!(p.headers.len(), 30_001));
    }

    #[test]
    fn a_replay_sends_what_the_caller_gave_not_what_the_first_attempt_gained() {
        let mut original = head(0);
        for (name, value) in [("b", "1"), ("a", "1"), ("b", "2")] {
            original
                .headers
                .append(name, HeaderValue::from_static(value));
        }
        let mut head = Head::new(original.clone());
        let mut first = head.for_attempt();
        first
            .headers
            .insert("host", HeaderValue::from_static("api.example.com"));
        first.extensions.insert(7u8);
        let replay = head.for_attempt();
        assert_eq!(replay.headers, original.headers);
        assert!(replay.headers.get("host").is_none());
        assert!(replay.extensions.get::<u8>().is_none());
        let order = |h: &HeaderMap| {
            h.iter()
                .map(|(n, v)| format!("{n}:{v:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&replay.headers), order(&original.headers));
    }
}
