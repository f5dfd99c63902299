//! [`Settlement`]: what became of a call, and the pure rules that read it from a replay's
//! answer or from an event.

use crate::stripe::webhook::Event;
use crate::stripe::StripeError;
use http::StatusCode;
use serde_json::{json, Value};

/// What became of a call that had ended indeterminate.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Settlement {
    /// The request ran: Stripe did the work.
    Succeeded {
        /// What told us.
        by: SettledBy,
        /// The object the request made or changed, when known: the event's
        /// `data.object`, or the replay's JSON answer.
        object: Option<Value>,
    },
    /// The request ran and failed (a declined card, an invalid request): the work was not
    /// done.
    Failed {
        /// What told us.
        by: SettledBy,
        /// Stripe's error: the failure stored on the event's object, or the replay's
        /// error body.
        error: Option<StripeError>,
    },
}

impl Settlement {
    /// Whether the work was done.
    pub fn is_succeeded(&self) -> bool {
        matches!(self, Settlement::Succeeded { .. })
    }

    /// Whether the request failed, and the work was not done.
    pub fn is_failed(&self) -> bool {
        matches!(self, Settlement::Failed { .. })
    }

    /// What settled the call: an event or a replay.
    pub fn by(&self) -> &SettledBy {
        match self {
            Settlement::Succeeded { by, .. } | Settlement::Failed { by, .. } => by,
        }
    }

    /// Stripe's error, for a failed call that carried one.
    pub fn error(&self) -> Option<&StripeError> {
        match self {
            Settlement::Failed { error, .. } => error.as_ref(),
            Settlement::Succeeded { .. } => None,
        }
    }

    /// The object, for a successful call whose object is known.
    pub fn object(&self) -> Option<&Value> {
        match self {
            Settlement::Succeeded { object, .. } => object.as_ref(),
            Settlement::Failed { .. } => None,
        }
    }
}

/// What told the reconciler how a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettledBy {
    /// A verified webhook event whose `request.idempotency_key` is the call's key.
    Event {
        /// The event's `id` (`evt_...`).
        id: String,
    },
    /// A replay of the request with the same key, which Stripe answered from its saved
    /// result (or ran for the first time, if the first attempts never reached it).
    Replay {
        /// The replay's `Request-Id`, if it had one.
        request_id: Option<String>,
    },
}

/// What a verified event settles: the call whose key is its `request.idempotency_key`,
/// if it has one. The rule is documented on
/// [`Reconciler::settle_with_event`](super::Reconciler::settle_with_event).
pub(crate) fn from_event(event: &Event) -> Option<(&str, Settlement)> {
    let key = event.idempotency_key()?;
    let by = SettledBy::Event {
        id: event.id.clone(),
    };
    let object = &event.data.object;
    let stored = event.stored_failure().or_else(|| charge_failure(object));
    let status_failed = matches!(
        object.get("status").and_then(Value::as_str),
        Some("failed" | "requires_payment_method")
    );
    let settlement = if names_a_failure(&event.event_type) || (stored.is_some() && status_failed) {
        Settlement::Failed { by, error: stored }
    } else {
        Settlement::Succeeded {
            by,
            object: Some(object.clone()),
        }
    };
    Some((key, settlement))
}

/// Whether an event type names a failure: its last dot-separated part is `failed` or ends
/// in `_failed`.
fn names_a_failure(event_type: &str) -> bool {
    let last = event_type.rsplit('.').next().unwrap_or(event_type);
    last == "failed" || last.ends_with("_failed")
}

/// The failure a Charge stores: `failure_code` and `failure_message`, with the issuer's
/// reason in `outcome.reason`.
fn charge_failure(object: &Value) -> Option<StripeError> {
    if object.get("object").and_then(Value::as_str) != Some("charge") {
        return None;
    }
    let code = object.get("failure_code").and_then(Value::as_str)?;
    StripeError::from_object(&json!({
        "type": "card_error",
        "code": code,
        "message": object.get("failure_message"),
        "decline_code": object.get("outcome").and_then(|o| o.get("reason")),
    }))
}

/// What a replay's successful answer settles: a 2xx settles the call as done (the object
/// read from the body when it is JSON); any other status, which only a bare client
/// returns as `Ok` (the retry layer returns every other outcome as an error), says
/// nothing certain and leaves it pending.
pub(crate) fn from_answer(
    status: StatusCode,
    request_id: Option<String>,
    body: Option<&[u8]>,
) -> Option<Settlement> {
    if !status.is_success() {
        return None;
    }
    Some(Settlement::Succeeded {
        by: SettledBy::Replay { request_id },
        object: body.and_then(|b| serde_json::from_slice(b).ok()),
    })
}

