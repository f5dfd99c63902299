//! `ReqwestService` under the whole stack, against the Stripe-like test server on
//! loopback. Real time, real sockets; delays are a few tens of milliseconds.

#![cfg(feature = "reqwest")]

mod common;

use bytes::Bytes;
use common::assert_never_connected;
use http::Request;
use http_body_util::{BodyExt, Full};
use resilient_http::reqwest::ReqwestService;
use resilient_http::retry::Builder;
use resilient_http::stripe::{ErrorType, StripeClassifier};
use resilient_http::{CallReport, Class, Outcome, Resilient, StopReason};
use resilient_http_testing::{Answer, Fault, Faults, StripeServer};
use std::time::Duration;
use tower::ServiceExt;

/// The shared test settings (Stripe classifier, no jitter), with delays of a few
/// milliseconds: these tests run on real time.
fn fast() -> Builder<StripeClassifier> {
    common::builder()
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
}

fn client() -> ReqwestService {
    ReqwestService::new(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a plain reqwest client builds"),
    )
}

/// The whole stack over reqwest, 3 attempts per call.
fn stack() -> Resilient<ReqwestService> {
    common::stack_with(client(), fast())
}

/// The request id of every attempt in `report`, as text.
fn request_ids(report: &CallReport) -> Vec<String> {
    report
        .request_ids()
        .filter_map(|id| id.to_str().map(str::to_owned))
        .collect()
}

fn charge(server: &StripeServer, form: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("{}/v1/charges", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(form.as_bytes())))
        .expect("a well-formed request")
}

async fn server(faults: Faults) -> StripeServer {
    StripeServer::builder()
        .faults(faults)
        .start()
        .await
        .expect("the test server starts")
}

/// The keys of every request the server saw, in order.
fn keys(server: &StripeServer) -> Vec<Option<String>> {
    server
        .log()
        .requests()
        .iter()
        .map(|r| r.idempotency_key.clone())
        .collect()
}

#[tokio::test]
async fn a_rate_limit_is_retried_with_the_same_key_then_given_up() {
    let server = StripeServer::builder()
        .rate_limit(0)
        .start()
        .await
        .expect("the test server starts");
    let err = stack()
        .oneshot(charge(&server, "amount=100&currency=usd"))
        .await
        .expect_err("every request is rate limited");
    assert_eq!(err.outcome(), Outcome::GaveUp);
    assert_eq!(err.report().attempts().len(), 3);
    assert!(err
        .report()
        .attempts()
        .iter()
        .all(|a| a.class == Class::RateLimited));
    let key = err.idempotency_key().expect("a POST gets a key").as_str();
    assert_eq!(keys(&server), vec![Some(key.to_owned()); 3]);
    assert!(server.ledger().is_empty());
}

#[tokio::test]
async fn a_lock_timeout_is_retried_with_the_same_key_until_the_charge_is_made() {
    // The first charge for cus_1 holds the customer's lock for 100 ms; the second waits
    // 30 ms per attempt for it, so ten attempts (5 to 20 ms apart) outlast the first.
    let server = StripeServer::builder()
        .faults(Faults::script([Some(Fault::Delay(Duration::from_millis(
            100,
        )))]))
        .lock_timeout(Duration::from_millis(30))
        .start()
        .await
        .expect("the test server starts");
    let slow =
        tokio::spawn(stack().oneshot(charge(&server, "amount=100&currency=usd&customer=cus_1")));
    // Wait until the slow charge holds the lock (it is logged when its effect is made).
    while server.ledger().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let res = common::stack_with(client(), fast().max_attempts(10))
        .oneshot(charge(&server, "amount=200&currency=usd&customer=cus_1"))
        .await
        .expect("the lock is freed before the attempts run out");
    let report = res.body().report().expect("a report");
    assert!(report.attempts().len() >= 2, "{report}");
    assert_eq!(report.attempts()[0].class, Class::Locked);
    let key = report.idempotency_key().expect("a key").as_str();
    let log = server.log();
    assert!(log.by_key(key).count() >= 2);
    assert!(log
        .by_key(key)
        .all(|r| r.params.get("amount") == Some("200")));
    assert_eq!(server.ledger().by_key(key).count(), 1);
    let slow = slow
        .await
        .expect("no panic")
        .expect("the slow charge succeeds");
    assert_eq!(slow.status(), 200);
    assert_eq!(server.ledger().len(), 2);
}

