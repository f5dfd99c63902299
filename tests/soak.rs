//! The exactly-once soak: thousands of "create charge" calls through the default stack,
//! over hyper-util's client and over reqwest, against resilient-http-testing's Stripe-like
//! server injecting about 20% faults of every kind, then a reconciliation of what each
//! caller was told against the server's ledger and request log.
//!
//! ```sh
//! cargo test --all-features --test soak -- --nocapture              # 2,000 calls per stack
//! SOAK_CALLS=10000 cargo test --all-features --test soak -- --nocapture
//! ```
//!
//! Each stack prints exactly one line (and, with `SOAK_BREAKDOWN=1`, the count of calls
//! by outcome, last attempt's class and attempts on stderr):
//! `exactly-once: stack=<hyper|reqwest> calls=<N> faults=<F> duplicates=<D> lost=<L> indeterminate=<I>`
//!
//! This runs on real time, over real sockets. Two settings differ from
//! `ResilientLayer::stripe()` so that it takes seconds, not hours: the backoff base and cap
//! are shortened (5 ms / 50 ms instead of 500 ms / 5 s), and each attempt has a 1 s
//! timeout (the default has none: the 80 s deadline bounds every attempt), which the
//! server's delayed responses (1.5 s) exceed. The timeout is that long because a debug
//! build on a busy 2-core machine takes over 100 ms to answer at 64 calls in flight: a
//! shorter one times out healthy attempts, and the retry budget then stops most retries.
//! Everything else (3 attempts, full jitter, the Stripe classifier, random v4 keys, the
//! retry budget shared by every clone) is the default. At a 20% fault rate that budget
//! lets about half of the retryable calls retry, by design; the rest end indeterminate or
//! "gave up", and are checked as such. No check below
//! depends on timing: a slow machine changes how many calls end in each outcome, never
//! whether the ledger agrees with what the callers were told.

#![cfg(feature = "reqwest")]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use resilient_http::reqwest::ReqwestService;
use resilient_http::{CallReport, Error, Outcome, ResilientLayer, ResponseBody, RetryLayer};
use resilient_http_testing::{Fault, Faults, StripeServer};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// Logical calls per stack in CI; raise with `SOAK_CALLS`.
const DEFAULT_CALLS: usize = 2_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 64;
/// Share of charges that get a fault, drawn uniformly among the five kinds (see
/// [`start_server`]).
const FAULT_RATE: f64 = 0.2;
/// The client's per-attempt timeout, and the server's delay, which must exceed it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const SERVER_DELAY: Duration = Duration::from_millis(1_500);
/// One call in this many charges a declined card: a definite failure with no charge.
const DECLINE_EVERY: usize = 25;
/// Calls share this many customers, so that a delayed charge holding its customer's lock
/// makes others on it wait and get 429 `lock_timeout`.
const CUSTOMERS: usize = 200;
/// A call that has not resolved after this long is counted as lost. Each call is bounded
/// by 3 attempts of at most 1 s plus backoff, so this only fires on a hang.
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The whole run's limit, so that a stack that hangs every call fails in minutes instead
/// of hanging CI: a minute, plus 20 ms a call (ten times what a busy debug run takes).
/// Calls not started or not finished by then are lost.
fn run_limit(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20) * u32::try_from(n).unwrap_or(u32::MAX)
}

