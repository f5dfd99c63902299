//! The README's first command: `cargo run --example demo`.
//!
//! Starts resilient-http-testing's Stripe-like server on 127.0.0.1 (an idempotency store,
//! a `Request-Id` on every response, Stripe error bodies, per-customer locks, scripted
//! faults), the same behind a load balancer that fails once, and a second server that
//! rate limits every request. Puts a real hyper-util client under [`ResilientLayer`] with
//! short delays, and makes seven calls that end in each of the four outcomes. For every
//! call it prints each attempt (status, class, delay, request id, and whether the server
//! answered it from its saved result), then one line with the outcome, the idempotency
//! key and every request id, then what lies under a failure (Stripe's error). It exits
//! non-zero if any call ends otherwise than expected (outcome, why it stopped, which
//! attempts were replays), or if the server's ledger does not hold the charges each key
//! should have made.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http::idempotency::{DeriveKey, OperationId};
use resilient_http::stripe::StripeClassifier;
use resilient_http::{
    CallReport, ConfigError, Outcome, Resilient, ResilientLayer, RetryLayer, StopReason,
};
use resilient_http_testing::{Fault, Faults, StripeServer};
use std::convert::Infallible;
use std::error::Error as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};
use uuid::Uuid;

/// Our application's namespace for keys derived from operation ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x9d4c_5a3e_61f1_4c1e_8a8e_2f0b_7c55_d001);

type Stack = Resilient<Client<HttpConnector, Full<Bytes>>, StripeClassifier, DeriveKey>;

/// How long a charge waits for its customer's lock before the server answers 429
/// `lock_timeout`.
const LOCK_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the other charge for call 1's customer holds the lock. Call 1's first attempt
/// waits the whole lock timeout and gets `lock_timeout` (if it reaches the server within
/// `HOLD - LOCK_TIMEOUT` of the hold starting); its retry, sent at most 50 ms later, waits
/// up to the lock timeout again, by when the hold (under twice the timeout) is over.
const HOLD: Duration = Duration::from_millis(190);

/// The other charge for call 1's customer.
const OTHER_CHARGE: &str =
    "amount=100&currency=usd&source=tok_visa&customer=cus_1001&description=another+order";

/// Where a call is sent.
#[derive(Clone, Copy)]
enum Via {
    /// Straight to the Stripe-like server.
    Stripe,
    /// Through a load balancer that answers its first request itself, with a 502.
    LoadBalancer,
    /// To a second server that rate limits every request.
    RateLimited,
}

/// One call of the demo and what it must end in.
struct Call {
    title: &'static str,
    operation: Option<&'static str>,
    form: &'static str,
    via: Via,
    /// Another charge for the same customer is in progress, holding its lock, when the call
    /// starts.
    contended: bool,
    expect: Outcome,
    /// Why the retry loop must stop.
    expect_stop: StopReason,
    /// For each attempt, whether the server must answer it from its saved result
    /// (`Idempotent-Replayed: true`); as many as the attempts the call must make.
    expect_replays: &'static [bool],
    /// How many charges the server's ledger must hold under the call's key afterwards.
    expect_charges: usize,
}

