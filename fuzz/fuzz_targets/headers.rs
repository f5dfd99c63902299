//! The header parsers on arbitrary header values: `Retry-After` (with and without a
//! `Date`), `Stripe-Should-Retry`, `Idempotent-Replayed`, `Request-Id` and
//! `Idempotency-Key`. No panic, and the documented results.
#![no_main]

use http::header::DATE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use resilient_http::headers::{self, RequestId, IDEMPOTENT_REPLAYED, REQUEST_ID, RETRY_AFTER};
use resilient_http::idempotency::IdempotencyKey;
use resilient_http::stripe::{should_retry, STRIPE_SHOULD_RETRY};

fuzz_target!(|data: &[u8]| {
    // An optional Date value, then the header value, split at the first 0 byte.
    let (date, value) = match data.iter().position(|b| *b == 0) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut map = HeaderMap::new();
    for name in [
        RETRY_AFTER,
        STRIPE_SHOULD_RETRY,
        IDEMPOTENT_REPLAYED,
        REQUEST_ID,
    ] {
        map.insert(name, v.clone());
    }
    if let Some(d) = date.and_then(|d| HeaderValue::from_bytes(d).ok()) {
        map.insert(DATE, d);
    }
    let after = headers::retry_after(&map);
    let trimmed = value.trim_ascii();
    if !trimmed.is_empty() && trimmed.iter().all(u8::is_ascii_digit) {
        assert!(after.is_some());
    }
    let should = should_retry(&map);
    assert_eq!(headers::is_replayed(&map), should == Some(true));
    let id = RequestId::from_headers(&map).unwrap();
    let _ = (id.to_string(), format!("{id:?}"), id.to_str());
    let key = IdempotencyKey::from_header_value(&v);
    let valid = (1..=255).contains(&value.len()) && value.iter().all(u8::is_ascii_graphic);
    assert_eq!(key.is_ok(), valid, "{value:?}");
    if let Err(e) = key {
        assert!(e.to_string().contains("255"));
    }
});
