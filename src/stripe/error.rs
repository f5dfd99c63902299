//! Stripe's error model: the `{"error": {...}}` body of every non-2xx response.
//!
//! [`StripeError::from_body`] parses it with serde_json ([`StripeError::from_response`]
//! also keeps the HTTP status, which decides the category of a 401 or 403). It is lenient where Stripe may
//! grow: an unknown `type` or `code` is kept verbatim (`Other`), a field of an unexpected
//! JSON type is read as absent, and extra fields are ignored. A body that is not a Stripe
//! error at all (HTML from a proxy, truncated JSON, nothing) parses to `None`, and the
//! classifier falls back to the HTTP status.
//!
//! The categories of Stripe's error-handling guide are each one [`Category`]:
//!
//! ```
//! use resilient_http::stripe::{Category, ErrorCode, ErrorType, StripeError};
//!
//! let body = br#"{"error": {"type": "card_error", "code": "card_declined",
//!     "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}}"#;
//! let err = StripeError::from_body(body).unwrap();
//! assert_eq!(err.error_type, ErrorType::CardError);
//! assert_eq!(err.code, Some(ErrorCode::CardDeclined));
//! assert_eq!(err.decline_code.as_deref(), Some("insufficient_funds"));
//! assert_eq!(err.category(), Category::CardDeclined);
//!
//! // Unknown strings are kept, never rejected.
//! let body = br#"{"error": {"type": "brand_new_error", "code": "brand_new_code"}}"#;
//! let err = StripeError::from_body(body).unwrap();
//! assert_eq!(err.error_type.as_str(), "brand_new_error");
//! assert_eq!(err.category(), Category::Unknown);
//!
//! assert!(StripeError::from_body(b"<html>502 Bad Gateway</html>").is_none());
//! ```

use crate::headers::RequestId;
use http::StatusCode;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// The error object of a Stripe error response, with the attempt's `Request-Id`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StripeError {
    /// `type`: the family of the error.
    pub error_type: ErrorType,
    /// `code`: the specific error, for the families that have one.
    pub code: Option<ErrorCode>,
    /// `decline_code`: the card issuer's reason for a decline, verbatim.
    pub decline_code: Option<String>,
    /// `message`: a human-readable explanation, safe to show to an operator.
    pub message: Option<String>,
    /// `param`: the request parameter the error is about.
    pub param: Option<String>,
    /// `doc_url`: a link to the documentation of the code.
    pub doc_url: Option<String>,
    /// `request_log_url`: a link to the request's log in the Stripe Dashboard.
    pub request_log_url: Option<String>,
    /// The `Request-Id` response header of the attempt that got this error.
    pub request_id: Option<RequestId>,
    /// The HTTP status of the response that carried it, when it came in one (an error
    /// stored on an object has none).
    pub http_status: Option<StatusCode>,
}

