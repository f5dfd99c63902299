//! A copy of a request's headers, kept so that a replay sends them again byte for byte.
//!
//! Names and values are copied as bytes into a buffer inside the copy itself, and made
//! into `HeaderName`s and `HeaderValue`s again only when a replay is sent or a classifier
//! reads a copied value. What does not fit, and a value that could not be made again, are
//! kept as clones. The call's idempotency key is not kept at all: the call holds it
//! already, and the copy is read with it ([`HeaderCopy::with_key`]).
//! The copy is what keeps a call from allocating: a name or value parsed from a string
//! holds a `Bytes` that becomes shared, with an allocation, on its first clone, and most of
//! a request's headers were parsed from strings (credentials, and the names of an API's
//! own headers such as `stripe-version`).

use crate::headers::IDEMPOTENCY_KEY;
use arrayvec::ArrayVec;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;
use std::fmt;
use std::sync::OnceLock;

/// How many headers the copy holds without allocating (more cost one allocation): enough
/// for what a Stripe client sends (credentials, a content type, an API version, a user
/// agent, the key) and a few more. Each costs 14 bytes in the retry future, which every
/// call moves.
const INLINE_HEADERS: usize = 8;

/// How many bytes of names and values the copy holds in place: what a Stripe client sends,
/// a secret key's `Authorization` (about 115 bytes) among it. A name or value that does
/// not fit is kept as a clone instead.
const INLINE_BYTES: usize = 256;

/// The most headers `HeaderMap::with_capacity` takes without panicking (three quarters of
/// http's `MAX_SIZE` of 32 768): a map holds more values than that only under fewer names.
const MAX_RESERVED: usize = 24_576;

/// The headers of a request, in their order (a name repeats for each of its values).
pub(crate) struct HeaderCopy {
    headers: SmallVec<[Header; INLINE_HEADERS]>,
    // Never on the heap; its room is not written until used.
    bytes: ArrayVec<u8, INLINE_BYTES>,
    // The names and values kept as clones, in the order of the headers that have them:
    // only what does not fit in the buffer, or could not be made again.
    names: Vec<HeaderName>,
    values: Vec<HeaderValue>,
    // Every header as a name and a value, made on the first look-up that needs a copied
    // one: a classifier that reads a header value other than the idempotency key (the
    // call's own), or that lists the headers, or a `Debug` of the request.
    made: OnceLock<Box<[(HeaderName, HeaderValue)]>>,
}

#[derive(Clone, Copy)]
struct Header {
    name: Piece,
    value: Piece,
    sensitive: bool,
}

/// Where a name or a value is.
#[derive(Clone, Copy)]
enum Piece {
    /// At `start..end` of the buffer.
    Copied { start: u16, end: u16 },
    /// The next of the clones. Not an index: a map may hold more values than a `u16`
    /// counts (only its names are limited, to 32 768).
    Cloned,
    /// The call's idempotency key, which the copy is read with.
    Key,
}

/// A header's name or value as the copy holds it.
enum Part<'a, T> {
    Copied(&'a [u8]),
    Cloned(&'a T),
}

impl HeaderCopy {
    pub(crate) fn new() -> Self {
        HeaderCopy {
            headers: SmallVec::new(),
            bytes: ArrayVec::new(),
            names: Vec::new(),
            values: Vec::new(),
            made: OnceLock::new(),
        }
    }

    /// Appends a copy of every header of `map`, in its order.
    ///
    /// An `Idempotency-Key` whose value is `key` (the same bytes, as sensitive) is not
    /// kept: the copy must then be read [`with_key`](Self::with_key) that same key. The
    /// call that holds the copy holds its key anyway, and classifiers look the key up
    /// (as a `HeaderValue`, which a copied value would have to be made into).
    pub(crate) fn extend_from(&mut self, map: &HeaderMap, key: Option<&HeaderValue>) {
        self.headers.reserve_exact(map.len());
        for (name, value) in map {
            let bytes = value.as_bytes();
            let placed = match *name == IDEMPOTENCY_KEY {
                true => key.filter(|key| is_same(key, value)).map(|_| Piece::Key),
                false if valid(bytes) => self.copy(bytes),
                false => None,
            };
            let value_at = placed.unwrap_or_else(|| {
                self.values.push(value.clone());
                Piece::Cloned
            });
            let name_at = self.copy(name.as_str().as_bytes()).unwrap_or_else(|| {
                self.names.push(name.clone());
                Piece::Cloned
            });
            self.headers.push(Header {
                name: name_at,
                value: value_at,
                sensitive: value.is_sensitive(),
            });
        }
    }

    /// How many names and values are kept as clones.
    #[cfg(test)]
    pub(crate) fn clones(&self) -> usize {
        self.names.len() + self.values.len()
    }

    /// Copies `bytes` into the buffer, if they fit.
    fn copy(&mut self, bytes: &[u8]) -> Option<Piece> {
        let start = self.bytes.len();
        self.bytes.try_extend_from_slice(bytes).ok()?;
        // Within `INLINE_BYTES`, so within `u16`.
        let end = self.bytes.len();
        Some(Piece::Copied {
            start: start as u16,
            end: end as u16,
        })
    }

    /// The copy as it is read: with the key it was made with (see
    /// [`extend_from`](Self::extend_from)). Reading a copy that marked the key's place
    /// without a key panics: nothing in this crate reads it so.
    pub(crate) fn with_key<'a>(&'a self, key: Option<&'a HeaderValue>) -> KeptHeaders<'a> {
        KeptHeaders { copy: self, key }
    }
}

/// A [`HeaderCopy`] and the call's idempotency key: the headers that were copied.
#[derive(Clone, Copy)]
pub(crate) struct KeptHeaders<'a> {
    copy: &'a HeaderCopy,
    key: Option<&'a HeaderValue>,
}

