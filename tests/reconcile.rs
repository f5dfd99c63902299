//! The reconciler over the whole stack, on paused tokio time: a call that ends
//! indeterminate (and only such a call) is recorded as pending; a matching event or a
//! replay with the same key settles it, once; callers list pending calls and wait for one;
//! a store that fails loses nothing; an SQLite store survives a restart.
#![cfg(feature = "webhooks")]

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use resilient_http::headers::IDEMPOTENCY_KEY;
use resilient_http::stripe::reconcile::{
    MemoryStore, Pending, PendingStore, Reconciler, SettledBy, StoreError, StoreOp, WaitError,
    REPLAY_WINDOW,
};
use resilient_http::stripe::webhook::Event;
use resilient_http::stripe::Category;
use resilient_http::{Error, Outcome, Resilient};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tower::ServiceExt;

/// Three `api_error`s, each with a request id: the call ends indeterminate.
fn lost() -> Vec<Step> {
    (1..=3)
        .map(|n| Step::stripe(500, "api_error", "").header("request-id", format!("req_{n}")))
        .collect()
}

/// The stack over `inner`, telling `reconciler` of every indeterminate call.
fn stack_for(inner: Scripted, reconciler: &Reconciler) -> Resilient<Scripted> {
    stack_with(inner, builder().on_indeterminate(reconciler.clone()))
}

/// A charge with credentials and a key of the test's choosing.
fn charge(key: &str) -> Request<Full<Bytes>> {
    let mut req = post_charge();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_static("Bearer sk_test_123"),
    );
    req.headers_mut()
        .insert(IDEMPOTENCY_KEY, HeaderValue::from_str(key).unwrap());
    req
}

/// Runs one charge with key `key` through a stack playing `steps`.
async fn call(reconciler: &Reconciler, steps: Vec<Step>, key: &str) -> Result<(), Error> {
    stack_for(Scripted::new(steps), reconciler)
        .oneshot(charge(key))
        .await
        .map(drop)
}

/// Records one indeterminate call with key `key`.
async fn record(reconciler: &Reconciler, key: &str) {
    let err = call(reconciler, lost(), key).await.unwrap_err();
    assert!(err.is_indeterminate(), "{err}");
}

fn keys(reconciler: &Reconciler) -> Vec<String> {
    let pending = reconciler.pending().unwrap();
    pending.into_iter().map(|p| p.idempotency_key).collect()
}

/// An event as Stripe sends it, caused by the request with key `key`.
fn event(id: &str, event_type: &str, key: &str, object: serde_json::Value) -> Event {
    let body = serde_json::json!({
        "id": id, "object": "event", "type": event_type, "created": 1_700_000_000,
        "livemode": false, "api_version": "2024-06-20",
        "data": {"object": object},
        "request": {"id": "req_2", "idempotency_key": key},
    });
    Event::from_slice(body.to_string().as_bytes()).unwrap()
}

fn charge_succeeded(id: &str, key: &str) -> Event {
    let charge = serde_json::json!({"id": "ch_1", "object": "charge", "status": "succeeded"});
    event(id, "charge.succeeded", key, charge)
}

fn payment_failed(id: &str, key: &str) -> Event {
    let intent = serde_json::json!({
        "id": "pi_1", "object": "payment_intent", "status": "requires_payment_method",
        "last_payment_error": {"type": "card_error", "code": "card_declined",
            "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."},
    });
    event(id, "payment_intent.payment_failed", key, intent)
}

// ---- recording ----