const CALLS: &[Call] = &[
    Call {
        title: "charge order 1001 (lock_timeout, then api_error with Stripe-Should-Retry: true, then success)",
        operation: Some("order-1001/charge"),
        form: "amount=2000&currency=usd&source=tok_visa&customer=cus_1001&description=order+1001",
        via: Via::Stripe,
        contended: true,
        expect: Outcome::Success,
        expect_stop: StopReason::Final,
        expect_replays: &[false, false, false],
        expect_charges: 1,
    },
    Call {
        title: "charge order 1002 (a load balancer answers 502 first)",
        operation: Some("order-1002/charge"),
        form: "amount=1500&currency=usd&source=tok_visa&description=order+1002",
        via: Via::LoadBalancer,
        contended: false,
        expect: Outcome::Success,
        expect_stop: StopReason::Final,
        expect_replays: &[false, false],
        expect_charges: 1,
    },
    Call {
        title: "charge a declined card",
        operation: Some("order-1003/charge"),
        form: "amount=900&currency=usd&source=tok_chargeDeclined",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::DefiniteFailure,
        expect_stop: StopReason::Final,
        expect_replays: &[false],
        expect_charges: 0,
    },
    Call {
        title: "charge order 1001 again after a restart (same operation id, same key)",
        operation: Some("order-1001/charge"),
        form: "amount=2000&currency=usd&source=tok_visa&customer=cus_1001&description=order+1001",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::Success,
        expect_stop: StopReason::Final,
        expect_replays: &[true],
        expect_charges: 1,
    },
    Call {
        title: "same operation id, different amount (a caller bug)",
        operation: Some("order-1001/charge"),
        form: "amount=5000&currency=usd&source=tok_visa&customer=cus_1001&description=order+1001",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::DefiniteFailure,
        expect_stop: StopReason::Final,
        expect_replays: &[false],
        // Call 1's charge, still the only one under the key.
        expect_charges: 1,
    },
    Call {
        title: "charge order 1004: api_error after the charge was made, no Stripe-Should-Retry (did it happen?)",
        operation: Some("order-1004/charge"),
        form: "amount=700&currency=usd&source=tok_visa&description=order+1004",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::Indeterminate,
        // Retried with the same key; Stripe saved the 500 with the charge, so each replay
        // returns that 500 again, and the attempts run out.
        expect_stop: StopReason::AttemptsExhausted,
        expect_replays: &[false, true, true],
        expect_charges: 1,
    },
    Call {
        title: "charge while rate limited until the stack gives up",
        operation: Some("order-1005/charge"),
        form: "amount=300&currency=usd&source=tok_visa&description=order+1005",
        via: Via::RateLimited,
        contended: false,
        expect: Outcome::GaveUp,
        expect_stop: StopReason::AttemptsExhausted,
        expect_replays: &[false, false, false],
        expect_charges: 0,
    },
];

/// The servers the calls go to.
struct Servers {
    stripe: StripeServer,
    load_balancer: SocketAddr,
    rate_limited: StripeServer,
}

impl Servers {
    async fn start() -> std::io::Result<Self> {
        // The server hands out faults in the order charges reach the effect (past
        // validation, the customer's lock and the card check), so the script follows the
        // calls. Calls 3 (declined), 4 (replayed) and 5 (idempotency_error) never get
        // that far, nor does call 1's first attempt (no lock).
        let faults = Faults::script([
            // The other charge for cus_1001, before call 1: it holds the customer's lock.
            Some(Fault::Delay(HOLD)),
            // Call 1, attempt 2, then attempt 3.
            Some(Fault::ApiErrorBeforeEffect),
            None,
            // Call 2, attempt 2 (the load balancer answered attempt 1).
            None,
            // Call 6: the charge is made, then the API fails (the 500 is saved with it), and
            // Stripe does not say whether a retry can help (no `Stripe-Should-Retry`).
            Some(Fault::ApiErrorAfterEffectNoHint),
        ]);
        let stripe = StripeServer::builder()
            .faults(faults)
            .lock_timeout(LOCK_TIMEOUT)
            .start()
            .await?;
        let load_balancer = start_load_balancer(stripe.url()).await?;
        let rate_limited = StripeServer::builder().rate_limit(0).start().await?;
        Ok(Servers {
            stripe,
            load_balancer,
            rate_limited,
        })
    }

    fn url(&self, via: Via) -> String {
        match via {
            Via::Stripe => self.stripe.url(),
            Via::LoadBalancer => format!("http://{}", self.load_balancer),
            Via::RateLimited => self.rate_limited.url(),
        }
    }