impl<'a> KeptHeaders<'a> {
    /// The first value of `name`.
    pub(crate) fn get(self, name: &HeaderName) -> Option<&'a HeaderValue> {
        let wanted = name.as_str().as_bytes();
        let (i, (_, value, _)) = self.parts().enumerate().find(|(_, (name, _, _))| {
            let text = match name {
                Part::Copied(bytes) => bytes,
                Part::Cloned(name) => name.as_str().as_bytes(),
            };
            text == wanted
        })?;
        Some(match value {
            Part::Cloned(value) => value,
            Part::Copied(_) => &self.made()[i].1,
        })
    }

    /// Every header, in order.
    pub(crate) fn iter(self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
        self.made().iter().map(|(name, value)| (name, value))
    }

    /// A header map equal to the one copied, with room for one more header, for what a
    /// client adds (hyper's `host`).
    pub(crate) fn to_map(self) -> HeaderMap {
        // Room for one more, up to what a map may reserve: `with_capacity` panics past it
        // (a head with tens of thousands of values under a few names is still a valid map).
        let len = self.copy.headers.len();
        let mut map = HeaderMap::with_capacity((len + 1).min(MAX_RESERVED));
        for (name, value, sensitive) in self.parts() {
            map.append(make_name(name), make_value(value, sensitive));
        }
        map
    }

    /// Each header's name and value, and whether its value is sensitive.
    fn parts(self) -> impl Iterator<Item = (Part<'a, HeaderName>, Part<'a, HeaderValue>, bool)> {
        let copy = self.copy;
        let (mut names, mut values) = (copy.names.iter(), copy.values.iter());
        let copied = |start: u16, end: u16| &copy.bytes[usize::from(start)..usize::from(end)];
        // A clone was kept for each `Cloned`, in order, and a copy with a `Key` is read with
        // its key. Were either ever missing, this fails loudly rather than give back a head
        // without one of its headers (a replay without its key could be applied twice).
        const MISSING: &str = "a kept header is given back whole";
        copy.headers.iter().map(move |h| {
            let name = match h.name {
                Piece::Copied { start, end } => Part::Copied(copied(start, end)),
                // A name is copied or cloned, never the key.
                Piece::Cloned | Piece::Key => Part::Cloned(names.next().expect(MISSING)),
            };
            let value = match h.value {
                Piece::Copied { start, end } => Part::Copied(copied(start, end)),
                Piece::Cloned => Part::Cloned(values.next().expect(MISSING)),
                Piece::Key => Part::Cloned(self.key.expect(MISSING)),
            };
            (name, value, h.sensitive)
        })
    }

    fn made(self) -> &'a [(HeaderName, HeaderValue)] {
        self.copy.made.get_or_init(|| {
            let made = |(name, value, sensitive)| (make_name(name), make_value(value, sensitive));
            self.parts().map(made).collect()
        })
    }
}