/// What a replay's error settles. Only a definite failure of the request itself says how
/// the call ended; everything else leaves it pending:
///
/// | the replay ended | the call is |
/// |---|---|
/// | definite failure (a declined card, an invalid request) | failed, with Stripe's error |
/// | definite failure because of the credentials (401, 403) | pending: the replay was refused, the request not looked at |
/// | definite failure `idempotency_error` | pending: Stripe says the key went with another request |
/// | indeterminate again, gave up, refused before sending | pending |
pub(crate) fn from_error(error: &crate::Error, request_id: Option<String>) -> Option<Settlement> {
    if !error.is_definite_failure() || error.is_rejected() || error.is_idempotency_error() {
        return None;
    }
    let stripe = error.stripe_error();
    let refused = matches!(error.status().map(|s| s.as_u16()), Some(401 | 403 | 407))
        || stripe.is_some_and(|e| e.category() == crate::stripe::Category::Authentication);
    if refused {
        return None;
    }
    Some(Settlement::Failed {
        by: SettledBy::Replay { request_id },
        error: stripe.cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_answer_settles_as_done_and_keeps_a_json_object() {
        let done = |object: Option<Value>| {
            Some(Settlement::Succeeded {
                by: SettledBy::Replay {
                    request_id: Some("req_r".into()),
                },
                object,
            })
        };
        let object = &br#"{"id":"ch_1","object":"charge"}"#[..];
        let cases = [
            (
                200,
                Some(object),
                done(Some(json!({"id":"ch_1","object":"charge"}))),
            ),
            (201, Some(&b"not json"[..]), done(None)),
            (200, None, done(None)),
            (500, Some(object), None),
            (402, None, None),
        ];
        for (status, body, expected) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                from_answer(status, Some("req_r".into()), body),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn event_types_that_name_a_failure() {
        let cases = [
            ("charge.failed", true),
            ("payment_intent.payment_failed", true),
            ("invoice.finalization_failed", true),
            ("setup_intent.setup_failed", true),
            ("failed", true),
            ("charge.succeeded", false),
            ("payment_intent.created", false),
            ("charge.failed.later", false),
            ("customer.failedness", false),
            ("", false),
        ];
        for (event_type, failure) in cases {
            assert_eq!(names_a_failure(event_type), failure, "{event_type}");
        }
    }

    fn event(event_type: &str, object: Value) -> Event {
        let event = json!({
            "id": "evt_1", "type": event_type, "data": {"object": object},
            "request": {"id": "req_1", "idempotency_key": "key_1"},
        });
        Event::from_slice(event.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn events_settle_by_their_type_and_their_object() {
        let declined = json!({"type": "card_error", "code": "card_declined"});
        // (type, object, failed?, stored error type)
        let cases = [
            (
                "charge.succeeded",
                json!({"object": "charge", "status": "succeeded"}),
                false,
                None,
            ),
            (
                "charge.failed",
                json!({"object": "charge", "status": "failed"}),
                true,
                None,
            ),
            (
                "payment_intent.payment_failed",
                json!({"object": "payment_intent", "last_payment_error": declined}),
                true,
                Some("card_error"),
            ),
            (
                "payment_intent.created",
                json!({"object": "payment_intent", "status": "requires_payment_method", "last_payment_error": declined}),
                true,
                Some("card_error"),
            ),
            (
                "payment_intent.created",
                json!({"object": "payment_intent", "status": "requires_payment_method", "last_payment_error": null}),
                false,
                None,
            ),
            (
                "payment_intent.succeeded",
                json!({"object": "payment_intent", "status": "succeeded", "last_payment_error": declined}),
                false,
                None,
            ),
            (
                "customer.updated",
                json!({"object": "customer"}),
                false,
                None,
            ),
        ];
        for (event_type, object, failed, error_type) in cases {
            let event = event(event_type, object.clone());
            let (key, settlement) = from_event(&event).unwrap();
            assert_eq!(key, "key_1");
            assert_eq!(settlement.by(), &SettledBy::Event { id: "evt_1".into() });
            assert_eq!(settlement.is_failed(), failed, "{event_type} {object}");
            assert_eq!(
                settlement.error().map(|e| e.error_type.as_str()),
                error_type,
                "{event_type}"
            );
            if !failed {
                assert_eq!(settlement.object(), Some(&object));
            }
        }
    }

    #[test]
    fn a_declined_charge_gives_its_failure_as_a_card_error() {
        let charge = json!({
            "id": "ch_1", "object": "charge", "status": "failed",
            "failure_code": "card_declined", "failure_message": "Your card was declined.",
            "outcome": {"type": "issuer_declined", "reason": "insufficient_funds"},
        });
        let settled = from_event(&event("charge.failed", charge)).unwrap().1;
        let error = settled.error().unwrap();
        assert_eq!(error.category(), crate::stripe::Category::CardDeclined);
        assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
        assert_eq!(error.message.as_deref(), Some("Your card was declined."));
        // No outcome, no message: still the code.
        let bare = json!({"object": "charge", "status": "failed", "failure_code": "expired_card"});
        let settled = from_event(&event("charge.failed", bare)).unwrap().1;
        assert_eq!(
            settled
                .error()
                .and_then(|e| e.code.as_ref())
                .map(|c| c.as_str()),
            Some("expired_card")
        );
    }

    #[test]
    fn an_event_without_a_key_settles_nothing() {
        let mut event = event("charge.succeeded", json!({}));
        event.request = None;
        assert_eq!(from_event(&event), None);
    }

    #[test]
    fn accessors_read_each_variant() {
        let by = SettledBy::Event { id: "evt_1".into() };
        let done = Settlement::Succeeded {
            by: by.clone(),
            object: Some(Value::Null),
        };
        assert!(done.is_succeeded() && !done.is_failed());
        assert_eq!(done.by(), &by);
        assert_eq!(done.object(), Some(&Value::Null));
        assert_eq!(done.error(), None);
        let failed = Settlement::Failed {
            by,
            error: StripeError::from_body(br#"{"error":{"type":"card_error"}}"#),
        };
        assert!(failed.is_failed() && !failed.is_succeeded());
        assert_eq!(failed.object(), None);
        assert_eq!(
            failed.error().map(|e| e.error_type.as_str()),
            Some("card_error")
        );
    }
}
