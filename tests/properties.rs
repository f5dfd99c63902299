//! Property tests: random scripts of responses, transport errors and delays, for random
//! methods and configurations, through the whole stack (keys and retries, Stripe's
//! classifier) on paused tokio time.
//!
//! Each case builds its own current-thread runtime with paused time, runs one call, and
//! checks it against an oracle written from the documented Stripe classification table
//! (not from the classifier's code): every attempt carries the same key, a definite
//! failure is attempted once, no call makes more than `max_attempts` attempts or runs or
//! sleeps past its deadline, the caller gets the final response's status, headers and body
//! intact, and the outcome and stop reason follow from the last attempt. Further
//! properties: many calls sharing one service, a random retry budget and adaptive
//! throttling (retries stay within `ratio x calls + reserve`); and a call dropped at a
//! random instant sends nothing more.
//!
//! Timers on paused time fire on tokio's 1 ms ticks, so measured gaps are checked within
//! a tick of the nominal ones ([`TICK`]).
//!
//! `PROPTEST_CASES` raises the number of cases (default [`CASES`]).

mod common;

use bytes::Bytes;
use common::{stack_with, Scripted, Seen, Step};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use resilient_http::backoff::ExponentialBackoff;
use resilient_http::budget::RetryBudget;
use resilient_http::headers::IDEMPOTENCY_KEY;
use resilient_http::idempotency::IdempotencyKey;
use resilient_http::retry::Builder;
use resilient_http::stripe::StripeClassifier;
use resilient_http::{
    Attempt, CallReport, Class, Elapsed, Jitter, Outcome, RetryLayer, StopReason,
};
use std::io;
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;

/// Cases per property unless `PROPTEST_CASES` says otherwise: enough to reach every row
/// of the classification table many times, few enough for a fast debug run.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        max_shrink_iters: 2048,
        ..common::proptest_config(CASES)
    }
}

/// The request body every generated call sends; every attempt must carry it byte for byte.
const REQUEST_BODY: &[u8] = b"amount=2000&currency=usd&description=caf\xc3\xa9";

/// The body of the 2xx the scripted service answers once its script has run out.
const DEFAULT_OK_BODY: &str = r#"{"id":"ch_1","object":"charge"}"#;

/// The response body limit of the stack (its default): bodies up to this many bytes are
/// read for classification; longer ones are classified by status.
const RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// The resolution of tokio's timers: a sleep ends on the first 1 ms tick at or after its
/// deadline, so measured gaps may exceed the nominal ones by up to a tick per timer.
const TICK: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------
// The model: what a script step is, and what the classification table says it means
// ---------------------------------------------------------------------------------------

const ERROR_TYPES: &[&str] = &[
    "api_error",
    "card_error",
    "idempotency_error",
    "invalid_request_error",
    "future_error",
];

const ERROR_CODES: &[Option<&str>] = &[
    None,
    Some("rate_limit"),
    Some("lock_timeout"),
    Some("idempotency_key_in_use"),
    Some("secret_key_required"),
    Some("card_declined"),
    Some("resource_missing"),
    Some("brand_new_code"),
];

