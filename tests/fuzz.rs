//! Fuzzing on the stable toolchain: the Stripe error-body parser, the Stripe classifier
//! and the header parsers (`Retry-After`, `Stripe-Should-Retry`, `Idempotent-Replayed`,
//! `Request-Id`, `Idempotency-Key`) on arbitrary bytes and on near-valid, structure-aware
//! inputs, driven by proptest.
//!
//! Every input is checked against an oracle written from the parsers' documented
//! behaviour, not only for the absence of a panic: a body that is not a Stripe error
//! object is `None` and classifies exactly as no body at all; an unparseable `Retry-After`
//! is ignored; a key is accepted exactly when it is 1 to 255 visible ASCII characters.
//!
//! The pass is bounded ([`CASES`] per target, raised with `PROPTEST_CASES`), and every
//! file in `tests/corpus/<target>/` is replayed through the same checks, with the
//! expectation its name starts with (see `tests/corpus/README.md`).

mod common;

use http::header::DATE;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use resilient_http::classify::Classify;
use resilient_http::headers::{self, RequestId, IDEMPOTENT_REPLAYED, REQUEST_ID, RETRY_AFTER};
use resilient_http::idempotency::{IdempotencyKey, InvalidIdempotencyKey};
use resilient_http::stripe::{should_retry, StripeClassifier, StripeError, STRIPE_SHOULD_RETRY};
use resilient_http::{Class, Classification, Outcome};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Cases per target unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    common::proptest_config(CASES)
}

/// The `Date` header the corpus's `Retry-After` dates are measured from.
const CORPUS_DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

// ---------------------------------------------------------------------------------------
// Oracles and checks, shared by the generated pass and the corpus replay
// ---------------------------------------------------------------------------------------