impl StripeError {
    /// Parses a Stripe error body; `None` when it is not one (not JSON, no `error` object,
    /// or no string `type`).
    pub fn from_body(body: &[u8]) -> Option<Self> {
        // serde reads a struct from a JSON array too (by position); Stripe's envelope is
        // always an object, so anything else is not a Stripe error.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return None;
        }
        // JSON is UTF-8 throughout: serde skips the fields it ignores without checking
        // them, so a body that is not UTF-8 somewhere else would otherwise pass.
        let text = std::str::from_utf8(body).ok()?;
        let envelope: Envelope = serde_json::from_str(text).ok()?;
        Self::from_raw(envelope.error?)
    }

    /// Reads an error object stored on a Stripe object (`last_payment_error` of a
    /// PaymentIntent, `last_setup_error` of a SetupIntent, `last_finalization_error` of an
    /// Invoice, `setup_error` of a SetupAttempt): the same shape as the `error` of an error
    /// body, read with the same leniency and the same [`category`](Self::category). `None`
    /// when `object` is not a JSON object with a string `type` (Stripe stores `null` when
    /// there was no failure). It came in no response: `http_status` and `request_id` are
    /// `None`.
    ///
    /// ```
    /// use resilient_http::stripe::{Category, StripeError};
    ///
    /// let stored = serde_json::json!({"type": "card_error", "code": "card_declined",
    ///     "decline_code": "fraudulent", "payment_method": {"id": "pm_1"}});
    /// let err = StripeError::from_object(&stored).unwrap();
    /// assert_eq!(err.category(), Category::CardBlocked);
    /// assert!(StripeError::from_object(&serde_json::Value::Null).is_none());
    /// ```
    pub fn from_object(object: &serde_json::Value) -> Option<Self> {
        if !object.is_object() {
            return None;
        }
        Self::from_raw(RawError::deserialize(object).ok()?)
    }

    fn from_raw(raw: RawError) -> Option<Self> {
        Some(StripeError {
            error_type: ErrorType::from(raw.error_type?),
            code: raw.code.map(ErrorCode::from),
            decline_code: raw.decline_code,
            message: raw.message,
            param: raw.param,
            doc_url: raw.doc_url,
            request_log_url: raw.request_log_url,
            request_id: None,
            http_status: None,
        })
    }

    /// Parses the error body of a response with `status`, keeping the status and the
    /// response's `Request-Id` with it. `None` when the body is not a Stripe error.
    pub fn from_response(response: &http::response::Parts, body: &[u8]) -> Option<Self> {
        let mut error = Self::from_body(body)?;
        error.http_status = Some(response.status);
        error.request_id = RequestId::from_headers(&response.headers);
        Some(error)
    }

    /// Sets the request id (read from the response's headers, not its body).
    pub fn with_request_id(mut self, request_id: Option<RequestId>) -> Self {
        self.request_id = request_id;
        self
    }

    /// Which category of Stripe's error-handling guide this error is in. An
    /// `invalid_request_error` that came with a 401 or 403 is
    /// [`Category::Authentication`], as the classifier classes that attempt.
    pub fn category(&self) -> Category {
        match &self.error_type {
            ErrorType::CardError => {
                let blocked = matches!(
                    self.decline_code.as_deref(),
                    Some("fraudulent" | "merchant_blacklist")
                );
                if blocked {
                    Category::CardBlocked
                } else if self.code == Some(ErrorCode::CardDeclined) {
                    Category::CardDeclined
                } else {
                    Category::CardOther
                }
            }
            ErrorType::InvalidRequestError => match &self.code {
                Some(ErrorCode::RateLimit | ErrorCode::LockTimeout) => Category::RateLimited,
                Some(ErrorCode::SecretKeyRequired) => Category::Authentication,
                _ if matches!(self.http_status.map(|s| s.as_u16()), Some(401 | 403)) => {
                    Category::Authentication
                }
                _ => Category::InvalidRequest,
            },
            ErrorType::ApiError => Category::Api,
            ErrorType::IdempotencyError => Category::Idempotency,
            ErrorType::Other(_) => match &self.code {
                Some(ErrorCode::RateLimit | ErrorCode::LockTimeout) => Category::RateLimited,
                _ => Category::Unknown,
            },
        }
    }
}

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error_type.as_str())?;
        if let Some(code) = &self.code {
            write!(f, "/{code}")?;
        }
        if let Some(decline) = &self.decline_code {
            write!(f, " ({decline})")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for StripeError {}

/// The categories of Stripe's error-handling guide, each with its own right response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Category {
    /// `card_error` blocked for suspected fraud (Radar): `decline_code` `fraudulent` or
    /// `merchant_blacklist`. Ask for another payment method.
    CardBlocked,
    /// `card_error` `card_declined` by the issuer: see `decline_code`.
    CardDeclined,
    /// Any other `card_error` (expired card, wrong CVC, processing error, ...).
    CardOther,
    /// `rate_limit` or `lock_timeout`: too many requests; retried with backoff.
    RateLimited,
    /// `secret_key_required`, or an `invalid_request_error` answered with 401/403: the API
    /// key is missing, wrong or not allowed.
    Authentication,
    /// Any other `invalid_request_error`: bad parameters or state; fix the request.
    InvalidRequest,
    /// `api_error`: a problem on Stripe's side; the outcome is indeterminate.
    Api,
    /// `idempotency_error`: a key was reused with other parameters, a bug in the caller.
    Idempotency,
    /// A `type` this crate does not know.
    Unknown,
}

macro_rules! verbatim_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this crate does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// The value as Stripe spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($text => Self::$variant,)*
                    _ => Self::Other(s),
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::from(s.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

verbatim_enum! {
    /// The `type` of a Stripe error.
    ErrorType {
        /// `api_error`: something went wrong on Stripe's side.
        ApiError = "api_error",
        /// `card_error`: the payment failed (for historical reasons, any payment method).
        CardError = "card_error",
        /// `idempotency_error`: a key was reused with different parameters.
        IdempotencyError = "idempotency_error",
        /// `invalid_request_error`: the request was invalid, rate limited or unauthenticated.
        InvalidRequestError = "invalid_request_error",
    }
}

verbatim_enum! {
    /// The `code` of a Stripe error: the ones that change what a client should do are
    /// named; all others are kept verbatim.
    ErrorCode {
        /// `rate_limit`: too many requests; retry with backoff.
        RateLimit = "rate_limit",
        /// `lock_timeout`: another request holds the object's lock; retry with backoff.
        LockTimeout = "lock_timeout",
        /// `secret_key_required`: authentication failed.
        SecretKeyRequired = "secret_key_required",
        /// `idempotency_key_in_use`: another request with the same key is in flight.
        IdempotencyKeyInUse = "idempotency_key_in_use",
        /// `card_declined`: the issuer declined the payment.
        CardDeclined = "card_declined",
        /// `expired_card`: the card has expired.
        ExpiredCard = "expired_card",
        /// `incorrect_cvc`: the CVC is wrong.
        IncorrectCvc = "incorrect_cvc",
        /// `processing_error`: an error occurred while processing the card.
        ProcessingError = "processing_error",
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default, deserialize_with = "lenient_object")]
    error: Option<RawError>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(rename = "type", default, deserialize_with = "lenient_string")]
    error_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    code: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    decline_code: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    message: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    param: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    doc_url: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    request_log_url: Option<String>,
}