#[tokio::test(start_paused = true)]
async fn an_indeterminate_call_is_recorded_with_what_a_replay_needs() {
    let reconciler = Reconciler::new();
    let before = SystemTime::now();
    record(&reconciler, "key_1").await;

    let pending = reconciler.pending().unwrap();
    assert_eq!(pending.len(), 1);
    let p = &pending[0];
    assert_eq!(p.idempotency_key, "key_1");
    assert_eq!(p.request_ids, ["req_1", "req_2", "req_3"]);
    assert_eq!(p.method, Method::POST);
    assert_eq!(p.uri, "http://stripe.test/v1/charges");
    assert_eq!(p.body, "amount=2000&currency=usd");
    assert_eq!(p.headers[IDEMPOTENCY_KEY], "key_1");
    assert_eq!(
        p.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert!(p.recorded_at >= before && p.recorded_at <= SystemTime::now());
}

#[tokio::test(start_paused = true)]
async fn credentials_are_never_recorded() {
    let reconciler = Reconciler::new();
    let mut req = charge("key_1");
    let mut secret = HeaderValue::from_static("s3cr3t");
    secret.set_sensitive(true);
    req.headers_mut().insert("x-api-secret", secret);
    req.headers_mut()
        .insert("cookie", HeaderValue::from_static("session=1"));
    req.headers_mut().insert(
        "proxy-authorization",
        HeaderValue::from_static("Basic eA=="),
    );
    let inner = Scripted::new(lost());
    let err = stack_for(inner.clone(), &reconciler)
        .oneshot(req)
        .await
        .unwrap_err();
    assert!(err.is_indeterminate());
    // They were sent...
    assert!(inner.seen()[0].headers.contains_key("authorization"));
    // ...but not recorded.
    let headers = &reconciler.pending().unwrap()[0].headers;
    for name in [
        "authorization",
        "x-api-secret",
        "cookie",
        "proxy-authorization",
    ] {
        assert!(!headers.contains_key(name), "{name} recorded");
    }
}

#[tokio::test(start_paused = true)]
async fn only_indeterminate_calls_are_recorded() {
    let card_declined = || Step::stripe(402, "card_error", "card_declined");
    let cases = [
        (
            "definite failure",
            vec![card_declined()],
            Outcome::DefiniteFailure,
        ),
        (
            "gave up on 429s",
            vec![Step::status(429); 3],
            Outcome::GaveUp,
        ),
        (
            "gave up, never connected",
            vec![Step::Fail(io::ErrorKind::ConnectionRefused); 3],
            Outcome::GaveUp,
        ),
    ];
    for (case, steps, expected) in cases {
        let reconciler = Reconciler::new();
        let err = call(&reconciler, steps, "key_1").await.unwrap_err();
        assert_eq!(err.outcome(), expected, "{case}: {err}");
        assert_eq!(keys(&reconciler), Vec::<String>::new(), "{case}");
    }

    let reconciler = Reconciler::new();
    call(&reconciler, vec![Step::ok()], "key_1").await.unwrap();
    assert_eq!(keys(&reconciler), Vec::<String>::new(), "success");

    // A read without a key, indeterminate, has nothing to settle.
    let stack = stack_for(Scripted::new(lost()), &reconciler);
    let err = stack.oneshot(request(Method::GET)).await.unwrap_err();
    assert!(err.is_indeterminate() && err.idempotency_key().is_none());
    assert_eq!(keys(&reconciler), Vec::<String>::new(), "keyless GET");

    // The same reconciler records the one indeterminate call among them.
    record(&reconciler, "key_2").await;
    assert_eq!(keys(&reconciler), ["key_2"]);
}

#[tokio::test(start_paused = true)]
async fn pending_calls_are_listed_oldest_first() {
    let reconciler = Reconciler::new();
    for key in ["key_b", "key_a", "key_c"] {
        record(&reconciler, key).await;
        // Wall-clock order: a tick of the real clock between calls.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(keys(&reconciler), ["key_b", "key_a", "key_c"]);
}

// ---- settling by events ----

#[tokio::test(start_paused = true)]
async fn a_matching_event_settles_the_call_as_succeeded() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    record(&reconciler, "key_2").await;

    let settled = reconciler
        .settle_with_event(&charge_succeeded("evt_1", "key_1"))
        .unwrap();
    assert!(settled.is_succeeded());
    assert_eq!(settled.by(), &SettledBy::Event { id: "evt_1".into() });
    assert_eq!(settled.object().unwrap()["id"], "ch_1");
    assert_eq!(keys(&reconciler), ["key_2"]);
    assert_eq!(reconciler.settled("key_1"), Some(settled));
    assert_eq!(reconciler.settled("key_2"), None);
}

#[tokio::test(start_paused = true)]
async fn a_matching_failed_event_settles_the_call_with_the_stored_error() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;

    let settled = reconciler
        .settle_with_event(&payment_failed("evt_1", "key_1"))
        .unwrap();
    assert!(settled.is_failed());
    let error = settled.error().unwrap();
    assert_eq!(error.category(), Category::CardDeclined);
    assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
    assert!(keys(&reconciler).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_event_for_another_call_settles_nothing() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;

    assert_eq!(
        reconciler.settle_with_event(&charge_succeeded("evt_1", "key_other")),
        None
    );
    let mut keyless = charge_succeeded("evt_2", "key_1");
    keyless.request = None;
    assert_eq!(reconciler.settle_with_event(&keyless), None);

    assert_eq!(keys(&reconciler), ["key_1"]);
    assert_eq!(reconciler.settled("key_1"), None);
}

#[tokio::test(start_paused = true)]
async fn settling_twice_changes_nothing_and_never_flips() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let first = reconciler
        .settle_with_event(&charge_succeeded("evt_1", "key_1"))
        .unwrap();

    // The same event redelivered, then a contradicting one: nothing changes.
    assert_eq!(
        reconciler.settle_with_event(&charge_succeeded("evt_1", "key_1")),
        None
    );
    assert_eq!(
        reconciler.settle_with_event(&payment_failed("evt_2", "key_1")),
        None
    );
    assert_eq!(reconciler.settled("key_1"), Some(first));

    // Nor does a replay: there is nothing left to replay.
    let inner = Scripted::new([Step::stripe(402, "card_error", "card_declined")]);
    let report = reconciler
        .replay(stack_for(inner.clone(), &reconciler), Duration::ZERO)
        .await
        .unwrap();
    assert!(report.settled.is_empty() && report.still_pending.is_empty());
    assert_eq!(inner.calls(), 0);
    assert!(reconciler.settled("key_1").unwrap().is_succeeded());
}

