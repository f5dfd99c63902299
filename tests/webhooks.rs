//! Stripe webhooks: signature verification against signatures pinned from `openssl`, each
//! refusal, the event envelope and the failures stored on objects, the endpoint under a
//! real hyper server and under axum, redelivery, and a proptest fuzz of the header parser
//! and of `verify` on arbitrary bytes.
//!
//! The pinned signatures were computed with `openssl dgst -sha256 -hmac`, not with this
//! crate: each constant says the command. `sign_hex` below (RustCrypto's HMAC, as the
//! crate uses) is checked against them before the round trips rely on it.

#![cfg(feature = "webhooks")]

mod common;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::*;
use resilient_http::stripe::webhook::{
    stored_failure, Event, MalformedReason, Verifier, Webhook, WebhookError, WebhookLayer,
    DEFAULT_BODY_LIMIT, DEFAULT_TOLERANCE, STRIPE_SIGNATURE,
};
use resilient_http::stripe::{Category, ErrorCode, ErrorType, StripeError};
use resilient_http::BoxError;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_test::{assert_pending, assert_ready};
use tower::{service_fn, Layer, Service, ServiceExt};

// ---------------------------------------------------------------------------------------
// Pinned vectors
// ---------------------------------------------------------------------------------------

const SECRET: &str = "whsec_test_secret";
const ROLLED: &str = "whsec_rolled_secret";
/// The timestamp every pinned signature was made at.
const T: i64 = 1_700_000_000;

const EVENT: &str = r#"{"id":"evt_1Ab","object":"event","type":"charge.succeeded","created":1700000000,"livemode":false,"api_version":"2024-06-20","request":{"id":"req_9X","idempotency_key":"order-77"},"data":{"object":{"id":"ch_1","object":"charge","amount":2000,"currency":"usd","status":"succeeded"}}}"#;
/// printf '%s' "1700000000.$EVENT" | openssl dgst -sha256 -hmac whsec_test_secret
const EVENT_SIG: &str = "2cd6e0ea31858eaeec4d4aff66a0f5967cf7e1778fa412a3610571d0f2fb8498";
/// printf '%s' "1700000000.$EVENT" | openssl dgst -sha256 -hmac whsec_rolled_secret
const EVENT_SIG_ROLLED: &str = "245c566edba00f7151c38a3156f4675a2769c315174d01b3261b1d1eedc58132";
/// printf '%s' "1700000000.not json" | openssl dgst -sha256 -hmac whsec_test_secret
const NOT_JSON_SIG: &str = "0e28b05015734fffa1e02f8b443678fbe189e902dcfeb61f9c18714551e168f4";
/// printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test_secret
const NOT_EVENT_SIG: &str = "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";
/// printf '%s' '1700000000.' | openssl dgst -sha256 -hmac whsec_test_secret
const EMPTY_SIG: &str = "316b9ab98c15bfa039d243f3196acee619cf29749a91a634e6a8154e2f7b6727";
/// The 64 KiB `padded_event(65536)`:
/// P='{"id":"evt_big","type":"charge.succeeded","data":{"object":{"pad":"'
/// { printf '%s' "1700000000.$P"; head -c 65465 /dev/zero | tr '\0' a; printf '"}}}'; } | openssl dgst -sha256 -hmac whsec_test_secret
const AT_LIMIT_SIG: &str = "1a105a83d0d4cdc3378183b844ba24ce3187bf8162ce2a8a32da4d5feba5926b";
/// `padded_event(65537)`, one byte over: the same command with `head -c 65466`.
const OVER_LIMIT_SIG: &str = "5037808f778ab71c7d66ad3704f2b73e9c90fb75e05786cdd5f7307ef66e55e8";

/// An event of exactly `len` bytes (at least 71), padded with `a`s.
fn padded_event(len: usize) -> Vec<u8> {
    let prefix = br#"{"id":"evt_big","type":"charge.succeeded","data":{"object":{"pad":""#;
    let suffix = br#""}}}"#;
    let mut body = prefix.to_vec();
    body.resize(len - suffix.len(), b'a');
    body.extend_from_slice(suffix);
    assert_eq!(body.len(), len);
    body
}

/// A verifier for `SECRET` whose clock reads `secs` Unix seconds.
fn at(secs: i64) -> Verifier {
    Verifier::new(SECRET).clock(move || unix(secs))
}

fn unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("test headers are visible ASCII")
}

fn signed(t: i64, signature: &str) -> HeaderValue {
    header(&format!("t={t},v1={signature}"))
}

/// HMAC-SHA256 of `"{t}.{body}"` under `secret`, in lower-case hex.
fn sign_hex(secret: &str, t: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(t);
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A refusal, comparable.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed(MalformedReason),
    NoV1,
    Stale { skew: u64, in_future: bool },
    NoMatch,
    TooLarge(usize),
    NotJson,
}

fn refusal(error: WebhookError) -> Refusal {
    match error {
        WebhookError::MissingHeader => Refusal::Missing,
        WebhookError::MalformedHeader { reason } => Refusal::Malformed(reason),
        WebhookError::NoV1Signature => Refusal::NoV1,
        WebhookError::TimestampOutOfTolerance {
            skew, in_future, ..
        } => Refusal::Stale {
            skew: skew.as_secs(),
            in_future,
        },
        WebhookError::NoSignatureMatched => Refusal::NoMatch,
        WebhookError::BodyTooLarge { limit } => Refusal::TooLarge(limit),
        WebhookError::NotJson(_) => Refusal::NotJson,
        other => panic!("a refusal this test does not know: {other}"),
    }
}