/// A `HeaderName` again: a clone, or one made from the copied bytes.
fn make_name(name: Part<'_, HeaderName>) -> HeaderName {
    match name {
        // A name's text is lowercase, and `from_lowercase` takes every name `from_static`
        // does (`from_bytes` refuses a `"`, which `from_static` takes).
        Part::Copied(bytes) => {
            HeaderName::from_lowercase(bytes).expect("a name's own text is a valid name")
        }
        Part::Cloned(name) => name.clone(),
    }
}

/// A `HeaderValue` again: a clone, or one made from the copied bytes.
fn make_value(value: Part<'_, HeaderValue>, sensitive: bool) -> HeaderValue {
    match value {
        Part::Copied(bytes) => {
            let mut value = HeaderValue::from_bytes(bytes)
                .expect("a value is copied only if it can be made again");
            value.set_sensitive(sensitive);
            value
        }
        Part::Cloned(value) => value.clone(),
    }
}

/// Whether `value` is `key`: the same bytes (usually the same reference-counted ones), as
/// sensitive.
fn is_same(key: &HeaderValue, value: &HeaderValue) -> bool {
    let (a, b) = (key.as_bytes(), value.as_bytes());
    key.is_sensitive() == value.is_sensitive() && (std::ptr::eq(a, b) || a == b)
}

/// Whether `HeaderValue::from_bytes` takes these bytes back. A value built in safe code
/// always passes; checked all the same, so that a copied value is always made again.
fn valid(bytes: &[u8]) -> bool {
    // Folded rather than searched (no early exit), so that it runs as a vector loop.
    let bad = |b: u8| ((b < 32) & (b != b'\t')) | (b == 127);
    !bytes.iter().fold(false, |any, &b| any | bad(b))
}

