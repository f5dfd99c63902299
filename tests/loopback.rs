//! The whole stack over a real hyper-util client and real hyper servers on 127.0.0.1.
//!
//! These run on real time, so delays are a few milliseconds; everything about exact
//! schedules is tested on paused time in the other test files.

mod common;

use bytes::Bytes;
use common::assert_never_connected;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http::retry::Builder;
use resilient_http::stripe::StripeClassifier;
use resilient_http::{Class, Jitter, Outcome, Resilient, ResilientLayer, RetryLayer, StopReason};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

/// What the server saw of one request.
#[derive(Clone, Debug)]
struct Hit {
    key: Option<String>,
    body: Bytes,
}

/// How the server answers its n-th request (from 0).
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    delay: Duration,
}

impl Answer {
    fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Log = Arc<Mutex<Vec<Hit>>>;

/// Starts a hyper server on 127.0.0.1:0 that answers with `answer(n)` and logs every request.
async fn serve(answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let answer = Arc::new(answer);
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = server_log.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    let answer = answer.clone();
                    async move {
                        let key = req
                            .headers()
                            .get("idempotency-key")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(Hit { key, body });
                            log.len() - 1
                        };
                        let a = answer(n);
                        tokio::time::sleep(a.delay).await;
                        let mut res = Response::new(Full::new(a.body));
                        *res.status_mut() = StatusCode::from_u16(a.status).unwrap();
                        res.headers_mut()
                            .insert("request-id", format!("req_{n}").parse().unwrap());
                        for (name, value) in a.headers {
                            res.headers_mut().insert(name, value.parse().unwrap());
                        }
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, log)
}

type Stack = Resilient<Client<HttpConnector, Full<Bytes>>>;

/// Stripe's settings with delays of a few milliseconds (these tests run on real time),
/// without jitter.
fn fast() -> Builder<StripeClassifier> {
    RetryLayer::builder()
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(4))
        .jitter(Jitter::None)
}

/// The whole stack over a real hyper-util client, with `retry`'s settings.
fn stack_with(retry: Builder<StripeClassifier>) -> Stack {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let retry = retry.build().expect("the test settings are valid");
    ResilientLayer::new(retry).layer(client)
}

fn stack() -> Stack {
    stack_with(fast())
}

/// Every message down an error's `source()` chain, the error's own first, as an error
/// reporter shows them.
fn chain(err: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        out.push(cause.to_string());
        next = cause.source();
    }
    out
}

fn charge(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/v1/charges"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))
        .unwrap()
}

const LOCK_TIMEOUT: &str =
    r#"{"error":{"type":"invalid_request_error","code":"lock_timeout","message":"busy"}}"#;
const API_ERROR: &str =
    r#"{"error":{"type":"api_error","message":"Something went wrong on Stripe's end."}}"#;

#[tokio::test]
async fn lock_timeout_is_retried_with_the_same_key_until_success() {
    let (addr, log) = serve(|n| match n {
        0 | 1 => Answer::new(429, LOCK_TIMEOUT),
        _ => Answer::new(200, r#"{"id":"ch_1"}"#),
    })
    .await;

    let res = stack().oneshot(charge(addr)).await.unwrap();

    assert_eq!(res.status(), 200);
    let report = res.body().report().unwrap().clone();
    assert_eq!(report.outcome(), Outcome::Success);
    let classes: Vec<Class> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes, [Class::Locked, Class::Locked, Class::Success]);
    let ids: Vec<_> = report
        .request_ids()
        .map(|id| id.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["req_0", "req_1", "req_2"]);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"id":"ch_1"}"#);

    let hits = log.lock().unwrap().clone();
    assert_eq!(hits.len(), 3);
    let key = report.idempotency_key().unwrap().as_str().to_owned();
    for hit in &hits {
        assert_eq!(
            hit.key.as_deref(),
            Some(key.as_str()),
            "every attempt carries the key"
        );
        assert_eq!(
            &hit.body[..],
            b"amount=2000&currency=usd",
            "every attempt sends the body"
        );
    }
}