#[tokio::test]
async fn a_card_decline_is_a_definite_failure_attempted_once() {
    let server = server(Faults::none()).await;
    let err = stack()
        .oneshot(charge(
            &server,
            "amount=100&currency=usd&source=tok_chargeDeclined",
        ))
        .await
        .expect_err("declined");
    assert!(err.is_definite_failure(), "{err}");
    assert_eq!(err.report().attempts().len(), 1);
    let stripe = err.stripe_error().expect("a Stripe error body");
    assert_eq!(stripe.decline_code.as_deref(), Some("generic_decline"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(402));
    assert!(server.ledger().is_empty());
}

#[tokio::test]
async fn an_api_error_the_server_says_not_to_retry_is_indeterminate_at_once() {
    // The 500 comes with `Stripe-Should-Retry: false`.
    let server = server(Faults::script([Some(Fault::ApiErrorAfterEffect)])).await;
    let err = stack()
        .oneshot(charge(&server, "amount=100&currency=usd"))
        .await
        .expect_err("a 500 api_error");
    assert!(err.is_indeterminate(), "{err}");
    // Not retried: the server said a retry cannot help.
    assert_eq!(err.report().attempts().len(), 1);
    assert_eq!(err.report().stop_reason(), StopReason::ServerRefusedRetry);
    assert_eq!(err.report().last_class(), Some(Class::ServerError));
    assert!(
        err.to_string().contains("server said a retry cannot help"),
        "{err}"
    );
    let stripe = err.stripe_error().expect("Stripe's error object");
    assert_eq!(stripe.error_type, ErrorType::ApiError);
    let key = err.idempotency_key().expect("a key").as_str();
    let ids = request_ids(err.report());
    let log = server.log();
    assert_eq!(log.requests().len(), 1, "nothing was sent again");
    assert_eq!(ids, vec![log.requests()[0].request_id.clone()]);
    // The caller can reconcile: its key finds the charge that was made.
    let ledger = server.ledger();
    assert_eq!(ledger.by_key(key).count(), 1);
    assert_eq!(
        ledger.by_key(key).next().map(|c| &c.request_id),
        Some(&ids[0])
    );
}

#[tokio::test]
async fn an_api_error_after_the_charge_is_replayed_with_the_same_key_then_indeterminate() {
    // No `Stripe-Should-Retry`: retried with the same key while attempts remain. The
    // charge was made and its 500 saved, so each replay returns that 500 again.
    let server = server(Faults::script([Some(Fault::ApiErrorAfterEffectNoHint)])).await;
    let err = stack()
        .oneshot(charge(&server, "amount=100&currency=usd"))
        .await
        .expect_err("a 500 api_error every time");
    assert!(err.is_indeterminate(), "{err}");
    let report = err.report();
    assert_eq!(report.stop_reason(), StopReason::AttemptsExhausted);
    let classes: Vec<Class> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes, [Class::ServerError; 3]);
    assert!(report.replayed(), "the last answer was Stripe's saved 500");
    assert_eq!(
        err.headers().expect("a response")["idempotent-replayed"],
        "true"
    );
    assert_eq!(
        err.stripe_error().map(|e| &e.error_type),
        Some(&ErrorType::ApiError)
    );
    let key = err.idempotency_key().expect("a key").as_str();
    assert_eq!(keys(&server), vec![Some(key.to_owned()); 3]);
    // Every attempt reached the server, and the report names each one's request id.
    let log = server.log();
    let logged: Vec<&str> = log
        .requests()
        .iter()
        .map(|r| r.request_id.as_str())
        .collect();
    assert_eq!(request_ids(report), logged);
    let replays: Vec<bool> = log.requests().iter().map(|r| r.replayed).collect();
    assert_eq!(replays, [false, true, true]);
    // One charge, made by the first attempt, found under the key.
    let ledger = server.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        ledger.by_key(key).next().map(|c| c.request_id.as_str()),
        Some(logged[0])
    );
}

#[tokio::test]
async fn a_connection_dropped_after_the_charge_is_retried_and_replayed_once() {
    let server = server(Faults::script([Some(Fault::DropAfterEffect)])).await;
    let res = stack()
        .oneshot(charge(&server, "amount=100&currency=usd"))
        .await
        .expect("the retry gets the saved result");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let report = res.body().report().expect("a report").clone();
    assert!(report.replayed());
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(report.attempts()[0].class, Class::Transport);
    let log = server.log();
    assert_eq!(log.requests()[0].answer, Answer::Dropped);
    assert!(log.requests()[1].replayed);
    let key = report.idempotency_key().expect("a key").as_str();
    assert_eq!(keys(&server), vec![Some(key.to_owned()); 2]);
    assert_eq!(server.ledger().len(), 1);
    let body = res
        .into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes();
    assert!(body.starts_with(br#"{"#), "{body:?}");
}

/// A resolver that finds no address for any name.
struct NoSuchHost;

impl reqwest::dns::Resolve for NoSuchHost {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async { Err(std::io::Error::other("no such host").into()) })
    }
}