fn verdict(result: Result<(), WebhookError>) -> Result<(), Refusal> {
    result.map_err(refusal)
}

// ---------------------------------------------------------------------------------------
// Verification: what is accepted
// ---------------------------------------------------------------------------------------

#[test]
fn openssl_signatures_verify() {
    let at_limit = padded_event(DEFAULT_BODY_LIMIT);
    let cases: [(&str, &[u8], &str); 6] = [
        (SECRET, EVENT.as_bytes(), EVENT_SIG),
        (ROLLED, EVENT.as_bytes(), EVENT_SIG_ROLLED),
        (SECRET, b"not json", NOT_JSON_SIG),
        (SECRET, br#"{"id":"evt_1"}"#, NOT_EVENT_SIG),
        (SECRET, b"", EMPTY_SIG),
        (SECRET, &at_limit, AT_LIMIT_SIG),
    ];
    for (secret, body, signature) in cases {
        let verifier = Verifier::new(secret).clock(|| unix(T));
        assert_eq!(
            verdict(verifier.verify(Some(&signed(T, signature)), body)),
            Ok(()),
            "{signature}"
        );
        assert_eq!(sign_hex(secret, b"1700000000", body), signature);
    }
}

#[test]
fn events_signed_by_the_test_kit_round_trip() {
    // The test kit signs with its own code: the same header as openssl's, accepted here.
    assert_eq!(
        resilient_http_testing::sign(SECRET, T, EVENT.as_bytes()),
        format!("t={T},v1={EVENT_SIG}")
    );
    for (now, body) in [
        (T, EVENT.as_bytes()),
        (T + 299, b"{}"),
        (0, b""),
        (-5, b"\xff\x00"),
    ] {
        let kit = header(&resilient_http_testing::sign(SECRET, now, body));
        assert_eq!(verdict(at(now).verify(Some(&kit), body)), Ok(()), "{now}");
        let forged = header(&resilient_http_testing::sign(ROLLED, now, body));
        assert_eq!(
            verdict(at(now).verify(Some(&forged), body)),
            Err(Refusal::NoMatch)
        );
    }
}

#[test]
fn a_verified_event_is_parsed() {
    let event = at(T)
        .construct_event(Some(&signed(T, EVENT_SIG)), EVENT.as_bytes())
        .unwrap();
    assert_eq!(event.id, "evt_1Ab");
    assert_eq!(event.event_type, "charge.succeeded");
    assert_eq!(event.created, T);
    assert!(!event.livemode);
    assert_eq!(event.api_version.as_deref(), Some("2024-06-20"));
    assert_eq!(event.object_type(), Some("charge"));
    assert_eq!(event.object_id(), Some("ch_1"));
    assert_eq!(event.request_id(), Some("req_9X"));
    assert_eq!(event.idempotency_key(), Some("order-77"));
    assert_eq!(event.data.object["amount"], 2000);
    assert_eq!(event.other["object"], "event");
    assert_eq!(event.stored_failure(), None);
}

#[test]
fn any_v1_among_several_matches_and_other_schemes_are_ignored() {
    let wrong = "00".repeat(32);
    let header = header(&format!(
        "t={T},v1={wrong},v0=not-even-hex,v1={EVENT_SIG},v9=x"
    ));
    assert_eq!(
        verdict(at(T).verify(Some(&header), EVENT.as_bytes())),
        Ok(())
    );
    // Upper-case hex is the same signature.
    let upper = signed(T, &EVENT_SIG.to_ascii_uppercase());
    assert_eq!(
        verdict(at(T).verify(Some(&upper), EVENT.as_bytes())),
        Ok(())
    );
}

#[test]
fn while_a_secret_rolls_either_configured_secret_is_accepted() {
    let rolled = signed(T, EVENT_SIG_ROLLED);
    assert_eq!(
        verdict(at(T).verify(Some(&rolled), EVENT.as_bytes())),
        Err(Refusal::NoMatch),
        "only the configured secrets count"
    );
    let both = at(T).secret(ROLLED);
    assert_eq!(
        verdict(both.verify(Some(&rolled), EVENT.as_bytes())),
        Ok(())
    );
    assert_eq!(
        verdict(both.verify(Some(&signed(T, EVENT_SIG)), EVENT.as_bytes())),
        Ok(())
    );
    // Stripe signs with both secrets during a roll: one header, two v1s.
    let two = header(&format!("t={T},v1={EVENT_SIG_ROLLED},v1={EVENT_SIG}"));
    assert_eq!(verdict(at(T).verify(Some(&two), EVENT.as_bytes())), Ok(()));
}

#[test]
fn the_tolerance_holds_in_both_directions_and_its_edge_is_accepted() {
    let header = signed(T, EVENT_SIG);
    let tolerance = DEFAULT_TOLERANCE.as_secs() as i64;
    let cases = [
        (T, Ok(())),
        (T + tolerance, Ok(())),
        (T - tolerance, Ok(())),
        (
            T + tolerance + 1,
            Err(Refusal::Stale {
                skew: 301,
                in_future: false,
            }),
        ),
        (
            T - tolerance - 1,
            Err(Refusal::Stale {
                skew: 301,
                in_future: true,
            }),
        ),
        (
            T + 86_400,
            Err(Refusal::Stale {
                skew: 86_400,
                in_future: false,
            }),
        ),
    ];
    for (now, expected) in cases {
        assert_eq!(
            verdict(at(now).verify(Some(&header), EVENT.as_bytes())),
            expected,
            "now = {now}"
        );
    }
    // Configurable.
    let strict = at(T + 11).tolerance(Duration::from_secs(10));
    assert_eq!(
        verdict(strict.verify(Some(&header), EVENT.as_bytes())),
        Err(Refusal::Stale {
            skew: 11,
            in_future: false
        })
    );
    let lax = at(T + 86_400).tolerance(Duration::from_secs(86_400));
    assert_eq!(verdict(lax.verify(Some(&header), EVENT.as_bytes())), Ok(()));
}

#[test]
fn verification_is_of_the_raw_bytes_before_any_parsing() {
    // Signed bytes that are no event verify; only `construct_event` refuses them.
    for (body, signature) in [
        (&b"not json"[..], NOT_JSON_SIG),
        (br#"{"id":"evt_1"}"#, NOT_EVENT_SIG),
        (b"", EMPTY_SIG),
    ] {
        let header = signed(T, signature);
        assert_eq!(verdict(at(T).verify(Some(&header), body)), Ok(()));
        let err = at(T).construct_event(Some(&header), body).unwrap_err();
        assert!(err.source().is_some(), "serde_json's error is the source");
        assert_eq!(refusal(err), Refusal::NotJson);
    }
    // The same event with one space more: the same JSON, other bytes, refused.
    let spaced = EVENT.replacen(r#""id":"evt_1Ab""#, r#""id": "evt_1Ab""#, 1);
    assert_eq!(
        Event::from_slice(spaced.as_bytes()).unwrap(),
        Event::from_slice(EVENT.as_bytes()).unwrap()
    );
    assert_eq!(
        verdict(at(T).verify(Some(&signed(T, EVENT_SIG)), spaced.as_bytes())),
        Err(Refusal::NoMatch)
    );
}

// ---------------------------------------------------------------------------------------
// Verification: each refusal, each with a case that passes without it
// ---------------------------------------------------------------------------------------

#[test]
fn no_header_is_refused() {
    assert_eq!(
        verdict(at(T).verify(None, EVENT.as_bytes())),
        Err(Refusal::Missing)
    );
}

#[test]
fn a_malformed_header_is_refused_with_its_reason() {
    use MalformedReason::*;
    let cases = [
        (format!("v1={EVENT_SIG}"), NoTimestamp),
        (format!("t=,v1={EVENT_SIG}"), InvalidTimestamp),
        (format!("t=1700000000.0,v1={EVENT_SIG}"), InvalidTimestamp),
        (format!("t=+1700000000,v1={EVENT_SIG}"), InvalidTimestamp),
        (format!("t={T},t={T},v1={EVENT_SIG}"), RepeatedTimestamp),
        (format!("t={T},v1={EVENT_SIG},"), NotKeyValue),
        (format!("t={T};v1={EVENT_SIG}"), InvalidTimestamp),
        (EVENT_SIG.to_owned(), NotKeyValue),
        (String::new(), NotKeyValue),
        (format!("t={T},v1={EVENT_SIG},v1=xyz"), InvalidHex),
        (format!("t={T},v1={}", &EVENT_SIG[1..]), InvalidHex),
    ];
    for (value, reason) in cases {
        assert_eq!(
            verdict(at(T).verify(Some(&header(&value)), EVENT.as_bytes())),
            Err(Refusal::Malformed(reason)),
            "{value:?}"
        );
    }
    // Bytes that are no UTF-8 are malformed, not a panic.
    let latin1 = HeaderValue::from_bytes(b"t=\xff,v1=00").unwrap();
    assert_eq!(
        verdict(at(T).verify(Some(&latin1), EVENT.as_bytes())),
        Err(Refusal::Malformed(InvalidTimestamp))
    );
}

#[test]
fn a_header_without_v1_is_refused_even_with_the_right_hmac_as_v0() {
    let header = header(&format!("t={T},v0={EVENT_SIG}"));
    assert_eq!(
        verdict(at(T).verify(Some(&header), EVENT.as_bytes())),
        Err(Refusal::NoV1)
    );
}

#[test]
fn a_signature_that_does_not_match_is_refused() {
    let good = signed(T, EVENT_SIG);
    let mut altered = EVENT.as_bytes().to_vec();
    altered[EVENT.find("2000").unwrap()] = b'9';
    let cases: [(&str, Verifier, HeaderValue, &[u8]); 5] = [
        (
            "the wrong secret",
            Verifier::new(ROLLED).clock(|| unix(T)),
            good.clone(),
            EVENT.as_bytes(),
        ),
        ("an altered body", at(T), good.clone(), &altered),
        // The timestamp is signed: moving it breaks the signature.
        (
            "an altered timestamp",
            at(T),
            signed(T + 1, EVENT_SIG),
            EVENT.as_bytes(),
        ),
        // verify_slice wants the whole tag: a prefix of the right one is no match.
        (
            "a truncated signature",
            at(T),
            signed(T, &EVENT_SIG[..32]),
            EVENT.as_bytes(),
        ),
        (
            "an empty signature",
            at(T),
            header(&format!("t={T},v1=")),
            EVENT.as_bytes(),
        ),
    ];
    for (what, verifier, header, body) in cases {
        assert_eq!(
            verdict(verifier.verify(Some(&header), body)),
            Err(Refusal::NoMatch),
            "{what}"
        );
    }
}

#[test]
fn a_forged_and_stale_request_is_refused_as_forged() {
    // The signature is checked first: a timestamp refusal always means Stripe signed it.
    let header = signed(T, EVENT_SIG_ROLLED);
    assert_eq!(
        verdict(at(T + 10_000).verify(Some(&header), EVENT.as_bytes())),
        Err(Refusal::NoMatch)
    );
}

#[test]
fn a_body_over_the_limit_is_refused_before_anything_else() {
    let at_limit = padded_event(DEFAULT_BODY_LIMIT);
    let over = padded_event(DEFAULT_BODY_LIMIT + 1);
    assert_eq!(
        verdict(at(T).verify(Some(&signed(T, AT_LIMIT_SIG)), &at_limit)),
        Ok(())
    );
    assert_eq!(
        verdict(at(T).verify(Some(&signed(T, OVER_LIMIT_SIG)), &over)),
        Err(Refusal::TooLarge(DEFAULT_BODY_LIMIT))
    );
    assert_eq!(
        verdict(at(T).verify(None, &over)),
        Err(Refusal::TooLarge(DEFAULT_BODY_LIMIT))
    );
    // Configurable.
    let small = at(T).body_limit(EVENT.len() - 1);
    assert_eq!(
        verdict(small.verify(Some(&signed(T, EVENT_SIG)), EVENT.as_bytes())),
        Err(Refusal::TooLarge(EVENT.len() - 1))
    );
    let larger = at(T).body_limit(DEFAULT_BODY_LIMIT + 1);
    assert_eq!(
        verdict(larger.verify(Some(&signed(T, OVER_LIMIT_SIG)), &over)),
        Ok(())
    );
}

#[test]
fn each_refusal_says_what_it_is_in_lower_case_with_its_status() {
    let not_json = at(T)
        .construct_event(Some(&signed(T, NOT_JSON_SIG)), b"not json")
        .unwrap_err();
    let cases = [
        (
            WebhookError::MissingHeader,
            400,
            "no Stripe-Signature header".to_owned(),
        ),
        (
            WebhookError::MalformedHeader {
                reason: MalformedReason::NoTimestamp,
            },
            400,
            "malformed Stripe-Signature header: no t= timestamp".to_owned(),
        ),
        (
            WebhookError::NoV1Signature,
            400,
            "Stripe-Signature header has no v1 signature".to_owned(),
        ),
        (
            at(T - 400)
                .verify(Some(&signed(T, EVENT_SIG)), EVENT.as_bytes())
                .unwrap_err(),
            400,
            "webhook timestamp 1700000000 is 400s ahead of now, over the tolerance of 300s"
                .to_owned(),
        ),
        (
            WebhookError::NoSignatureMatched,
            400,
            "no v1 signature matches the body under any configured secret".to_owned(),
        ),
        (
            WebhookError::BodyTooLarge { limit: 65536 },
            413,
            "webhook body is over the limit of 65536 bytes".to_owned(),
        ),
        (
            not_json,
            400,
            "webhook body is not a Stripe event: expected ident at line 1 column 2".to_owned(),
        ),
    ];
    for (error, status, text) in cases {
        assert_eq!(error.status().as_u16(), status, "{error}");
        assert_eq!(error.to_string(), text);
        assert!(!text.ends_with('.'));
    }
}

#[test]
fn debug_shows_the_settings_but_not_the_secrets() {
    let shown = format!(
        "{:?}",
        Verifier::new("whsec_hidden").tolerance(Duration::from_secs(5))
    );
    assert!(!shown.contains("hidden"), "{shown}");
    assert!(shown.contains("tolerance: 5s"), "{shown}");
    let shown = format!("{:?}", WebhookLayer::new(Verifier::new("whsec_hidden")));
    assert!(!shown.contains("hidden"), "{shown}");
}

// ---------------------------------------------------------------------------------------
// Events and stored failures
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_event_types_and_fields_are_kept_and_written_back() {
    let sent = json!({
        "id": "evt_2", "object": "event", "type": "brand_new.thing_happened",
        "created": 1, "livemode": true, "api_version": null, "pending_webhooks": 2,
        "context": "acct_1", "future_field": {"nested": [1, 2.5, "x"]},
        "request": {"id": null, "idempotency_key": "k-9"},
        "data": {"object": {"object": "brand_new_object", "id": "bn_1", "x": true},
                 "previous_attributes": {"x": false}},
    });
    let event = Event::from_slice(sent.to_string().as_bytes()).unwrap();
    assert_eq!(event.event_type, "brand_new.thing_happened");
    assert!(event.livemode);
    assert_eq!(event.api_version, None);
    assert_eq!(event.object_type(), Some("brand_new_object"));
    assert_eq!(event.idempotency_key(), Some("k-9"));
    assert_eq!(event.request_id(), None);
    assert_eq!(event.data.previous_attributes, Some(json!({"x": false})));
    assert_eq!(event.other["future_field"]["nested"][1], 2.5);
    // Nothing is lost: written back, it is what was sent (`api_version: null` aside).
    let mut back = serde_json::to_value(&event).unwrap();
    back["api_version"] = Value::Null;
    assert_eq!(back, sent);
}

#[test]
fn request_may_be_a_plain_id_or_null_as_in_old_api_versions() {
    let with = |request: &str| {
        Event::from_slice(
            format!(r#"{{"id":"evt_3","type":"charge.succeeded","data":{{"object":{{}}}},"request":{request}}}"#)
                .as_bytes(),
        )
        .unwrap()
    };
    let old = with(r#""req_old""#);
    assert_eq!(old.request_id(), Some("req_old"));
    assert_eq!(old.idempotency_key(), None);
    let none = with("null");
    assert_eq!(none.request, None);
    assert_eq!(none.idempotency_key(), None);
}

#[test]
fn the_object_reads_into_a_type_of_yours() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Charge {
        id: String,
        amount: u64,
        currency: String,
    }
    let event = Event::from_slice(EVENT.as_bytes()).unwrap();
    assert_eq!(
        event.object_as::<Charge>().unwrap(),
        Charge {
            id: "ch_1".into(),
            amount: 2000,
            currency: "usd".into()
        }
    );
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Needs {
        refunded_amount: u64,
    }
    assert!(event.object_as::<Needs>().is_err());
}

#[test]
fn stored_failures_read_like_error_bodies_on_each_kind_of_object() {
    let errors = [
        json!({"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
               "message": "Your card has insufficient funds.", "payment_method": {"id": "pm_1"}}),
        json!({"type": "card_error", "code": "card_declined", "decline_code": "fraudulent"}),
        json!({"type": "card_error", "code": "expired_card"}),
        json!({"type": "invalid_request_error", "code": "resource_missing", "param": "customer"}),
        json!({"type": "api_error"}),
        json!({"type": "brand_new_error", "code": 17}),
    ];
    let objects = [
        (
            "payment_intent",
            "last_payment_error",
            "payment_intent.payment_failed",
        ),
        (
            "setup_intent",
            "last_setup_error",
            "setup_intent.setup_failed",
        ),
        (
            "invoice",
            "last_finalization_error",
            "invoice.finalization_failed",
        ),
        ("setup_attempt", "setup_error", "setup_attempt.failed"),
    ];
    for error in &errors {
        let from_body = StripeError::from_body(json!({ "error": error }).to_string().as_bytes())
            .expect("each is a valid error body");
        for (kind, field, event_type) in objects {
            let object = json!({"id": "obj_1", "object": kind, "status": "failed", field: error});
            let event = Event::from_slice(
                json!({"id": "evt_4", "type": event_type, "data": {"object": object}})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
            let stored = event.stored_failure().expect(field);
            assert_eq!(stored, from_body, "{kind}: {error}");
            assert_eq!(stored.category(), from_body.category());
            assert_eq!(stored_failure(&object), Some(stored));
        }
    }
    let declined = StripeError::from_object(&errors[0]).unwrap();
    assert_eq!(declined.error_type, ErrorType::CardError);
    assert_eq!(declined.code, Some(ErrorCode::CardDeclined));
    assert_eq!(declined.category(), Category::CardDeclined);
    assert_eq!(declined.http_status, None);
}

#[test]
fn an_object_without_a_failure_has_none() {
    for object in [
        json!({"object": "payment_intent", "status": "succeeded", "last_payment_error": null}),
        json!({"object": "invoice", "status": "paid"}),
        json!({"object": "charge", "failure_code": "card_declined"}),
        json!("pi_1"),
    ] {
        assert_eq!(stored_failure(&object), None, "{object}");
    }
}

// ---------------------------------------------------------------------------------------
// The endpoint
// ---------------------------------------------------------------------------------------

/// The events a handler was given.
type Handled = Arc<Mutex<Vec<Event>>>;

/// A handler that records each event and succeeds.
fn recorder(
    handled: &Handled,
) -> impl Service<Event, Response = (), Error = Infallible, Future: Send + 'static>
       + Clone
       + Send
       + Sync
       + 'static {
    let handled = handled.clone();
    service_fn(move |event: Event| {
        handled.lock().unwrap().push(event);
        async { Ok::<_, Infallible>(()) }
    })
}

fn post(signature: Option<HeaderValue>, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut request = Request::post("/webhook")
        .body(Full::new(body.into()))
        .unwrap();
    if let Some(signature) = signature {
        request.headers_mut().insert(STRIPE_SIGNATURE, signature);
    }
    request
}

async fn text(response: Response<Full<Bytes>>) -> (StatusCode, String) {
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Posts to a live endpoint with a real hyper-util client.
async fn post_to(addr: SocketAddr, request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (mut head, body) = request.into_parts();
    head.uri = format!("http://{addr}/webhook").parse().unwrap();
    let response = client
        .request(Request::from_parts(head, body))
        .await
        .expect("the endpoint answers");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A good event, a forged one, an oversized one, then the good one again, to a live
/// endpoint that records into `handled`.
async fn deliver_the_four(addr: SocketAddr, handled: &Handled) {
    let (status, body) = post_to(addr, post(Some(signed(T, EVENT_SIG)), EVENT)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "handled"));
    {
        let handled = handled.lock().unwrap();
        assert_eq!(handled.len(), 1);
        assert_eq!(handled[0].id, "evt_1Ab");
        assert_eq!(handled[0].idempotency_key(), Some("order-77"));
    }

    let forged = post(Some(signed(T, EVENT_SIG_ROLLED)), EVENT);
    let (status, body) = post_to(addr, forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, WebhookError::NoSignatureMatched.to_string());

    let oversized = post(
        Some(signed(T, OVER_LIMIT_SIG)),
        padded_event(DEFAULT_BODY_LIMIT + 1),
    );
    let (status, body) = post_to(addr, oversized).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body, "webhook body is over the limit of 65536 bytes");

    let (status, body) = post_to(addr, post(Some(signed(T, EVENT_SIG)), EVENT)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "already handled"));
    assert_eq!(
        handled.lock().unwrap().len(),
        1,
        "refused or redelivered: not handled"
    );
}

#[tokio::test]
async fn the_endpoint_serves_under_a_hyper_server() {
    let handled = Handled::default();
    let endpoint = Webhook::new(at(T + 5), recorder(&handled));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let endpoint = endpoint.clone();
            let svc = hyper::service::service_fn(move |request: Request<Incoming>| {
                endpoint.clone().oneshot(request)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    deliver_the_four(addr, &handled).await;
}

#[tokio::test]
async fn the_endpoint_serves_under_axum() {
    let handled = Handled::default();
    let endpoint = WebhookLayer::new(at(T + 5)).layer(recorder(&handled));
    let app = axum::Router::new().route_service("/webhook", endpoint);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    deliver_the_four(addr, &handled).await;
}

#[tokio::test]
async fn refusals_never_reach_the_handler() {
    let handled = Handled::default();
    let endpoint = Webhook::new(at(T), recorder(&handled));
    let cases = [
        (post(None, EVENT), 400, "no Stripe-Signature header"),
        (
            post(Some(header("t=1,v0=00")), EVENT),
            400,
            "Stripe-Signature header has no v1 signature",
        ),
        (
            post(Some(signed(T, NOT_JSON_SIG)), "not json"),
            400,
            "webhook body is not a Stripe event: expected ident at line 1 column 2",
        ),
        (
            post(Some(signed(T + 1_000, EVENT_SIG)), EVENT),
            400,
            "no v1 signature matches the body under any configured secret",
        ),
    ];
    for (request, status, expected) in cases {
        let (got, body) = text(endpoint.clone().oneshot(request).await.unwrap()).await;
        assert_eq!((got.as_u16(), body.as_str()), (status, expected));
    }
    let stale = Webhook::new(at(T + 301), recorder(&handled));
    let (status, body) = text(
        stale
            .oneshot(post(Some(signed(T, EVENT_SIG)), EVENT))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.starts_with("webhook timestamp 1700000000 is 301s behind now"),
        "{body}"
    );
    assert!(handled.lock().unwrap().is_empty());
}

/// A body that fails when read, and says it is `len` bytes long.
struct Failing {
    len: u64,
}

impl Body for Failing {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other("connection reset"))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_without_reading_and_a_failing_body_is_400() {
    let handled = Handled::default();
    let endpoint = Webhook::new(at(T), recorder(&handled));
    let request = |len| {
        let mut request = Request::post("/webhook").body(Failing { len }).unwrap();
        request
            .headers_mut()
            .insert(STRIPE_SIGNATURE, signed(T, EVENT_SIG));
        request
    };
    // Reading would have failed: a 413 says nothing was read.
    let over = endpoint
        .clone()
        .oneshot(request(DEFAULT_BODY_LIMIT as u64 + 1))
        .await
        .unwrap();
    assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = text(endpoint.oneshot(request(10)).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, "webhook body could not be read: connection reset");
    assert!(handled.lock().unwrap().is_empty());
}

/// A body streamed in chunks of 1 KiB, with no length declared (as with chunked
/// transfer encoding), counting the bytes it gave.
struct Chunked(Bytes, Arc<AtomicUsize>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.0.len().min(1024);
        self.1.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(self.0.split_to(n)))))
    }
}

#[tokio::test]
async fn a_streamed_body_is_cut_off_at_the_limit() {
    let handled = Handled::default();
    let endpoint = Webhook::new(at(T), recorder(&handled));
    let read = Arc::new(AtomicUsize::new(0));
    let request = |body: Vec<u8>, signature| {
        let mut request = Request::post("/webhook")
            .body(Chunked(Bytes::from(body), read.clone()))
            .unwrap();
        request
            .headers_mut()
            .insert(STRIPE_SIGNATURE, signed(T, signature));
        request
    };
    let over = request(padded_event(DEFAULT_BODY_LIMIT + 1), OVER_LIMIT_SIG);
    let answer = endpoint.clone().oneshot(over).await.unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(handled.lock().unwrap().is_empty());
    // A megabyte sent: reading stops at the chunk that crosses the limit.
    let mut huge = padded_event(1 << 20);
    huge[100] = b'b';
    read.store(0, Ordering::SeqCst);
    let answer = endpoint
        .clone()
        .oneshot(request(huge, EVENT_SIG))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(read.load(Ordering::SeqCst), DEFAULT_BODY_LIMIT + 1024);
    let at_limit = request(padded_event(DEFAULT_BODY_LIMIT), AT_LIMIT_SIG);
    let answer = endpoint.oneshot(at_limit).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(handled.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_handler_is_answered_500_and_the_redelivery_is_handled() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let handler = service_fn(move |_event: Event| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err::<(), BoxError>("database down".into())
            } else {
                Ok(())
            }
        }
    });
    let endpoint = Webhook::new(at(T), handler);
    let deliver = || {
        endpoint
            .clone()
            .oneshot(post(Some(signed(T, EVENT_SIG)), EVENT))
    };
    let (status, body) = text(deliver().await.unwrap()).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "handler failed")
    );
    assert_eq!(deliver().await.unwrap().status(), StatusCode::OK);
    assert_eq!(deliver().await.unwrap().status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "failed once, handled once");
}