#[tokio::test]
async fn api_error_is_replayed_with_the_key_then_indeterminate_with_every_request_id() {
    let (addr, log) = serve(|_| Answer::new(500, API_ERROR)).await;

    let mut err = stack().oneshot(charge(addr)).await.unwrap_err();

    assert!(err.is_indeterminate(), "{err}");
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    let classes: Vec<Class> = err.report().attempts().iter().map(|a| a.class).collect();
    assert_eq!(
        classes,
        [Class::ServerError; 3],
        "a Stripe api_error is replayed while attempts remain"
    );
    let ids: Vec<_> = err
        .report()
        .request_ids()
        .map(|id| id.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["req_0", "req_1", "req_2"]);
    let hits = log.lock().unwrap().clone();
    assert_eq!(hits.len(), 3);
    let key = err.idempotency_key().unwrap().as_str().to_owned();
    assert!(
        hits.iter().all(|h| h.key.as_deref() == Some(key.as_str())),
        "every attempt carries the key the error names: {hits:?}"
    );
    assert_eq!(
        err.stripe_error().unwrap().message.as_deref(),
        Some("Something went wrong on Stripe's end.")
    );
    let res = err.take_response().unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["request-id"], "req_2", "the last attempt's");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], API_ERROR.as_bytes());
}

#[tokio::test]
async fn api_error_with_stripe_should_retry_false_is_not_replayed() {
    let (addr, log) =
        serve(|_| Answer::new(500, API_ERROR).header("stripe-should-retry", "false")).await;

    let err = stack().oneshot(charge(addr)).await.unwrap_err();

    assert!(err.is_indeterminate(), "{err}");
    assert_eq!(err.report().stop_reason(), StopReason::ServerRefusedRetry);
    assert_eq!(err.report().attempts().len(), 1);
    assert_eq!(err.report().last_class(), Some(Class::ServerError));
    let hits = log.lock().unwrap().clone();
    assert_eq!(hits.len(), 1, "the server said a retry cannot help");
    assert_eq!(
        hits[0].key.as_deref(),
        Some(err.idempotency_key().unwrap().as_str())
    );
    let ids: Vec<_> = err
        .report()
        .request_ids()
        .map(|id| id.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["req_0"]);
}

#[tokio::test]
async fn card_decline_is_attempted_once_and_its_body_reaches_the_caller() {
    const DECLINED: &str = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds.","param":"source"}}"#;
    let (addr, log) = serve(|_| Answer::new(402, DECLINED).header("x-extra", "kept")).await;

    let mut err = stack().oneshot(charge(addr)).await.unwrap_err();

    assert!(err.is_definite_failure(), "{err}");
    assert_eq!(log.lock().unwrap().len(), 1);
    let stripe = err.stripe_error().unwrap();
    assert_eq!(stripe.decline_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(stripe.param.as_deref(), Some("source"));
    let res = err.take_response().unwrap();
    assert_eq!(res.status(), 402);
    assert_eq!(res.headers()["x-extra"], "kept");
    assert_eq!(res.headers()["request-id"], "req_0");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], DECLINED.as_bytes());
}

#[tokio::test]
async fn a_bare_502_is_retried_with_the_same_key() {
    let (addr, log) = serve(|n| match n {
        0 => Answer::new(502, "<html>Bad Gateway</html>"),
        _ => Answer::new(200, "{}"),
    })
    .await;

    let res = stack().oneshot(charge(addr)).await.unwrap();

    assert_eq!(res.status(), 200);
    let hits = log.lock().unwrap().clone();
    assert_eq!(hits.len(), 2);
    assert!(hits[0].key.is_some());
    assert_eq!(hits[0].key, hits[1].key);
}

#[tokio::test]
async fn connection_refused_is_retried_then_gave_up() {
    // Take a free port, then close it: nothing listens there.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };

    let err = stack().oneshot(charge(addr)).await.unwrap_err();

    assert_never_connected(&err);
    // The error chain names the refusal, not only hyper-util's "client error (Connect)".
    let chain = chain(&err);
    assert!(
        chain[1..].iter().any(|m| m == "client error (Connect)"),
        "{chain:?}"
    );
    assert!(
        chain[1..]
            .iter()
            .any(|m| m.to_lowercase().contains("refused")),
        "{chain:?}"
    );
}