/// Reads a field as a string if it is one, and as absent if it is any other JSON value.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// Reads the error object if it is a JSON object, and as absent if it is any other value
/// (an array would otherwise be read by position).
fn lenient_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawError>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        value @ serde_json::Value::Object(_) => serde_json::from_value(value).ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Option<StripeError> {
        StripeError::from_body(body.as_bytes())
    }

    #[test]
    fn a_body_that_is_not_utf8_outside_the_error_is_not_json() {
        // Found by the fuzz test: bytes not UTF-8 in a field the parser skips.
        let mut body = br#"{"code":"x","error":{"type":"api_error"}}"#.to_vec();
        assert!(StripeError::from_body(&body).is_some());
        body[9] = 0xff;
        assert!(StripeError::from_body(&body).is_none());
    }

    #[test]
    fn every_field_is_read() {
        let e = parse(
            r#"{"error":{"type":"invalid_request_error","code":"parameter_missing",
            "message":"Missing required param: currency.","param":"currency",
            "doc_url":"https://stripe.com/docs/error-codes/parameter-missing",
            "request_log_url":"https://dashboard.stripe.com/logs/req_1","extra":{"x":1}}}"#,
        )
        .unwrap();
        assert_eq!(e.error_type, ErrorType::InvalidRequestError);
        assert_eq!(e.code, Some(ErrorCode::Other("parameter_missing".into())));
        assert_eq!(e.param.as_deref(), Some("currency"));
        assert_eq!(
            e.doc_url.as_deref(),
            Some("https://stripe.com/docs/error-codes/parameter-missing")
        );
        assert_eq!(
            e.request_log_url.as_deref(),
            Some("https://dashboard.stripe.com/logs/req_1")
        );
        assert_eq!(e.category(), Category::InvalidRequest);
    }

    #[test]
    fn the_guides_categories_are_each_reachable() {
        let cases = [
            (
                r#"{"type":"card_error","code":"card_declined","decline_code":"fraudulent"}"#,
                Category::CardBlocked,
            ),
            (
                r#"{"type":"card_error","code":"card_declined","decline_code":"generic_decline"}"#,
                Category::CardDeclined,
            ),
            (
                r#"{"type":"card_error","code":"expired_card"}"#,
                Category::CardOther,
            ),
            (
                r#"{"type":"invalid_request_error","code":"rate_limit"}"#,
                Category::RateLimited,
            ),
            (
                r#"{"type":"invalid_request_error","code":"lock_timeout"}"#,
                Category::RateLimited,
            ),
            (
                r#"{"type":"invalid_request_error","code":"secret_key_required"}"#,
                Category::Authentication,
            ),
            (
                r#"{"type":"invalid_request_error","code":"resource_missing"}"#,
                Category::InvalidRequest,
            ),
            (r#"{"type":"api_error"}"#, Category::Api),
            (r#"{"type":"idempotency_error"}"#, Category::Idempotency),
            (r#"{"type":"whatever"}"#, Category::Unknown),
        ];
        for (inner, category) in cases {
            let e = parse(&format!(r#"{{"error":{inner}}}"#)).unwrap();
            assert_eq!(e.category(), category, "{inner}");
        }
    }

    #[test]
    fn non_stripe_bodies_are_none() {
        for body in [
            "",
            "not json",
            "{",
            "[]",
            "null",
            r#"{"error":"boom"}"#,
            r#"{"error":{"code":"rate_limit"}}"#,
            r#"{"error":{"type":7}}"#,
            r#"{"message":"x"}"#,
        ] {
            assert!(parse(body).is_none(), "{body:?}");
        }
    }

    #[test]
    fn fields_of_the_wrong_json_type_are_absent() {
        let e = parse(r#"{"error":{"type":"api_error","code":42,"message":null,"param":["a"]}}"#)
            .unwrap();
        assert_eq!(e.error_type, ErrorType::ApiError);
        assert_eq!(e.code, None);
        assert_eq!(e.message, None);
        assert_eq!(e.param, None);
    }

    #[test]
    fn a_401_is_authentication_in_the_category_as_in_the_classifier() {
        let (head, _) = http::Response::builder()
            .status(401)
            .body(())
            .unwrap()
            .into_parts();
        let body =
            br#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided"}}"#;
        let e = StripeError::from_response(&head, body).unwrap();
        assert_eq!(e.category(), Category::Authentication);
        assert_eq!(
            StripeError::from_body(body).unwrap().category(),
            Category::InvalidRequest
        );
    }

    #[test]
    fn display_is_compact() {
        let e = parse(r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#).unwrap();
        assert_eq!(
            e.to_string(),
            "card_error/card_declined (insufficient_funds): Your card has insufficient funds."
        );
    }
}
