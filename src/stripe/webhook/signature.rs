//! `Stripe-Signature` verification: the header's parser, the checks, and their refusals.

use super::Event;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderName, HeaderValue};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `Stripe-Signature`: the timestamp and signatures of a webhook request.
pub const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

/// The largest gap accepted by default between a signature's timestamp and now, either
/// way: 300 s, the default of Stripe's official libraries.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The largest body accepted by default: 64 KiB, the limit of the webhook handler in
/// Stripe's error-handling guide (Stripe's events are far smaller).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The only signature scheme Stripe signs live events with; `v0` (test-mode signatures
/// with a fixed secret) and unknown schemes are ignored.
const SCHEME: &[u8] = b"v1";

type HmacSha256 = Hmac<Sha256>;

/// Verifies webhook requests: their `Stripe-Signature` header against the raw body, with
/// one or more endpoint secrets.
///
/// A request is accepted when its body is within the [body limit](Self::body_limit), its
/// header parses, one of its `v1` signatures is the HMAC-SHA256 of
/// `"{timestamp}.{raw body}"` under one of the secrets (compared in constant time), and
/// its timestamp is within the [tolerance](Self::tolerance) of now, in the past or in the
/// future. Each refusal is one [`WebhookError`].
///
/// ```
/// use http::HeaderValue;
/// use resilient_http::stripe::webhook::{Verifier, WebhookError};
/// use std::time::{Duration, UNIX_EPOCH};
///
/// let verifier = Verifier::new("whsec_test_secret")
///     .clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let body = br#"{"id":"evt_1","type":"charge.succeeded","data":{"object":{"object":"charge"}}}"#;
/// // Signed with: printf '%s' "1700000000.$BODY" | openssl dgst -sha256 -hmac whsec_test_secret
/// let header = HeaderValue::from_static(
///     "t=1700000000,v1=3442426a899a6eb35e5c8e2c2d98c048f7314766e49ab77b365bb455ca0fc5ea",
/// );
/// let event = verifier.construct_event(Some(&header), body)?;
/// assert_eq!(event.event_type, "charge.succeeded");
///
/// let forged = &body[..body.len() - 1];
/// assert!(matches!(
///     verifier.verify(Some(&header), forged),
///     Err(WebhookError::NoSignatureMatched)
/// ));
/// # Ok::<(), WebhookError>(())
/// ```
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<String>,
    tolerance: Duration,
    body_limit: usize,
    clock: Option<Clock>,
}

/// An injected clock, with the name of its type for `Debug`.
#[derive(Clone)]
struct Clock {
    now: Arc<dyn Fn() -> SystemTime + Send + Sync>,
    name: &'static str,
}

