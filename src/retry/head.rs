//! The request head of a call: the caller's own until the first attempt sends it, then a
//! copy kept for replays, from which a head is rebuilt only when a retry goes out.

use crate::classify::request::Headers;
use crate::classify::SentRequest;
use crate::header_copy::HeaderCopy;
use http::HeaderValue;
use http::{request, Extensions, Method, Request, Uri, Version};

/// The head of a call's request, for sending and for classifying its attempts.
// Unboxed on purpose: every call makes the copy, and boxing it would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Head {
    /// Not sent yet: the caller's own head, which the first attempt sends as it is.
    Unsent(request::Parts),
    /// Sent: what a replay needs to send the same head again.
    Sent(Kept),
}

/// A copy of a sent head. One or the other is in the head, in the same place: the future
/// that holds it is moved whole.
pub(super) struct Kept {
    method: Method,
    uri: Uri,
    version: Version,
    // Cloned as they are: an empty map clones without allocating.
    extensions: Extensions,
    // Rather than a copy of the header map, whose two blocks would cost two allocations on
    // every call.
    headers: HeaderCopy,
}

impl Head {
    pub(super) fn new(parts: request::Parts) -> Self {
        Head::Unsent(parts)
    }

    /// The head the next attempt sends: the caller's own the first time (a copy is kept),
    /// then one rebuilt from that copy.
    ///
    /// `key` is the call's idempotency key, given to every method that reads the head: the
    /// copy does not keep a clone of a key it is given (see `HeaderCopy::extend_from`).
    pub(super) fn for_attempt(&mut self, key: Option<&HeaderValue>) -> request::Parts {
        let kept = match self {
            Head::Sent(kept) => return kept.rebuild(key),
            Head::Unsent(parts) => Kept {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                extensions: parts.extensions.clone(),
                headers: HeaderCopy::new(),
            },
        };
        let parts = match std::mem::replace(self, Head::Sent(kept)) {
            Head::Unsent(parts) => parts,
            // Not reached: a sent head was rebuilt above.
            Head::Sent(kept) => kept.rebuild(key),
        };
        // The copy of the headers is written in place.
        if let Head::Sent(kept) = self {
            kept.headers.extend_from(&parts.headers, key);
        }
        parts
    }

    /// The head as a classifier sees it.
    pub(super) fn view<'a>(&'a self, key: Option<&'a HeaderValue>) -> SentRequest<'a> {
        match self {
            Head::Unsent(parts) => parts.into(),
            Head::Sent(kept) => SentRequest::new(
                &kept.method,
                &kept.uri,
                kept.version,
                Headers::Kept(kept.headers.with_key(key)),
                &kept.extensions,
            ),
        }
    }

    pub(super) fn method(&self) -> &Method {
        match self {
            Head::Unsent(parts) => &parts.method,
            Head::Sent(kept) => &kept.method,
        }
    }

    pub(super) fn uri(&self) -> &Uri {
        match self {
            Head::Unsent(parts) => &parts.uri,
            Head::Sent(kept) => &kept.uri,
        }
    }

    /// Calls `f` with the head as `request::Parts`, rebuilt if it was sent.
    pub(super) fn with_parts<R>(
        &self,
        key: Option<&HeaderValue>,
        f: impl FnOnce(&request::Parts) -> R,
    ) -> R {
        match self {
            Head::Unsent(parts) => f(parts),
            Head::Sent(kept) => f(&kept.rebuild(key)),
        }
    }
}

impl Kept {
    /// A head equal to the one that was sent.
    fn rebuild(&self, key: Option<&HeaderValue>) -> request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.with_key(key).to_map();
        parts.extensions = self.extensions.clone();
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderMap, HeaderValue};

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
            let first = head.for_attempt(None);
            for sent in [first, head.for_attempt(None), head.for_attempt(None)] {
                assert_eq!(sent.method, original.method);
                assert_eq!(sent.uri, original.uri);
                assert_eq!(sent.version, original.version);
                assert_eq!(sent.headers, original.headers, "{n} headers");
                let order = |h: &HeaderMap| h.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
                assert_eq!(order(&sent.headers), order(&original.headers));
                assert_eq!(sent.extensions.get::<Tag>(), Some(&Tag(7)));
            }
            assert_eq!(head.method(), Method::PUT);
            assert_eq!(head.view(None).headers().count(), n + 1);
            head.with_parts(None, |p| assert_eq!(p.headers, original.headers));
        }
    }

    #[test]
    fn a_replay_carries_the_calls_key_which_the_copy_does_not_keep() {
        let made = crate::IdempotencyKey::random();
        let key = Some(made.as_header_value());
        let mut original = head(1);
        let header = made.as_header_value().clone();
        original
            .headers
            .insert(crate::headers::IDEMPOTENCY_KEY, header);
        let mut head = Head::new(original.clone());
        let _first = head.for_attempt(key);
        let Head::Sent(kept) = &head else {
            panic!("the first attempt keeps a copy")
        };
        assert_eq!(kept.headers.clones(), 0, "the key is read from the call");
        for sent in [head.for_attempt(key), head.with_parts(key, |p| p.clone())] {
            assert_eq!(sent.headers, original.headers);
        }
        let view = head.view(key);
        assert_eq!(view.header(&crate::headers::IDEMPOTENCY_KEY), key);
        assert_eq!(view.headers().count(), 3);
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
        let _first = head.for_attempt(None);
        let replay = head.for_attempt(None);
        assert_eq!(replay.headers, original.headers);
        head.with_parts(None, |p| assert_eq!(p.headers.len(), 30_001));
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
        let mut first = head.for_attempt(None);
        first
            .headers
            .insert("host", HeaderValue::from_static("api.example.com"));
        first.extensions.insert(7u8);
        let replay = head.for_attempt(None);
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