impl fmt::Debug for KeptHeaders<'_> {
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

    /// How many values, and how many names, are copied as bytes.
    fn copied(copy: &HeaderCopy) -> (usize, usize) {
        let is_copied = |p: &Piece| matches!(p, Piece::Copied { .. });
        let values = copy.headers.iter().filter(|h| is_copied(&h.value));
        let names = copy.headers.iter().filter(|h| is_copied(&h.name));
        (values.count(), names.count())
    }

    #[test]
    fn a_copy_gives_back_the_same_headers_in_the_same_order() {
        let long = "x".repeat(INLINE_BYTES);
        let many: Vec<_> = (0..INLINE_HEADERS + 3)
            .map(|i| ("x-many", if i % 2 == 0 { "even" } else { "odd" }))
            .collect();
        // (case, headers, how many values and names are copied)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, (usize, usize));
        let cases: [Case<'_>; 6] = [
            ("none", vec![], (0, 0)),
            (
                "small values are copied",
                vec![("authorization", "Bearer sk_test_123"), ("b", "1")],
                (2, 2),
            ),
            (
                "a key's value, read without the key, is cloned",
                vec![("idempotency-key", "k-1"), ("a", "1")],
                (1, 2),
            ),
            (
                "a value that does not fit is cloned",
                vec![("a", "1"), ("big", &long), ("c", "3")],
                (2, 3),
            ),
            (
                "repeated names keep their order",
                vec![("b", "1"), ("a", "1"), ("b", "2"), ("a", "")],
                (4, 4),
            ),
            (
                "more headers than are held in place",
                many.clone(),
                (many.len(), many.len()),
            ),
        ];
        for (case, headers, n_copied) in cases {
            let original = map(&headers);
            let mut copy = HeaderCopy::new();
            copy.extend_from(&original, None);
            let kept = copy.with_key(None);
            assert_eq!(copied(&copy), n_copied, "{case}");
            assert!(copy.bytes.len() <= INLINE_BYTES, "{case}");
            assert_eq!(kept.iter().count(), original.len(), "{case}");
            let rebuilt = kept.to_map();
            assert_eq!(rebuilt, original, "{case}");
            let order = |it: &mut dyn Iterator<Item = (&HeaderName, &HeaderValue)>| {
                it.map(|(n, v)| format!("{n}={v:?}")).collect::<Vec<_>>()
            };
            let expected = order(&mut original.iter());
            assert_eq!(order(&mut rebuilt.iter()), expected, "{case}");
            assert_eq!(order(&mut kept.iter()), expected, "{case}");
            for (name, _) in &headers {
                let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                assert_eq!(kept.get(&name), original.get(&name), "{case}: {name}");
            }
            assert!(kept.get(&HeaderName::from_static("absent")).is_none());
        }
    }

    #[test]
    fn a_sensitive_value_stays_sensitive_when_copied() {
        let mut original = HeaderMap::new();
        let mut secret = HeaderValue::from_static("Bearer sk_live_1");
        secret.set_sensitive(true);
        original.insert(http::header::AUTHORIZATION, secret);
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original, None);
        let kept = copy.with_key(None);
        assert_eq!(copied(&copy), (1, 1));
        let value = kept.get(&http::header::AUTHORIZATION).unwrap();
        assert!(value.is_sensitive());
        assert!(kept.to_map()[http::header::AUTHORIZATION].is_sensitive());
        assert!(!format!("{kept:?}").contains("sk_live"), "{kept:?}");
    }

    #[test]
    fn headers_that_fill_the_buffer_exactly_are_copied_and_the_next_is_cloned() {
        // Each name of one byte and its value take half the buffer.
        let half = "v".repeat(INLINE_BYTES / 2 - 1);
        let original = map(&[("a", &half), ("b", &half), ("c", "1")]);
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original, None);
        let kept = copy.with_key(None);
        assert_eq!(copied(&copy), (2, 2));
        assert_eq!(copy.bytes.len(), INLINE_BYTES);
        assert!(matches!(copy.headers[2].name, Piece::Cloned));
        assert!(matches!(copy.headers[2].value, Piece::Cloned));
        assert_eq!(kept.get(&HeaderName::from_static("c")).unwrap(), "1");
        assert_eq!(kept.to_map(), original);
    }

    #[test]
    fn a_name_with_a_quote_is_made_again() {
        // `from_static` takes it, `from_bytes` would not take its text back.
        let quoted = HeaderName::from_static("x-\"q\"");
        let mut original = HeaderMap::new();
        original.append(quoted.clone(), HeaderValue::from_static("1"));
        original.append("x-b", HeaderValue::from_static("2"));
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original, None);
        let kept = copy.with_key(None);
        assert_eq!(copied(&copy), (2, 2));
        assert_eq!(kept.to_map(), original);
        assert_eq!(kept.get(&quoted).unwrap(), "1");
        assert_eq!(kept.iter().count(), 2);
    }

    #[test]
    fn every_name_http_makes_is_made_again_from_its_text() {
        // Every byte in a name, through each way safe code makes one from bytes at run
        // time (`from_static` checks the same table as `from_lowercase`).
        for b in 0..=255u8 {
            let text = [b'x', b'-', b];
            let made = [
                HeaderName::from_bytes(&text).ok(),
                HeaderName::from_lowercase(&text).ok(),
            ];
            for name in made.into_iter().flatten() {
                let again = HeaderName::from_lowercase(name.as_str().as_bytes()).ok();
                assert_eq!(again, Some(name), "byte {b}");
            }
        }
    }

    #[test]
    fn more_clones_than_a_u16_counts_keep_their_order() {
        // Extra values of one name are not limited by a map's 32 768: after the buffer
        // fills, every later name and value is a clone.
        let name = HeaderName::from_static("x-many");
        let mut original = HeaderMap::new();
        for i in 0..70_000u32 {
            original.append(name.clone(), HeaderValue::from(i));
        }
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original, None);
        let kept = copy.with_key(None);
        assert!(copy.values.len() > usize::from(u16::MAX));
        let rebuilt = kept.to_map();
        assert!(rebuilt
            .get_all(&name)
            .iter()
            .eq(original.get_all(&name).iter()));
        assert_eq!(kept.iter().nth(69_999).unwrap().1, "69999");
    }

    #[test]
    fn what_a_stripe_client_sends_is_held_in_place() {
        // A secret key is `sk_test_` and 99 more characters; the names of Stripe's own
        // headers, parsed from strings, would each allocate on a clone.
        let auth = format!("Bearer sk_test_{}", "5".repeat(99));
        let original = map(&[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
            ("stripe-version", "2024-06-20"),
            ("user-agent", "Stripe/v1 RustBindings/0.41.0"),
            ("idempotency-key", "4f1c2b8e-4c3d-4f7a-9a57-2f6d1b0c9e21"),
        ]);
        let key = original[IDEMPOTENCY_KEY].clone();
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original, Some(&key));
        assert_eq!(copied(&copy), (4, 5), "all but the key's value are copied");
        assert!(!copy.headers.spilled());
        assert!(
            copy.names.is_empty() && copy.values.is_empty(),
            "nothing is cloned"
        );
        assert_eq!(copy.with_key(Some(&key)).to_map(), original);
    }

    #[test]
    fn the_calls_key_is_read_from_the_call_not_kept() {
        let key = HeaderValue::from_static("4f1c2b8e-4c3d-4f7a-9a57-2f6d1b0c9e21");
        let mut other = key.clone();
        other.set_sensitive(true);
        let cases = [
            // (case, the header's value, the call's key, whether the copy keeps a clone)
            ("the key itself", key.clone(), Some(&key), false),
            (
                "the same bytes, apart",
                HeaderValue::from_str(key.to_str().unwrap()).unwrap(),
                Some(&key),
                false,
            ),
            ("no key given", key.clone(), None, true),
            (
                "another value",
                HeaderValue::from_static("k-2"),
                Some(&key),
                true,
            ),
            ("the same bytes, but sensitive", other, Some(&key), true),
        ];
        for (case, value, given, cloned) in cases {
            let mut original = map(&[("a", "1")]);
            original.append(IDEMPOTENCY_KEY, value.clone());
            original.append("b", HeaderValue::from_static("2"));
            let mut copy = HeaderCopy::new();
            copy.extend_from(&original, given);
            assert_eq!(copy.values.len(), usize::from(cloned), "{case}");
            let kept = copy.with_key(given);
            let rebuilt = kept.to_map();
            assert_eq!(rebuilt, original, "{case}");
            let sent = &rebuilt[IDEMPOTENCY_KEY];
            assert_eq!(sent.is_sensitive(), value.is_sensitive(), "{case}");
            assert_eq!(kept.get(&IDEMPOTENCY_KEY), Some(&value), "{case}");
            let order: Vec<_> = kept.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(order, ["a", "idempotency-key", "b"], "{case}");
        }
    }

    #[test]
    #[should_panic(expected = "a kept header is given back whole")]
    fn a_copy_read_without_the_key_it_was_made_with_fails_loudly() {
        let key = HeaderValue::from_static("k-1");
        let mut original = map(&[("a", "1")]);
        original.append(IDEMPOTENCY_KEY, key.clone());
        let mut copy = HeaderCopy::new();
        copy.extend_from(&original, Some(&key));
        // Rather than a head without its key.
        let _ = copy.with_key(None).to_map();
    }

    fn header() -> impl proptest::strategy::Strategy<Value = (HeaderName, HeaderValue)> {
        use proptest::prelude::*;
        // Names http knows and names it does not, the key's among them; values of any
        // bytes a value may hold (tab, space, visible ASCII, obs-text), up to past the
        // buffer, some sensitive.
        const NAMES: [&str; 8] = [
            "authorization",
            "x-\"quoted\"",
            "content-type",
            "user-agent",
            "stripe-version",
            "stripe-account",
            "idempotency-key",
            "x-a-much-longer-name-of-an-extension-header",
        ];
        let name = proptest::sample::select(&NAMES[..]).prop_map(HeaderName::from_static);
        let byte = prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff];
        let value = prop_oneof![
            proptest::collection::vec(byte.clone(), 0..40),
            proptest::collection::vec(byte, 100..300),
        ];
        (name, value, any::<bool>()).prop_map(|(name, bytes, sensitive)| {
            let mut value = HeaderValue::from_bytes(&bytes).expect("valid bytes");
            value.set_sensitive(sensitive);
            (name, value)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]

        #[test]
        fn any_head_is_given_back_as_it_was(
            headers in proptest::collection::vec(header(), 0..(INLINE_HEADERS * 2)),
            with_key in proptest::bool::ANY,
        ) {
            let mut original = HeaderMap::new();
            for (name, value) in headers {
                original.append(name, value);
            }
            // Read with the first key the head has, as a call is (any other value of the
            // name is kept as a clone).
            let key = original.get(IDEMPOTENCY_KEY).filter(|_| with_key);
            let mut copy = HeaderCopy::new();
            copy.extend_from(&original, key);
            let copy = copy.with_key(key);
            let seen = |it: &mut dyn Iterator<Item = (&HeaderName, &HeaderValue)>| {
                it.map(|(n, v)| (n.clone(), v.as_bytes().to_vec(), v.is_sensitive()))
                    .collect::<Vec<_>>()
            };
            let expected = seen(&mut original.iter());
            let rebuilt = copy.to_map();
            proptest::prop_assert_eq!(seen(&mut rebuilt.iter()), expected.clone());
            proptest::prop_assert_eq!(seen(&mut copy.iter()), expected);
            for name in original.keys() {
                proptest::prop_assert_eq!(copy.get(name), original.get(name));
            }
        }
    }
}