fn calls() -> usize {
    std::env::var("SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CALLS)
}

/// What one logical call was told.
#[derive(Clone, Debug)]
struct Told {
    outcome: Outcome,
    key: Option<String>,
    /// The call's request ids, as its report gives them.
    request_ids: Vec<String>,
    /// The class of its last attempt and how many attempts it made, for the breakdown.
    last: String,
    attempts: usize,
}

fn told_from_report(outcome: Outcome, report: &CallReport) -> Told {
    Told {
        outcome,
        key: report.idempotency_key().map(|k| k.as_str().to_owned()),
        request_ids: report
            .request_ids()
            .filter_map(|id| id.to_str().map(str::to_owned))
            .collect(),
        last: report
            .last_class()
            .map_or("none".to_owned(), |c| c.as_str().to_owned()),
        attempts: report.attempts().len(),
    }
}

fn charge_request(url: &str, i: usize) -> Request<Full<Bytes>> {
    let source = if i.is_multiple_of(DECLINE_EVERY) {
        "tok_chargeDeclined"
    } else {
        "tok_visa"
    };
    let form = format!(
        "amount={}&currency=usd&source={source}&customer=cus_{}&description=soak-{i}",
        100 + i,
        i % CUSTOMERS
    );
    Request::post(format!("{url}/v1/charges"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .expect("a well-formed request")
}

fn layer() -> ResilientLayer {
    let retry = RetryLayer::builder()
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(50))
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
        .expect("the soak's settings are valid");
    ResilientLayer::new(retry)
}

/// A server that draws its faults from `seed`: every kind, including the 500 `api_error`
/// made after the charge both with `Stripe-Should-Retry: false` (the call stops at once)
/// and without it (retried with the same key, each replay returning the saved 500).
async fn start_server(seed: u64) -> StripeServer {
    let kinds = Fault::every_kind(SERVER_DELAY)
        .into_iter()
        .chain([Fault::ApiErrorAfterEffectNoHint]);
    StripeServer::builder()
        .faults(Faults::random(seed, FAULT_RATE, kinds))
        .start()
        .await
        .expect("the test server starts on loopback")
}

/// Sends `n` calls through `stack`, `CONCURRENCY` at a time; `None` for a lost call.
async fn drive<S, B>(stack: S, server: &StripeServer, n: usize) -> Vec<Option<Told>>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResponseBody<B>>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<resilient_http::BoxError>,
{
    let url: Arc<str> = server.url().into();
    let next = Arc::new(AtomicUsize::new(0));
    let run_deadline = tokio::time::Instant::now() + run_limit(n);
    // Written as each call settles, so that a worker that panics loses only its call.
    let told: Arc<std::sync::Mutex<Vec<Option<Told>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; n]));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (stack, url, next, told) = (stack.clone(), url.clone(), next.clone(), told.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let now = tokio::time::Instant::now();
                if now >= run_deadline {
                    break;
                }
                let call = stack.clone().oneshot(charge_request(&url, i));
                // The call and, for a success, reading its body whole.
                let settled = async move {
                    match call.await {
                        Ok(res) => {
                            let report = res
                                .body()
                                .report()
                                .cloned()
                                .expect("every success carries its CallReport");
                            let whole = res.into_body().collect().await.is_ok();
                            let outcome = if whole {
                                Outcome::Success
                            } else {
                                Outcome::Indeterminate
                            };
                            told_from_report(outcome, &report)
                        }
                        Err(e) => told_from_report(e.outcome(), e.report()),
                    }
                };
                let limit = run_deadline.min(now + CALL_LIMIT);
                let settled = tokio::time::timeout_at(limit, settled).await.ok();
                if let Some(slot) = told
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_mut(i)
                {
                    *slot = settled;
                }
            }
        }));
    }
    for worker in workers {
        // A worker that panicked has left its call `None`: lost.
        let _ = worker.await;
    }
    let told = told
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    told.clone()
}