fn string_field(error: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    error.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// How many times the top-level object of a JSON document names `error`.
///
/// serde_json's `Value` keeps the last of repeated keys, but the parser's envelope refuses a
/// repeated `error`: an ambiguous body, classified by status. That is the safe fallback,
/// so the oracle follows it.
fn top_level_error_keys(body: &[u8]) -> usize {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while let Some(key) = map.next_key::<String>()? {
                n += usize::from(key == "error");
                map.next_value::<IgnoredAny>()?;
            }
            Ok(n)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(Count).unwrap_or(0)
}

/// `StripeError::from_body`'s documented contract: `Some` exactly for JSON whose top level
/// is an object holding one `error` object with a string `type`; each other field read
/// when it is a string and absent otherwise.
fn check_stripe_body(body: &[u8]) -> Result<Option<StripeError>, TestCaseError> {
    let parsed = StripeError::from_body(body);
    let value: Option<Value> = serde_json::from_slice(body)
        .ok()
        .filter(|_| top_level_error_keys(body) <= 1);
    let error = value
        .as_ref()
        .and_then(|v| v.as_object())
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .filter(|e| e.get("type").is_some_and(Value::is_string));
    match (&parsed, error) {
        (Some(p), Some(e)) => {
            prop_assert_eq!(
                Some(p.error_type.as_str().to_owned()),
                string_field(e, "type")
            );
            prop_assert_eq!(
                p.code.as_ref().map(|c| c.as_str().to_owned()),
                string_field(e, "code")
            );
            prop_assert_eq!(&p.decline_code, &string_field(e, "decline_code"));
            prop_assert_eq!(&p.message, &string_field(e, "message"));
            prop_assert_eq!(&p.param, &string_field(e, "param"));
            prop_assert_eq!(&p.doc_url, &string_field(e, "doc_url"));
            prop_assert_eq!(&p.request_log_url, &string_field(e, "request_log_url"));
            prop_assert!(p.request_id.is_none(), "the id comes from the headers");
            prop_assert!(
                p.http_status.is_none(),
                "the status comes from the response"
            );
            // Display and category never panic, whatever the strings hold.
            let _ = (p.to_string(), p.category());
        }
        (None, None) => {}
        (Some(p), None) => {
            return Err(TestCaseError::fail(format!(
                "parsed {p:?} from a body that is not a Stripe error object: {:?}",
                String::from_utf8_lossy(body)
            )))
        }
        (None, Some(_)) => {
            return Err(TestCaseError::fail(format!(
                "a Stripe error object was not parsed: {:?}",
                String::from_utf8_lossy(body)
            )))
        }
    }
    Ok(parsed)
}

/// A classification's whole verdict, detail aside: `Classification` is not comparable.
fn verdict(c: &Classification) -> (Class, Outcome, bool, bool, bool) {
    (
        c.class(),
        c.outcome(),
        c.should_retry(),
        c.server_refused_retry(),
        c.settles_earlier(),
    )
}

/// The classifier on any body and status: never a panic; a 2xx is a success; a definite
/// failure is never retried; `Stripe-Should-Retry: false` always stops retries, and is
/// reported as the server's refusal exactly when the answer would otherwise have been
/// retried; `true` makes any failure but a reused key retryable; a body that is not a
/// Stripe error classifies as no body, with no detail; a Stripe error object rides along
/// as the detail, with the response's status.
fn check_classifier(
    method: Method,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), TestCaseError> {
    let (request, ()) = Request::builder()
        .method(method)
        .uri("/v1/charges")
        .body(())
        .unwrap()
        .into_parts();
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    *response.headers_mut() = headers.clone();
    let (response, ()) = response.into_parts();
    let with_body = StripeClassifier.classify_response((&request).into(), &response, Some(body));
    let without = StripeClassifier.classify_response((&request).into(), &response, None);
    if (200..300).contains(&status) {
        prop_assert_eq!(with_body.outcome(), Outcome::Success);
        prop_assert!(!with_body.should_retry());
        prop_assert!(!with_body.server_refused_retry());
        return Ok(());
    }
    if with_body.outcome() == Outcome::DefiniteFailure {
        prop_assert!(
            !with_body.should_retry(),
            "a definite failure is never retried"
        );
    }
    if should_retry(headers) == Some(false) {
        prop_assert!(!with_body.should_retry(), "the server said no");
        // Without the header, would this answer have been retried?
        let mut unhinted = response.clone();
        unhinted.headers.remove(STRIPE_SHOULD_RETRY);
        let plain = StripeClassifier.classify_response((&request).into(), &unhinted, Some(body));
        prop_assert_eq!(with_body.server_refused_retry(), plain.should_retry());
        prop_assert_eq!(with_body.outcome(), plain.outcome(), "the outcome is kept");
    } else {
        prop_assert!(!with_body.server_refused_retry());
    }
    if should_retry(headers) == Some(true) && with_body.class() != Class::KeyReused {
        prop_assert!(with_body.should_retry(), "the server said yes");
    }
    match StripeError::from_body(body) {
        None => {
            prop_assert_eq!(
                verdict(&with_body),
                verdict(&without),
                "a non-Stripe body falls back to the status"
            );
            prop_assert!(with_body.detail().is_none());
        }
        Some(parsed) => {
            let detail = with_body
                .detail()
                .and_then(|d| d.downcast_ref::<StripeError>());
            prop_assert!(detail.is_some(), "the error object rides along");
            let detail = detail.unwrap();
            prop_assert_eq!(&detail.error_type, &parsed.error_type);
            prop_assert_eq!(detail.http_status, Some(response.status));
        }
    }
    prop_assert!(without.detail().is_none());
    Ok(())
}

fn trim(bytes: &[u8]) -> &[u8] {
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

/// `headers::retry_after`'s documented contract for one header value, measured from the
/// response's `Date` when there is one.
fn expected_retry_after(value: &[u8], date: Option<SystemTime>) -> Option<Duration> {
    let text = std::str::from_utf8(trim(value)).ok()?;
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(text.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let now = date?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn check_retry_after(value: &[u8], date: Option<SystemTime>) -> Result<(), TestCaseError> {
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return Ok(()); // the http crate never hands us such a value
    };
    let mut map = HeaderMap::new();
    map.insert(RETRY_AFTER, v.clone());
    if let Some(date) = date {
        map.insert(
            DATE,
            HeaderValue::from_str(&httpdate::fmt_http_date(date)).unwrap(),
        );
    }
    let got = headers::retry_after(&map);
    match date {
        Some(_) => prop_assert_eq!(got, expected_retry_after(value, date)),
        // Measured from this machine's clock: only the form is predictable.
        None => {
            let expected = expected_retry_after(value, Some(SystemTime::now()));
            prop_assert_eq!(got.is_some(), expected.is_some());
        }
    }
    // Two values are ambiguous: ignored.
    map.append(RETRY_AFTER, v);
    prop_assert_eq!(headers::retry_after(&map), None);
    Ok(())
}

/// `Stripe-Should-Retry`, `Idempotent-Replayed` and `Request-Id` on one value.
fn check_hint_headers(value: &[u8]) -> Result<(), TestCaseError> {
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return Ok(());
    };
    let word = trim(value);
    let mut map = HeaderMap::new();
    map.insert(STRIPE_SHOULD_RETRY, v.clone());
    map.insert(IDEMPOTENT_REPLAYED, v.clone());
    map.insert(REQUEST_ID, v.clone());
    let should = if word.eq_ignore_ascii_case(b"true") {
        Some(true)
    } else if word.eq_ignore_ascii_case(b"false") {
        Some(false)
    } else {
        None
    };
    prop_assert_eq!(should_retry(&map), should);
    prop_assert_eq!(headers::is_replayed(&map), should == Some(true));
    let id = RequestId::from_headers(&map).expect("a request id");
    prop_assert_eq!(id.as_header_value(), &v);
    prop_assert_eq!(id.to_str(), v.to_str().ok());
    prop_assert_eq!(id.to_string(), String::from_utf8_lossy(value).into_owned());
    let _ = format!("{id:?}");
    Ok(())
}

/// A valid key is 1 to 255 visible ASCII characters; anything else is an error naming
/// the limit.
fn expected_key(bytes: &[u8]) -> Result<(), InvalidIdempotencyKey> {
    if bytes.is_empty() {
        return Err(InvalidIdempotencyKey::Empty);
    }
    if let Some(index) = bytes.iter().position(|b| !(b'!'..=b'~').contains(b)) {
        return Err(InvalidIdempotencyKey::InvalidCharacter { index });
    }
    if bytes.len() > 255 {
        return Err(InvalidIdempotencyKey::TooLong { len: bytes.len() });
    }
    Ok(())
}

fn check_key(bytes: &[u8]) -> Result<(), TestCaseError> {
    let expected = expected_key(bytes);
    if let Ok(v) = HeaderValue::from_bytes(bytes) {
        let got = IdempotencyKey::from_header_value(&v);
        prop_assert_eq!(got.as_ref().map(|_| ()), expected.as_ref().map(|_| ()));
        if let Ok(k) = got {
            prop_assert_eq!(k.as_str().as_bytes(), bytes);
        }
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        let got = IdempotencyKey::new(s);
        match (&got, &expected) {
            (Ok(k), Ok(())) => prop_assert_eq!(k.as_str(), s),
            (Err(e), Err(want)) => {
                prop_assert_eq!(e, want);
                prop_assert!(e.to_string().contains("255"), "names the limit: {}", e);
            }
            _ => prop_assert!(false, "{:?} for {:?}, expected {:?}", got, s, expected),
        }
        prop_assert_eq!(s.parse::<IdempotencyKey>().is_ok(), expected.is_ok());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Structure-aware generators
// ---------------------------------------------------------------------------------------

/// A JSON value of small depth, with the strings and numbers a Stripe body might hold.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        prop::sample::select(vec![
            "api_error",
            "card_error",
            "idempotency_error",
            "invalid_request_error",
            "rate_limit",
            "lock_timeout",
            "card_declined",
            "fraudulent",
            "",
            "é\u{0}\u{feff}\u{1f600}",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "error",
            "type",
            "code",
            "decline_code",
            "message",
            "param",
            "doc_url",
            "request_log_url",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

/// Near-valid Stripe bodies: an envelope with an error object of random fields, then
/// serialised, and sometimes cut short or corrupted at one byte.
fn near_valid_body() -> impl Strategy<Value = Vec<u8>> {
    let envelope = prop::collection::vec((field_name(), json_value()), 0..8).prop_map(|fields| {
        let error: serde_json::Map<String, Value> = fields.into_iter().collect();
        serde_json::json!({ "error": error })
    });
    let value = prop_oneof![3 => envelope, 1 => json_value()];
    (value, 0u8..4, any::<prop::sample::Index>(), any::<u8>()).prop_map(
        |(value, mutation, at, byte)| {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            if bytes.is_empty() {
                return bytes;
            }
            let i = at.index(bytes.len());
            match mutation {
                1 => bytes.truncate(i),
                2 => bytes[i] = byte,
                3 => bytes.insert(i, byte),
                _ => {}
            }
            bytes
        },
    )
}

/// Bytes that make a valid header value: visible ASCII, space, tab and obs-text.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => 0x20u8..=0x7e,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..max,
    )
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\t", "  "])
}

/// A time between 1970 and 9999, on whole seconds (HTTP dates have no fractions).
fn http_time() -> impl Strategy<Value = SystemTime> {
    (0u64..253_402_300_799).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Near-valid `Retry-After` values: numbers of every shape and HTTP dates in every format.
fn near_valid_retry_after() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        "[0-9]{1,30}",
        "-[0-9]{1,5}",
        "[0-9]{1,3}\\.[0-9]{1,3}",
        "[0-9]e[0-9]{1,3}",
        "\\+[0-9]{1,3}",
        "0x[0-9a-f]{1,4}",
        Just("NaN".to_owned()),
        Just("inf".to_owned()),
        "[0-9]{1,3}, ?[0-9]{1,3}",
    ];
    let date = (http_time(), 0u8..4).prop_map(|(t, form)| {
        let imf = httpdate::fmt_http_date(t);
        match form {
            0 => imf,
            // Lower case, which the grammar does not allow.
            1 => imf.to_lowercase(),
            // Without the zone.
            2 => imf.trim_end_matches(" GMT").to_owned(),
            _ => imf.replace(' ', "  "),
        }
    });
    (ws(), prop_oneof![number, date], ws()).prop_map(|(a, v, b)| format!("{a}{v}{b}").into_bytes())
}

fn near_valid_word() -> impl Strategy<Value = Vec<u8>> {
    (
        ws(),
        prop::sample::select(vec!["true", "false", "tru", "truee", "yes", "1", "0"]),
        prop::collection::vec(any::<bool>(), 5),
        ws(),
    )
        .prop_map(|(a, word, upper, b)| {
            let word: String = word
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            format!("{a}{word}{b}").into_bytes()
        })
}

fn near_valid_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(0x21u8..=0x7e, 250..=260),
        prop::collection::vec(0x21u8..=0x7e, 0..=3),
        (
            prop::collection::vec(0x21u8..=0x7e, 1..40),
            any::<prop::sample::Index>(),
            prop::sample::select(vec![b' ', b'\t', b'\n', b'\r', 0x7f, 0x80, 0xc3, 0xff, 0]),
        )
            .prop_map(|(mut key, at, bad)| {
                let i = at.index(key.len() + 1);
                key.insert(i, bad);
                key
            }),
        "[!-~]{1,36}".prop_map(String::into_bytes),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![200u16, 400, 401, 402, 403, 404, 409, 429, 500, 502, 503, 504]),
        1 => 100u16..=999,
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::POST,
        Method::GET,
        Method::DELETE,
        Method::PATCH,
    ])
}

