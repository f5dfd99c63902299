//! The headers the middleware reads and writes, in one place.
//!
//! Besides the names, this module holds the small parsers for the generic server hints:
//! [`retry_after`] and [`is_replayed`]. Each one is total: a malformed header is ignored
//! (the documented safe fallback), never a panic.
//!
//! ```
//! use http::HeaderMap;
//! use resilient_http::headers::{self, RETRY_AFTER};
//! use std::time::Duration;
//!
//! let mut map = HeaderMap::new();
//! map.insert(RETRY_AFTER, "3".parse().unwrap());
//! assert_eq!(headers::retry_after(&map), Some(Duration::from_secs(3)));
//! ```

use http::header::{HeaderMap, HeaderName, HeaderValue, DATE};
use std::fmt;
use std::time::{Duration, SystemTime};

/// `Idempotency-Key`: the key under which the server saves the first result of a request.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Request-Id`: the server's id for one attempt, quoted to Stripe support when reconciling.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// `Idempotent-Replayed`: set to `true` when the server answered from its saved result.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// `Retry-After`: the server's minimum wait before the next attempt (RFC 9110 section 10.2.3).
pub const RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;

/// The server's id for one attempt, read from the `Request-Id` response header.
///
/// Kept as the raw header value: Stripe's ids are `req_` followed by ASCII, but an id from
/// another server is kept whatever its bytes, and shown lossily.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Wraps a header value as a request id.
    pub fn new(value: HeaderValue) -> Self {
        RequestId(value)
    }

    /// Reads the `Request-Id` header of a response, if it has one.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers.get(REQUEST_ID).cloned().map(RequestId)
    }

    /// The id as text, or `None` if the server sent bytes that are not visible ASCII.
    pub fn to_str(&self) -> Option<&str> {
        self.0.to_str().ok()
    }

    /// The id as the header value it came in.
    pub fn as_header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.to_str() {
            Ok(s) => f.write_str(s),
            Err(_) => f.write_str(&String::from_utf8_lossy(self.0.as_bytes())),
        }
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// Whether the response says it was replayed from the server's saved result
/// (`Idempotent-Replayed: true`).
pub fn is_replayed(headers: &HeaderMap) -> bool {
    headers.get(IDEMPOTENT_REPLAYED).is_some_and(says_true)
}

/// What the report takes from every response: its [`RequestId`] and whether it
/// [was replayed](is_replayed), the same as those two read, in one pass over the headers
/// rather than two look-ups in the map (which hash each name first).
pub(crate) fn request_id_and_replayed(headers: &HeaderMap) -> (Option<RequestId>, bool) {
    let (mut id, mut replayed) = (None, None);
    for (name, value) in headers {
        if id.is_none() && *name == REQUEST_ID {
            id = Some(value);
        } else if replayed.is_none() && *name == IDEMPOTENT_REPLAYED {
            replayed = Some(value);
        }
    }
    (id.cloned().map(RequestId), replayed.is_some_and(says_true))
}

fn says_true(value: &HeaderValue) -> bool {
    trim(value.as_bytes()).eq_ignore_ascii_case(b"true")
}

