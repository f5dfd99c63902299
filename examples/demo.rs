//! The README's first command: `cargo run --example demo`.
//!
//! Starts resilient-http-testing's Stripe-like server on 127.0.0.1 (an idempotency store,
//! a `Request-Id` on every response, Stripe error bodies, per-customer locks, scripted
//! faults), the same behind a load balancer that fails once, and a second server that
//! rate limits every request. Puts a real hyper-util client under [`ResilientLayer`] with
//! short delays, and makes seven calls that end in each of the four outcomes. For every
//! call it prints each attempt (status, class, delay, request id), the idempotency key,
//! and the outcome; it exits non-zero if any call ends otherwise than expected, or if the
//! server's ledger shows a key charged twice or a success without its charge.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http::idempotency::{DeriveKey, OperationId};
use resilient_http::{CallReport, Outcome, Resilient, ResilientLayer};
use resilient_http_testing::{Fault, Faults, StripeServer};
use std::convert::Infallible;
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

type Stack = Resilient<
    Client<HttpConnector, Full<Bytes>>,
    resilient_http::classify::StripeClassifier,
    DeriveKey,
>;

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
    expect_replayed: bool,
}

const CALLS: &[Call] = &[
    Call {
        title: "charge order 1001 (lock_timeout, then api_error with Stripe-Should-Retry: true, then success)",
        operation: Some("order-1001/charge"),
        form: "amount=2000&currency=usd&source=tok_visa&customer=cus_1001&description=order+1001",
        via: Via::Stripe,
        contended: true,
        expect: Outcome::Success,
        expect_replayed: false,
    },
    Call {
        title: "charge order 1002 (a load balancer answers 502 first)",
        operation: Some("order-1002/charge"),
        form: "amount=1500&currency=usd&source=tok_visa&description=order+1002",
        via: Via::LoadBalancer,
        contended: false,
        expect: Outcome::Success,
        expect_replayed: false,
    },
    Call {
        title: "charge a declined card",
        operation: Some("order-1003/charge"),
        form: "amount=900&currency=usd&source=tok_chargeDeclined",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::DefiniteFailure,
        expect_replayed: false,
    },
    Call {
        title: "charge order 1001 again after a restart (same operation id, same key)",
        operation: Some("order-1001/charge"),
        form: "amount=2000&currency=usd&source=tok_visa&customer=cus_1001&description=order+1001",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::Success,
        expect_replayed: true,
    },
    Call {
        title: "same operation id, different amount (a caller bug)",
        operation: Some("order-1001/charge"),
        form: "amount=5000&currency=usd&source=tok_visa&customer=cus_1001&description=order+1001",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::DefiniteFailure,
        expect_replayed: false,
    },
    Call {
        title: "charge during an api_error (did it happen?)",
        operation: Some("order-1004/charge"),
        form: "amount=700&currency=usd&source=tok_visa&description=order+1004",
        via: Via::Stripe,
        contended: false,
        expect: Outcome::Indeterminate,
        expect_replayed: false,
    },
    Call {
        title: "charge while rate limited until the stack gives up",
        operation: Some("order-1005/charge"),
        form: "amount=300&currency=usd&source=tok_visa&description=order+1005",
        via: Via::RateLimited,
        contended: false,
        expect: Outcome::GaveUp,
        expect_replayed: false,
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
            // Call 6: the charge is made, then the API fails (the 500 is saved).
            Some(Fault::ApiErrorAfterEffect),
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
        // A fresh stack (and client) per call, as after a restart: call 4 shows that a key
        // derived from an operation id is the same in a new process.
        let stack = new_stack();
        println!("{}. {}", i + 1, call.title);
        let other = if call.contended {
            match hold_the_customer_lock(&servers.stripe).await {
                Ok(other) => Some(other),
                Err(e) => {
                    surprises.push(format!("call {}: {e}", i + 1));
                    None
                }
            }
        } else {
            None
        };
        let t = Instant::now();
        let (report, replayed, detail) = run(stack, &servers.url(call.via), call).await;
        let outcome = report.outcome();
        for a in report.attempts() {
            let status = a
                .status
                .map_or("---".to_owned(), |s| s.as_u16().to_string());
            let delay = a.delay.map_or("final".to_owned(), |d| {
                format!("retry in {} ms", d.as_millis())
            });
            let id = a
                .request_id
                .as_ref()
                .and_then(|id| id.to_str())
                .unwrap_or("(no request id)");
            println!(
                "   attempt {}  {status}  {:<18} {:<16} {id}",
                a.number,
                a.class.as_str(),
                delay
            );
        }
        match report.idempotency_key() {
            Some(key) => println!("   key {key}"),
            None => println!("   no key"),
        }
        println!(
            "   => {} in {} ms\n   {detail}",
            outcome.as_str().to_uppercase(),
            t.elapsed().as_millis()
        );
        if let Some(other) = other {
            match other.await {
                Ok(Ok(200)) => println!(
                    "   (the other charge for cus_1001 held the lock {} ms, then got 200)",
                    HOLD.as_millis()
                ),
                Ok(Ok(status)) => surprises.push(format!(
                    "call {}: the other charge for cus_1001 got {status}",
                    i + 1
                )),
                Ok(Err(e)) => surprises.push(format!(
                    "call {}: the other charge for cus_1001 failed: {e}",
                    i + 1
                )),
                Err(e) => surprises.push(format!("call {}: {e}", i + 1)),
            }
        }
        println!();
        if outcome != call.expect || replayed != call.expect_replayed {
            surprises.push(format!(
                "call {} ended {outcome} (replayed: {replayed}), expected {} (replayed: {})",
                i + 1,
                call.expect,
                call.expect_replayed
            ));
        }
        seen.push((
            outcome,
            report.idempotency_key().map(|k| k.as_str().to_owned()),
        ));
    }

    for kind in [
        Outcome::Success,
        Outcome::DefiniteFailure,
        Outcome::Indeterminate,
        Outcome::GaveUp,
    ] {
        if !seen.iter().any(|(outcome, _)| *outcome == kind) {
            surprises.push(format!("no call ended {kind}"));
        }
    }

    // What the server did, against what the calls were told: every success made exactly
    // one charge under its key, and no key was charged twice.
    let ledger = servers.stripe.ledger();
    let mut exactly_once = true;
    for (i, (outcome, key)) in seen.iter().enumerate() {
        let charges = key.as_deref().map_or(0, |k| ledger.by_key(k).count());
        if charges > 1 || (*outcome == Outcome::Success && charges != 1) {
            exactly_once = false;
            surprises.push(format!(
                "call {} ended {outcome}, and the ledger has {charges} charges under its key",
                i + 1
            ));
        }
    }
    println!(
        "{} calls in {} ms; the server made {} charges{}",
        CALLS.len(),
        started.elapsed().as_millis(),
        ledger.len(),
        if exactly_once {
            ", each success's charge found under its key, no key charged twice"
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
fn new_stack() -> Stack {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ResilientLayer::stripe()
        .key_maker(DeriveKey::new(NAMESPACE))
        .retry(|r| {
            r.base_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(400))
        })
        .layer(client)
}

/// Makes one call; returns its report, whether it was a replay, and a one-line detail.
async fn run(stack: Stack, url: &str, call: &Call) -> (CallReport, bool, String) {
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
                .extensions()
                .get::<CallReport>()
                .cloned()
                .expect("every success carries its CallReport");
            let replayed = report.replayed();
            let body = match res.into_body().collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(e) => format!("(body failed: {e})"),
            };
            let note = if replayed {
                " (Idempotent-Replayed: the saved result, not a second charge)"
            } else {
                ""
            };
            (report, replayed, format!("body {body}{note}"))
        }
        Err(e) => {
            let detail = if e.is_indeterminate() {
                format!("error: {e}\n   reconcile later: replay with the same key, or look the charge up")
            } else {
                format!("error: {e}")
            };
            (e.report().clone(), e.report().replayed(), detail)
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
