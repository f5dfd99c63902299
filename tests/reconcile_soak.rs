//! The reconciliation soak: thousands of "create charge" calls through the default stack
//! with a [`Reconciler`] as its `on_indeterminate` observer, against
//! resilient-http-testing's Stripe-like server losing about 20% of its answers, while the
//! server sends a signed event for every charge to a [`Webhook`] endpoint on loopback,
//! late, sometimes twice, out of order, and again when the endpoint fails. Then every
//! settlement is checked against the server's ledger.
//!
//! ```sh
//! cargo test --all-features --test reconcile_soak -- --nocapture     # 2,000 calls
//! RECONCILE_CALLS=10000 cargo test --all-features --test reconcile_soak -- --nocapture
//! ```
//!
//! It prints exactly one line (and, with `SOAK_BREAKDOWN=1`, counts by outcome and by
//! settlement on stderr):
//! `reconcile: calls=<N> indeterminate=<I> settled=<S> wrong=<W> pending_after=<P>`
//!
//! It runs on real time over real sockets, with short delays so that it takes seconds:
//! each attempt has a 500 ms timeout, which the server's delayed answers (700 ms) exceed;
//! events come 0 to 400 ms after their charge, so some reach the reconciler before the
//! retry loop has given up on the call (it remembers them) and some after. Declined
//! cards draw faults too here, so that some calls settle as failed. The endpoint's
//! handler fails the first delivery of one event in twenty, so that Stripe's
//! redelivery settles those. Every check reads the ledger, never the timing: a slow
//! machine changes how many calls end indeterminate, not whether each settlement is right.

#![cfg(feature = "webhooks")]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http::stripe::reconcile::{Reconciler, SettledBy, Settlement};
use resilient_http::stripe::webhook::{Event, Verifier, Webhook};
use resilient_http::{Outcome, ResilientLayer, RetryLayer};
use resilient_http_testing::{DeliveryState, Fault, Faults, StripeServer, Webhooks};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};

/// Logical calls in CI; change with `RECONCILE_CALLS`.
const DEFAULT_CALLS: usize = 2_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 32;
/// Share of charges whose answer is lost, drawn among the four kinds (see [`lost`]).
const LOST_RATE: f64 = 0.2;
/// The client's per-attempt timeout, and the server's delay, which must exceed it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
const SERVER_DELAY: Duration = Duration::from_millis(700);
/// One call in this many charges a declined card: a `charge.failed` event.
const DECLINE_EVERY: usize = 10;
/// How late events come after their charge, and the share sent twice.
const EVENT_DELAY: Duration = Duration::from_millis(400);
const DUPLICATES: f64 = 0.2;
/// The handler fails the first delivery of one event in this many.
const FAIL_FIRST_EVERY: u64 = 20;
/// How long, after a call ends indeterminate, it may take to be settled.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// A call that has not ended after this long is a hang.
const CALL_LIMIT: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec_reconcile_soak";
const SEED: u64 = 13;