impl Verifier {
    /// A verifier for an endpoint's signing secret (`whsec_...`, from the Dashboard or
    /// `stripe listen`), used as the HMAC key exactly as given, as Stripe does.
    ///
    /// An empty secret (a setting read from an unset variable, say) matches nothing: with
    /// it, every event is refused as [`WebhookError::NoSignatureMatched`], never accepted
    /// under a key anyone can use.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secrets: vec![secret.into()],
            tolerance: DEFAULT_TOLERANCE,
            body_limit: DEFAULT_BODY_LIMIT,
            clock: None,
        }
    }

    /// Accepts signatures made with another secret as well: while a secret rolls, Stripe
    /// signs with the old and the new one, and either may be the one configured here.
    pub fn secret(mut self, another: impl Into<String>) -> Self {
        self.secrets.push(another.into());
        self
    }

    /// The largest gap accepted between the signature's timestamp and now, in either
    /// direction (`Duration::MAX` accepts any timestamp). Defaults to
    /// [`DEFAULT_TOLERANCE`] (300 s).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The largest body accepted, in bytes. Defaults to [`DEFAULT_BODY_LIMIT`] (64 KiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The clock the timestamp is checked against, for tests. Defaults to
    /// `SystemTime::now`.
    pub fn clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Some(Clock {
            name: std::any::type_name_of_val(&now),
            now: Arc::new(now),
        });
        self
    }

    /// The body limit in force, which the endpoint applies while it reads the body.
    pub(super) fn limit(&self) -> usize {
        self.body_limit
    }

    /// Checks a request's `Stripe-Signature` header (`None` when it had none) against its
    /// raw body, before anything parses the body. `Ok(())` means Stripe sent these bytes,
    /// recently.
    pub fn verify(&self, header: Option<&HeaderValue>, body: &[u8]) -> Result<(), WebhookError> {
        if body.len() > self.body_limit {
            return Err(WebhookError::BodyTooLarge {
                limit: self.body_limit,
            });
        }
        let header = parse(header.ok_or(WebhookError::MissingHeader)?.as_bytes())?;
        if !self.any_signature_matches(&header, body) {
            return Err(WebhookError::NoSignatureMatched);
        }
        // Checked after the signature, as Stripe's libraries do: a timestamp refusal then
        // says that Stripe did sign this body, at a time too far from this clock's now (a
        // replayed request, or a clock that is off), not that someone forged it.
        check_tolerance(header.timestamp, self.now(), self.tolerance)
    }

    /// [Verifies](Self::verify) the request, then parses the body as an [`Event`].
    pub fn construct_event(
        &self,
        header: Option<&HeaderValue>,
        body: &[u8],
    ) -> Result<Event, WebhookError> {
        self.verify(header, body)?;
        Event::from_slice(body).map_err(WebhookError::NotJson)
    }

    fn any_signature_matches(&self, header: &SignatureHeader<'_>, body: &[u8]) -> bool {
        self.secrets.iter().filter(|s| !s.is_empty()).any(|secret| {
            let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
                // HMAC takes a key of any length; a key it refused would match nothing.
                return false;
            };
            mac.update(header.signed_timestamp);
            mac.update(b".");
            mac.update(body);
            header
                .v1
                .iter()
                .any(|signature| mac.clone().verify_slice(signature).is_ok())
        })
    }

    fn now(&self) -> SystemTime {
        match &self.clock {
            Some(clock) => (clock.now)(),
            None => SystemTime::now(),
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secrets are keys: their number is shown, never their bytes.
        f.debug_struct("Verifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance)
            .field("body_limit", &self.body_limit)
            .field(
                "clock",
                &format_args!(
                    "{}",
                    self.clock.as_ref().map_or("SystemTime::now", |c| c.name)
                ),
            )
            .finish()
    }
}

/// Why a webhook request was refused. An endpoint answers 413 to
/// [`BodyTooLarge`](Self::BodyTooLarge) and 400 to every other refusal.
#[derive(Debug)]
#[non_exhaustive]
pub enum WebhookError {
    /// The request had no `Stripe-Signature` header.
    MissingHeader,
    /// The `Stripe-Signature` header is not `t=<unix seconds>,v1=<hex>,...`.
    MalformedHeader {
        /// What is wrong with it.
        reason: MalformedReason,
    },
    /// The header parses but carries no `v1` signature (only `v0`, or other schemes).
    NoV1Signature,
    /// The signature matched, but its timestamp is further from now than the tolerance:
    /// an old request replayed, or a clock that is off.
    TimestampOutOfTolerance {
        /// The header's timestamp, in Unix seconds.
        timestamp: i64,
        /// How far the timestamp is from now.
        skew: Duration,
        /// `true` when the timestamp is ahead of now.
        in_future: bool,
        /// The tolerance it is over.
        tolerance: Duration,
    },
    /// No `v1` signature is the HMAC of this body under any configured secret: a forged
    /// or altered request, or the wrong secret.
    NoSignatureMatched,
    /// The body is over the limit; it was not verified.
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body is signed, but it is not a Stripe event in JSON.
    NotJson(serde_json::Error),
}

impl WebhookError {
    /// The HTTP status an endpoint answers this refusal with: 413 for a body over the
    /// limit, 400 for every other one (Stripe's guidance for a bad signature).
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::BodyTooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("no Stripe-Signature header"),
            Self::MalformedHeader { reason } => {
                write!(f, "malformed Stripe-Signature header: {reason}")
            }
            Self::NoV1Signature => f.write_str("Stripe-Signature header has no v1 signature"),
            Self::TimestampOutOfTolerance {
                timestamp,
                skew,
                in_future,
                tolerance,
            } => {
                let way = if *in_future { "ahead of" } else { "behind" };
                write!(
                    f,
                    "webhook timestamp {timestamp} is {}s {way} now, over the tolerance of {}s",
                    skew.as_secs(),
                    tolerance.as_secs()
                )
            }
            Self::NoSignatureMatched => {
                f.write_str("no v1 signature matches the body under any configured secret")
            }
            Self::BodyTooLarge { limit } => {
                write!(f, "webhook body is over the limit of {limit} bytes")
            }
            Self::NotJson(e) => write!(f, "webhook body is not a Stripe event: {e}"),
        }
    }
}