#[cfg(feature = "hyper-util")]
#[tokio::test]
async fn a_failed_dns_look_up_is_a_connect_error_retried_then_gave_up() {
    // hyper-util's own connector, with a resolver that finds nothing: the error chain ends
    // in an `io::Error` of kind `Other`, so only hyper-util's `is_connect()` tells that
    // nothing was sent.
    let resolver = tower::service_fn(|_: hyper_util::client::legacy::connect::dns::Name| async {
        Err::<std::vec::IntoIter<SocketAddr>, _>(std::io::Error::other("no such host"))
    });
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(HttpConnector::new_with_resolver(resolver));
    let svc = common::stack_with(client, fast());
    let req = Request::post("http://no-such-host.invalid/v1/charges")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))
        .unwrap();

    let err = svc.oneshot(req).await.unwrap_err();

    assert_never_connected(&err);
    // The error chain names the real cause, from deep in hyper-util's error chain.
    let chain = chain(&err);
    assert!(
        chain[1..].iter().any(|m| m.contains("no such host")),
        "{chain:?}"
    );
}

#[tokio::test]
async fn a_connection_dropped_after_the_request_is_indeterminate_and_replayed_with_the_key() {
    // A raw TCP server that reads each request and hangs up without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            // Read until the whole request (headers and the 24-byte body) is in.
            while !String::from_utf8_lossy(&got).contains("currency=usd") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&got).to_lowercase();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("idempotency-key: "))
                .map(|k| k.trim().to_owned());
            seen.lock().unwrap().push(key);
            drop(stream);
        }
    });

    let err = stack().oneshot(charge(addr)).await.unwrap_err();

    assert!(err.is_indeterminate(), "{err}");
    let classes: Vec<Class> = err.report().attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes, [Class::Transport; 3]);
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3, "one request per attempt: {keys:?}");
    let key = err.idempotency_key().unwrap().as_str().to_lowercase();
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(key.as_str())),
        "{keys:?} vs {key}"
    );
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_is_replayed_with_the_same_key() {
    // The first answer never comes in time; later ones come at once. The 250 ms attempt
    // timeout leaves a loaded CI machine ample room for the second attempt.
    let (addr, log) = serve(|n| match n {
        0 => Answer::new(200, "late").after(Duration::from_secs(60)),
        _ => Answer::new(200, "on time"),
    })
    .await;

    let stack = stack_with(fast().attempt_timeout(Duration::from_millis(250)));
    let res = stack.oneshot(charge(addr)).await.unwrap();

    let report = res.body().report().unwrap().clone();
    let classes: Vec<Class> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes.first(), Some(&Class::Timeout), "{classes:?}");
    assert_eq!(classes.last(), Some(&Class::Success), "{classes:?}");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"on time");
    let hits = log.lock().unwrap().clone();
    assert_eq!(hits.len(), classes.len());
    let key = report.idempotency_key().unwrap().as_str();
    assert!(hits.iter().all(|h| h.key.as_deref() == Some(key)));
}

#[tokio::test]
async fn a_large_success_body_streams_through_intact() {
    let big: Bytes = (0..1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let expected = big.clone();
    let (addr, _) = serve(move |_| Answer::new(200, big.clone())).await;

    let res = stack().oneshot(charge(addr)).await.unwrap();

    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "1 MiB body differs");
}

#[tokio::test]
async fn get_requests_carry_no_key_and_5xx_is_retried() {
    let (addr, log) = serve(|n| match n {
        0 => Answer::new(500, API_ERROR),
        _ => Answer::new(200, r#"{"id":"ch_1"}"#),
    })
    .await;

    let req = Request::get(format!("http://{addr}/v1/charges/ch_1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = stack().oneshot(req).await.unwrap();

    assert_eq!(res.status(), 200);
    let hits = log.lock().unwrap().clone();
    assert_eq!(
        hits.len(),
        2,
        "a GET is idempotent: its api_error is retried"
    );
    assert!(hits.iter().all(|h| h.key.is_none()), "GET never gets a key");
}