fn response_headers() -> impl Strategy<Value = HeaderMap> {
    (
        prop::option::of(near_valid_word()),
        prop::option::of(near_valid_retry_after()),
    )
        .prop_map(|(should, after)| {
            let mut map = HeaderMap::new();
            if let Some(v) = should.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                map.insert(STRIPE_SHOULD_RETRY, v);
            }
            if let Some(v) = after.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                map.insert(RETRY_AFTER, v);
            }
            map
        })
}

// ---------------------------------------------------------------------------------------
// The bounded pass
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn error_body_parser_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_stripe_body(&body)?;
    }

    #[test]
    fn error_body_parser_on_near_valid_json(body in near_valid_body()) {
        check_stripe_body(&body)?;
    }

    #[test]
    fn classifier_on_arbitrary_bodies_statuses_and_hints(
        method in method(),
        status in status(),
        headers in response_headers(),
        body in prop_oneof![near_valid_body(), prop::collection::vec(any::<u8>(), 0..256)],
    ) {
        check_classifier(method, status, &headers, &body)?;
    }

    #[test]
    fn retry_after_on_arbitrary_bytes(
        value in header_bytes(64),
        date in prop::option::of(http_time()),
    ) {
        check_retry_after(&value, date)?;
    }

    #[test]
    fn retry_after_on_near_valid_values(
        value in near_valid_retry_after(),
        date in prop::option::of(http_time()),
    ) {
        check_retry_after(&value, date)?;
    }

    #[test]
    fn hint_headers_on_arbitrary_bytes(value in header_bytes(32)) {
        check_hint_headers(&value)?;
    }

    #[test]
    fn hint_headers_on_near_valid_words(value in near_valid_word()) {
        check_hint_headers(&value)?;
    }

    #[test]
    fn idempotency_keys_on_arbitrary_bytes(key in prop::collection::vec(any::<u8>(), 0..300)) {
        check_key(&key)?;
    }

    #[test]
    fn idempotency_keys_on_near_valid_bytes(key in near_valid_key()) {
        check_key(&key)?;
    }
}

