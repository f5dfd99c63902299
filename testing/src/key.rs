//! The server's own rules for an `Idempotency-Key`, as Stripe states them: one header,
//! 1 to 255 characters, each visible ASCII (`!` to `~`, bytes 0x21 to 0x7E).
//!
//! Written here from those rules alone, not borrowed from a client's validator, so that a
//! client that gets them wrong (sends a key it should have refused, or refuses one it
//! should have sent) is caught by the server rather than agreed with.

use http::HeaderMap;
use std::fmt;

use crate::headers::IDEMPOTENCY_KEY;

/// The longest key Stripe accepts, in characters (all ASCII, so also in bytes).
pub(crate) const MAX_KEY_LEN: usize = 255;

/// Why a request's `Idempotency-Key` is refused. Stripe answers each with a 400
/// `invalid_request_error` whose message says what is wrong, and saves nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadKey {
    /// The header is there, with an empty value.
    Empty,
    /// Byte `index` is not visible ASCII (a space, a tab, a control or a non-ASCII byte).
    NotVisibleAscii { index: usize },
    /// Longer than [`MAX_KEY_LEN`].
    TooLong { len: usize },
    /// `count` `Idempotency-Key` headers, where one is allowed.
    Repeated { count: usize },
}

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Invalid idempotency key: ")?;
        match self {
            BadKey::Empty => f.write_str("the key is empty.")?,
            BadKey::NotVisibleAscii { index } => {
                write!(f, "byte {index} is not a visible ASCII character.")?
            }
            BadKey::TooLong { len } => write!(f, "{len} characters is too long.")?,
            BadKey::Repeated { count } => write!(
                f,
                "the request has {count} Idempotency-Key headers; send one."
            )?,
        }
        write!(
            f,
            " An idempotency key must be 1 to {MAX_KEY_LEN} visible ASCII characters."
        )
    }
}

/// The request's key: `Ok(None)` when it sent none, `Ok(Some(key))` when it sent one
/// valid key, `Err` when it must be refused.
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<&str>, BadKey> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let more = values.count();
    if more > 0 {
        return Err(BadKey::Repeated { count: more + 1 });
    }
    check(value.as_bytes()).map(Some)
}

/// Checks one key's bytes against the rules, characters first (so that a length is
/// only ever reported for a key of ASCII characters, where bytes and characters agree).
pub(crate) fn check(key: &[u8]) -> Result<&str, BadKey> {
    if key.is_empty() {
        return Err(BadKey::Empty);
    }
    if let Some(index) = key.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        return Err(BadKey::NotVisibleAscii { index });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(BadKey::TooLong { len: key.len() });
    }
    // Every byte is ASCII: valid UTF-8.
    std::str::from_utf8(key).map_err(|_| BadKey::NotVisibleAscii { index: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keys_of_1_to_255_visible_ascii_characters_are_accepted() {
        let longest = "k".repeat(255);
        let every_visible: String = (0x21u8..=0x7e).map(char::from).collect();
        for key in ["a", "~", "order-1001/charge", &longest, &every_visible] {
            assert_eq!(check(key.as_bytes()), Ok(key), "{key:?}");
        }
    }

    #[test]
    fn a_key_of_256_characters_is_refused() {
        let key = "k".repeat(256);
        assert_eq!(check(key.as_bytes()), Err(BadKey::TooLong { len: 256 }));
    }

    #[test]
    fn an_empty_key_is_refused() {
        assert_eq!(check(b""), Err(BadKey::Empty));
    }

    #[test]
    fn a_space_a_tab_or_a_control_character_is_refused_where_it_is() {
        for (key, index) in [
            (&b" key"[..], 0),
            (b"key 1", 3),
            (b"key\t1", 3),
            (b"key1 ", 4),
            (b"key\x7f", 3),
            (b"\x00", 0),
        ] {
            assert_eq!(
                check(key),
                Err(BadKey::NotVisibleAscii { index }),
                "{key:?}"
            );
        }
    }

    #[test]
    fn non_ascii_is_refused_at_its_first_byte() {
        assert_eq!(
            check("clé".as_bytes()),
            Err(BadKey::NotVisibleAscii { index: 2 })
        );
        assert_eq!(check(b"key\xff"), Err(BadKey::NotVisibleAscii { index: 3 }));
        // Not visible ASCII is refused before the length is looked at.
        let long = "é".repeat(200);
        assert_eq!(
            check(long.as_bytes()),
            Err(BadKey::NotVisibleAscii { index: 0 })
        );
    }

    #[test]
    fn one_header_is_read_none_is_no_key_and_two_are_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), Ok(None));
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("key-1"));
        assert_eq!(from_headers(&headers), Ok(Some("key-1")));
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("key-1"));
        assert_eq!(from_headers(&headers), Err(BadKey::Repeated { count: 2 }));
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static(""));
        assert_eq!(from_headers(&headers), Err(BadKey::Empty));
    }

    #[test]
    fn every_refusal_says_what_is_wrong_and_what_a_key_must_be() {
        let cases = [
            (BadKey::Empty, "the key is empty"),
            (BadKey::NotVisibleAscii { index: 3 }, "byte 3 is not"),
            (BadKey::TooLong { len: 256 }, "256 characters is too long"),
            (BadKey::Repeated { count: 2 }, "2 Idempotency-Key headers"),
        ];
        for (bad, what) in cases {
            let message = bad.to_string();
            assert!(
                message.starts_with("Invalid idempotency key: "),
                "{message}"
            );
            assert!(message.contains(what), "{message}");
            assert!(
                message.ends_with("must be 1 to 255 visible ASCII characters."),
                "{message}"
            );
        }
    }
}
