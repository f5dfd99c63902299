//! Idempotency keys through the whole stack, on paused tokio time: one key per call (a
//! random UUID v4, the caller's own, or one derived from an operation id), sent byte for
//! byte on every attempt; invalid keys never reach the network.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use resilient_http::headers::IDEMPOTENCY_KEY;
use resilient_http::idempotency::{DeriveKey, IdempotencyKey, InvalidIdempotencyKey, OperationId};
use resilient_http::stripe::StripeClassifier;
use resilient_http::{CallReport, Error, Outcome, Resilient, ResilientLayer, StopReason};
use std::collections::HashSet;
use std::io;
use tower::{Layer, ServiceExt};
use uuid::Uuid;

const NAMESPACE: Uuid = Uuid::from_u128(0x6ba7b810_9dad_11d1_80b4_00c04fd430c8);

/// The raw bytes of every `Idempotency-Key` header the inner service saw, all values of
/// every attempt.
fn raw_keys(inner: &Scripted) -> Vec<Vec<Vec<u8>>> {
    inner
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get_all(IDEMPOTENCY_KEY)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect()
        })
        .collect()
}

/// Asserts `key` is a lower-case hyphenated UUID v4 (36 characters).
fn assert_uuid_v4(key: &str) {
    assert_eq!(key.len(), 36, "{key:?}");
    let uuid = Uuid::parse_str(key).unwrap_or_else(|e| panic!("{key:?} is not a UUID: {e}"));
    assert_eq!(uuid.get_version_num(), 4, "{key:?}");
    assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{key:?}");
    assert_eq!(uuid.hyphenated().to_string(), key, "canonical form");
}

fn report_of<B>(res: &http::Response<resilient_http::ResponseBody<B>>) -> &CallReport {
    res.body()
        .report()
        .expect("a successful response carries its CallReport")
}

fn post_with_key(key: HeaderValue) -> Request<Full<Bytes>> {
    let mut req = post_charge();
    req.headers_mut().insert(IDEMPOTENCY_KEY, key);
    req
}

// ---------------------------------------------------------------------------------------
// Stability across attempts
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_attempt_of_a_call_carries_the_identical_key() {
    let inner = Scripted::new([
        Step::status(503),
        Step::Fail(io::ErrorKind::ConnectionReset),
        Step::ok(),
    ]);
    let res = stack(inner.clone()).oneshot(post_charge()).await.unwrap();
    assert_eq!(inner.calls(), 3);
    let raw = raw_keys(&inner);
    assert_eq!(raw[0].len(), 1, "exactly one key header per attempt");
    for (i, attempt) in raw.iter().enumerate() {
        assert_eq!(attempt, &raw[0], "attempt {} key, byte for byte", i + 1);
    }
    let key = String::from_utf8(raw[0][0].clone()).unwrap();
    assert_uuid_v4(&key);
    let report = report_of(&res);
    assert_eq!(report.attempts().len(), 3);
    assert_eq!(report.idempotency_key().unwrap().as_str(), key);
    assert_eq!(
        report
            .idempotency_key()
            .unwrap()
            .as_header_value()
            .as_bytes(),
        &raw[0][0][..]
    );
}

#[tokio::test(start_paused = true)]
async fn the_key_is_stable_when_the_call_ends_indeterminate() {
    let inner = Scripted::new(vec![Step::status(502); 3]);
    let e = stack(inner.clone())
        .oneshot(post_charge())
        .await
        .unwrap_err();
    assert!(e.is_indeterminate());
    assert_eq!(inner.calls(), 3);
    let keys = inner.keys();
    let first = keys[0].clone().unwrap();
    assert!(keys.iter().all(|k| k.as_deref() == Some(first.as_str())));
    // The error carries the very key the server saw, for reconciliation.
    assert_eq!(e.idempotency_key().unwrap().as_str(), first);
    assert_eq!(e.report().idempotency_key().unwrap().as_str(), first);
}

#[tokio::test(start_paused = true)]
async fn the_request_body_is_replayed_unchanged_with_the_key() {
    let inner = Scripted::new([Step::status(409), Step::ok()]);
    stack(inner.clone()).oneshot(post_charge()).await.unwrap();
    let seen = inner.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].body,
        Bytes::from_static(b"amount=2000&currency=usd")
    );
    assert_eq!(seen[1].body, seen[0].body);
    assert_eq!(seen[0].key(), seen[1].key());
}

