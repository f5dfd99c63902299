//! The event envelope Stripe posts to a webhook endpoint, and the failures stored on the
//! objects it carries.

use crate::stripe::StripeError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One Stripe event: what happened (`type`), to which object (`data.object`), and which
/// API request caused it (`request`).
///
/// Read leniently, as Stripe grows: an event type this crate has never heard of is kept
/// verbatim in [`event_type`](Self::event_type), and fields it does not name are kept in
/// [`other`](Self::other), never rejected. Only `id`, `type` and `data.object` are
/// required; the envelope's other fields default when absent.
///
/// Get one from a verified body with
/// [`Verifier::construct_event`](super::Verifier::construct_event) (or, in a
/// [`Webhook`](super::Webhook) endpoint, as the handler's request); [`Event::from_slice`]
/// parses without verifying, for events read back from storage or built in tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// `id`: the event's id (`evt_...`), the same on every redelivery of it.
    pub id: String,
    /// `type`: what happened, such as `payment_intent.payment_failed`, kept verbatim.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `created`: when the event happened, in Unix seconds (0 when absent).
    #[serde(default)]
    pub created: i64,
    /// `livemode`: `true` for live data, `false` for test mode (false when absent).
    #[serde(default)]
    pub livemode: bool,
    /// `api_version`: the API version `data.object` is rendered in (absent or `null` for
    /// some events).
    #[serde(default)]
    pub api_version: Option<String>,
    /// `data`: the object the event is about, and what changed in it.
    pub data: EventData,
    /// `request`: the API request that caused the event, when one did (`None` for events
    /// Stripe raised by itself, such as a subscription renewal).
    #[serde(
        default,
        deserialize_with = "event_request",
        skip_serializing_if = "Option::is_none"
    )]
    pub request: Option<EventRequest>,
    /// Every other field of the envelope (`object`, `pending_webhooks`, `account`, ...),
    /// kept as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The `data` of an [`Event`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventData {
    /// `data.object`: the object the event is about (a PaymentIntent, a Charge, ...), as
    /// raw JSON, whatever its type; [`Event::object_as`] reads it into a type of yours.
    pub object: Value,
    /// `data.previous_attributes`: for `*.updated` events, the values the changed fields
    /// had before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_attributes: Option<Value>,
}

/// The `request` of an [`Event`]: the API request that caused it, which ties the event to
/// a call of yours.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventRequest {
    /// `request.id`: the `Request-Id` of the request (`req_...`); `None` when the change
    /// was made in the Dashboard.
    pub id: Option<String>,
    /// `request.idempotency_key`: the `Idempotency-Key` the request was sent with, the
    /// same key an indeterminate call reports.
    pub idempotency_key: Option<String>,
}

impl Event {
    /// Parses an event without verifying it: for events read back from storage, or built
    /// in tests. An endpoint must use
    /// [`Verifier::construct_event`](super::Verifier::construct_event) instead.
    pub fn from_slice(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// `data.object.object`: the type of the object the event is about
    /// (`"payment_intent"`, `"charge"`, ...).
    pub fn object_type(&self) -> Option<&str> {
        self.data.object.get("object")?.as_str()
    }

    /// `data.object.id`: the id of the object the event is about.
    pub fn object_id(&self) -> Option<&str> {
        self.data.object.get("id")?.as_str()
    }

    /// `request.id`: the `Request-Id` of the API request that caused the event.
    pub fn request_id(&self) -> Option<&str> {
        self.request.as_ref()?.id.as_deref()
    }

    /// `request.idempotency_key`: the `Idempotency-Key` of the API request that caused the
    /// event.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.request.as_ref()?.idempotency_key.as_deref()
    }

    /// The failure stored on `data.object`, if it is an object that stores one and the
    /// failure is set: see [`stored_failure`](super::stored_failure).
    pub fn stored_failure(&self) -> Option<StripeError> {
        stored_failure(&self.data.object)
    }

    /// Reads `data.object` into a type of yours (a struct with the fields you need).
    pub fn object_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data.object)
    }
}

/// The field in which each kind of Stripe object stores the error of its last failure.
const STORED_FAILURES: [(&str, &str); 4] = [
    ("payment_intent", "last_payment_error"),
    ("setup_intent", "last_setup_error"),
    ("invoice", "last_finalization_error"),
    ("setup_attempt", "setup_error"),
];