impl std::error::Error for WebhookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NotJson(e) => Some(e),
            _ => None,
        }
    }
}

/// What is wrong with a malformed `Stripe-Signature` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedReason {
    /// An item is not `key=value` (an empty item included).
    NotKeyValue,
    /// No `t=` item.
    NoTimestamp,
    /// Two `t=` items.
    RepeatedTimestamp,
    /// The `t=` value is not an integer number of seconds that fits in an `i64`.
    InvalidTimestamp,
    /// A `v1=` value is not hexadecimal.
    InvalidHex,
}

impl fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotKeyValue => "an item is not key=value",
            Self::NoTimestamp => "no t= timestamp",
            Self::RepeatedTimestamp => "more than one t= timestamp",
            Self::InvalidTimestamp => "the t= timestamp is not an integer of seconds",
            Self::InvalidHex => "a v1= signature is not hexadecimal",
        })
    }
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, PartialEq, Eq)]
struct SignatureHeader<'a> {
    timestamp: i64,
    /// The timestamp as sent: the bytes that were signed.
    signed_timestamp: &'a [u8],
    v1: Vec<Vec<u8>>,
}

/// Parses `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, any other `key=value` items
/// ignored (`v0`, schemes to come). Spaces around items, keys and values are ignored.
fn parse(header: &[u8]) -> Result<SignatureHeader<'_>, WebhookError> {
    let malformed = |reason| WebhookError::MalformedHeader { reason };
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(|&b| b == b',') {
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or(malformed(MalformedReason::NotKeyValue))?;
        let (key, value) = (item[..eq].trim_ascii(), item[eq + 1..].trim_ascii());
        match key {
            b"t" => {
                if timestamp.is_some() {
                    return Err(malformed(MalformedReason::RepeatedTimestamp));
                }
                timestamp = Some((
                    parse_seconds(value).ok_or(malformed(MalformedReason::InvalidTimestamp))?,
                    value,
                ));
            }
            SCHEME => {
                v1.push(hex::decode(value).map_err(|_| malformed(MalformedReason::InvalidHex))?)
            }
            _ => {}
        }
    }
    let (timestamp, signed_timestamp) = timestamp.ok_or(malformed(MalformedReason::NoTimestamp))?;
    if v1.is_empty() {
        return Err(WebhookError::NoV1Signature);
    }
    Ok(SignatureHeader {
        timestamp,
        signed_timestamp,
        v1,
    })
}