#[tokio::test(start_paused = true)]
async fn an_event_after_a_replay_settled_the_call_changes_nothing() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let stack = stack_for(
        Scripted::new([Step::ok().header("request-id", "req_r")]),
        &reconciler,
    );
    let report = reconciler.replay(stack, Duration::ZERO).await.unwrap();
    let (key, by_replay) = &report.settled[0];
    assert_eq!(key, "key_1");

    assert_eq!(
        reconciler.settle_with_event(&payment_failed("evt_1", "key_1")),
        None
    );
    assert_eq!(reconciler.settled("key_1").as_ref(), Some(by_replay));
    assert_eq!(
        by_replay.by(),
        &SettledBy::Replay {
            request_id: Some("req_r".into())
        }
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_that_beats_the_retry_loop_settles_the_call_as_it_ends() {
    let store = Arc::new(Flaky::default());
    let reconciler = Reconciler::with_store(Shared(store.clone()));
    // The webhook arrives while the call is still retrying: nothing is pending yet.
    assert_eq!(
        reconciler.settle_with_event(&charge_succeeded("evt_1", "key_1")),
        None
    );
    record(&reconciler, "key_1").await;

    assert!(keys(&reconciler).is_empty(), "settled as it was recorded");
    assert!(store.inner.list().unwrap().is_empty(), "and never stored");
    let settled = reconciler.wait("key_1", Duration::ZERO).await.unwrap();
    assert_eq!(settled.by(), &SettledBy::Event { id: "evt_1".into() });
}

// ---- settling by replays ----

#[tokio::test(start_paused = true)]
async fn a_replay_sends_the_same_request_with_the_same_key() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let inner = Scripted::new([Step::ok()]);
    reconciler
        .replay(stack_for(inner.clone(), &reconciler), Duration::ZERO)
        .await
        .unwrap();

    let seen = inner.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].key().as_deref(), Some("key_1"));
    assert_eq!(seen[0].body, "amount=2000&currency=usd");
    assert_eq!(
        seen[0].headers["content-type"],
        "application/x-www-form-urlencoded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replay_settles_by_what_stripe_answers() {
    let card_declined =
        Step::stripe(402, "card_error", "card_declined").header("request-id", "req_r");
    // (case, the replay's answers, Some(failed?) if it settles)
    let cases: Vec<(&str, Vec<Step>, Option<bool>)> = vec![
        ("a success", vec![Step::ok()], Some(false)),
        ("a definite failure", vec![card_declined], Some(true)),
        ("indeterminate again", lost(), None),
        (
            "credentials refused",
            vec![Step::stripe(401, "invalid_request_error", "")],
            None,
        ),
        (
            "key used for another request",
            vec![Step::stripe(400, "idempotency_error", "")],
            None,
        ),
        ("gave up on 429s", vec![Step::status(429); 3], None),
    ];
    for (case, answers, settles) in cases {
        let reconciler = Reconciler::new();
        record(&reconciler, "key_1").await;
        let stack = stack_for(Scripted::new(answers), &reconciler);
        let report = reconciler.replay(stack, Duration::ZERO).await.unwrap();
        match settles {
            Some(failed) => {
                assert_eq!(report.settled.len(), 1, "{case}");
                let settled = &report.settled[0].1;
                assert_eq!(settled.is_failed(), failed, "{case}");
                assert!(matches!(settled.by(), SettledBy::Replay { .. }), "{case}");
                if failed {
                    assert_eq!(settled.error().unwrap().category(), Category::CardDeclined);
                    assert_eq!(
                        settled.by(),
                        &SettledBy::Replay {
                            request_id: Some("req_r".into())
                        }
                    );
                } else {
                    assert_eq!(settled.object().unwrap()["id"], "ch_1", "{case}");
                }
                assert!(keys(&reconciler).is_empty(), "{case}");
            }
            None => {
                assert!(report.settled.is_empty(), "{case}");
                assert_eq!(report.still_pending, ["key_1"], "{case}");
                assert_eq!(keys(&reconciler), ["key_1"], "{case}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_replay_that_ends_indeterminate_again_keeps_the_first_time_and_every_request_id() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let first = reconciler.pending().unwrap().remove(0);
    assert_eq!(first.request_ids, ["req_1", "req_2", "req_3"]);
    let answers = (4..=6)
        .map(|n| Step::stripe(500, "api_error", "").header("request-id", format!("req_{n}")))
        .collect::<Vec<_>>();
    let stack = stack_for(Scripted::new(answers), &reconciler);
    let report = reconciler.replay(stack, Duration::ZERO).await.unwrap();
    assert_eq!(report.still_pending, ["key_1"]);
    let again = reconciler.pending().unwrap().remove(0);
    // The replay window runs from the first record: a call that keeps answering
    // indeterminate is not replayed past the time Stripe keeps its key.
    assert_eq!(again.recorded_at, first.recorded_at);
    assert_eq!(
        again.request_ids,
        ["req_1", "req_2", "req_3", "req_4", "req_5", "req_6"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_replay_through_a_bare_client_settles_only_a_success() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    record(&reconciler, "key_2").await;
    // No retry layer: a 500 comes back as `Ok`, a transport error as the client's own.
    let inner = Scripted::new([Step::stripe(500, "api_error", ""), Step::ok()]);
    let report = reconciler.replay(inner, Duration::ZERO).await.unwrap();
    assert_eq!(report.still_pending, ["key_1"]);
    assert_eq!(report.settled[0].0, "key_2");
    let inner = Scripted::new([Step::Fail(io::ErrorKind::ConnectionReset)]);
    let report = reconciler.replay(inner, Duration::ZERO).await.unwrap();
    assert_eq!(report.still_pending, ["key_1"]);
}

/// A service that never gets ready, and counts the calls it should not get.
#[derive(Clone, Default)]
struct NeverReady(Arc<AtomicUsize>);

impl tower::Service<Request<Full<Bytes>>> for NeverReady {
    type Response = http::Response<Full<Bytes>>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Err(io::Error::other("closed")))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(io::Error::other("called while not ready")))
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_that_fails_to_get_ready_is_not_called() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    record(&reconciler, "key_2").await;
    let service = NeverReady::default();
    let report = reconciler
        .replay(service.clone(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.still_pending, ["key_1", "key_2"]);
    assert_eq!(service.0.load(Ordering::SeqCst), 0);
    assert_eq!(keys(&reconciler), ["key_1", "key_2"]);
}

#[tokio::test(start_paused = true)]
async fn calls_younger_than_the_delay_are_not_replayed_yet() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let inner = Scripted::new([Step::ok()]);
    let stack = stack_for(inner.clone(), &reconciler);
    let report = reconciler
        .replay(stack.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report.not_yet, ["key_1"]);
    assert_eq!(inner.calls(), 0);
    assert_eq!(keys(&reconciler), ["key_1"]);
}

#[tokio::test(start_paused = true)]
async fn calls_older_than_stripe_keeps_keys_are_never_replayed() {
    let store = MemoryStore::new();
    let old = SystemTime::now() - REPLAY_WINDOW - Duration::from_secs(60);
    let call = Pending::new("key_old", Method::POST, "/v1/charges".parse().unwrap(), old);
    store.insert(&call).unwrap();
    let reconciler = Reconciler::with_store(store);
    let inner = Scripted::new([Step::ok()]);
    let report = reconciler
        .replay(stack_for(inner.clone(), &reconciler), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.expired, ["key_old"]);
    assert_eq!(inner.calls(), 0, "a replay could charge twice");
    assert_eq!(keys(&reconciler), ["key_old"]);
}

// ---- waiting ----

#[tokio::test(start_paused = true)]
async fn waiters_are_woken_by_the_settlement() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let mut first = task::spawn(reconciler.wait("key_1", Duration::from_secs(60)));
    let mut second = task::spawn(reconciler.wait("key_1", Duration::from_secs(60)));
    assert_pending!(first.poll());
    assert_pending!(second.poll());

    tokio::time::advance(Duration::from_secs(10)).await;
    assert_pending!(first.poll());
    reconciler.settle_with_event(&charge_succeeded("evt_1", "key_1"));

    assert!(first.is_woken() && second.is_woken());
    let settled = assert_ready!(first.poll()).unwrap();
    assert_eq!(settled.by(), &SettledBy::Event { id: "evt_1".into() });
    assert_eq!(assert_ready!(second.poll()).unwrap(), settled);
    // Settled already: no wait at all.
    let start = Instant::now();
    assert_eq!(
        reconciler
            .wait("key_1", Duration::from_secs(60))
            .await
            .unwrap(),
        settled
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_times_out_with_a_typed_error() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let start = Instant::now();
    let err = reconciler
        .wait("key_1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(
        err,
        WaitError::Timeout {
            key: "key_1".into(),
            waited: Duration::from_secs(5)
        }
    );
    assert!(err.is_timeout());
    assert_eq!(
        err.to_string(),
        "call with idempotency key key_1 not settled within 5s"
    );
    // Still pending, and still settles for a later waiter.
    assert_eq!(keys(&reconciler), ["key_1"]);
    let mut later = task::spawn(reconciler.wait("key_1", Duration::from_secs(5)));
    assert_pending!(later.poll());
    reconciler.settle_with_event(&charge_succeeded("evt_1", "key_1"));
    assert!(assert_ready!(later.poll()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_for_a_call_still_retrying_hears_its_settlement() {
    let reconciler = Reconciler::new();
    let mut waiting = task::spawn(reconciler.wait("key_1", Duration::from_secs(60)));
    assert_pending!(waiting.poll());
    record(&reconciler, "key_1").await;
    assert_pending!(waiting.poll());
    reconciler.settle_with_event(&payment_failed("evt_1", "key_1"));
    assert!(assert_ready!(waiting.poll()).unwrap().is_failed());
}

#[tokio::test(start_paused = true)]
async fn replays_and_waits_run_as_tasks_of_their_own() {
    let reconciler = Reconciler::new();
    record(&reconciler, "key_1").await;
    let waiter = {
        let reconciler = reconciler.clone();
        tokio::spawn(async move { reconciler.wait("key_1", Duration::from_secs(60)).await })
    };
    // A periodic replay task, as an application runs one.
    let replayer = {
        let reconciler = reconciler.clone();
        let stack = stack_for(Scripted::new([Step::ok()]), &reconciler);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            reconciler.replay(stack, Duration::ZERO).await
        })
    };
    let report = replayer.await.unwrap().unwrap();
    assert_eq!(report.settled.len(), 1);
    assert!(waiter.await.unwrap().unwrap().is_succeeded());
    assert!(format!("{reconciler:?}").starts_with("Reconciler"));
}

// ---- stores ----

/// A store whose writes fail when told to, and that counts its calls.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    fail_insert: AtomicBool,
    fail_remove: AtomicBool,
    removes: AtomicUsize,
}

impl PendingStore for Flaky {
    fn insert(&self, pending: &Pending) -> Result<(), StoreError> {
        if self.fail_insert.load(Ordering::SeqCst) {
            return Err(StoreError::new(StoreOp::Insert, "disk full"));
        }
        self.inner.insert(pending)
    }

    fn remove(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        self.removes.fetch_add(1, Ordering::SeqCst);
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(StoreError::new(StoreOp::Remove, "disk gone"));
        }
        self.inner.remove(key)
    }

    fn list(&self) -> Result<Vec<Pending>, StoreError> {
        self.inner.list()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_store_write_keeps_the_record_in_memory_and_says_so_once() {
    let (warnings, _guard) = common::count_warnings("resilient_http::reconcile");
    let store = Arc::new(Flaky::default());
    store.fail_insert.store(true, Ordering::SeqCst);
    let reconciler = Reconciler::with_store(Shared(store.clone()));

    record(&reconciler, "key_1").await;
    assert_eq!(warnings.load(Ordering::SeqCst), 1);
    assert!(
        store.inner.list().unwrap().is_empty(),
        "the store has nothing"
    );
    let pending = reconciler.pending().unwrap();
    assert_eq!(pending.len(), 1, "but the call is listed");
    assert_eq!(pending[0].request_ids, ["req_1", "req_2", "req_3"]);

    // It is replayed and settled like any other.
    let stack = stack_for(Scripted::new([Step::ok()]), &reconciler);
    let report = reconciler.replay(stack, Duration::ZERO).await.unwrap();
    assert_eq!(report.settled.len(), 1);
    assert!(keys(&reconciler).is_empty());
    assert_eq!(warnings.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_store_removal_still_settles_the_call() {
    let (warnings, _guard) = common::count_warnings("resilient_http::reconcile");
    let store = Arc::new(Flaky::default());
    let reconciler = Reconciler::with_store(Shared(store.clone()));
    record(&reconciler, "key_1").await;
    store.fail_remove.store(true, Ordering::SeqCst);

    let settled = reconciler.settle_with_event(&charge_succeeded("evt_1", "key_1"));
    assert!(settled.is_some());
    assert_eq!(warnings.load(Ordering::SeqCst), 1);
    assert_eq!(
        store.inner.list().unwrap().len(),
        1,
        "the record is still stored"
    );
    assert!(keys(&reconciler).is_empty(), "but not pending");
    assert_eq!(
        reconciler.wait("key_1", Duration::ZERO).await.unwrap(),
        settled.unwrap()
    );
    // A redelivery does not touch the store again.
    assert_eq!(
        reconciler.settle_with_event(&charge_succeeded("evt_1", "key_1")),
        None
    );
    assert_eq!(store.removes.load(Ordering::SeqCst), 1);
}

/// A store behind an `Arc`, so the test can look into it.
struct Shared(Arc<Flaky>);

impl PendingStore for Shared {
    fn insert(&self, pending: &Pending) -> Result<(), StoreError> {
        self.0.insert(pending)
    }
    fn remove(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        self.0.remove(key)
    }
    fn list(&self) -> Result<Vec<Pending>, StoreError> {
        self.0.list()
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use resilient_http::stripe::reconcile::SqliteStore;
    use std::path::{Path, PathBuf};

    /// A file name no other test or run uses, removed (with SQLite's side files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(name: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let file = format!(
                "resilient-http-{name}-{}-{nanos}.sqlite",
                std::process::id()
            );
            TempDb(std::env::temp_dir().join(file))
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pending_calls_survive_a_restart() {
        let db = TempDb::new("restart");
        let recorded = {
            let reconciler = Reconciler::with_store(SqliteStore::open(db.path()).unwrap());
            record(&reconciler, "key_1").await;
            record(&reconciler, "key_2").await;
            reconciler.pending().unwrap()
            // The process ends: the reconciler and its store are dropped.
        };
        assert_eq!(recorded.len(), 2);

        let reconciler = Reconciler::with_store(SqliteStore::open(db.path()).unwrap());
        assert_eq!(reconciler.pending().unwrap(), recorded, "every field kept");

        // One settled by its event, one by a replay, after the restart.
        let settled = reconciler.settle_with_event(&payment_failed("evt_1", "key_1"));
        assert!(settled.unwrap().is_failed());
        let inner = Scripted::new([Step::ok()]);
        let report = reconciler
            .replay(stack_for(inner.clone(), &reconciler), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(report.settled[0].0, "key_2");
        assert_eq!(inner.seen()[0].key().as_deref(), Some("key_2"));
        assert_eq!(inner.seen()[0].body, "amount=2000&currency=usd");
        drop(reconciler);

        let reconciler = Reconciler::with_store(SqliteStore::open(db.path()).unwrap());
        assert!(reconciler.pending().unwrap().is_empty(), "settled for good");
    }

    #[test]
    fn a_store_that_cannot_open_says_so() {
        // A directory is not a database file.
        let err = SqliteStore::open(std::env::temp_dir()).unwrap_err();
        assert_eq!(err.op(), StoreOp::Open);
        assert_eq!(
            err.to_string(),
            "pending-call store could not open its storage"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn the_store_inserts_replaces_and_removes() {
        let db = TempDb::new("crud");
        let store = SqliteStore::open(db.path()).unwrap();
        assert_eq!(store.path(), db.path());
        let mut call = Pending::new(
            "key_1",
            Method::POST,
            "/v1/charges?expand[]=x".parse().unwrap(),
            SystemTime::now(),
        );
        call.body = Bytes::from_static(b"\x00\xffbinary");
        call.request_ids = vec!["req_1".into(), "req_\u{fffd}".into()];
        store.insert(&call).unwrap();
        call.request_ids.push("req_3".into());
        store.insert(&call).unwrap();
        assert_eq!(store.list().unwrap(), [call.clone()]);
        assert_eq!(store.remove("key_1").unwrap(), Some(call));
        assert_eq!(store.remove("key_1").unwrap(), None);
        assert!(store.list().unwrap().is_empty());
        assert!(format!("{store:?}").contains("SqliteStore"));
    }
}
