//! The Stripe error-body parser and the classifier on arbitrary bytes: no panic, and a
//! body that is not a Stripe error classifies exactly as no body at all.
#![no_main]

use http::{Method, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use resilient_http::classify::Classify;
use resilient_http::stripe::{StripeClassifier, StripeError};
use resilient_http::{Classification, Outcome};

/// A classification's whole verdict, detail aside: `Classification` is not comparable.
fn verdict(c: &Classification) -> impl PartialEq + std::fmt::Debug {
    (
        c.class(),
        c.outcome(),
        c.should_retry(),
        c.server_refused_retry(),
        c.settles_earlier(),
    )
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the status and the method; the rest is the body.
    let (status, method, body) = match data {
        [a, b, rest @ ..] => (400 + u16::from(*a) % 200, *b, rest),
        _ => (500, 0, data),
    };
    let parsed = StripeError::from_body(body);
    if let Some(e) = &parsed {
        let _ = (e.to_string(), e.category());
    }
    let method = if method % 2 == 0 {
        Method::POST
    } else {
        Method::GET
    };
    let (request, ()) = Request::builder()
        .method(method)
        .uri("/v1/charges")
        .body(())
        .unwrap()
        .into_parts();
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let (response, ()) = response.into_parts();
    let with_body = StripeClassifier.classify_response((&request).into(), &response, Some(body));
    let without = StripeClassifier.classify_response((&request).into(), &response, None);
    if with_body.outcome() == Outcome::DefiniteFailure {
        assert!(!with_body.should_retry());
    }
    if parsed.is_none() {
        assert_eq!(verdict(&with_body), verdict(&without));
        assert!(with_body.detail().is_none());
    }
});