// ---------------------------------------------------------------------------------------
// Distinct calls never share a generated key
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_hundred_calls_through_one_service_get_a_hundred_distinct_uuid_v4_keys() {
    let inner = Scripted::new([]);
    let svc = stack(inner.clone());
    let mut reported = Vec::new();
    for _ in 0..100 {
        let res = svc.clone().oneshot(post_charge()).await.unwrap();
        reported.push(
            report_of(&res)
                .idempotency_key()
                .expect("a POST has a key")
                .as_str()
                .to_owned(),
        );
    }
    assert_eq!(inner.calls(), 100);
    let sent: Vec<String> = inner.keys().into_iter().map(Option::unwrap).collect();
    assert_eq!(sent, reported, "each report names the key its call sent");
    for key in &sent {
        assert_uuid_v4(key);
    }
    let distinct: HashSet<&String> = sent.iter().collect();
    assert_eq!(distinct.len(), 100, "two calls shared a generated key");
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_get_distinct_keys_and_each_keeps_its_own_on_retry() {
    // Each call gets a 503 then a 200; all calls run at once on one service.
    let inner = Scripted::new(vec![Step::status(503); 10]);
    let svc = stack(inner.clone());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        set.spawn(svc.clone().oneshot(post_charge()));
    }
    let mut reported = HashSet::new();
    while let Some(res) = set.join_next().await {
        let res = res.expect("task").unwrap();
        let report = report_of(&res);
        assert_eq!(report.attempts().len(), 2);
        reported.insert(report.idempotency_key().unwrap().as_str().to_owned());
    }
    assert_eq!(reported.len(), 10);
    assert_eq!(inner.calls(), 20);
    // Every key was sent exactly twice: once per attempt of its own call.
    let sent: Vec<String> = inner.keys().into_iter().map(Option::unwrap).collect();
    for key in &reported {
        assert_eq!(sent.iter().filter(|k| *k == key).count(), 2, "{key}");
    }
}

#[test]
fn calls_made_on_many_threads_get_distinct_uuid_v4_keys() {
    // Each key is drawn from the calling thread's own generator: threads that start at
    // the same moment must still never draw the same key.
    let inner = Scripted::new([]);
    let svc = stack(inner.clone());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut keys = Vec::new();
                    for _ in 0..25 {
                        let res = svc.clone().oneshot(post_charge()).await.unwrap();
                        let key = report_of(&res).idempotency_key().unwrap();
                        keys.push(key.as_str().to_owned());
                    }
                    keys
                })
            })
        })
        .collect();
    let reported: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("no panic"))
        .collect();
    assert_eq!(reported.len(), 200);
    assert_eq!(inner.calls(), 200, "one attempt per call");
    let distinct: HashSet<&String> = reported.iter().collect();
    assert_eq!(distinct.len(), 200, "two calls shared a generated key");
    for key in &reported {
        assert_uuid_v4(key);
    }
    let mut sent: Vec<String> = inner.keys().into_iter().map(Option::unwrap).collect();
    let mut reported = reported;
    sent.sort();
    reported.sort();
    assert_eq!(sent, reported, "each call sent the key its report names");
}

// ---------------------------------------------------------------------------------------
// Caller-supplied keys
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_caller_supplied_header_key_is_kept_unchanged_on_every_attempt() {
    let mine = "order-1234/charge:~!#$%&'*+.^_`|";
    let inner = Scripted::new([Step::status(429), Step::ok()]);
    let res = stack(inner.clone())
        .oneshot(post_with_key(HeaderValue::from_static(mine)))
        .await
        .unwrap();
    assert_eq!(inner.calls(), 2);
    assert_eq!(
        raw_keys(&inner),
        vec![vec![mine.as_bytes().to_vec()]; 2],
        "one header, unchanged, on both attempts"
    );
    assert_eq!(report_of(&res).idempotency_key().unwrap().as_str(), mine);
}