/// Reads `Retry-After` as a wait from now.
///
/// - `delay-seconds` (ASCII digits only): that many seconds; a number too large for a
///   `u64` saturates to [`Duration::MAX`] (which any cap then rejects).
/// - An HTTP-date: the time from the response's own `Date` header (or, without one, from
///   this machine's clock) until that date; a date in the past is a wait of zero.
/// - Anything else (`-1`, `1e30`, `1.5`, garbage, several values): `None`, and the computed
///   backoff applies alone.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    // None, or several: no hint.
    let (Some(value), None) = first_two(headers, &RETRY_AFTER) else {
        return None;
    };
    let text = std::str::from_utf8(trim(value.as_bytes())).ok()?;
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(match text.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => Duration::MAX,
        });
    }
    let at = httpdate::parse_http_date(text).ok()?;
    // Measure against the server's clock when it told us the time: both dates then come
    // from the same clock, so skew between the machines does not stretch the wait.
    let now = headers
        .get(DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(SystemTime::now);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A map of at most this many values is searched by a scan, which compares names (a tag,
/// or a length and bytes) without hashing them; a larger one by a look-up. A request or a
/// response has a handful of headers, and hashing a name costs more than a dozen compares.
const SCAN_UP_TO: usize = 16;

/// The first two values of `name`, in order: a second one means the header repeats. The
/// same as `headers.get_all(name)`'s first two, found the cheaper way for the map's size.
pub(crate) fn first_two<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> (Option<&'a HeaderValue>, Option<&'a HeaderValue>) {
    if headers.len() <= SCAN_UP_TO {
        // Most maps searched do not have the name (a request without a key of its own, a
        // response without `Retry-After`): the names alone are a plain slice to scan, where
        // the map's iterator also walks each name's values.
        if !headers.keys().any(|n| n == name) {
            return (None, None);
        }
        let mut values = headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v);
        (values.next(), values.next())
    } else {
        let mut values = headers.get_all(name).iter();
        (values.next(), values.next())
    }
}

/// `bytes` without leading and trailing ASCII whitespace.
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn first_two_finds_what_get_all_finds_in_maps_of_any_size() {
        let names = [
            IDEMPOTENCY_KEY,
            RETRY_AFTER,
            http::header::AUTHORIZATION,
            HeaderName::from_static("x-other"),
        ];
        // Maps around the scan's limit, each name repeated in a pattern, values numbered.
        for size in [0, 1, 2, SCAN_UP_TO - 1, SCAN_UP_TO, SCAN_UP_TO + 1, 40] {
            for stride in 1..=names.len() {
                let mut m = HeaderMap::new();
                for i in 0..size {
                    let name = names[(i * stride + i / 3) % names.len()].clone();
                    m.append(name, HeaderValue::from(i));
                }
                for name in &names {
                    let mut expected = m.get_all(name).iter();
                    let expected = (expected.next(), expected.next());
                    assert_eq!(first_two(&m, name), expected, "{size} {stride} {name}");
                }
                let absent = HeaderName::from_static("absent");
                assert_eq!(first_two(&m, &absent), (None, None));
            }
        }
    }

    #[test]
    fn retry_after_seconds_are_read() {
        assert_eq!(
            retry_after(&map(&[(RETRY_AFTER, " 7 ")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&map(&[(RETRY_AFTER, "0")])),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        for bad in ["-1", "1e30", "1.5", "soon", "", "3, 4"] {
            assert_eq!(retry_after(&map(&[(RETRY_AFTER, bad)])), None, "{bad:?}");
        }
        let two = map(&[(RETRY_AFTER, "1"), (RETRY_AFTER, "2")]);
        assert_eq!(retry_after(&two), None);
    }

    #[test]
    fn retry_after_overflowing_seconds_saturate() {
        let m = map(&[(RETRY_AFTER, "99999999999999999999999")]);
        assert_eq!(retry_after(&m), Some(Duration::MAX));
    }

    #[test]
    fn retry_after_date_is_measured_from_the_servers_date() {
        let m = map(&[
            (RETRY_AFTER, "Wed, 21 Oct 2015 07:28:30 GMT"),
            (DATE, "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert_eq!(retry_after(&m), Some(Duration::from_secs(30)));
    }

    #[test]
    fn retry_after_date_in_the_past_is_zero() {
        let m = map(&[(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&m), Some(Duration::ZERO));
    }

    #[test]
    fn replayed_flag_is_read() {
        assert!(is_replayed(&map(&[(IDEMPOTENT_REPLAYED, "true")])));
        assert!(!is_replayed(&map(&[(IDEMPOTENT_REPLAYED, "false")])));
        assert!(!is_replayed(&HeaderMap::new()));
    }

    #[test]
    fn one_pass_reads_what_the_two_look_ups_read() {
        let maps = [
            map(&[]),
            map(&[(REQUEST_ID, "req_1"), (IDEMPOTENT_REPLAYED, " TRUE ")]),
            map(&[
                (DATE, "x"),
                (IDEMPOTENT_REPLAYED, "false"),
                (REQUEST_ID, "req_2"),
            ]),
            map(&[
                (REQUEST_ID, "req_3"),
                (REQUEST_ID, "req_4"),
                (RETRY_AFTER, "1"),
            ]),
            map(&[
                (IDEMPOTENT_REPLAYED, "true"),
                (IDEMPOTENT_REPLAYED, "false"),
                (REQUEST_ID, "req_5"),
            ]),
            map(&[(IDEMPOTENT_REPLAYED, "no"), (IDEMPOTENT_REPLAYED, "true")]),
        ];
        for m in &maps {
            let expected = (RequestId::from_headers(m), is_replayed(m));
            assert_eq!(request_id_and_replayed(m), expected, "{m:?}");
        }
    }

    #[test]
    fn request_id_displays_lossily() {
        let id = RequestId::new(HeaderValue::from_bytes(b"req_\xff").unwrap());
        assert_eq!(id.to_str(), None);
        assert_eq!(id.to_string(), "req_\u{fffd}");
    }
}