#[tokio::test]
async fn a_failed_dns_look_up_is_a_connect_error_retried_then_gave_up() {
    let client = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(NoSuchHost)
        .build()
        .expect("a reqwest client builds");
    let svc = common::stack_with(ReqwestService::new(client), fast());
    let req = Request::post("http://no-such-host.invalid/v1/charges")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))
        .unwrap();

    let err = svc.oneshot(req).await.unwrap_err();

    assert_never_connected(&err);
}

#[tokio::test]
async fn a_request_reqwest_refuses_to_build_is_not_called_definite() {
    // A relative URI: reqwest refuses it before connecting. reqwest reports a redirect it
    // cannot follow, after the server did the work, with the same kind of error, so the
    // classifier cannot call either "not done".
    let req = Request::post("/v1/charges")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))
        .unwrap();

    let err = stack().oneshot(req).await.unwrap_err();

    assert!(err.is_indeterminate(), "{err}");
    let classes: Vec<Class> = err.report().attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes, [Class::Transport; 3]);
    let cause = err.underlying_error().expect("reqwest's error is kept");
    let reqwest_error = cause
        .downcast_ref::<reqwest::Error>()
        .expect("a reqwest::Error");
    assert!(reqwest_error.is_builder());
}

#[tokio::test]
async fn a_charge_can_be_fetched_and_an_unknown_one_is_a_definite_404() {
    let server = server(Faults::none()).await;
    stack()
        .oneshot(charge(&server, "amount=100&currency=usd"))
        .await
        .expect("charged");
    let id = server.ledger().charges()[0].id.clone();
    let get = |id: &str| {
        Request::get(format!("{}/v1/charges/{id}", server.url()))
            .body(Full::new(Bytes::new()))
            .expect("a well-formed request")
    };
    let res = stack().oneshot(get(&id)).await.expect("found");
    let body = res
        .into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes();
    let charge: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(charge["id"], id.as_str());
    assert_eq!(charge["amount"], 100);

    let err = stack().oneshot(get("ch_nope")).await.expect_err("missing");
    assert!(err.is_definite_failure(), "{err}");
    assert_eq!(err.report().idempotency_key(), None, "a GET gets no key");
}

/// A server that answers every request with `<its port> <method> <path and query>`.
async fn echo_server() -> std::net::SocketAddr {
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("a local address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let text = format!("{} {} {}", addr.port(), req.method(), req.uri());
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(text))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// Sends a POST to `http://{addr}{target}` through `svc`; the echo server's answer.
async fn echo(
    svc: &Resilient<ReqwestService>,
    addr: std::net::SocketAddr,
    target: &str,
    extension: bool,
) -> Bytes {
    let mut req = Request::post(format!("http://{addr}{target}"))
        .body(Full::new(Bytes::from_static(b"amount=1")))
        .expect("a well-formed request");
    if extension {
        // Extensions make the adapter use reqwest's own conversion.
        req.extensions_mut().insert(7u32);
    }
    let res = svc.clone().oneshot(req).await.expect("a response");
    res.into_body().collect().await.expect("a body").to_bytes()
}

#[tokio::test]
async fn every_call_reaches_its_own_host_and_path_through_the_url_cache() {
    let [a, b] = [echo_server().await, echo_server().await];
    let svc = stack();
    // Four look-alike URLs, as many as the adapter keeps: from the second round on, every
    // call is answered from the cache, and one that matched on too little (the path
    // alone, the host alone) would reach the wrong server or path.
    let alike = [(a, "/v1/e"), (b, "/v1/e"), (a, "/v1/f"), (b, "/v1/f")];
    for round in 0..3 {
        for (addr, target) in alike {
            let body = echo(&svc, addr, target, false).await;
            assert_eq!(
                body,
                format!("{} POST {target}", addr.port()),
                "round {round}"
            );
        }
    }
    // More URLs than are kept (evictions), queries (never kept) and extensions (no cache).
    let targets = ["/v1/a", "/v1/b", "/v1/c", "/v1/d", "/v1/e?x=1", "/v1/e?x=2"];
    for round in 0..2 {
        for addr in [a, b] {
            for target in targets {
                let body = echo(&svc, addr, target, round == 1).await;
                assert_eq!(
                    body,
                    format!("{} POST {target}", addr.port()),
                    "round {round}"
                );
            }
        }
    }
}
