//! The README's first command: `cargo run --example demo`.
//!
//! Starts a small, flaky, Stripe-like server on 127.0.0.1 (an idempotency store, a
//! `Request-Id` on every response, Stripe error bodies), puts a real hyper-util client
//! under [`ResilientLayer`] with short delays, and makes seven calls that end in each of
//! the four outcomes. For every call it prints each attempt (status, class, delay, request
//! id), the idempotency key, and the outcome; it exits non-zero if any call ends otherwise
//! than expected.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http::idempotency::{DeriveKey, OperationId};
use resilient_http::{CallReport, Outcome, Resilient, ResilientLayer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};
use uuid::Uuid;

/// Our application's namespace for keys derived from operation ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x9d4c_5a3e_61f1_4c1e_8a8e_2f0b_7c55_d001);

type Stack = Resilient<
    Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    resilient_http::classify::StripeClassifier,
    DeriveKey,
>;

/// One call of the demo and what it must end in.
struct Call {
    title: &'static str,
    operation: Option<&'static str>,
    form: &'static str,
    expect: Outcome,
    expect_replayed: bool,
}

const CALLS: &[Call] = &[
    Call {
        title: "charge order 1001 (lock_timeout, then api_error with Stripe-Should-Retry: true, then success)",
        operation: Some("order-1001/charge"),
        form: "amount=2000&currency=usd&source=tok_visa&description=flaky",
        expect: Outcome::Success,
        expect_replayed: false,
    },
    Call {
        title: "charge order 1002 (a load balancer answers 502 first)",
        operation: Some("order-1002/charge"),
        form: "amount=1500&currency=usd&source=tok_visa&description=lb",
        expect: Outcome::Success,
        expect_replayed: false,
    },
    Call {
        title: "charge a declined card",
        operation: Some("order-1003/charge"),
        form: "amount=900&currency=usd&source=tok_chargeDeclined",
        expect: Outcome::DefiniteFailure,
        expect_replayed: false,
    },
    Call {
        title: "charge order 1001 again after a restart (same operation id, same key)",
        operation: Some("order-1001/charge"),
        form: "amount=2000&currency=usd&source=tok_visa&description=flaky",
        expect: Outcome::Success,
        expect_replayed: true,
    },
    Call {
        title: "same operation id, different amount (a caller bug)",
        operation: Some("order-1001/charge"),
        form: "amount=5000&currency=usd&source=tok_visa&description=flaky",
        expect: Outcome::DefiniteFailure,
        expect_replayed: false,
    },
    Call {
        title: "charge during an api_error (did it happen?)",
        operation: Some("order-1004/charge"),
        form: "amount=700&currency=usd&source=tok_visa&description=outage",
        expect: Outcome::Indeterminate,
        expect_replayed: false,
    },
    Call {
        title: "charge while rate limited until the stack gives up",
        operation: Some("order-1005/charge"),
        form: "amount=300&currency=usd&source=tok_visa&description=busy",
        expect: Outcome::GaveUp,
        expect_replayed: false,
    },
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let addr = match start_fake_stripe().await {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("could not start the fake Stripe server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("fake Stripe listening on http://{addr}\n");

    let started = Instant::now();
    let mut surprises = Vec::new();
    let mut seen = Vec::new();
    for (i, call) in CALLS.iter().enumerate() {
        // A fresh stack (and client) per call, as after a restart: call 4 shows that a key
        // derived from an operation id is the same in a new process.
        let stack = new_stack();
        println!("{}. {}", i + 1, call.title);
        let t = Instant::now();
        let (report, replayed, detail) = run(stack, addr, call).await;
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
            "   => {} in {} ms\n   {detail}\n",
            outcome.as_str().to_uppercase(),
            t.elapsed().as_millis()
        );
        seen.push(outcome);
        if outcome != call.expect || replayed != call.expect_replayed {
            surprises.push(format!(
                "call {} ended {outcome} (replayed: {replayed}), expected {} (replayed: {})",
                i + 1,
                call.expect,
                call.expect_replayed
            ));
        }
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
    println!(
        "{} calls in {} ms",
        CALLS.len(),
        started.elapsed().as_millis()
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
async fn run(stack: Stack, addr: SocketAddr, call: &Call) -> (CallReport, bool, String) {
    let mut req = match Request::post(format!("http://{addr}/v1/charges"))
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

// ---------------------------------------------------------------------------------------
// A small fake of Stripe's charge endpoint.

#[derive(Default)]
struct FakeStripe {
    /// Saved results by idempotency key: (parameters, status, body).
    saved: HashMap<String, (Bytes, u16, String)>,
    /// Attempts seen per key, to script the flaky scenarios.
    attempts: HashMap<String, u32>,
    requests: u64,
    charges: u64,
}

async fn start_fake_stripe() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Mutex::new(FakeStripe::default()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                // A client going away mid-connection is not the demo's concern.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn handle(
    state: Arc<Mutex<FakeStripe>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let params = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut stripe = match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    stripe.requests += 1;
    let request_id = format!("req_demo{:04}", stripe.requests);
    Ok(stripe.answer(key, &params, request_id))
}

impl FakeStripe {
    fn answer(
        &mut self,
        key: Option<String>,
        params: &Bytes,
        request_id: String,
    ) -> Response<Full<Bytes>> {
        let key = key.unwrap_or_default();
        if let Some((saved_params, status, body)) = self.saved.get(&key) {
            if saved_params == params {
                return reply(
                    *status,
                    body.clone(),
                    &request_id,
                    &[("idempotent-replayed", "true")],
                );
            }
            return reply(
                400,
                error_body(
                    "idempotency_error",
                    "",
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                ),
                &request_id,
                &[],
            );
        }
        let form = String::from_utf8_lossy(params);
        let param = |name: &str| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("")
                .to_owned()
        };
        let attempt = {
            let n = self.attempts.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        let (status, body, headers): (u16, String, &[(&str, &str)]) =
            match (param("description").as_str(), attempt) {
                // Not executed, not saved: safe to retry, and Stripe says so.
                ("flaky", 1) => (
                    429,
                    error_body("invalid_request_error", "lock_timeout", "This object cannot be accessed right now because another API request or Stripe process is currently accessing it."),
                    &[("stripe-should-retry", "true")],
                ),
                ("flaky", 2) => (
                    500,
                    error_body("api_error", "", "An unknown error occurred before the charge was attempted."),
                    &[("stripe-should-retry", "true")],
                ),
                // In front of the API: no request id, no JSON.
                ("lb", 1) => {
                    return Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .header("content-type", "text/html")
                        .body(Full::new(Bytes::from_static(b"<html><body>502 Bad Gateway</body></html>")))
                        .unwrap_or_default();
                }
                ("busy", _) => (
                    429,
                    error_body("invalid_request_error", "rate_limit", "Too many requests hit the API too quickly."),
                    &[],
                ),
                ("outage", _) => {
                    // The charge is made, then the API fails: Stripe saves the 500.
                    self.charges += 1;
                    let body = error_body("api_error", "", "Something went wrong on Stripe's end.");
                    self.save(key, params, 500, body.clone());
                    (500, body, &[])
                }
                _ if param("source") == "tok_chargeDeclined" => {
                    let body = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined.","param":"source"}}"#.to_owned();
                    self.save(key, params, 402, body.clone());
                    (402, body, &[])
                }
                _ => {
                    self.charges += 1;
                    let body = format!(r#"{{"id":"ch_demo{}","object":"charge","amount":{},"status":"succeeded"}}"#, self.charges, param("amount"));
                    self.save(key, params, 200, body.clone());
                    (200, body, &[])
                }
            };
        reply(status, body, &request_id, headers)
    }

    fn save(&mut self, key: String, params: &Bytes, status: u16, body: String) {
        if !key.is_empty() {
            self.saved.insert(key, (params.clone(), status, body));
        }
    }
}

fn error_body(error_type: &str, code: &str, message: &str) -> String {
    let mut error = serde_json::json!({ "type": error_type, "message": message });
    if !code.is_empty() {
        error["code"] = code.into();
    }
    serde_json::json!({ "error": error }).to_string()
}

fn reply(
    status: u16,
    body: String,
    request_id: &str,
    headers: &[(&str, &str)],
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = res.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        h.insert("request-id", v);
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::try_from(*name),
            http::HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
    res
}