/// A response body, as the oracle sees it.
#[derive(Clone, Debug)]
enum BodyKind {
    Empty,
    /// A well-formed Stripe error object.
    Stripe {
        ty: &'static str,
        code: Option<&'static str>,
        decline: Option<&'static str>,
    },
    /// A well-formed Stripe error object padded to `RESPONSE_BODY_LIMIT + extra` bytes.
    Big {
        ty: &'static str,
        code: Option<&'static str>,
        extra: usize,
    },
    /// Text that is not a Stripe error (HTML from a proxy, cut JSON, other JSON).
    Junk(&'static str),
    /// A 2xx body.
    Success(u32),
    /// The scripted service's own 2xx once the script has run out: no headers at all.
    DefaultOk,
}

impl BodyKind {
    fn render(&self) -> Bytes {
        match self {
            BodyKind::Empty => Bytes::new(),
            BodyKind::Stripe { ty, code, decline } => {
                let mut inner = format!(r#""type":"{ty}","message":"scripted \"error\" é""#);
                if let Some(code) = code {
                    inner.push_str(&format!(r#","code":"{code}""#));
                }
                if let Some(d) = decline {
                    inner.push_str(&format!(r#","decline_code":"{d}""#));
                }
                inner.push_str(r#","doc_url":"https://stripe.com/docs/error-codes""#);
                Bytes::from(format!(r#"{{"error":{{{inner}}}}}"#))
            }
            BodyKind::Big { ty, code, extra } => {
                let code = code.map_or(String::new(), |c| format!(r#","code":"{c}""#));
                let head = format!(r#"{{"error":{{"type":"{ty}"{code},"message":""#);
                let tail = r#""}}"#;
                let size = RESPONSE_BODY_LIMIT + extra;
                let mut body = head.into_bytes();
                body.resize(size - tail.len(), b'x');
                body.extend_from_slice(tail.as_bytes());
                Bytes::from(body)
            }
            BodyKind::Junk(s) => Bytes::from_static(s.as_bytes()),
            BodyKind::Success(n) => Bytes::from(format!(r#"{{"id":"ch_{n}","object":"charge"}}"#)),
            BodyKind::DefaultOk => Bytes::from_static(DEFAULT_OK_BODY.as_bytes()),
        }
    }

    /// The Stripe error `(type, code)` the classifier can see: only a well-formed error
    /// object read whole within the body limit.
    fn visible_error(&self) -> Option<(&'static str, Option<&'static str>)> {
        match self {
            BodyKind::Stripe { ty, code, .. } => Some((ty, *code)),
            BodyKind::Big { ty, code, extra } if *extra == 0 => Some((ty, *code)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
enum RetryAfter {
    Secs(u64),
    /// Over the largest cap used (60 s).
    TooLong(u64),
    /// More seconds than a `u64` holds: saturates, so always over the cap.
    Huge,
    /// Ignored: `-1`, `1e30`, `1.5`, `soon`.
    Garbage(&'static str),
    /// An HTTP date in the past: a wait of zero.
    PastDate,
}

impl RetryAfter {
    fn header(&self) -> String {
        match self {
            RetryAfter::Secs(s) | RetryAfter::TooLong(s) => s.to_string(),
            RetryAfter::Huge => "184467440737095516160".to_owned(),
            RetryAfter::Garbage(g) => (*g).to_owned(),
            RetryAfter::PastDate => "Wed, 21 Oct 2015 07:28:00 GMT".to_owned(),
        }
    }

    fn hint(&self) -> Option<Duration> {
        match self {
            RetryAfter::Secs(s) | RetryAfter::TooLong(s) => Some(Duration::from_secs(*s)),
            RetryAfter::Huge => Some(Duration::MAX),
            RetryAfter::Garbage(_) => None,
            RetryAfter::PastDate => Some(Duration::ZERO),
        }
    }
}

/// What one attempt gets from the scripted server.
#[derive(Clone, Debug)]
enum Act {
    Respond {
        status: u16,
        body: BodyKind,
        /// `Stripe-Should-Retry` as sent, and as the spec reads it.
        should_retry: Option<(&'static str, Option<bool>)>,
        retry_after: Option<RetryAfter>,
        request_id: Option<u32>,
        replayed: bool,
    },
    /// Connection refused: nothing was sent.
    Refused,
    /// Connection reset after the request may have been sent.
    Reset,
}

#[derive(Clone, Debug)]
struct ScriptStep {
    act: Act,
    /// How long the server takes to answer, on tokio's clock.
    delay: Duration,
}

impl ScriptStep {
    /// The step played once the script has run out.
    fn default_ok() -> Self {
        ScriptStep {
            act: Act::Respond {
                status: 200,
                body: BodyKind::DefaultOk,
                should_retry: None,
                retry_after: None,
                request_id: None,
                replayed: false,
            },
            delay: Duration::ZERO,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if let Act::Respond {
            body,
            should_retry,
            retry_after,
            request_id,
            replayed,
            ..
        } = &self.act
        {
            if let Some(id) = request_id {
                headers.push(("request-id", format!("req_{id}")));
            }
            if let Some((text, _)) = should_retry {
                headers.push(("stripe-should-retry", (*text).to_owned()));
            }
            if let Some(ra) = retry_after {
                headers.push(("retry-after", ra.header()));
            }
            if *replayed {
                headers.push(("idempotent-replayed", "true".to_owned()));
            }
            if !matches!(body, BodyKind::DefaultOk) {
                headers.push(("x-scripted", "1".to_owned()));
            }
        }
        headers
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in self.headers() {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        map
    }

    fn to_step(&self) -> Step {
        let step = match &self.act {
            Act::Respond { status, body, .. } => Step::Respond {
                status: *status,
                headers: self.headers(),
                body: body.render(),
            },
            Act::Refused => Step::Fail(io::ErrorKind::ConnectionRefused),
            Act::Reset => Step::Fail(io::ErrorKind::ConnectionReset),
        };
        if self.delay.is_zero() {
            step
        } else {
            step.after(self.delay)
        }
    }
}

/// The oracle's verdict on one attempt: the outcome if the call ends there, whether a
/// retry may help, and whether the server refused a retry that would otherwise have been
/// made (`Stripe-Should-Retry: false` on a retryable answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    outcome: Outcome,
    retry: bool,
    refused: bool,
}

const fn verdict(outcome: Outcome, retry: bool) -> Verdict {
    Verdict {
        outcome,
        retry,
        refused: false,
    }
}

impl Verdict {
    /// Why the call stops if it ends on this attempt of its own accord: the answer is
    /// final, or the server refused the retry.
    fn own_stop(&self) -> StopReason {
        if self.refused {
            StopReason::ServerRefusedRetry
        } else {
            StopReason::Final
        }
    }
}

/// Whether a last attempt ending in `outcome` (after `act`) leaves an earlier attempt that
/// may have done the work (a 5xx, a reset, a timeout) undecided, so that the call stays
/// indeterminate. "Gave up" (a later 429, 409 or refused connection) never settles it. A
/// definite failure settles it for a GET, which changes nothing, and for a keyed POST or
/// PATCH (here they always carry a key) only when Stripe answered the replay from past its
/// idempotency layer, which answers for the first attempt ([`stripe_answered`]); never
/// for a DELETE (a 404 after a delete that timed out). A success always settles it.
fn not_settled_by(method: &Method, act: &Act, outcome: Outcome) -> bool {
    match outcome {
        Outcome::GaveUp => true,
        Outcome::DefiniteFailure => match *method {
            Method::GET | Method::HEAD => false,
            Method::POST | Method::PATCH => !stripe_answered(act),
            _ => true,
        },
        _ => false,
    }
}

/// Whether `act` is Stripe's answer from past its idempotency layer: its error object
/// (visible to the classifier) of a type Stripe answers after looking at the request, and
/// not a refusal of the credentials (401, 403, `secret_key_required`), which comes before
/// that layer.
fn stripe_answered(act: &Act) -> bool {
    let Act::Respond { status, body, .. } = act else {
        return false;
    };
    let refused = matches!(status, 401 | 403);
    match body.visible_error() {
        Some(("card_error" | "idempotency_error", _)) => true,
        Some(("invalid_request_error", code)) => !refused && code != Some("secret_key_required"),
        // An unknown type (a gateway's lookalike) says nothing about the first attempt.
        _ => false,
    }
}

/// HTTP status rules (the classifier's fallback).
fn by_status(status: u16) -> Verdict {
    match status {
        409 | 429 => verdict(Outcome::GaveUp, true),
        408 => verdict(Outcome::Indeterminate, true),
        400..=499 => verdict(Outcome::DefiniteFailure, false),
        500..=599 => verdict(Outcome::Indeterminate, true),
        _ => verdict(Outcome::DefiniteFailure, false),
    }
}

/// The Stripe classification table, as a function of what the script sent.
fn oracle(act: &Act) -> Verdict {
    let (status, body, should_retry) = match act {
        Act::Refused => return verdict(Outcome::GaveUp, true),
        Act::Reset => return verdict(Outcome::Indeterminate, true),
        Act::Respond {
            status,
            body,
            should_retry,
            ..
        } => (*status, body, should_retry.and_then(|(_, v)| v)),
    };
    if (200..300).contains(&status) {
        return verdict(Outcome::Success, false);
    }
    let mut idempotency_error = false;
    let base = match body.visible_error() {
        Some((_, Some("rate_limit" | "lock_timeout" | "idempotency_key_in_use"))) => {
            verdict(Outcome::GaveUp, true)
        }
        Some(_) if status == 409 || status == 429 => verdict(Outcome::GaveUp, true),
        Some(("idempotency_error", _)) => {
            idempotency_error = true;
            verdict(Outcome::DefiniteFailure, false)
        }
        Some(("card_error" | "invalid_request_error", _)) => {
            verdict(Outcome::DefiniteFailure, false)
        }
        Some(("api_error", _)) if (502..=504).contains(&status) => {
            verdict(Outcome::Indeterminate, true)
        }
        // Saved under the key if Stripe had begun to run the request (a replay returns
        // it again, harmlessly), not saved otherwise (a replay may settle it): replayed
        // with the same key on every method.
        Some(("api_error", _)) => verdict(Outcome::Indeterminate, true),
        _ => by_status(status),
    };
    match should_retry {
        // Only a change in the caller fixes a reused key, whatever the server says.
        _ if idempotency_error => base,
        Some(true) if base.outcome == Outcome::DefiniteFailure => verdict(Outcome::GaveUp, true),
        Some(true) => verdict(base.outcome, true),
        // A definite failure stays final; anything the stack would have retried stops,
        // as the server's refusal, and keeps its outcome.
        Some(false) => Verdict {
            refused: base.retry,
            ..verdict(base.outcome, false)
        },
        None => base,
    }
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn body_kind() -> impl Strategy<Value = BodyKind> {
    let stripe = (
        prop::sample::select(ERROR_TYPES),
        prop::sample::select(ERROR_CODES),
        prop::option::of(prop::sample::select(vec![
            "insufficient_funds",
            "fraudulent",
            "generic_decline",
        ])),
    )
        .prop_map(|(ty, code, decline)| BodyKind::Stripe { ty, code, decline });
    let big = (
        prop::sample::select(ERROR_TYPES),
        prop::sample::select(ERROR_CODES),
        prop::sample::select(vec![0usize, 1, 4096]),
    )
        .prop_map(|(ty, code, extra)| BodyKind::Big { ty, code, extra });
    let junk = prop::sample::select(vec![
        "<html><body>502 Bad Gateway</body></html>",
        r#"{"error":{"type":"api_er"#,
        r#"{"error":"boom"}"#,
        r#"{"error":{"code":"rate_limit"}}"#,
        r#"[{"type":"card_error"}]"#,
        r#"{"error":["api_error"]}"#,
        "null",
        "\u{feff}{}",
    ])
    .prop_map(BodyKind::Junk);
    prop_oneof![
        2 => Just(BodyKind::Empty),
        6 => stripe,
        1 => big,
        2 => junk,
    ]
}

fn retry_after() -> impl Strategy<Value = RetryAfter> {
    prop_oneof![
        4 => (0u64..=3).prop_map(RetryAfter::Secs),
        1 => (61u64..=100_000).prop_map(RetryAfter::TooLong),
        1 => Just(RetryAfter::Huge),
        2 => prop::sample::select(vec!["-1", "1e30", "1.5", "soon", "3, 4"]).prop_map(RetryAfter::Garbage),
        1 => Just(RetryAfter::PastDate),
    ]
}

fn should_retry() -> impl Strategy<Value = (&'static str, Option<bool>)> {
    prop::sample::select(vec![
        ("true", Some(true)),
        ("false", Some(false)),
        (" TRUE ", Some(true)),
        ("False", Some(false)),
        ("maybe", None),
        ("1", None),
    ])
}

const STATUSES: &[u16] = &[
    400, 401, 402, 403, 404, 409, 429, 429, 500, 500, 502, 503, 503, 504,
];

fn act() -> impl Strategy<Value = Act> {
    let error = (
        prop::sample::select(STATUSES),
        body_kind(),
        prop::option::weighted(0.3, should_retry()),
        prop::option::weighted(0.3, retry_after()),
        prop::option::weighted(0.7, 0u32..1000),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(status, body, should_retry, retry_after, request_id, replayed)| Act::Respond {
                status,
                body,
                should_retry,
                retry_after,
                request_id,
                replayed,
            },
        );
    let success = (
        prop::sample::select(vec![200u16, 201, 202]),
        0u32..1000,
        prop::option::weighted(0.2, should_retry()),
        prop::option::weighted(0.5, 0u32..1000),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(status, n, should_retry, request_id, replayed)| Act::Respond {
                status,
                body: BodyKind::Success(n),
                should_retry,
                retry_after: None,
                request_id,
                replayed,
            },
        );
    prop_oneof![
        8 => error,
        2 => success,
        1 => Just(Act::Refused),
        1 => Just(Act::Reset),
    ]
}

fn script_step() -> impl Strategy<Value = ScriptStep> {
    let delay = prop_oneof![
        3 => Just(Duration::ZERO),
        2 => (1u64..400).prop_map(Duration::from_millis),
        // Off the millisecond grid, so ties with the timers are rare but possible.
        1 => (1u64..400_000_000).prop_map(Duration::from_nanos),
    ];
    (act(), delay).prop_map(|(act, delay)| ScriptStep { act, delay })
}

#[derive(Clone, Debug)]
enum Caller {
    Post,
    PostWithHeaderKey(String),
    PostWithExtensionKey(String),
    Patch,
    Get,
    Delete,
}

impl Caller {
    fn method(&self) -> Method {
        match self {
            Caller::Post | Caller::PostWithHeaderKey(_) | Caller::PostWithExtensionKey(_) => {
                Method::POST
            }
            Caller::Patch => Method::PATCH,
            Caller::Get => Method::GET,
            Caller::Delete => Method::DELETE,
        }
    }

    fn caller_key(&self) -> Option<&str> {
        match self {
            Caller::PostWithHeaderKey(k) | Caller::PostWithExtensionKey(k) => Some(k),
            _ => None,
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(self.method())
            .uri("http://stripe.test/v1/charges")
            .body(Full::new(Bytes::from_static(REQUEST_BODY)))
            .unwrap();
        match self {
            Caller::PostWithHeaderKey(k) => {
                req.headers_mut()
                    .insert(IDEMPOTENCY_KEY, HeaderValue::from_str(k).unwrap());
            }
            Caller::PostWithExtensionKey(k) => {
                req.extensions_mut().insert(IdempotencyKey::new(k).unwrap());
            }
            _ => {}
        }
        req
    }
}

fn caller() -> impl Strategy<Value = Caller> {
    // Any valid key: 1 to 255 visible ASCII characters.
    let key = "[!-~]{1,255}";
    prop_oneof![
        3 => Just(Caller::Post),
        1 => key.prop_map(Caller::PostWithHeaderKey),
        1 => key.prop_map(Caller::PostWithExtensionKey),
        1 => Just(Caller::Patch),
        2 => Just(Caller::Get),
        1 => Just(Caller::Delete),
    ]
}

#[derive(Clone, Debug)]
struct Config {
    max_attempts: u32,
    deadline: Duration,
    attempt_timeout: Option<Duration>,
    jitter: Jitter,
    seed: u64,
    base: Duration,
    cap: Duration,
    retry_after_cap: Duration,
}

impl Config {
    fn max_attempts(&self) -> usize {
        self.max_attempts as usize
    }

    /// The retry settings of this configuration, from Stripe's defaults.
    fn builder(&self) -> Builder<StripeClassifier> {
        let r = RetryLayer::builder()
            .max_attempts(self.max_attempts)
            .deadline(self.deadline)
            .retry_after_cap(self.retry_after_cap)
            .backoff(
                ExponentialBackoff::new(self.base, self.cap)
                    .jitter(self.jitter)
                    .seeded(self.seed),
            );
        match self.attempt_timeout {
            Some(t) => r.attempt_timeout(t),
            None => r,
        }
    }

    /// The backoff ceiling of retry `n` (from 1), which no jittered delay exceeds.
    fn ceiling(&self, n: u32) -> Duration {
        let exp = self
            .base
            .checked_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX);
        exp.min(self.cap)
    }
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        // Zero attempts is refused when the layer is built, not run.
        1u32..=6,
        prop_oneof![
            3 => (1u64..=3_000).prop_map(Duration::from_millis),
            1 => (3_000u64..=200_000).prop_map(Duration::from_millis),
        ],
        prop::option::weighted(0.4, (1u64..=500).prop_map(Duration::from_millis)),
        prop::sample::select(vec![
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::None,
        ]),
        any::<u64>(),
        (0u64..=100).prop_map(Duration::from_millis),
        (0u64..=800).prop_map(Duration::from_millis),
        prop::sample::select(vec![Duration::from_secs(1), Duration::from_secs(60)]),
    )
        .prop_map(
            |(max_attempts, deadline, attempt_timeout, jitter, seed, base, cap, ra_cap)| Config {
                max_attempts,
                deadline,
                attempt_timeout,
                jitter,
                seed,
                base,
                cap,
                retry_after_cap: ra_cap,
            },
        )
}

fn script() -> impl Strategy<Value = Vec<ScriptStep>> {
    prop::collection::vec(script_step(), 1..=7)
}

// ---------------------------------------------------------------------------------------
// Running one case and checking it
// ---------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

/// What the caller got, with the body read whole.
struct Observed {
    start: Instant,
    end: Instant,
    seen: Vec<Seen>,
    result: Result<(StatusCode, HeaderMap, Bytes, CallReport), resilient_http::Error>,
    /// For an error with a response: its status, headers and whole body.
    error_response: Option<(StatusCode, HeaderMap, Result<Bytes, String>)>,
}

fn run(cfg: &Config, caller: &Caller, script: &[ScriptStep]) -> Observed {
    runtime().block_on(async {
        let inner = Scripted::new(script.iter().map(ScriptStep::to_step));
        let svc = stack_with(inner.clone(), cfg.builder());
        let start = Instant::now();
        let result = svc.oneshot(caller.request()).await;
        let end = Instant::now();
        let (result, error_response) = match result {
            Ok(res) => {
                let (parts, body) = res.into_parts();
                let report = body
                    .report()
                    .cloned()
                    .expect("a success carries its CallReport");
                let bytes = body.collect().await.expect("a 2xx body").to_bytes();
                (Ok((parts.status, parts.headers, bytes, report)), None)
            }
            Err(mut e) => {
                let response = match e.take_response() {
                    Some(res) => {
                        let (parts, body) = res.into_parts();
                        let bytes = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .map_err(|e| e.to_string());
                        Some((parts.status, parts.headers, bytes))
                    }
                    None => None,
                };
                (Err(e), response)
            }
        };
        Observed {
            start,
            end,
            seen: inner.seen(),
            result,
            error_response,
        }
    })
}

/// Whether attempt `a` (which was retried) may have done the work.
fn was_indeterminate(a: &Attempt, act: &Act) -> bool {
    if a.status.is_none() && a.class == Class::Timeout {
        return true;
    }
    oracle(act).outcome == Outcome::Indeterminate
}

/// Whether a stop reason is the retry budget's (on by default, shared by clones): the
/// invariants tolerate an early stop, never an extra attempt. Each case has its own
/// layer, so its budget starts with its full reserve.
fn is_budget_stop(stop: &StopReason) -> bool {
    *stop == StopReason::BudgetExhausted
}

fn check(cfg: &Config, caller: &Caller, script: &[ScriptStep]) -> Result<(), TestCaseError> {
    let method = caller.method();
    let o = run(cfg, caller, script);
    let n = o.seen.len();
    let max = cfg.max_attempts();
    let deadline = o.start + cfg.deadline;
    let report = match &o.result {
        Ok((_, _, _, report)) => report.clone(),
        Err(e) => e.report().clone(),
    };
    let attempts: &[Attempt] = report.attempts();

    // At least one attempt (nothing here is rejected), never more than allowed.
    prop_assert!(n >= 1, "a valid call is attempted");
    prop_assert!(
        n <= max,
        "{n} attempts with max_attempts {}",
        cfg.max_attempts
    );
    prop_assert_eq!(attempts.len(), n, "the report lists every attempt");

    // One key, byte for byte, on every attempt; POST and PATCH carry one, GET and DELETE
    // never do; a caller's key is kept, and a generated one is a UUID v4.
    let keys: Vec<Option<HeaderValue>> = o
        .seen
        .iter()
        .map(|s| {
            let mut all = s.headers.get_all(IDEMPOTENCY_KEY).iter();
            let first = all.next().cloned();
            assert!(all.next().is_none(), "one Idempotency-Key header at most");
            first
        })
        .collect();
    for (i, k) in keys.iter().enumerate() {
        prop_assert_eq!(k, &keys[0], "attempt {} changed the key", i + 1);
    }
    if matches!(method, Method::POST | Method::PATCH) {
        let key = keys[0].as_ref().expect("POST and PATCH get a key");
        match caller.caller_key() {
            Some(mine) => prop_assert_eq!(key.as_bytes(), mine.as_bytes()),
            None => prop_assert_eq!(key.len(), 36, "a UUID v4"),
        }
        prop_assert_eq!(
            report.idempotency_key().map(|k| k.as_header_value()),
            Some(key),
            "the report names the key that was sent"
        );
    } else {
        prop_assert!(keys[0].is_none(), "{} must not carry a key", method);
        prop_assert!(report.idempotency_key().is_none());
    }
    for s in &o.seen {
        prop_assert_eq!(
            &s.body[..],
            REQUEST_BODY,
            "the body is replayed byte for byte"
        );
        prop_assert_eq!(&s.method, &method);
    }

    // The call never ends after its deadline, and no attempt starts at or after it.
    prop_assert!(
        o.end <= deadline,
        "ended {:?} past the deadline",
        o.end - deadline
    );
    prop_assert_eq!(o.seen[0].at, o.start, "the first attempt is sent at once");

    let step = |i: usize| {
        script
            .get(i)
            .cloned()
            .unwrap_or_else(ScriptStep::default_ok)
    };
    let mut last = None;
    // Whether an attempt before the last may have done the work.
    let mut earlier_indeterminate = false;
    for i in 0..n {
        let st = step(i);
        let a = &attempts[i];
        let t = o.seen[i].at;
        prop_assert!(t < deadline, "attempt {} sent at the deadline", i + 1);
        prop_assert_eq!(a.number as usize, i + 1);

        let limit = match cfg.attempt_timeout {
            Some(at) => (t + at).min(deadline),
            None => deadline,
        };
        let timed_out = a.status.is_none() && a.class == Class::Timeout;
        // Timers fire on tokio's 1 ms ticks, and the answer wins a tie with the limit.
        let elapsed = if timed_out {
            prop_assert!(
                t + st.delay + TICK > limit,
                "attempt {} timed out though its answer came in time",
                i + 1
            );
            limit - t
        } else {
            prop_assert!(
                t + st.delay <= limit + TICK,
                "attempt {} was answered after its time limit",
                i + 1
            );
            st.delay
        };
        let v = if timed_out {
            verdict(Outcome::Indeterminate, true)
        } else {
            oracle(&st.act)
        };
        let hint = match (&st.act, timed_out) {
            (Act::Respond { retry_after, .. }, false) => {
                retry_after.as_ref().and_then(RetryAfter::hint)
            }
            _ => None,
        };
        if !timed_out {
            match &st.act {
                Act::Respond {
                    status, request_id, ..
                } => {
                    prop_assert_eq!(a.status.map(|s| s.as_u16()), Some(*status));
                    prop_assert_eq!(
                        a.request_id.as_ref().map(|r| r.to_string()),
                        request_id.map(|id| format!("req_{id}"))
                    );
                }
                Act::Refused => prop_assert_eq!((a.status, a.class), (None, Class::Connect)),
                Act::Reset => prop_assert_eq!((a.status, a.class), (None, Class::Transport)),
            }
        }

        if i + 1 < n {
            // Only a retryable attempt is followed by another.
            prop_assert!(
                v.retry,
                "attempt {} ({:?}, verdict {:?}) must not be retried",
                i + 1,
                st.act,
                v
            );
            if let Some(h) = hint {
                prop_assert!(h <= cfg.retry_after_cap, "Retry-After over the cap obeyed");
            }
            let delay = a.delay.expect("a retried attempt records its delay");
            let next = o.seen[i + 1].at;
            prop_assert!(
                next >= t + elapsed + delay && next <= t + elapsed + delay + 2 * TICK,
                "attempt {} sent {:?} after attempt {}, which took {:?} and reported a delay of {:?}",
                i + 2,
                next - t,
                i + 1,
                elapsed,
                delay
            );
            // The server's hint is a floor, and so is one timer tick (a zero backoff never
            // retries in the same instant); the backoff never exceeds its cap; without
            // jitter the delay is exact.
            let retry = (i + 1) as u32;
            let floor = hint.unwrap_or_default().max(TICK);
            prop_assert!(
                delay >= floor,
                "delay {delay:?} under Retry-After {floor:?}"
            );
            prop_assert!(delay <= cfg.cap.max(floor), "delay {delay:?} over the cap");
            match cfg.jitter {
                Jitter::None => prop_assert_eq!(delay, cfg.ceiling(retry).max(floor)),
                Jitter::Full => prop_assert!(delay <= cfg.ceiling(retry).max(floor)),
                Jitter::Equal => {
                    let c = cfg.ceiling(retry);
                    prop_assert!(delay >= c / 2 && delay <= c.max(floor));
                }
                _ => {}
            }
        } else {
            prop_assert_eq!(a.delay, None, "no sleep after the last attempt");
            earlier_indeterminate = attempts[..i]
                .iter()
                .zip(0..)
                .any(|(a, j)| was_indeterminate(a, &step(j).act));
            prop_assert!(
                o.end >= t + elapsed && o.end <= t + elapsed + TICK,
                "the call ends with its last attempt, not after a sleep"
            );
            last = Some((st, v, timed_out, hint, limit));
        }
    }

    let (st, v, timed_out, hint, limit) = last.expect("at least one attempt");
    // The deadline cut the last attempt short: indeterminate, whatever it was.
    let forced = timed_out && limit == deadline;
    let expected_outcome =
        if forced || (earlier_indeterminate && not_settled_by(&method, &st.act, v.outcome)) {
            Outcome::Indeterminate
        } else {
            v.outcome
        };
    prop_assert_eq!(report.outcome(), expected_outcome, "last step {:?}", st.act);

    let stop = report.stop_reason();
    if forced {
        prop_assert_eq!(stop, StopReason::DeadlineExceeded);
    } else if !v.retry {
        prop_assert_eq!(stop, v.own_stop(), "verdict {:?}", v);
    } else if is_budget_stop(&stop) {
        // An early stop by the retry budget: fewer attempts, same outcome.
    } else {
        let over_cap = hint.filter(|h| *h > cfg.retry_after_cap);
        let mut allowed = Vec::new();
        if n >= max {
            allowed.push(StopReason::AttemptsExhausted);
        }
        if let Some(retry_after) = over_cap {
            allowed.push(StopReason::RetryAfterTooLong { retry_after });
        }
        if allowed.is_empty() {
            // Neither attempts nor the hint ran out: the next attempt would have started
            // at or after the deadline.
            allowed.push(StopReason::DeadlineExceeded);
        }
        prop_assert!(
            allowed.contains(&stop),
            "stop {:?}, expected one of {:?}",
            stop,
            allowed
        );
    }

    let expected_outcome = report.outcome();
    // The final response reaches the caller intact, in `Ok` for a success and inside the
    // error otherwise.
    let response_expected = !timed_out && matches!(st.act, Act::Respond { .. });
    let want = match &st.act {
        Act::Respond { status, body, .. } if response_expected => Some((
            StatusCode::from_u16(*status).unwrap(),
            st.header_map(),
            body.render(),
        )),
        _ => None,
    };
    match &o.result {
        Ok((status, headers, bytes, _)) => {
            prop_assert_eq!(expected_outcome, Outcome::Success, "only a success is Ok");
            let (ws, wh, wb) = want.expect("a success has a response");
            prop_assert_eq!(*status, ws);
            prop_assert_eq!(headers, &wh);
            prop_assert!(bytes == &wb, "the 2xx body changed");
            let replayed = matches!(st.act, Act::Respond { replayed: true, .. });
            prop_assert_eq!(report.replayed(), replayed);
        }
        Err(e) => {
            prop_assert_ne!(e.outcome(), Outcome::Success);
            match want {
                Some((ws, wh, wb)) => {
                    let (status, headers, bytes) = o
                        .error_response
                        .as_ref()
                        .expect("the final response is kept");
                    prop_assert_eq!(*status, ws);
                    prop_assert_eq!(headers, &wh);
                    let bytes = bytes.as_ref().expect("the whole body, without an error");
                    prop_assert_eq!(bytes.len(), wb.len(), "the whole body is delivered");
                    prop_assert!(bytes == &wb, "the body changed");
                    let visible = match &st.act {
                        Act::Respond { body, .. } => body.visible_error().is_some(),
                        _ => false,
                    };
                    prop_assert_eq!(
                        e.stripe_error().is_some(),
                        visible,
                        "Stripe's error object is parsed exactly when it is readable"
                    );
                    let replayed = matches!(st.act, Act::Respond { replayed: true, .. });
                    prop_assert_eq!(report.replayed(), replayed);
                }
                None => {
                    prop_assert!(o.error_response.is_none(), "no response was received");
                    let cause = e
                        .underlying_error()
                        .expect("a transport error or timeout is kept");
                    if timed_out {
                        let elapsed = cause.downcast_ref::<Elapsed>();
                        prop_assert!(elapsed.is_some(), "cause {:?}", cause);
                        if forced {
                            prop_assert_eq!(elapsed, Some(&Elapsed::Deadline(cfg.deadline)));
                        }
                    } else {
                        let io = cause.downcast_ref::<io::Error>().expect("the io::Error");
                        let kind = match st.act {
                            Act::Refused => io::ErrorKind::ConnectionRefused,
                            _ => io::ErrorKind::ConnectionReset,
                        };
                        prop_assert_eq!(io.kind(), kind);
                    }
                }
            }
            // An error names the key and every request id, for reconciliation.
            let ids: Vec<String> = report.request_ids().map(|r| r.to_string()).collect();
            let want_ids: Vec<String> = attempts
                .iter()
                .filter_map(|a| a.request_id.as_ref().map(|r| r.to_string()))
                .collect();
            prop_assert_eq!(ids, want_ids);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Every invariant of a call on random scripts, methods and configurations.
    #[test]
    fn every_call_keeps_the_invariants(
        cfg in config_strategy(),
        caller in caller(),
        script in script(),
    ) {
        check(&cfg, &caller, &script)?;
    }

    /// A definite failure on the first attempt is the only attempt, whatever follows in
    /// the script and however generous the configuration.
    #[test]
    fn a_definite_failure_is_attempted_exactly_once(
        cfg in config_strategy(),
        caller in caller(),
        first in prop::sample::select(vec![
            (402u16, "card_error", Some("card_declined")),
            (400, "invalid_request_error", Some("parameter_missing")),
            (404, "invalid_request_error", Some("resource_missing")),
            (401, "invalid_request_error", None),
            (400, "idempotency_error", None),
        ]),
        idempotency_header in prop::option::of(should_retry()),
        rest in script(),
    ) {
        let (status, ty, code) = first;
        // `Stripe-Should-Retry` may turn a definite failure into a retryable one, except
        // for idempotency_error; keep it only there.
        let should_retry = if ty == "idempotency_error" { idempotency_header } else { None };
        let head = ScriptStep {
            act: Act::Respond {
                status,
                body: BodyKind::Stripe { ty, code, decline: None },
                should_retry,
                retry_after: Some(RetryAfter::Secs(0)),
                request_id: Some(1),
                replayed: false,
            },
            delay: Duration::ZERO,
        };
        let mut script = vec![head];
        script.extend(rest);
        let o = run(&cfg, &caller, &script);
        prop_assert_eq!(o.seen.len(), 1);
        let e = o.result.as_ref().expect_err("a definite failure is an error");
        prop_assert_eq!(e.outcome(), Outcome::DefiniteFailure);
        prop_assert_eq!(e.report().stop_reason(), StopReason::Final);
        prop_assert_eq!(e.is_idempotency_error(), ty == "idempotency_error");
        check(&cfg, &caller, &script)?;
    }

    /// A script that ends in a 2xx within the attempts and time it is given ends in `Ok`
    /// with that response, after every retryable step before it was retried.
    #[test]
    fn retryable_steps_then_a_success_end_in_ok(
        caller in caller(),
        steps in prop::collection::vec(
            prop::sample::select(vec![
                Act::Respond { status: 503, body: BodyKind::Empty, should_retry: None, retry_after: None, request_id: Some(7), replayed: false },
                Act::Respond { status: 429, body: BodyKind::Stripe { ty: "invalid_request_error", code: Some("rate_limit"), decline: None }, should_retry: None, retry_after: Some(RetryAfter::Secs(1)), request_id: None, replayed: false },
                Act::Respond { status: 409, body: BodyKind::Empty, should_retry: None, retry_after: Some(RetryAfter::Garbage("-1")), request_id: None, replayed: false },
                Act::Respond { status: 502, body: BodyKind::Junk("<html>bad gateway</html>"), should_retry: None, retry_after: None, request_id: None, replayed: false },
                Act::Refused,
                Act::Reset,
            ]),
            0..5,
        ),
        n in 0u32..1000,
        seed in any::<u64>(),
    ) {
        let success = Act::Respond {
            status: 200,
            body: BodyKind::Success(n),
            should_retry: None,
            retry_after: None,
            request_id: Some(n),
            replayed: false,
        };
        let mut script: Vec<ScriptStep> =
            steps.into_iter().map(|act| ScriptStep { act, delay: Duration::ZERO }).collect();
        script.push(ScriptStep { act: success, delay: Duration::from_millis(5) });
        let cfg = Config {
            max_attempts: script.len() as u32,
            deadline: Duration::from_secs(80),
            attempt_timeout: None,
            jitter: Jitter::Full,
            seed,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            retry_after_cap: Duration::from_secs(60),
        };
        let o = run(&cfg, &caller, &script);
        let budget_stop = o
            .result
            .as_ref()
            .err()
            .is_some_and(|e| is_budget_stop(&e.report().stop_reason()));
        if !budget_stop {
            prop_assert_eq!(o.seen.len(), script.len());
            let (status, _, body, report) = o.result.as_ref().expect("the script ends in a success");
            prop_assert_eq!(*status, StatusCode::OK);
            prop_assert_eq!(body.clone(), BodyKind::Success(n).render());
            prop_assert_eq!(report.outcome(), Outcome::Success);
        }
        check(&cfg, &caller, &script)?;
    }
}

/// Two calls through clones of one service never share a generated key.
#[test]
fn separate_calls_get_separate_keys() {
    runtime().block_on(async {
        let inner = Scripted::new([Step::status(503), Step::ok(), Step::status(503)]);
        let svc = stack_with(
            inner.clone(),
            RetryLayer::builder().base_delay(Duration::from_millis(1)),
        );
        svc.clone().oneshot(Caller::Post.request()).await.unwrap();
        svc.oneshot(Caller::Post.request()).await.unwrap();
        let keys: Vec<_> = inner.seen().iter().map(|s| s.key().unwrap()).collect();
        assert_eq!(keys.len(), 4);
        assert_eq!(keys[0], keys[1], "one call, one key");
        assert_eq!(keys[2], keys[3], "one call, one key");
        assert_ne!(keys[0], keys[2], "two calls, two keys");
    });
}

/// Runs the main property's generators on a fixed seed and checks that they reach every
/// outcome and every stop reason, so that a narrowed generator cannot silently stop
/// testing a row of the table.
#[test]
fn the_generators_reach_every_outcome_and_stop_reason() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;

    let mut runner = TestRunner::deterministic();
    let strategy = (config_strategy(), caller(), script());
    let mut outcomes = BTreeSet::new();
    let mut stops = BTreeSet::new();
    let mut timed_out = 0;
    let mut retried = 0;
    for _ in 0..CASES {
        let (cfg, caller, script) = strategy.new_tree(&mut runner).unwrap().current();
        let o = run(&cfg, &caller, &script);
        let report = match &o.result {
            Ok((_, _, _, r)) => r.clone(),
            Err(e) => e.report().clone(),
        };
        outcomes.insert(format!("{:?}", report.outcome()));
        let stop = match report.stop_reason() {
            StopReason::RetryAfterTooLong { .. } => "RetryAfterTooLong".to_owned(),
            other => format!("{other:?}"),
        };
        stops.insert(stop);
        timed_out += report
            .attempts()
            .iter()
            .filter(|a| a.class == Class::Timeout)
            .count();
        retried += usize::from(report.attempts().len() > 1);
    }
    for outcome in ["Success", "DefiniteFailure", "Indeterminate", "GaveUp"] {
        assert!(
            outcomes.contains(outcome),
            "{outcome} never reached: {outcomes:?}"
        );
    }
    for stop in [
        "Final",
        "ServerRefusedRetry",
        "AttemptsExhausted",
        "DeadlineExceeded",
        "RetryAfterTooLong",
    ] {
        assert!(stops.contains(stop), "{stop} never reached: {stops:?}");
    }
    assert!(timed_out > 0, "no attempt ever timed out");
    assert!(
        retried > CASES as usize / 4,
        "only {retried} calls were retried"
    );
}

/// "Gave up while retryable" means the work did not happen. After an attempt that may
/// have done it (here a 503 from in front of Stripe), a later 409 ("a request with the
/// same key is in flight", likely that very attempt) proves nothing of the kind: the call
/// is still indeterminate. The same holds for a 503 followed by a refused connection or a
/// 429 when attempts run out. (Found by the main property; fixed in ae8b7df.)
#[test]
fn gave_up_after_an_indeterminate_attempt_is_still_indeterminate() {
    runtime().block_on(async {
        for last in [
            Step::status(409),
            Step::status(429),
            Step::Fail(io::ErrorKind::ConnectionRefused),
        ] {
            let inner = Scripted::new([Step::status(503), last.clone()]);
            let svc = stack_with(
                inner.clone(),
                RetryLayer::builder()
                    .max_attempts(2)
                    .base_delay(Duration::from_millis(1)),
            );
            let err = svc.oneshot(Caller::Post.request()).await.unwrap_err();
            assert_eq!(inner.calls(), 2);
            assert_eq!(
                err.outcome(),
                Outcome::Indeterminate,
                "503 then {last:?}: {err}"
            );
        }
    });
}

/// tokio's timers fire on 1 ms ticks, rounded up. The retry loop used to schedule a retry
/// when `now + delay < deadline`, but a sleep ending less than a tick before the deadline
/// fires on the tick at (or after) it; `Readying` then found `now >= deadline` and ended
/// the call with `DeadlineExceeded` without sending the retry. Two visible effects:
///
/// - the last attempt's report carries a `delay` for a retry that never happened;
/// - a non-2xx body over the 64 KiB read limit was dropped when the retry was scheduled
///   (to free the connection while sleeping), so the caller gets its first 64 KiB and
///   then `BodyAbandoned` instead of the whole body, which the caller is promised.
///
/// On a real clock the same happens whenever the sleep wakes late by more than the slack
/// left before the deadline. Found by `every_call_keeps_the_invariants`; fixed in cd3cb24
/// (a retry is scheduled only if it can wake a tick before the deadline).
#[test]
fn a_retry_scheduled_within_a_timer_tick_of_the_deadline_is_sent_or_not_scheduled() {
    runtime().block_on(async {
        let big = Bytes::from(vec![b'x'; RESPONSE_BODY_LIMIT + 4096]);
        let inner = Scripted::new([Step::body(503, big.clone()), Step::ok()]);
        // The retry would start at 99.5 ms, before the 100 ms deadline; its sleep fires on
        // the 100 ms tick.
        let backoff =
            ExponentialBackoff::new(Duration::from_micros(99_500), Duration::from_secs(1))
                .jitter(Jitter::None);
        let svc = stack_with(
            inner.clone(),
            RetryLayer::builder()
                .backoff(backoff)
                .deadline(Duration::from_millis(100)),
        );
        match svc.oneshot(Caller::Post.request()).await {
            Ok(_) => assert_eq!(inner.calls(), 2, "the scheduled retry was sent"),
            Err(mut e) => {
                assert_eq!(inner.calls(), 1);
                let delay = e.report().attempts()[0].delay;
                let body = e.take_response().expect("the 503").into_body();
                let bytes = body.collect().await.map(|c| c.to_bytes());
                let bytes = bytes.expect("the whole body, not BodyAbandoned");
                assert_eq!(bytes.len(), big.len());
                assert_eq!(delay, None, "no delay is reported for a retry never sent");
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Many calls through one service: the retry budget and adaptive throttling
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Shared {
    cfg: Config,
    ratio: f64,
    reserve: u32,
    throttle: bool,
}

fn shared_strategy() -> impl Strategy<Value = Shared> {
    (
        config_strategy(),
        prop::sample::select(vec![0.0, 0.1, 0.5, 1.0]),
        0u32..=4,
        any::<bool>(),
    )
        .prop_map(|(cfg, ratio, reserve, throttle)| Shared {
            cfg,
            ratio,
            reserve,
            throttle,
        })
}

/// Runs `calls` one after another through clones of one service and checks, for each,
/// the invariants that do not depend on exact timing (the throttle may pace attempts);
/// and, across them, that retries stay within the budget: at most `reserve` plus `ratio`
/// of the calls made.
fn check_shared(s: &Shared, calls: &[(Caller, Vec<ScriptStep>)]) -> Result<(), TestCaseError> {
    let cfg = &s.cfg;
    let budget = RetryBudget::new(s.ratio, s.reserve).expect("a ratio from 0 to 1");
    let throttle = s.throttle;
    // One queue for all calls: a call that outlives its own script plays the next one's.
    let steps: Vec<ScriptStep> = calls.iter().flat_map(|(_, sc)| sc.clone()).collect();
    let step_at = |g: usize| steps.get(g).cloned().unwrap_or_else(ScriptStep::default_ok);
    runtime().block_on(async {
        let inner = Scripted::new(steps.iter().map(ScriptStep::to_step));
        let settings = cfg.builder().retry_budget(budget.clone());
        let settings = if throttle {
            settings.adaptive_throttling()
        } else {
            settings
        };
        let svc = stack_with(inner.clone(), settings);
        let max = cfg.max_attempts();
        let mut retries = 0usize;
        let mut generated_keys = std::collections::HashSet::new();
        for (k, (caller, _)) in calls.iter().enumerate() {
            let before = inner.calls();
            let start = Instant::now();
            let deadline = start + cfg.deadline;
            let result = svc.clone().oneshot(caller.request()).await;
            let end = Instant::now();
            let seen = inner.seen()[before..].to_vec();
            let n = seen.len();
            prop_assert!(end <= deadline, "call {} ended past its deadline", k);
            prop_assert!(n <= max, "call {} made {} attempts, max {}", k, n, max);
            retries += n.saturating_sub(1);
            let report = match &result {
                Ok(res) => res.body().report().cloned().unwrap(),
                Err(e) => e.report().clone(),
            };
            prop_assert_eq!(report.attempts().len(), n);
            let stop = report.stop_reason();
            if n == 0 {
                // Only the throttle may keep a call from its first attempt.
                prop_assert_eq!(stop, StopReason::Throttled);
                continue;
            }
            let first_key = seen[0].headers.get(IDEMPOTENCY_KEY).cloned();
            for a in &seen {
                prop_assert!(a.at < deadline, "an attempt of call {} at its deadline", k);
                prop_assert_eq!(a.headers.get(IDEMPOTENCY_KEY), first_key.as_ref());
                prop_assert_eq!(&a.body[..], REQUEST_BODY);
            }
            match (&first_key, caller.caller_key()) {
                (Some(key), None) => {
                    prop_assert!(generated_keys.insert(key.clone()), "a generated key reused")
                }
                (Some(key), Some(mine)) => prop_assert_eq!(key.as_bytes(), mine.as_bytes()),
                (None, _) => prop_assert!(!matches!(caller.method(), Method::POST | Method::PATCH)),
            }
            // The outcome follows from the last attempt (and whether an earlier one may
            // have done the work).
            let method = caller.method();
            let verdicts: Vec<Verdict> = report
                .attempts()
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    if a.status.is_none() && a.class == Class::Timeout {
                        verdict(Outcome::Indeterminate, true)
                    } else {
                        oracle(&step_at(before + j).act)
                    }
                })
                .collect();
            for v in &verdicts[..n - 1] {
                prop_assert!(v.retry, "call {} retried a final attempt", k);
            }
            let last = verdicts[n - 1];
            let earlier = verdicts[..n - 1]
                .iter()
                .any(|v| v.outcome == Outcome::Indeterminate);
            let forced = stop == StopReason::DeadlineExceeded
                && report.attempts()[n - 1].class == Class::Timeout
                && report.attempts()[n - 1].status.is_none();
            let last_act = &step_at(before + n - 1).act;
            let expected = if forced || (earlier && not_settled_by(&method, last_act, last.outcome))
            {
                Outcome::Indeterminate
            } else {
                last.outcome
            };
            prop_assert_eq!(report.outcome(), expected, "call {}", k);
            if !last.retry && !forced {
                prop_assert_eq!(stop, last.own_stop(), "call {}", k);
            }
            if stop == StopReason::AttemptsExhausted {
                prop_assert_eq!(n, max);
            }
            if let Err(e) = &result {
                let got_response = e.status().is_some();
                if let (true, Act::Respond { status, .. }) =
                    (got_response, &step_at(before + n - 1).act)
                {
                    prop_assert_eq!(e.status().map(|s| s.as_u16()), Some(*status));
                    prop_assert_eq!(e.headers(), Some(&step_at(before + n - 1).header_map()));
                }
            }
        }
        // Retries add at most `ratio` of the calls, plus the reserve.
        let allowed = f64::from(s.reserve) + s.ratio * calls.len() as f64 + 1e-6;
        prop_assert!(
            retries as f64 <= allowed,
            "{} retries over {} calls, budget {} + {}/call",
            retries,
            calls.len(),
            s.reserve,
            s.ratio
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: config().cases / 4, ..config() })]

    /// The invariants still hold when many calls share one service, its retry budget and
    /// (sometimes) adaptive throttling; and retries stay within the budget.
    #[test]
    fn calls_sharing_a_budget_and_throttle_keep_the_invariants(
        shared in shared_strategy(),
        calls in prop::collection::vec((caller(), script()), 1..=12),
    ) {
        check_shared(&shared, &calls)?;
    }
}

proptest! {
    #![proptest_config(config())]

    /// A call dropped at any instant (mid-attempt, mid-sleep, mid-body) sends nothing
    /// more, however long the clock then runs.
    #[test]
    fn dropping_a_call_at_any_instant_leaves_nothing_running(
        cfg in config_strategy(),
        caller in caller(),
        script in script(),
        drop_at in 0u64..3_000,
    ) {
        runtime().block_on(async {
            let inner = Scripted::new(script.iter().map(ScriptStep::to_step));
            let svc = stack_with(inner.clone(), cfg.builder());
            let call = svc.oneshot(caller.request());
            let drop_at = Duration::from_millis(drop_at);
            if tokio::time::timeout(drop_at, call).await.is_err() {
                let sent = inner.calls();
                prop_assert!(sent <= cfg.max_attempts());
                tokio::time::sleep(cfg.deadline + Duration::from_secs(3600)).await;
                prop_assert_eq!(inner.calls(), sent, "an attempt was sent after the drop");
            }
            Ok(())
        })?;
    }
}