/// Unix seconds: ASCII digits with an optional leading `-`, within an `i64`.
fn parse_seconds(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Refuses a timestamp more than `tolerance` away from `now`, in either direction. Whole
/// seconds, as the timestamp has no more.
fn check_tolerance(
    timestamp: i64,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::from(after.as_secs()),
        Err(before) => -i128::from(before.duration().as_secs()),
    };
    let gap = i128::from(timestamp) - now;
    let skew = Duration::from_secs(u64::try_from(gap.unsigned_abs()).unwrap_or(u64::MAX));
    if skew > tolerance {
        return Err(WebhookError::TimestampOutOfTolerance {
            timestamp,
            skew,
            in_future: gap > 0,
            tolerance,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn reason(header: &str) -> Option<MalformedReason> {
        match parse(header.as_bytes()) {
            Err(WebhookError::MalformedHeader { reason }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn a_header_with_several_schemes_keeps_its_v1_signatures_in_order() {
        let h = parse(b"t=12,v1=00ff,v0=zz-not-hex-but-ignored,v1=AB, v2 = 1 ,x=").unwrap();
        assert_eq!(h.timestamp, 12);
        assert_eq!(h.signed_timestamp, b"12");
        assert_eq!(h.v1, vec![vec![0x00, 0xff], vec![0xab]]);
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let cases = [
            ("", MalformedReason::NotKeyValue),
            ("t=1,,v1=00", MalformedReason::NotKeyValue),
            ("t=1,v1", MalformedReason::NotKeyValue),
            ("v1=00", MalformedReason::NoTimestamp),
            ("t=1,t=1,v1=00", MalformedReason::RepeatedTimestamp),
            ("t=,v1=00", MalformedReason::InvalidTimestamp),
            ("t=+1,v1=00", MalformedReason::InvalidTimestamp),
            ("t=1.5,v1=00", MalformedReason::InvalidTimestamp),
            ("t=-,v1=00", MalformedReason::InvalidTimestamp),
            (
                "t=99999999999999999999,v1=00",
                MalformedReason::InvalidTimestamp,
            ),
            ("t=1,v1=0", MalformedReason::InvalidHex),
            ("t=1,v1=zz", MalformedReason::InvalidHex),
        ];
        for (header, expected) in cases {
            assert_eq!(reason(header), Some(expected), "{header:?}");
        }
    }

    #[test]
    fn no_v1_is_its_own_refusal() {
        for header in ["t=1", "t=1,v0=00", "t=1,v10=00,V1=00"] {
            assert!(
                matches!(parse(header.as_bytes()), Err(WebhookError::NoV1Signature)),
                "{header:?}"
            );
        }
    }

    #[test]
    fn tolerance_holds_both_ways_and_its_edge_is_inside() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_999);
        let tolerance = Duration::from_secs(300);
        let cases = [
            (1_000, None),
            (700, None),
            (1_300, None),
            (699, Some((301, false))),
            (1_301, Some((301, true))),
            (i64::MIN, Some((1_000 + i64::MAX as u64 + 1, false))),
            (i64::MAX, Some((i64::MAX as u64 - 1_000, true))),
        ];
        for (timestamp, expected) in cases {
            let got = match check_tolerance(timestamp, now, tolerance) {
                Ok(()) => None,
                Err(WebhookError::TimestampOutOfTolerance {
                    skew, in_future, ..
                }) => Some((skew.as_secs(), in_future)),
                Err(e) => panic!("{e}"),
            };
            assert_eq!(got, expected, "{timestamp}");
        }
        assert!(check_tolerance(i64::MIN, now, Duration::MAX).is_ok());
        let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
        assert!(check_tolerance(-10, before_epoch, Duration::ZERO).is_ok());
    }

    #[test]
    fn an_empty_secret_matches_nothing_not_everything() {
        // Signed with the empty key, as a forger who guessed the setting was unset would.
        let mut mac = HmacSha256::new_from_slice(b"").unwrap();
        mac.update(b"1700000000.{}");
        let forged = hex::encode(mac.finalize().into_bytes());
        let header = http::HeaderValue::from_str(&format!("t=1700000000,v1={forged}")).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let verifier = Verifier::new("").clock(move || at);
        assert!(matches!(
            verifier.verify(Some(&header), b"{}"),
            Err(WebhookError::NoSignatureMatched)
        ));
    }

    #[test]
    fn the_clock_prints_as_its_type_and_secrets_never_print() {
        let v = Verifier::new("whsec_do_not_print").secret("whsec_nor_this");
        let shown = format!("{v:?}");
        assert!(shown.contains("secrets: 2"), "{shown}");
        assert!(shown.contains("SystemTime::now"), "{shown}");
        assert!(
            !shown.contains("print") && !shown.contains("nor_this"),
            "{shown}"
        );
        let shown = format!("{:?}", v.clock(|| UNIX_EPOCH));
        assert!(shown.contains("{{closure}}"), "{shown}");
    }
}