/// Reconciles what the callers were told with the server's ledger and log; prints the
/// summary line and panics on any violation.
fn reconcile(stack: &str, server: &StripeServer, told: &[Option<Told>]) {
    let ledger = server.ledger();
    let log = server.log();
    let n = told.len();
    let call_of = |description: Option<&str>| -> Option<usize> {
        description?
            .strip_prefix("soak-")?
            .parse()
            .ok()
            .filter(|&i| i < n)
    };

    // Every request the server saw, by call (from the description parameter, not the key,
    // so that a stack that changed keys between attempts is still caught).
    let mut keys_seen: Vec<BTreeSet<Option<String>>> = vec![BTreeSet::new(); n];
    let mut call_of_request: HashMap<&str, usize> = HashMap::new();
    for r in log.requests() {
        if let Some(i) = call_of(r.params.get("description")) {
            keys_seen[i].insert(r.idempotency_key.clone());
            call_of_request.insert(r.request_id.as_str(), i);
        }
    }
    // Effects per call, found through the request that made each charge.
    let mut effects = vec![0usize; n];
    let mut orphans = 0;
    // What `Ledger::by_key` would find for each key, counted once (10,000 calls would make
    // calling it per call quadratic).
    let mut charges_by_key: HashMap<&str, usize> = HashMap::new();
    for charge in ledger.charges() {
        if let Some(key) = &charge.idempotency_key {
            *charges_by_key.entry(key.as_str()).or_default() += 1;
        }
        match call_of_request.get(charge.request_id.as_str()) {
            Some(&i) => effects[i] += 1,
            None => orphans += 1,
        }
    }

    let mut duplicates = orphans;
    let mut lost = 0;
    let mut indeterminate = 0;
    let mut violations: Vec<String> = Vec::new();
    for (i, t) in told.iter().enumerate() {
        let e = effects[i];
        duplicates += e.saturating_sub(1);
        let Some(t) = t else {
            lost += 1;
            continue;
        };
        let mut violation = |what: String| violations.push(format!("call {i}: {what} ({t:?})"));
        match t.outcome {
            Outcome::Success if e != 1 => violation(format!("success with {e} charges")),
            Outcome::DefiniteFailure if e != 0 => {
                violation(format!("definite failure with {e} charges"))
            }
            // The retry core makes a call that may have taken effect indeterminate even if
            // a later attempt was only turned away (409/429), so "gave up" means no effect.
            Outcome::GaveUp if e != 0 => violation(format!("gave up with {e} charges")),
            Outcome::Indeterminate => {
                indeterminate += 1;
                if e > 1 {
                    violation(format!("indeterminate with {e} charges"));
                }
            }
            _ => {}
        }
        if i.is_multiple_of(DECLINE_EVERY) && t.outcome == Outcome::Success {
            violation("a declined card reported as success".to_owned());
        }
        // The call's key finds its charge, if it made one.
        let by_key = t
            .key
            .as_deref()
            .and_then(|k| charges_by_key.get(k).copied())
            .unwrap_or(0);
        if by_key != e {
            violation(format!("its key finds {by_key} charges, it made {e}"));
        }
        // Every attempt of the call carried the same key: the one it reports.
        let expected: BTreeSet<Option<String>> = [t.key.clone()].into_iter().collect();
        if t.key.is_none() || (!keys_seen[i].is_empty() && keys_seen[i] != expected) {
            violation(format!("attempts carried keys {:?}", keys_seen[i]));
        }
        // And the server saw every attempt the report counts a request id for.
        for id in &t.request_ids {
            if call_of_request.get(id.as_str()) != Some(&i) {
                violation(format!("request id {id} is not one of its requests"));
            }
        }
    }

    println!(
        "exactly-once: stack={stack} calls={n} faults={} duplicates={duplicates} lost={lost} indeterminate={indeterminate}",
        log.faults()
    );
    if std::env::var_os("SOAK_BREAKDOWN").is_some() {
        let mut by: std::collections::BTreeMap<(String, String, usize), usize> = Default::default();
        for t in told.iter().flatten() {
            *by.entry((t.outcome.to_string(), t.last.clone(), t.attempts))
                .or_default() += 1;
        }
        for ((outcome, last, attempts), count) in by {
            eprintln!("  {stack}: {count:>6} {outcome}, last {last}, {attempts} attempts");
        }
    }
    assert_eq!(duplicates, 0, "double charges (orphan charges: {orphans})");
    assert_eq!(lost, 0, "calls that never resolved");
    assert!(
        violations.is_empty(),
        "{} calls disagree with the ledger or log; first ones:\n{}",
        violations.len(),
        violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The soak must have exercised what it claims to.
    assert!(log.faults() > 0, "no fault was injected");
    for outcome in [
        Outcome::Success,
        Outcome::DefiniteFailure,
        Outcome::Indeterminate,
    ] {
        assert!(
            told.iter().flatten().any(|t| t.outcome == outcome),
            "no call ended {outcome}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_stack_charges_exactly_once_under_faults() {
    let server = start_server(0x5eed_0001).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let told = drive(layer().layer(client), &server, calls()).await;
    reconcile("hyper", &server, &told);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_stack_charges_exactly_once_under_faults() {
    let server = start_server(0x5eed_0002).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain reqwest client builds");
    let told = drive(layer().layer(ReqwestService::new(client)), &server, calls()).await;
    reconcile("reqwest", &server, &told);
}