    /// The server that does the work for calls sent `via`.
    fn server(&self, via: Via) -> &StripeServer {
        match via {
            Via::Stripe | Via::LoadBalancer => &self.stripe,
            Via::RateLimited => &self.rate_limited,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let servers = match Servers::start().await {
        Ok(servers) => servers,
        Err(e) => {
            eprintln!("could not start the Stripe-like servers: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Stripe-like server (resilient-http-testing) on {}",
        servers.url(Via::Stripe)
    );
    println!(
        "  behind a load balancer that fails once: {}",
        servers.url(Via::LoadBalancer)
    );
    println!(
        "  a second one that rate limits every request: {}\n",
        servers.url(Via::RateLimited)
    );

    let started = Instant::now();
    let mut surprises = Vec::new();
    let mut seen = Vec::new();
    for (i, call) in CALLS.iter().enumerate() {
        let n = i + 1;
        // A fresh stack (and client) per call, as after a restart: call 4 shows that a key
        // derived from an operation id is the same in a new process.
        let stack = match new_stack() {
            Ok(stack) => stack,
            Err(e) => {
                eprintln!("the demo's retry settings are refused: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{n}. {}", call.title);
        let other = if call.contended {
            match hold_the_customer_lock(&servers.stripe).await {
                Ok(other) => Some(other),
                Err(e) => {
                    surprises.push(format!("call {n}: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let t = Instant::now();
        let (report, summary, details) = run(stack, &servers.url(call.via), call).await;
        let elapsed = t.elapsed().as_millis();
        let outcome = report.outcome();

        // The timeline: each attempt, and whether the server answered it from the result
        // it saved under the key (its log says so, as `Idempotent-Replayed: true` did).
        let server = servers.server(call.via);
        let log = server.log();
        let mut replays = Vec::new();
        for a in report.attempts() {
            let status = a
                .status
                .map_or("---".to_owned(), |s| s.as_u16().to_string());
            let delay = a.delay.map_or("final".to_owned(), |d| {
                format!("retry in {} ms", d.as_millis())
            });
            let id = a.request_id.as_ref().and_then(|id| id.to_str());
            let replayed = id.is_some_and(|id| {
                log.requests()
                    .iter()
                    .any(|r| r.request_id == id && r.replayed)
            });
            replays.push(replayed);
            println!(
                "   attempt {}  {status}  {:<14} {:<16} {}{}",
                a.number,
                a.class.as_str(),
                delay,
                id.unwrap_or("(no request id: the server never saw it)"),
                if replayed {
                    "  Idempotent-Replayed: the saved answer"
                } else {
                    ""
                }
            );
        }
        println!("   => {summary} [{elapsed} ms]");
        for line in &details {
            println!("   {line}");
        }
        let key = report.idempotency_key().map(|k| k.as_str().to_owned());
        let charges = key
            .as_deref()
            .map_or(0, |k| server.ledger().by_key(k).count());
        if outcome == Outcome::Indeterminate {
            println!(
                "   reconcile by the key: the server's ledger has {charges} charge{} under it, so it {} happen",
                if charges == 1 { "" } else { "s" },
                if charges == 0 { "did not" } else { "did" }
            );
        }
        if let Some(other) = other {
            match other.await {
                Ok(Ok(200)) => println!(
                    "   (the other charge for cus_1001 held the lock {} ms, then got 200)",
                    HOLD.as_millis()
                ),
                Ok(Ok(status)) => surprises.push(format!(
                    "call {n}: the other charge for cus_1001 got {status}"
                )),
                Ok(Err(e)) => surprises.push(format!(
                    "call {n}: the other charge for cus_1001 failed: {e}"
                )),
                Err(e) => surprises.push(format!("call {n}: {e}")),
            }
        }
        println!();

        let stop = report.stop_reason();
        if outcome != call.expect || stop != call.expect_stop {
            surprises.push(format!(
                "call {n} ended {outcome} ({stop:?}), expected {} ({:?})",
                call.expect, call.expect_stop
            ));
        }
        if replays != call.expect_replays {
            surprises.push(format!(
                "call {n}: replayed attempts {replays:?}, expected {:?}",
                call.expect_replays
            ));
        }
        if report.replayed() != replays.last().copied().unwrap_or(false) {
            surprises.push(format!(
                "call {n}: the report says replayed: {}, the server's log disagrees",
                report.replayed()
            ));
        }
        // Every attempt carried the call's key, and the server saw every attempt the
        // report names a request id for.
        let ids: Vec<&str> = report.request_ids().filter_map(|id| id.to_str()).collect();
        for id in &ids {
            match log.requests().iter().find(|r| r.request_id == *id) {
                Some(r) if r.idempotency_key == key => {}
                Some(r) => surprises.push(format!(
                    "call {n}: request {id} carried key {:?}, not {key:?}",
                    r.idempotency_key
                )),
                None => surprises.push(format!("call {n}: the server never saw request {id}")),
            }
        }
        if charges != call.expect_charges {
            surprises.push(format!(
                "call {n}: the ledger has {charges} charges under its key, expected {}",
                call.expect_charges
            ));
        }
        seen.push(outcome);
    }

    for kind in [
        Outcome::Success,
        Outcome::DefiniteFailure,
        Outcome::Indeterminate,
        Outcome::GaveUp,
    ] {
        if !seen.contains(&kind) {
            surprises.push(format!("no call ended {kind}"));
        }
    }

    // What the server did, against what the calls were told: the checks above compared
    // each key's charges with what its call expects; here, no charge without a key.
    let ledger = servers.stripe.ledger();
    let unkeyed = ledger
        .charges()
        .iter()
        .filter(|c| c.idempotency_key.is_none())
        .count();
    // The other charge for cus_1001 is sent without a key, by a plain client.
    if unkeyed != 1 {
        surprises.push(format!(
            "the ledger has {unkeyed} charges without a key, expected 1 (the other charge)"
        ));
    }
    println!(
        "{} calls in {} ms; the server made {} charges (one of them the other charge for cus_1001){}",
        CALLS.len(),
        started.elapsed().as_millis(),
        ledger.len(),
        if surprises.is_empty() {
            ", each key's as expected, none twice"
        } else {
            ""
        }
    );
    if surprises.is_empty() {
        println!("every call ended as expected: success, definite failure, indeterminate and gave up all shown");
        ExitCode::SUCCESS
    } else {
        for s in &surprises {
            eprintln!("SURPRISE: {s}");
        }
        ExitCode::FAILURE
    }
}

/// The stack a user would build, with delays shortened so the demo is quick.
fn new_stack() -> Result<Stack, ConfigError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let retry = RetryLayer::builder()
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(400))
        .build()?;
    Ok(ResilientLayer::new(retry)
        .key_maker(DeriveKey::new(NAMESPACE))
        .layer(client))
}

/// Makes one call; returns its report, its one-line summary, and the lines that follow
/// it: the body of a success, what lies under a failure.
async fn run(stack: Stack, url: &str, call: &Call) -> (CallReport, String, Vec<String>) {
    let mut req = match Request::post(format!("{url}/v1/charges"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Bearer sk_test_demo")
        .body(Full::new(Bytes::from_static(call.form.as_bytes())))
    {
        Ok(req) => req,
        Err(e) => panic!("the demo's own request is malformed: {e}"),
    };
    if let Some(op) = call.operation {
        req.extensions_mut().insert(OperationId(op.to_owned()));
    }
    match stack.oneshot(req).await {
        Ok(res) => {
            let report = res
                .body()
                .report()
                .cloned()
                .expect("every success carries its CallReport");
            let body = match res.into_body().collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(e) => format!("(body failed: {e})"),
            };
            let note = if report.replayed() {
                " (the saved result, not a second charge)"
            } else {
                ""
            };
            let summary = report.to_string();
            (report, summary, vec![format!("body {body}{note}")])
        }
        Err(e) => {
            // `Display` is the report (and, for a reused key, whose bug it is); what lies
            // under it (Stripe's error object, a transport error) is its source chain.
            let mut details = Vec::new();
            let mut next = e.source();
            while let Some(cause) = next {
                details.push(format!("because: {cause}"));
                next = cause.source();
            }
            (e.report().clone(), e.to_string(), details)
        }
    }
}

/// Starts another charge for call 1's customer and waits until the server is running it
/// (its charge is in the ledger): from then until [`HOLD`] has passed, it holds the
/// customer's lock. Returns the task that ends with its status.
async fn hold_the_customer_lock(
    stripe: &StripeServer,
) -> Result<JoinHandle<Result<u16, String>>, String> {
    println!(
        "   (meanwhile another charge for cus_1001 runs and holds the customer's lock {} ms)",
        HOLD.as_millis()
    );
    let before = stripe.ledger().len();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(format!("{}/v1/charges", stripe.url()))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(OTHER_CHARGE.as_bytes())))
        .map_err(|e| format!("the other charge is malformed: {e}"))?;
    let other = tokio::spawn(async move {
        match client.request(req).await {
            Ok(res) => Ok(res.status().as_u16()),
            Err(e) => Err(e.to_string()),
        }
    });
    // Wait on the server's state, not on a guess of how long it needs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stripe.ledger().len() == before {
        if Instant::now() > deadline || other.is_finished() {
            return Err("the other charge for cus_1001 never started".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(other)
}

/// A load balancer in front of `upstream`: it answers its first request itself, with a
/// 502 and an HTML page (no `Request-Id`: Stripe never saw the request), and passes every
/// later one on.
async fn start_load_balancer(upstream: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let failed_once = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (client, upstream, failed_once) =
                (client.clone(), upstream.clone(), failed_once.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    let fail = !failed_once.swap(true, Ordering::SeqCst);
                    async move {
                        if fail {
                            return Ok::<_, Infallible>(bad_gateway());
                        }
                        Ok(forward(&client, &upstream, req)
                            .await
                            .unwrap_or_else(|_| bad_gateway()))
                    }
                });
                // A client going away mid-connection is not the demo's concern.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Passes `req` on to `upstream` and its response back.
async fn forward(
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, resilient_http::BoxError> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{upstream}{path}").parse()?;
    parts.headers.remove(header::HOST);
    let res = client
        .request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn bad_gateway() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(
        b"<html><body>502 Bad Gateway</body></html>",
    )));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html"),
    );
    res
}