/// A handler that waits for a permit of `gate` per event, counting calls, and fails the
/// events whose position is in `fail`.
fn gated(
    gate: &Arc<tokio::sync::Semaphore>,
    calls: &Arc<AtomicUsize>,
    fail: &'static [usize],
) -> impl Service<Event, Response = (), Error = BoxError, Future: Send + 'static> + Clone + Send + 'static
{
    let (gate, calls) = (gate.clone(), calls.clone());
    service_fn(move |_event: Event| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let gate = gate.clone();
        async move {
            gate.acquire().await?.forget();
            if fail.contains(&n) {
                return Err::<(), BoxError>("handler failed".into());
            }
            Ok(())
        }
    })
}

#[tokio::test]
async fn a_concurrent_redelivery_waits_for_the_first_and_does_not_call_the_handler_again() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = Webhook::new(at(T), gated(&gate, &calls, &[]));
    let deliver = || {
        tokio_test::task::spawn(
            endpoint
                .clone()
                .oneshot(post(Some(signed(T, EVENT_SIG)), EVENT)),
        )
    };
    let mut first = deliver();
    assert_pending!(first.poll());
    let mut second = deliver();
    assert_pending!(second.poll());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    gate.add_permits(1);
    let first = assert_ready!(first.poll()).unwrap();
    assert!(second.is_woken());
    let second = assert_ready!(second.poll()).unwrap();
    assert_eq!(text(first).await, (StatusCode::OK, "handled".to_owned()));
    assert_eq!(
        text(second).await,
        (StatusCode::OK, "already handled".to_owned())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_concurrent_redelivery_of_an_event_whose_handler_failed_handles_it() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = Webhook::new(at(T), gated(&gate, &calls, &[0]));
    let deliver = || {
        tokio_test::task::spawn(
            endpoint
                .clone()
                .oneshot(post(Some(signed(T, EVENT_SIG)), EVENT)),
        )
    };
    let mut first = deliver();
    assert_pending!(first.poll());
    let mut second = deliver();
    assert_pending!(second.poll());

    gate.add_permits(2);
    let first = assert_ready!(first.poll()).unwrap();
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let second = assert_ready!(second.poll()).unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_abandoned_delivery_frees_its_event_id() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = Webhook::new(at(T), gated(&gate, &calls, &[]));
    let deliver = || {
        tokio_test::task::spawn(
            endpoint
                .clone()
                .oneshot(post(Some(signed(T, EVENT_SIG)), EVENT)),
        )
    };
    let mut first = deliver();
    assert_pending!(first.poll());
    let mut second = deliver();
    assert_pending!(second.poll());
    // Stripe hung up on the first: its handler is dropped mid-way.
    drop(first);
    assert!(second.is_woken());
    assert_pending!(second.poll(), "the second now runs the handler itself");
    gate.add_permits(1);
    let second = assert_ready!(second.poll()).unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn only_the_last_remembered_event_ids_are_answered_without_the_handler() {
    let handled = Handled::default();
    let endpoint = WebhookLayer::new(at(T))
        .remember(1)
        .layer(recorder(&handled));
    let event = |id: &str| {
        let body = EVENT.replace("evt_1Ab", id);
        let signature = sign_hex(SECRET, b"1700000000", body.as_bytes());
        post(Some(signed(T, &signature)), body)
    };
    for id in ["evt_a", "evt_b", "evt_b", "evt_a"] {
        let answer = endpoint.clone().oneshot(event(id)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }
    let ids: Vec<String> = handled
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(
        ids,
        ["evt_a", "evt_b", "evt_a"],
        "evt_a was forgotten, evt_b was not"
    );
}

// ---------------------------------------------------------------------------------------
// Fuzz: the header parser and `verify` on arbitrary and near-valid bytes
// ---------------------------------------------------------------------------------------

/// Cases per target unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    common::proptest_config(CASES)
}

/// The clock of the fuzz targets: 100 s after the pinned timestamp.
const NOW: i64 = T + 100;

/// The verifier's documented contract, written from the header's grammar: the body within
/// the limit; items `key=value` separated by commas (spaces around ignored); exactly one
/// `t` of decimal seconds (an optional `-`) within an `i64`; every `v1` hexadecimal, and at
/// least one; one `v1` the HMAC of `"{t as sent}.{body}"` under `SECRET`; `t` within 300 s
/// of `NOW`.
fn oracle(header: Option<&[u8]>, body: &[u8]) -> Result<(), Refusal> {
    use MalformedReason::*;
    if body.len() > DEFAULT_BODY_LIMIT {
        return Err(Refusal::TooLarge(DEFAULT_BODY_LIMIT));
    }
    let header = header.ok_or(Refusal::Missing)?;
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(|&b| b == b',') {
        let Some(eq) = item.iter().position(|&b| b == b'=') else {
            return Err(Refusal::Malformed(NotKeyValue));
        };
        let (key, value) = (item[..eq].trim_ascii(), item[eq + 1..].trim_ascii());
        if key == b"t" {
            if timestamp.is_some() {
                return Err(Refusal::Malformed(RepeatedTimestamp));
            }
            let seconds = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.starts_with('+'))
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or(Refusal::Malformed(InvalidTimestamp))?;
            timestamp = Some((seconds, value));
        } else if key == b"v1" {
            if value.len() % 2 == 1 || !value.iter().all(u8::is_ascii_hexdigit) {
                return Err(Refusal::Malformed(InvalidHex));
            }
            v1.push(value.to_ascii_lowercase());
        }
    }
    let (seconds, sent) = timestamp.ok_or(Refusal::Malformed(NoTimestamp))?;
    if v1.is_empty() {
        return Err(Refusal::NoV1);
    }
    let expected = sign_hex(SECRET, sent, body);
    if !v1.iter().any(|s| s == expected.as_bytes()) {
        return Err(Refusal::NoMatch);
    }
    let gap = i128::from(seconds) - i128::from(NOW);
    if gap.unsigned_abs() > 300 {
        return Err(Refusal::Stale {
            skew: u64::try_from(gap.unsigned_abs()).unwrap_or(u64::MAX),
            in_future: gap > 0,
        });
    }
    Ok(())
}