/// The error stored on a Stripe object, read as a [`StripeError`] with the same type and
/// [`Category`](crate::stripe::Category) as an error body:
///
/// | object (`"object"`) | field |
/// |---|---|
/// | `payment_intent` | `last_payment_error` |
/// | `setup_intent` | `last_setup_error` |
/// | `invoice` | `last_finalization_error` |
/// | `setup_attempt` | `setup_error` |
///
/// `None` when the field is `null` or absent (no failure), or the object is of another
/// kind. An object without an `"object"` field (a partial one, as some tests build) is
/// looked up in each of the four fields in turn. The error came in no response: its
/// `http_status` and `request_id` are `None`.
///
/// ```
/// use resilient_http::stripe::webhook::stored_failure;
/// use resilient_http::stripe::{Category, ErrorType};
///
/// let setup_intent = serde_json::json!({
///     "id": "seti_1", "object": "setup_intent", "status": "requires_payment_method",
///     "last_setup_error": {"type": "card_error", "code": "expired_card"},
/// });
/// let err = stored_failure(&setup_intent).unwrap();
/// assert_eq!(err.error_type, ErrorType::CardError);
/// assert_eq!(err.category(), Category::CardOther);
/// ```
pub fn stored_failure(object: &Value) -> Option<StripeError> {
    match object.get("object").and_then(Value::as_str) {
        Some(kind) => {
            let (_, field) = STORED_FAILURES.iter().find(|(k, _)| *k == kind)?;
            StripeError::from_object(object.get(field)?)
        }
        None => STORED_FAILURES
            .iter()
            .find_map(|(_, field)| StripeError::from_object(object.get(field)?)),
    }
}

/// Reads `request` in each of the shapes Stripe has sent: an object with `id` and
/// `idempotency_key` (today), a plain request id (API versions before 2017-05-25), or
/// `null`. A field of an unexpected JSON type is read as absent.
fn event_request<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EventRequest>, D::Error> {
    let string = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    Ok(match Value::deserialize(d)? {
        Value::String(id) => Some(EventRequest {
            id: Some(id),
            idempotency_key: None,
        }),
        Value::Object(fields) => Some(EventRequest {
            id: string(fields.get("id")),
            idempotency_key: string(fields.get("idempotency_key")),
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::{Category, ErrorCode, ErrorType};
    use serde_json::json;

    fn event(request: &str) -> Event {
        let body = format!(
            r#"{{"id":"evt_1","type":"charge.succeeded","data":{{"object":{{"id":"ch_1","object":"charge"}}}},"request":{request}}}"#
        );
        Event::from_slice(body.as_bytes()).unwrap()
    }

    #[test]
    fn request_is_read_in_every_shape_stripe_has_sent() {
        let cases = [
            (
                r#"{"id":"req_1","idempotency_key":"k1"}"#,
                Some((Some("req_1"), Some("k1"))),
            ),
            (r#"{"id":null,"idempotency_key":null}"#, Some((None, None))),
            (r#"{"id":7,"idempotency_key":["k"]}"#, Some((None, None))),
            (r#""req_old""#, Some((Some("req_old"), None))),
            ("null", None),
            ("42", None),
        ];
        for (request, expected) in cases {
            let e = event(request);
            let got = e
                .request
                .as_ref()
                .map(|r| (r.id.as_deref(), r.idempotency_key.as_deref()));
            assert_eq!(got, expected, "{request}");
        }
        let absent = br#"{"id":"evt_1","type":"x","data":{"object":{}}}"#;
        assert_eq!(Event::from_slice(absent).unwrap().request, None);
    }

    #[test]
    fn only_id_type_and_data_object_are_required() {
        for body in [
            r#"{"type":"x","data":{"object":{}}}"#,
            r#"{"id":"evt_1","data":{"object":{}}}"#,
            r#"{"id":"evt_1","type":"x"}"#,
            r#"{"id":"evt_1","type":"x","data":{}}"#,
            r#"{"id":"evt_1","type":"x","data":{"object":{}},"created":"yesterday"}"#,
            r#"[]"#,
        ] {
            assert!(Event::from_slice(body.as_bytes()).is_err(), "{body}");
        }
        let e = Event::from_slice(br#"{"id":"evt_1","type":"x","data":{"object":null}}"#).unwrap();
        assert_eq!((e.created, e.livemode, e.api_version), (0, false, None));
    }

    #[test]
    fn stored_failures_are_read_from_each_kind_of_object() {
        let failure = json!({"type": "card_error", "code": "card_declined", "decline_code": "generic_decline"});
        for (kind, field) in STORED_FAILURES {
            let object = json!({"object": kind, field: failure.clone()});
            let err = stored_failure(&object).unwrap_or_else(|| panic!("{kind}"));
            assert_eq!(err.error_type, ErrorType::CardError);
            assert_eq!(err.code, Some(ErrorCode::CardDeclined));
            assert_eq!(err.category(), Category::CardDeclined);
            assert_eq!((err.http_status, err.request_id), (None, None));
            // Without "object", the field is still found.
            let partial = json!({ field: failure.clone() });
            assert!(stored_failure(&partial).is_some(), "{kind} without object");
        }
    }

    #[test]
    fn no_stored_failure_where_there_is_none() {
        for object in [
            json!({"object": "payment_intent", "last_payment_error": null}),
            json!({"object": "payment_intent"}),
            json!({"object": "payment_intent", "last_payment_error": "card_error"}),
            json!({"object": "payment_intent", "last_payment_error": {"code": "card_declined"}}),
            // The field of another kind of object is not this object's failure.
            json!({"object": "payment_intent", "last_setup_error": {"type": "card_error"}}),
            json!({"object": "charge", "last_payment_error": {"type": "card_error"}}),
            json!(null),
            json!([{"type": "card_error"}]),
        ] {
            assert_eq!(stored_failure(&object), None, "{object}");
        }
    }
}