#[tokio::test(start_paused = true)]
async fn a_caller_supplied_key_of_exactly_255_characters_is_accepted() {
    let mine = "k".repeat(255);
    let inner = Scripted::new([]);
    let res = stack(inner.clone())
        .oneshot(post_with_key(HeaderValue::from_str(&mine).unwrap()))
        .await
        .unwrap();
    assert_eq!(inner.calls(), 1);
    assert_eq!(inner.keys(), vec![Some(mine.clone())]);
    assert_eq!(report_of(&res).idempotency_key().unwrap().as_str(), mine);
}

#[tokio::test(start_paused = true)]
async fn a_caller_supplied_extension_key_is_sent_as_is() {
    let inner = Scripted::new([Step::Fail(io::ErrorKind::ConnectionReset), Step::ok()]);
    let mut req = post_charge();
    req.extensions_mut()
        .insert(IdempotencyKey::new("order-42/refund").unwrap());
    let res = stack(inner.clone()).oneshot(req).await.unwrap();
    assert_eq!(inner.keys(), vec![Some("order-42/refund".to_owned()); 2]);
    assert_eq!(
        report_of(&res).idempotency_key().unwrap().as_str(),
        "order-42/refund"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_supplied_key_is_kept_even_on_methods_that_get_none() {
    // A caller who sets a key on a GET presumably means it: it is not removed.
    let inner = Scripted::new([]);
    let mut req = request(Method::GET);
    req.headers_mut()
        .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("get-key-1"));
    stack(inner.clone()).oneshot(req).await.unwrap();
    assert_eq!(inner.keys(), vec![Some("get-key-1".to_owned())]);
}

// ---------------------------------------------------------------------------------------
// Invalid keys never reach the network
// ---------------------------------------------------------------------------------------

async fn rejected(inner: &Scripted, req: Request<Full<Bytes>>) -> Error {
    let e = stack(inner.clone())
        .oneshot(req)
        .await
        .expect_err("an invalid key is rejected");
    assert_eq!(inner.calls(), 0, "nothing was sent: {e}");
    assert!(e.is_rejected(), "{e}");
    assert_eq!(e.report().stop_reason(), StopReason::Rejected);
    assert!(e.report().attempts().is_empty());
    assert!(e.is_definite_failure(), "{e}");
    assert_eq!(e.outcome(), Outcome::DefiniteFailure);
    assert!(e.status().is_none());
    assert!(
        e.underlying_error()
            .is_some_and(|c| c.is::<InvalidIdempotencyKey>()),
        "{e:?}"
    );
    // `Display` is the call's report line; what is wrong is the error under it.
    let shown = cause_message(&e);
    assert!(shown.contains("255"), "the error names the limit: {shown}");
    assert!(
        shown.to_ascii_lowercase().contains("idempotency key"),
        "the error says what is wrong: {shown}"
    );
    e
}

/// The message of the error under `e`, as an error reporter walking the chain shows it.
fn cause_message(e: &Error) -> String {
    std::error::Error::source(e)
        .unwrap_or_else(|| panic!("no source under {e:?}"))
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn a_256_character_key_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let key = HeaderValue::from_str(&"k".repeat(256)).unwrap();
    let e = rejected(&inner, post_with_key(key)).await;
    let shown = cause_message(&e);
    assert!(shown.contains("256"), "{shown}");
}

#[tokio::test(start_paused = true)]
async fn a_key_with_a_space_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    rejected(
        &inner,
        post_with_key(HeaderValue::from_static("order 1234")),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_key_with_a_tab_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    rejected(
        &inner,
        post_with_key(HeaderValue::from_static("order\t1234")),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_key_with_a_non_ascii_byte_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    let key = HeaderValue::from_bytes(b"order-\xe9").unwrap();
    rejected(&inner, post_with_key(key)).await;
}

#[tokio::test(start_paused = true)]
async fn an_empty_key_is_rejected_before_sending() {
    let inner = Scripted::new([]);
    rejected(&inner, post_with_key(HeaderValue::from_static(""))).await;
}

#[tokio::test(start_paused = true)]
async fn two_key_headers_are_rejected_before_sending() {
    let inner = Scripted::new([]);
    let mut req = post_charge();
    req.headers_mut()
        .append(IDEMPOTENCY_KEY, HeaderValue::from_static("key-a"));
    req.headers_mut()
        .append(IDEMPOTENCY_KEY, HeaderValue::from_static("key-b"));
    let e = stack(inner.clone()).oneshot(req).await.unwrap_err();
    assert_eq!(inner.calls(), 0);
    assert!(e.is_rejected(), "{e}");
    assert!(
        matches!(
            e.underlying_error()
                .and_then(|c| c.downcast_ref::<InvalidIdempotencyKey>()),
            Some(InvalidIdempotencyKey::Repeated)
        ),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalid_key_on_a_get_is_rejected_too() {
    let inner = Scripted::new([]);
    let mut req = request(Method::GET);
    req.headers_mut().insert(
        IDEMPOTENCY_KEY,
        HeaderValue::from_str(&"x".repeat(300)).unwrap(),
    );
    rejected(&inner, req).await;
}

#[test]
fn invalid_keys_cannot_be_built_and_name_the_limit() {
    for bad in ["", "a b", "tab\there", "del\u{7f}", "é", &"k".repeat(256)] {
        let err = IdempotencyKey::new(bad).expect_err(bad);
        assert!(err.to_string().contains("255"), "{bad:?}: {err}");
    }
    assert!(IdempotencyKey::new("~".repeat(255)).is_ok());
    assert!(IdempotencyKey::new("!").is_ok());
}

// ---------------------------------------------------------------------------------------
// Which methods get a key
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn get_head_options_and_delete_never_get_a_key() {
    for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::DELETE] {
        // A retry too: no attempt carries a key.
        let inner = Scripted::new([Step::status(503), Step::ok()]);
        let res = stack(inner.clone())
            .oneshot(request(method.clone()))
            .await
            .unwrap();
        assert_eq!(inner.calls(), 2, "{method}");
        assert_eq!(inner.keys(), vec![None, None], "{method}");
        assert!(report_of(&res).idempotency_key().is_none(), "{method}");
        assert!(inner.seen().iter().all(|s| s.method == method));
    }
}

#[tokio::test(start_paused = true)]
async fn post_and_patch_get_a_key() {
    for method in [Method::POST, Method::PATCH] {
        let inner = Scripted::new([Step::status(503), Step::ok()]);
        let res = stack(inner.clone())
            .oneshot(request(method.clone()))
            .await
            .unwrap();
        assert_eq!(inner.calls(), 2, "{method}");
        let keys = inner.keys();
        let key = keys[0]
            .clone()
            .unwrap_or_else(|| panic!("{method} has no key"));
        assert_uuid_v4(&key);
        assert_eq!(keys[1].as_deref(), Some(key.as_str()), "{method}");
        assert_eq!(
            report_of(&res).idempotency_key().unwrap().as_str(),
            key,
            "{method}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Keys derived from an operation id
// ---------------------------------------------------------------------------------------

fn derived_stack(inner: Scripted) -> Resilient<Scripted, StripeClassifier, DeriveKey> {
    ResilientLayer::new(retry_layer())
        .key_maker(DeriveKey::new(NAMESPACE))
        .layer(inner)
}

fn post_for(operation: &str) -> Request<Full<Bytes>> {
    let mut req = post_charge();
    req.extensions_mut()
        .insert(OperationId(operation.to_owned()));
    req
}

#[tokio::test(start_paused = true)]
async fn an_operation_id_gives_the_same_key_across_separate_service_instances() {
    // Before a crash: the first process tries, gets an indeterminate 502 every time.
    let before = Scripted::new(vec![Step::status(502); 3]);
    let e = derived_stack(before.clone())
        .oneshot(post_for("order-1234/charge"))
        .await
        .unwrap_err();
    assert!(e.is_indeterminate());
    // After a restart: a brand-new stack replays the same operation.
    let after = Scripted::new([Step::ok().header("idempotent-replayed", "true")]);
    let res = derived_stack(after.clone())
        .oneshot(post_for("order-1234/charge"))
        .await
        .unwrap();

    let mut all = before.keys();
    all.extend(after.keys());
    assert_eq!(all.len(), 4);
    let expected = IdempotencyKey::from_operation_id(&NAMESPACE, "order-1234/charge");
    let expected_uuid = Uuid::new_v5(&NAMESPACE, b"order-1234/charge");
    assert_eq!(expected.as_str(), expected_uuid.hyphenated().to_string());
    for key in &all {
        assert_eq!(key.as_deref(), Some(expected.as_str()));
    }
    assert_eq!(e.idempotency_key(), Some(&expected));
    let report = report_of(&res);
    assert_eq!(report.idempotency_key(), Some(&expected));
    assert!(report.replayed());
}

#[tokio::test(start_paused = true)]
async fn different_operation_ids_give_different_keys() {
    let inner = Scripted::new([]);
    let svc = derived_stack(inner.clone());
    for op in [
        "order-1234/charge",
        "order-1235/charge",
        "order-1234/refund",
    ] {
        svc.clone().oneshot(post_for(op)).await.unwrap();
    }
    let sent: Vec<String> = inner.keys().into_iter().map(Option::unwrap).collect();
    assert_eq!(sent.len(), 3);
    let distinct: HashSet<&String> = sent.iter().collect();
    assert_eq!(distinct.len(), 3, "{sent:?}");
    for (key, op) in sent.iter().zip([
        "order-1234/charge",
        "order-1235/charge",
        "order-1234/refund",
    ]) {
        assert_eq!(
            key,
            IdempotencyKey::from_operation_id(&NAMESPACE, op).as_str()
        );
        let uuid = Uuid::parse_str(key).unwrap();
        assert_eq!(uuid.get_version_num(), 5);
    }
}

#[tokio::test(start_paused = true)]
async fn derive_key_without_an_operation_id_falls_back_to_random_keys() {
    let inner = Scripted::new([]);
    let svc = derived_stack(inner.clone());
    svc.clone().oneshot(post_charge()).await.unwrap();
    svc.oneshot(post_charge()).await.unwrap();
    let sent: Vec<String> = inner.keys().into_iter().map(Option::unwrap).collect();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0], sent[1]);
    for key in &sent {
        assert_uuid_v4(key);
    }
}

#[tokio::test(start_paused = true)]
async fn an_explicit_key_wins_over_an_operation_id() {
    let inner = Scripted::new([]);
    let mut req = post_for("order-1234/charge");
    req.headers_mut()
        .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("explicit-1"));
    derived_stack(inner.clone()).oneshot(req).await.unwrap();
    assert_eq!(inner.keys(), vec![Some("explicit-1".to_owned())]);
}

// ---------------------------------------------------------------------------------------
// Replays and the report
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn idempotent_replayed_true_is_reported_as_a_replay() {
    let inner = Scripted::new([Step::ok().header("idempotent-replayed", "true")]);
    let res = stack(inner.clone()).oneshot(post_charge()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let report = report_of(&res);
    assert!(report.replayed());
    assert!(report.to_string().contains("replayed"), "{report}");
    // The header is left for the caller too.
    assert_eq!(res.headers()["idempotent-replayed"], "true");
}

#[tokio::test(start_paused = true)]
async fn a_replay_after_a_retry_is_reported() {
    // The first attempt did the work but its answer was lost; the retry with the same
    // key gets Stripe's saved result.
    let inner = Scripted::new([
        Step::Fail(io::ErrorKind::ConnectionReset),
        Step::ok().header("idempotent-replayed", "true"),
    ]);
    let res = stack(inner.clone()).oneshot(post_charge()).await.unwrap();
    let report = report_of(&res);
    assert!(report.replayed());
    assert_eq!(report.attempts().len(), 2);
    let keys = inner.keys();
    assert_eq!(keys[0], keys[1]);
    assert_eq!(
        report.idempotency_key().unwrap().as_str(),
        keys[0].as_deref().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn responses_without_the_replay_header_are_not_replays() {
    for header in [None, Some("false"), Some("no")] {
        let step = match header {
            Some(v) => Step::ok().header("idempotent-replayed", v),
            None => Step::ok(),
        };
        let inner = Scripted::new([step]);
        let res = stack(inner).oneshot(post_charge()).await.unwrap();
        assert!(!report_of(&res).replayed(), "{header:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_replayed_error_is_reported_as_a_replay() {
    // Stripe replays a saved error too, e.g. the card_error of the first attempt.
    let inner = Scripted::new([
        Step::stripe(402, "card_error", "card_declined").header("idempotent-replayed", "true")
    ]);
    let e = stack(inner).oneshot(post_charge()).await.unwrap_err();
    assert!(e.is_definite_failure());
    assert!(e.report().replayed());
}

#[tokio::test(start_paused = true)]
async fn the_reported_key_is_the_one_the_server_saw() {
    let inner = Scripted::new([Step::status(429), Step::status(409), Step::ok()]);
    let res = stack(inner.clone()).oneshot(post_charge()).await.unwrap();
    let report = report_of(&res);
    let seen = inner.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(
            s.headers.get(IDEMPOTENCY_KEY),
            Some(report.idempotency_key().unwrap().as_header_value())
        );
    }
}

#[test]
fn a_key_made_in_a_thread_local_destructor_is_still_a_fresh_uuid() {
    // Code that calls an API while its thread exits: the thread's random generator may
    // be gone already. A key must still be made, not a panic.
    struct MakesAKeyOnDrop(std::sync::mpsc::Sender<String>);
    impl Drop for MakesAKeyOnDrop {
        fn drop(&mut self) {
            let key = IdempotencyKey::random();
            let _ = self.0.send(key.as_str().to_owned());
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<Option<MakesAKeyOnDrop>> =
            const { std::cell::RefCell::new(None) };
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let earlier = std::thread::spawn(move || {
        // Set up first, so torn down after the generator that the next line sets up.
        LATE.with(|late| *late.borrow_mut() = Some(MakesAKeyOnDrop(tx)));
        IdempotencyKey::random().as_str().to_owned()
    })
    .join()
    .expect("the thread exits without a panic");
    let late = rx.recv().expect("a key made while the thread exited");
    assert_eq!(
        uuid::Uuid::parse_str(&late).map(|u| u.get_version_num()),
        Ok(4)
    );
    assert_ne!(late, earlier);
}

// ---------------------------------------------------------------------------------------
// The head a replay sends, and a refusal as the call is made
// ---------------------------------------------------------------------------------------

/// An extension whose clones know they are clones.
#[derive(Debug)]
struct Marker {
    original: bool,
}

impl Clone for Marker {
    fn clone(&self) -> Self {
        Marker { original: false }
    }
}

/// Records, for each attempt, whether it carried the caller's own `Marker`; answers 503,
/// then 200.
#[derive(Clone, Default)]
struct Markers(std::sync::Arc<std::sync::Mutex<Vec<Option<bool>>>>);

impl tower::Service<Request<Full<Bytes>>> for Markers {
    type Response = http::Response<Full<Bytes>>;
    type Error = resilient_http::BoxError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let mut seen = self.0.lock().unwrap();
        seen.push(req.extensions().get::<Marker>().map(|m| m.original));
        let mut res = http::Response::new(Full::new(Bytes::new()));
        if seen.len() == 1 {
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        std::future::ready(Ok(res))
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_carries_the_callers_own_extensions_and_a_replay_a_clone() {
    let inner = Markers::default();
    let svc = retry_layer().layer(inner.clone());
    let mut req = request(Method::GET);
    req.extensions_mut().insert(Marker { original: true });
    let res = svc.oneshot(req).await;
    assert!(res.is_ok(), "{:?}", res.err());
    assert_eq!(*inner.0.lock().unwrap(), [Some(true), Some(false)]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_call_is_logged_as_it_is_made_even_if_never_polled() {
    let inner = Scripted::new([]);
    let mut svc = stack(inner.clone());
    // A first refusal before the subscriber, so that its event's callsite is registered
    // already: tracing caches a callsite's interest when it is first hit, and another
    // test's thread hitting it first while this subscriber is being set could leave it
    // disabled.
    refuse_unpolled(&mut svc).await;
    let (count, _guard) = count_events("resilient_http::retry", None);
    refuse_unpolled(&mut svc).await;
    assert_eq!(inner.calls(), 0);
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one event: the refusal"
    );
}

/// Makes a call with an empty key, and drops its future without polling it.
async fn refuse_unpolled(svc: &mut Resilient<Scripted>) {
    std::future::poll_fn(|cx| tower::Service::<Request<Full<Bytes>>>::poll_ready(svc, cx))
        .await
        .unwrap();
    drop(tower::Service::call(
        svc,
        post_with_key(HeaderValue::from_static("")),
    ));
}