fn check(header: &[u8], body: &[u8]) -> Result<(), TestCaseError> {
    // Bytes `http` refuses in a header value never reach an endpoint.
    let Ok(value) = HeaderValue::from_bytes(header) else {
        return Ok(());
    };
    let got = verdict(at(NOW).verify(Some(&value), body));
    prop_assert_eq!(got, oracle(Some(header), body), "header {:?}", value);
    Ok(())
}

/// Near-valid headers, shuffled: usually one `t` and a few `v1`s, with timestamps and
/// signatures that match `EVENT` (fresh and stale), others that do not, near-miss keys,
/// and now and then junk.
fn near_valid_header() -> impl Strategy<Value = String> {
    use prop::collection::vec;
    use prop::sample::select;
    let timestamps = vec!["1700000000", "1699999000", "1700000399", "1700000401", "-1"];
    let bad_timestamps = vec![
        "+1700000000",
        "99999999999999999999",
        "1700000000.5",
        "",
        "x",
    ];
    // The right signatures three times over, so that a header often carries its own.
    let mut signatures: Vec<String> = timestamps
        .iter()
        .cycle()
        .take(3 * timestamps.len())
        .map(|t| sign_hex(SECRET, t.as_bytes(), EVENT.as_bytes()))
        .collect();
    signatures.extend(
        [
            EVENT_SIG_ROLLED,
            &EVENT_SIG[..62],
            &EVENT_SIG[..63],
            "",
            "zz",
            "1700000000",
        ]
        .map(str::to_owned),
    );
    signatures.push(EVENT_SIG.to_ascii_uppercase());
    let t_keys = vec!["t", "t", "t", "t", "t", "t", " t ", "T", "tt"];
    let v1_keys = vec!["v1", "v1", "v1", "v1", "v1", " v1", "V1", "v0", "v2"];
    let t_item = prop_oneof![
        8 => (select(t_keys), select(timestamps)).prop_map(|(k, t)| format!("{k}={t}")),
        1 => select(bad_timestamps).prop_map(|t| format!("t={t}")),
    ];
    let v1_item = (select(v1_keys), select(signatures)).prop_map(|(k, s)| format!("{k}={s}"));
    let junk = prop_oneof![Just("junk".to_owned()), Just(String::new()), "[ -~]{0,12}"];
    let ts = prop_oneof![
        1 => Just(Vec::new()),
        6 => t_item.clone().prop_map(|t| vec![t]),
        1 => vec(t_item, 2..4),
    ];
    let junk = prop_oneof![6 => Just(Vec::new()), 1 => vec(junk, 1..3)];
    (ts, vec(v1_item, 1..4), junk)
        .prop_map(|(mut items, v1, junk)| {
            items.extend(v1);
            items.extend(junk);
            items
        })
        .prop_shuffle()
        .prop_map(|items| items.join(","))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_header_parser_on_arbitrary_bytes(
        header in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        check(&header, EVENT.as_bytes())?;
    }

    #[test]
    fn fuzz_header_parser_on_near_valid_headers(header in near_valid_header()) {
        check(header.as_bytes(), EVENT.as_bytes())?;
    }

    #[test]
    fn fuzz_verify_on_arbitrary_bodies_and_headers(
        header in prop::collection::vec(any::<u8>(), 0..96),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check(&header, &body)?;
        prop_assert_eq!(verdict(at(NOW).verify(None, &body)), Err(Refusal::Missing));
    }

    #[test]
    fn fuzz_signed_arbitrary_bodies_verify_and_any_change_is_refused(
        body in prop::collection::vec(any::<u8>(), 1..512),
        offset in -400i64..400,
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        far in any::<i64>(),
    ) {
        let t = NOW + offset;
        let signature = sign_hex(SECRET, t.to_string().as_bytes(), &body);
        let header = signed(t, &signature);
        let expected = if offset.abs() <= 300 {
            Ok(())
        } else {
            Err(Refusal::Stale { skew: offset.unsigned_abs(), in_future: offset > 0 })
        };
        prop_assert_eq!(verdict(at(NOW).verify(Some(&header), &body)), expected);

        let mut changed = body.clone();
        changed[flip.index(body.len())] ^= 1 << bit;
        prop_assert_eq!(verdict(at(NOW).verify(Some(&header), &changed)), Err(Refusal::NoMatch));

        // Any timestamp, however far, is a refusal with its skew, never an overflow.
        let signature = sign_hex(SECRET, far.to_string().as_bytes(), &body);
        check(format!("t={far},v1={signature}").as_bytes(), &body)?;

        // Parsing comes after: a signed body is an event exactly when it parses as one.
        let now = at(t);
        let result = now.construct_event(Some(&header), &body);
        prop_assert_eq!(result.is_ok(), Event::from_slice(&body).is_ok());
        if let Err(e) = result {
            prop_assert_eq!(refusal(e), Refusal::NotJson);
        }
    }
}