// ---------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the {target} corpus is missing");
    files
}

fn run(name: &str, check: Result<(), TestCaseError>) {
    if let Err(e) = check {
        panic!("corpus file {name}: {e}");
    }
}

#[test]
fn corpus_of_error_bodies_replays() {
    for (name, body) in corpus("stripe_body") {
        let parsed = check_stripe_body(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        match name.split('-').next().unwrap() {
            "some" => assert!(parsed.is_some(), "{name} is a Stripe error"),
            "none" => assert!(parsed.is_none(), "{name} is not a Stripe error: {parsed:?}"),
            other => panic!("{name}: unknown expectation {other:?}"),
        }
        for status in [400, 402, 429, 500, 503] {
            for method in [Method::POST, Method::GET] {
                run(
                    &name,
                    check_classifier(method, status, &HeaderMap::new(), &body),
                );
            }
        }
    }
}

#[test]
fn corpus_of_retry_after_values_replays() {
    let date = httpdate::parse_http_date(CORPUS_DATE).unwrap();
    for (name, value) in corpus("retry_after") {
        run(&name, check_retry_after(&value, Some(date)));
        let mut map = HeaderMap::new();
        map.insert(RETRY_AFTER, HeaderValue::from_bytes(&value).unwrap());
        map.insert(DATE, HeaderValue::from_static(CORPUS_DATE));
        let got = headers::retry_after(&map);
        let mut parts = name.split('-');
        let expected = match parts.next().unwrap() {
            "none" => None,
            "max" => Some(Duration::MAX),
            "secs" => Some(Duration::from_secs(parts.next().unwrap().parse().unwrap())),
            other => panic!("{name}: unknown expectation {other:?}"),
        };
        assert_eq!(
            got,
            expected,
            "{name}: {:?}",
            String::from_utf8_lossy(&value)
        );
    }
}

#[test]
fn corpus_of_hint_header_values_replays() {
    for (name, value) in corpus("hint_header") {
        run(&name, check_hint_headers(&value));
        let mut map = HeaderMap::new();
        map.insert(
            STRIPE_SHOULD_RETRY,
            HeaderValue::from_bytes(&value).unwrap(),
        );
        let expected = match name.split('-').next().unwrap() {
            "true" => Some(true),
            "false" => Some(false),
            "none" => None,
            other => panic!("{name}: unknown expectation {other:?}"),
        };
        assert_eq!(should_retry(&map), expected, "{name}");
    }
}

#[test]
fn corpus_of_idempotency_keys_replays() {
    for (name, key) in corpus("idempotency_key") {
        run(&name, check_key(&key));
        let got = expected_key(&key);
        let ok = match name.split('-').next().unwrap() {
            "ok" => true,
            "bad" => false,
            other => panic!("{name}: unknown expectation {other:?}"),
        };
        assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
        if let Ok(v) = HeaderValue::from_bytes(&key) {
            assert_eq!(IdempotencyKey::from_header_value(&v).is_ok(), ok, "{name}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Large inputs, generated rather than stored
// ---------------------------------------------------------------------------------------

const TEN_MIB: usize = 10 * 1024 * 1024;

#[test]
fn ten_mib_inputs_parse_or_fall_back_without_a_panic() {
    // A valid Stripe error whose message is 10 MiB: parsed, message whole.
    let head = br#"{"error":{"type":"card_error","code":"card_declined","message":""#;
    let tail = br#""}}"#;
    let mut body = head.to_vec();
    body.resize(TEN_MIB - tail.len(), b'x');
    body.extend_from_slice(tail);
    let e = StripeError::from_body(&body).expect("a valid error object, however long");
    assert_eq!(e.message.unwrap().len(), TEN_MIB - head.len() - tail.len());

    // 10 MiB of nesting: serde_json's recursion limit answers, not the stack.
    let nested = vec![b'['; TEN_MIB];
    assert!(StripeError::from_body(&nested).is_none());
    let mut nested = br#"{"error":"#.to_vec();
    nested.extend(std::iter::repeat_n(b'{', TEN_MIB / 16));
    assert!(StripeError::from_body(&nested).is_none());

    // 10 MiB of bytes of every value.
    let noise: Vec<u8> = (0..TEN_MIB).map(|i| (i * 31 % 251) as u8).collect();
    assert!(StripeError::from_body(&noise).is_none());
    check_classifier(Method::POST, 500, &HeaderMap::new(), &noise).unwrap();

    // A 10 MiB Retry-After: garbage, ignored; 10 MiB of digits: saturates to the maximum.
    let mut map = HeaderMap::new();
    map.insert(
        RETRY_AFTER,
        HeaderValue::from_bytes(&vec![b'9'; TEN_MIB]).unwrap(),
    );
    assert_eq!(headers::retry_after(&map), Some(Duration::MAX));
    map.insert(
        RETRY_AFTER,
        HeaderValue::from_bytes(&vec![b'x'; TEN_MIB]).unwrap(),
    );
    assert_eq!(headers::retry_after(&map), None);

    // A 10 MiB key: too long, by its length.
    let key = vec![b'k'; TEN_MIB];
    let v = HeaderValue::from_bytes(&key).unwrap();
    assert_eq!(
        IdempotencyKey::from_header_value(&v).unwrap_err(),
        InvalidIdempotencyKey::TooLong { len: TEN_MIB }
    );
}

// ---------------------------------------------------------------------------------------
// Bugs found
// ---------------------------------------------------------------------------------------

/// Found by `error_body_parser_on_near_valid_json` (shrunk to `{"error":["api_error"]}`),
/// fixed in 3f0786f. `StripeError::from_body` is documented to return `None` for a body
/// with "no `error` object", but serde's derived `Deserialize` reads a JSON array as a
/// struct's fields in order, so an array where the envelope or the error object should be
/// parsed as a Stripe error. Through the stack, a proxy's `500` with body
/// `{"error":["api_error"]}` was then classified as Stripe's own `api_error` (a server
/// error, with a made-up error object handed to the caller) instead of a 5xx without a
/// Stripe body (unavailable, classified by status).
#[test]
fn json_arrays_are_not_stripe_error_objects() {
    for body in [
        r#"[{"type":"card_error"}]"#,
        r#"{"error":["api_error"]}"#,
        r#"{"error":["card_error","card_declined"]}"#,
        r#"[["api_error"]]"#,
    ] {
        assert_eq!(StripeError::from_body(body.as_bytes()), None, "{body}");
    }
}