fn calls() -> usize {
    std::env::var("RECONCILE_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CALLS)
}

/// The faults that lose a charge's answer: the charge is made (or the card declined), and
/// the client cannot tell.
fn lost() -> [Fault; 4] {
    [
        Fault::DropAfterEffect,
        Fault::Delay(SERVER_DELAY),
        Fault::ApiErrorAfterEffect,
        Fault::ApiErrorAfterEffectNoHint,
    ]
}

fn charge_request(url: &str, i: usize) -> Request<Full<Bytes>> {
    let source = if i.is_multiple_of(DECLINE_EVERY) {
        "tok_chargeDeclined"
    } else {
        "tok_visa"
    };
    let form = format!(
        "amount={}&currency=usd&source={source}&description=rsoak-{i}",
        100 + i
    );
    Request::post(format!("{url}/v1/charges"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .expect("a well-formed request")
}

/// What one call ended in, and for an indeterminate one, the wait for its settlement.
struct Ended {
    outcome: Outcome,
    key: Option<String>,
    settlement: Option<JoinHandle<Option<Settlement>>>,
}

/// What the endpoint's handler saw, for the breakdown.
#[derive(Default)]
struct Counts {
    /// Deliveries it failed on purpose.
    failed_once: AtomicUsize,
    /// Events that settled a call already pending; the others came before their call
    /// was recorded (remembered), or are about calls that did not end indeterminate, or
    /// are duplicates.
    on_arrival: AtomicUsize,
}

/// The webhook endpoint on 127.0.0.1: verifies, then gives each event to the reconciler;
/// the first delivery of one event in [`FAIL_FIRST_EVERY`] fails (500), so Stripe sends
/// it again.
async fn endpoint(reconciler: Reconciler, counts: Arc<Counts>) -> SocketAddr {
    let refused: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handler = tower::service_fn(move |event: Event| {
        let number = event
            .id
            .strip_prefix("evt_")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let fail = number.is_multiple_of(FAIL_FIRST_EVERY)
            && refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(event.id.clone());
        if fail {
            counts.failed_once.fetch_add(1, Ordering::Relaxed);
        } else if reconciler.settle_with_event(&event).is_some() {
            counts.on_arrival.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            if fail {
                Err("the handler failed on purpose")
            } else {
                Ok(())
            }
        }
    });
    let endpoint = Webhook::new(Verifier::new(SECRET), handler);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    endpoint.clone().oneshot(req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_indeterminate_call_is_settled_by_its_event_as_the_ledger_says() {
    let n = calls();
    let reconciler = Reconciler::new();
    let counts = Arc::new(Counts::default());
    let hooks = endpoint(reconciler.clone(), counts.clone()).await;
    let server = StripeServer::builder()
        .faults(Faults::random(SEED, LOST_RATE, lost()))
        .fault_declines(true)
        .webhooks(
            Webhooks::new(format!("http://{hooks}/webhooks"), SECRET)
                .delay(Duration::ZERO..=EVENT_DELAY)
                .duplicates(DUPLICATES)
                .seed(SEED)
                .attempts(5)
                .retry_delay(Duration::from_millis(20)),
        )
        .start()
        .await
        .expect("the test server starts on loopback");

    let retry = RetryLayer::builder()
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(50))
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .on_indeterminate(reconciler.clone())
        .build()
        .expect("the soak's settings are valid");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = ResilientLayer::new(retry).layer(client);

    // The calls, `CONCURRENCY` at a time; each indeterminate one starts waiting for its
    // settlement as it ends.
    let url: Arc<str> = server.url().into();
    let next = Arc::new(AtomicUsize::new(0));
    let ended: Arc<Mutex<Vec<Option<Ended>>>> =
        Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (stack, url, next, ended, reconciler) = (
            stack.clone(),
            url.clone(),
            next.clone(),
            ended.clone(),
            reconciler.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let call = stack.clone().oneshot(charge_request(&url, i));
                let Ok(result) = tokio::time::timeout(CALL_LIMIT, call).await else {
                    continue; // Left `None`: a hang, counted below.
                };
                let (outcome, key) = match result {
                    Ok(res) => {
                        let _ = res.into_body().collect().await;
                        (Outcome::Success, None)
                    }
                    Err(e) => (
                        e.outcome(),
                        e.idempotency_key().map(|k| k.as_str().to_owned()),
                    ),
                };
                let settlement = match (&outcome, &key) {
                    (Outcome::Indeterminate, Some(key)) => {
                        let (reconciler, key) = (reconciler.clone(), key.clone());
                        Some(tokio::spawn(async move {
                            reconciler.wait(&key, SETTLE_LIMIT).await.ok()
                        }))
                    }
                    _ => None,
                };
                ended.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(Ended {
                    outcome,
                    key,
                    settlement,
                });
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker does not panic");
    }
    let mut ended: Vec<Option<Ended>> =
        std::mem::take(&mut *ended.lock().unwrap_or_else(PoisonError::into_inner));

    // Wait for every settlement (each bounded by `SETTLE_LIMIT`), then for the last
    // deliveries, so that late duplicates have arrived too.
    let mut settled: Vec<Option<Settlement>> = vec![None; n];
    for (i, e) in ended.iter_mut().enumerate() {
        if let Some(wait) = e.as_mut().and_then(|e| e.settlement.take()) {
            settled[i] = wait.await.expect("a wait does not panic");
        }
    }
    tokio::time::timeout(SETTLE_LIMIT, server.deliveries_finished())
        .await
        .expect("every event delivery ends");
    let pending_after = reconciler.pending().expect("the memory store lists").len();

    // Every settlement against the ledger.
    let ledger = server.ledger();
    let deliveries = server.deliveries();
    let event_key: HashMap<&str, Option<&str>> = deliveries
        .all()
        .iter()
        .map(|d| (d.event_id.as_str(), d.idempotency_key.as_deref()))
        .collect();
    let mut charges: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in ledger.charges() {
        if let Some(key) = &c.idempotency_key {
            charges.entry(key).or_default().push(&c.id);
        }
    }
    let mut declines: HashMap<&str, usize> = HashMap::new();
    for c in ledger.failed() {
        if let Some(key) = &c.idempotency_key {
            *declines.entry(key).or_default() += 1;
        }
    }

    let mut hung = 0;
    let mut indeterminate = 0;
    let mut settled_count: usize = 0;
    let mut wrong: Vec<String> = Vec::new();
    let mut by_settlement: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in ended.iter().enumerate() {
        let Some(e) = e else {
            hung += 1;
            continue;
        };
        *by_outcome.entry(e.outcome.to_string()).or_default() += 1;
        if e.outcome != Outcome::Indeterminate {
            continue;
        }
        indeterminate += 1;
        let Some(key) = e.key.as_deref() else {
            wrong.push(format!("call {i}: indeterminate without a key"));
            continue;
        };
        let Some(s) = &settled[i] else {
            continue; // Not settled: counted by `pending_after` and below.
        };
        settled_count += 1;
        let made = charges.get(key).map_or(&[][..], Vec::as_slice);
        let declined = declines.get(key).copied().unwrap_or(0);
        let mut wrong_if = |bad: bool, what: &str| {
            if bad {
                wrong.push(format!(
                    "call {i} (key {key}): {what}; charges {made:?}, declines {declined}, settlement {s:?}"
                ));
            }
        };
        match s {
            Settlement::Succeeded { object, .. } => {
                *by_settlement.entry("succeeded").or_default() += 1;
                let id = object
                    .as_ref()
                    .and_then(|o| o.get("id"))
                    .and_then(|id| id.as_str());
                wrong_if(
                    made.len() != 1 || declined != 0 || id != made.first().copied(),
                    "succeeded, but the ledger does not hold that one charge under its key",
                );
            }
            Settlement::Failed { .. } => {
                *by_settlement.entry("failed").or_default() += 1;
                wrong_if(
                    declined != 1 || !made.is_empty(),
                    "failed, but the ledger does not hold one decline (and no charge) under its key",
                );
            }
            _ => wrong_if(true, "an unknown kind of settlement"),
        }
        match s.by() {
            SettledBy::Event { id } => wrong_if(
                event_key.get(id.as_str()) != Some(&Some(key)),
                "settled by an event that is not about its key",
            ),
            _ => wrong_if(true, "settled by something other than its event"),
        }
    }
    // No key has two charges: the retries and the reconciler made none of their own.
    for (key, made) in &charges {
        if made.len() > 1 {
            wrong.push(format!("key {key}: {} charges {made:?}", made.len()));
        }
    }

    println!(
        "reconcile: calls={n} indeterminate={indeterminate} settled={settled_count} wrong={} pending_after={pending_after}",
        wrong.len()
    );
    if std::env::var_os("SOAK_BREAKDOWN").is_some() {
        eprintln!("  outcomes: {by_outcome:?}");
        eprintln!("  settlements: {by_settlement:?}");
        eprintln!(
            "  events: {} deliveries ({} duplicates), {} delivered, {} given up, {} handler failures redelivered",
            deliveries.len(),
            deliveries.all().iter().filter(|d| d.duplicate).count(),
            deliveries.count(DeliveryState::Delivered),
            deliveries.count(DeliveryState::GaveUp),
            counts.failed_once.load(Ordering::Relaxed)
        );
        let on_arrival = counts.on_arrival.load(Ordering::Relaxed);
        eprintln!(
            "  settled as the event arrived: {on_arrival}; by an event that came before the call ended: {}",
            settled_count.saturating_sub(on_arrival)
        );
        for d in deliveries
            .all()
            .iter()
            .filter(|d| d.state == DeliveryState::GaveUp)
            .take(5)
        {
            eprintln!("  given up: {} {:?}", d.event_id, d.answers);
        }
    }
    assert_eq!(hung, 0, "calls that never ended");
    assert!(wrong.is_empty(), "wrong settlements:\n{}", wrong.join("\n"));
    assert_eq!(
        settled_count, indeterminate,
        "indeterminate calls never settled"
    );
    assert_eq!(pending_after, 0, "calls still pending");
    assert_eq!(
        deliveries.count(DeliveryState::GaveUp),
        0,
        "events the endpoint never took"
    );
    // The run must have exercised what it claims to.
    assert!(indeterminate > 0, "no call ended indeterminate");
    if n >= 1_000 {
        assert!(
            by_settlement.contains_key("failed"),
            "no call settled as failed"
        );
        assert!(
            counts.failed_once.load(Ordering::Relaxed) > 0,
            "no redelivery"
        );
        assert!(deliveries.all().iter().any(|d| d.duplicate), "no duplicate");
    }
}
