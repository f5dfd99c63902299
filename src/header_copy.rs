//! A copy of a request's headers, kept so that a replay sends them again byte for byte.
//!
//! Each value is either a clone that shares the original's bytes (a reference count) or,
//! when it is small, a copy of its bytes in a buffer inside the copy itself. The copy is
//! what keeps a call from allocating: a value parsed from a string holds a `Bytes` that
//! becomes shared, with an allocation, on its first clone, and most of a request's
//! values (credentials, an API version) were parsed from strings.

use crate::headers::IDEMPOTENCY_KEY;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;
use std::fmt;
use std::sync::OnceLock;

/// How many headers the copy holds without allocating (more cost one allocation): enough
/// for a key, credentials, a content type and an API version. Each slot costs 72 bytes in
/// the retry future, which every call moves.
const INLINE_HEADERS: usize = 4;

/// How many bytes of values the copy holds in place: a Stripe secret key's
/// `Authorization` (about 115 bytes) and a `Stripe-Version`. A value that does not fit
/// is shared instead.
const INLINE_BYTES: usize = 128;

/// The most headers `HeaderMap::with_capacity` takes without panicking (three quarters of
/// http's `MAX_SIZE` of 32 768): a map holds more values than that only under fewer names.
const MAX_RESERVED: usize = 24_576;

/// The headers of a request, in their order (a name repeats for each of its values).
pub(crate) struct HeaderCopy {
    headers: SmallVec<[(HeaderName, Value); INLINE_HEADERS]>,
    // Never past `INLINE_BYTES`, so never on the heap. A `SmallVec` rather than an array:
    // its room is not written until used.
    bytes: SmallVec<[u8; INLINE_BYTES]>,
    // Every value as a `HeaderValue`, made on the first look-up that needs a copied one:
    // a classifier that reads a header other than the idempotency key (which is never
    // copied), or a `Debug` of the request.
    values: OnceLock<Box<[HeaderValue]>>,
}

enum Value {
    /// A clone of the value, sharing its bytes.
    Shared(HeaderValue),
    /// The value's bytes, at `start..end` of the buffer.
    Copied {
        start: u16,
        end: u16,
        sensitive: bool,
    },
}

impl HeaderCopy {
    pub(crate) fn new() -> Self {
        HeaderCopy {
            headers: SmallVec::new(),
            bytes: SmallVec::new(),
            values: OnceLock::new(),
        }
    }

    /// Appends a copy of every header of `map`, in its order.
    ///
    /// The idempotency key is always shared: classifiers look it up (as a `HeaderValue`,
    /// which a copied value would have to be made into), and the keys this crate makes
    /// share their bytes by reference count anyway.
    pub(crate) fn extend_from(&mut self, map: &HeaderMap) {
        self.headers.reserve_exact(map.len());
        for (name, value) in map {
            let bytes = value.as_bytes();
            let start = self.bytes.len();
            let end = start + bytes.len();
            let kept = if end <= INLINE_BYTES && *name != IDEMPOTENCY_KEY && valid(bytes) {
                self.bytes.extend_from_slice(bytes);
                Value::Copied {
                    // Within `INLINE_BYTES`, so within `u16`.
                    start: start as u16,
                    end: end as u16,
                    sensitive: value.is_sensitive(),
                }
            } else {
                Value::Shared(value.clone())
            };
            self.headers.push((name.clone(), kept));
        }
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        let i = self.headers.iter().position(|(n, _)| n == name)?;
        Some(self.value(i))
    }

    /// Every header, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        (0..self.headers.len()).map(|i| (&self.headers[i].0, self.value(i)))
    }

    /// A header map equal to the one copied, with room for one more header, for what a
    /// client adds (hyper's `host`).
    pub(crate) fn to_map(&self) -> HeaderMap {
        // Room for one more, up to what a map may reserve: `with_capacity` panics past it
        // (a head with tens of thousands of values under a few names is still a valid map).
        let mut map = HeaderMap::with_capacity((self.headers.len() + 1).min(MAX_RESERVED));
        for (name, value) in &self.headers {
            map.append(name.clone(), self.make(value));
        }
        map
    }

    fn value(&self, i: usize) -> &HeaderValue {
        match &self.headers[i].1 {
            Value::Shared(value) => value,
            Value::Copied { .. } => &self.values.get_or_init(|| {
                self.headers
                    .iter()
                    .map(|(_, value)| self.make(value))
                    .collect()
            })[i],
        }
    }

    /// A `HeaderValue` of `value`: a clone, or one made from the copied bytes.
    fn make(&self, value: &Value) -> HeaderValue {
        match value {
            Value::Shared(value) => value.clone(),
            &Value::Copied {
                start,
                end,
                sensitive,
            } => {
                let bytes = &self.bytes[start as usize..end as usize];
                let mut value = HeaderValue::from_bytes(bytes)
                    .expect("bytes copied from a valid header value are valid");
                value.set_sensitive(sensitive);
                value
            }
        }
    }
}

/// Whether `HeaderValue::from_bytes` takes these bytes back. A value built in safe code
/// always passes; checked all the same, so that a copied value is always made again.
fn valid(bytes: &[u8]) -> bool {
    // Folded rather than searched (no early exit), so that it runs as a vector loop.
    let bad = |b: u8| ((b < 32) & (b != b'\t')) | (b == 127);
    !bytes.iter().fold(false, |any, &b| any | bad(b))
}

impl fmt::Debug for HeaderCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn copied(copy: &HeaderCopy) -> usize {
        copy.headers
            .iter()
            .filter(|(_, v)| matches!(v, Value::Copied { .. }))
            .count()
    }

    #[test]
    fn a_copy_gives_back_the_same_headers_in_the_same_order() {
        let long = "x".repeat(INLINE_BYTES);
        // (case, headers, how many are copied)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, usize);
        let cases: [Case<'_>; 5] = [
            ("none", vec![], 0),
            (
                "small values are copied",
                vec![("authorization", "Bearer sk_test_123"), ("b", "1")],
                2,
            ),
            (
                "the idempotency key is shared",
                vec![("idempotency-key", "k-1"), ("a", "1")],
                1,
            ),
            (
                "a value that does not fit is shared",
                vec![("a", "1"), ("big", &long), ("c", "3")],
                2,
            ),
            (
                "repeated names keep their order",
                vec![("b", "1"), ("a", "1"), ("b", "2"), ("a", "")],
                4,
            ),
        ];
        for (case, headers, n_copied) in cases {
            let original = map(&headers);
            let mut copy = HeaderCopy::new();
            copy.extend_from(&original);
            assert_eq!(copied(&copy), n_copied, "{case}");
            assert_eq!(copy.iter().count(), original.len(), "{case}");
            let rebuilt = copy.to_map();
            assert_eq!(rebuilt, original, "{case}");
            let order = |it: &mut dyn Iterator<Item = (&HeaderName, &HeaderValue)>| {
                it.map(|(n, v)| format!("{n}={v:?}")).collect::<Vec<_>>()
            };
            let expected = order(&mut original.iter());
            assert_eq!(order(&mut rebuilt.iter()), expected, "{case}");
            assert_eq!(order(&mut copy.iter()), expected, "{case}");
            for (name, _) in &headers {
                let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                assert_eq!(copy.get(&name), original.get(&name), "{case}: {name}");
            }
            assert!(copy.get(&HeaderName::from_static("absent")).is_none());
        }
    }

    #[test]
    fn a_sensitive_value_stays_sensitive_when_copied() {
        let mut original = HeaderMap::new();
        let mut secret = HeaderValue::from_static("Bearer sk_live_1");
        secret.set_sensitive(true);
        original.insert(http::header::AUTHORIZATION, secret);
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original);
        assert_eq!(copied(&copy), 1);
        let value = copy.get(&http::header::AUTHORIZATION).unwrap();
        assert!(value.is_sensitive());
        assert!(copy.to_map()[http::header::AUTHORIZATION].is_sensitive());
        assert!(!format!("{copy:?}").contains("sk_live"), "{copy:?}");
    }

    #[test]
    fn values_that_fill_the_buffer_exactly_are_copied_and_the_next_is_shared() {
        let half = "v".repeat(INLINE_BYTES / 2);
        let original = map(&[("a", &half), ("b", &half), ("c", "1")]);
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original);
        assert_eq!(copied(&copy), 2);
        assert!(matches!(copy.headers[2].1, Value::Shared(_)));
        assert_eq!(copy.to_map(), original);
    }
}
