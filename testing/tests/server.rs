//! The Stripe-like test server on its own, through a plain hyper-util client (no retry
//! layer): Stripe's idempotency rules, error bodies and request ids as a client sees them.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use resilient_http_testing::{Answer, Fault, Faults, StripeServer};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

type Raw = Client<HttpConnector, Full<Bytes>>;

fn client() -> Raw {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a `POST /v1/charges` with `body`, an optional key and content type.
async fn post(
    client: &Raw,
    server: &StripeServer,
    key: Option<&str>,
    content_type: &str,
    body: &'static [u8],
) -> (Response<()>, serde_json::Value) {
    post_at(client, server, "/v1/charges", key, content_type, body).await
}

/// [`post`] to another spelling of the path.
async fn post_at(
    client: &Raw,
    server: &StripeServer,
    path: &str,
    key: Option<&str>,
    content_type: &str,
    body: &'static [u8],
) -> (Response<()>, serde_json::Value) {
    let mut req =
        Request::post(format!("{}{path}", server.url())).header("content-type", content_type);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body)))
        .expect("a well-formed request");
    split(client.request(req).await.expect("a response")).await
}

async fn split(res: Response<Incoming>) -> (Response<()>, serde_json::Value) {
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("whole body").to_bytes();
    let json = serde_json::from_slice(&bytes).expect("every body is JSON");
    (Response::from_parts(parts, ()), json)
}

const FORM: &str = "application/x-www-form-urlencoded";

/// How long a test waits for the server to reach a state before it fails: far longer than
/// any machine needs, so that only a server that never gets there fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until `reached` holds of the server's state (its ledger, its log), checking every
/// millisecond, instead of sleeping for a time the server is assumed to need.
async fn wait_for(what: &str, mut reached: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !reached() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `amount=5&currency=usd` with `key` from a task of its own, so that the test can
/// go on while the server holds the request.
fn spawn_charge(client: &Raw, server: &StripeServer, key: &str) -> JoinHandle<u16> {
    let req = Request::post(format!("{}/v1/charges", server.url()))
        .header("content-type", FORM)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"amount=5&currency=usd")))
        .expect("a well-formed request");
    let client = client.clone();
    tokio::spawn(async move {
        client
            .request(req)
            .await
            .expect("a response")
            .status()
            .as_u16()
    })
}

#[tokio::test]
async fn the_same_key_and_params_replay_the_saved_result_with_a_new_request_id() {
    let server = StripeServer::start().await.expect("starts");
    let c = client();
    let (first, charge) = post(&c, &server, Some("k1"), FORM, b"amount=500&currency=usd").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers().get("idempotent-replayed"), None);
    // Same parameters as JSON (a media type is case-insensitive): still the same request
    // to Stripe.
    let (again, replayed) = post(
        &c,
        &server,
        Some("k1"),
        "Application/JSON; charset=utf-8",
        br#"{"currency":"usd","amount":500}"#,
    )
    .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.headers()["original-request"],
        first.headers()["request-id"]
    );
    assert_ne!(again.headers()["request-id"], first.headers()["request-id"]);
    assert_eq!(replayed, charge);
    assert_eq!(server.ledger().len(), 1);
    assert!(server.log().requests()[1].replayed);
}

#[tokio::test]
async fn the_same_key_with_other_params_is_an_idempotency_error() {
    let server = StripeServer::start().await.expect("starts");
    let c = client();
    post(&c, &server, Some("k1"), FORM, b"amount=500&currency=usd").await;
    let (res, body) = post(&c, &server, Some("k1"), FORM, b"amount=900&currency=usd").await;
    assert_eq!(res.status(), 400);
    assert_eq!(body["error"]["type"], "idempotency_error");
    assert!(res.headers().contains_key("request-id"));
    assert_eq!(server.ledger().len(), 1);
}

#[tokio::test]
async fn validation_failures_are_not_saved_so_the_key_can_be_reused() {
    let server = StripeServer::start().await.expect("starts");
    let c = client();
    let (res, body) = post(&c, &server, Some("k1"), FORM, b"amount=-5&currency=usd").await;
    assert_eq!(res.status(), 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "amount");
    let (res, _) = post(&c, &server, Some("k1"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("idempotent-replayed"), None);
    assert_eq!(server.ledger().len(), 1);
}

#[tokio::test]
async fn a_key_still_executing_gets_409_then_the_saved_result() {
    // Two delayed charges. The first is not answered while the test runs, so its key is
    // in use however slow the machine (no race with the end of its delay); the second is
    // answered after a few ms, and from then on its saved result is what a replay gets.
    let server = StripeServer::builder()
        .faults(Faults::script([
            Some(Fault::Delay(Duration::from_secs(3600))),
            Some(Fault::Delay(Duration::from_millis(5))),
        ]))
        .start()
        .await
        .expect("starts");
    let c = client();
    let slow = spawn_charge(&c, &server, "k1");
    wait_for("the delayed charge", || {
        server.ledger().by_key("k1").count() == 1
    })
    .await;
    let (res, body) = post(&c, &server, Some("k1"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(res.status(), 409);
    assert_eq!(body["error"]["type"], "idempotency_error");
    assert_eq!(body["error"]["code"], "idempotency_key_in_use");
    assert_eq!(res.headers()["stripe-should-retry"], "true");
    assert!(!slow.is_finished(), "the first request is still unanswered");
    slow.abort();
    let answers: Vec<_> = server.log().by_key("k1").map(|r| r.answer).collect();
    assert_eq!(answers, [Answer::Status(200), Answer::Status(409)]);

    // Its answer comes after the delay; once sent, the same request replays it.
    let (first, charge) = post(&c, &server, Some("k2"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers().get("idempotent-replayed"), None);
    let (again, replayed) = post(&c, &server, Some("k2"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed, charge);
    assert_eq!(server.ledger().by_key("k2").count(), 1);
    assert_eq!(server.ledger().len(), 2);
}

#[tokio::test]
async fn an_api_error_after_the_effect_is_saved_and_one_before_it_is_not() {
    let server = StripeServer::builder()
        .faults(Faults::script([
            Some(Fault::ApiErrorBeforeEffect),
            Some(Fault::ApiErrorAfterEffect),
        ]))
        .start()
        .await
        .expect("starts");
    let c = client();
    let (res, body) = post(&c, &server, Some("a"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(
        (res.status().as_u16(), &body["error"]["type"]),
        (500, &"api_error".into())
    );
    assert_eq!(res.headers()["stripe-should-retry"], "true");
    let (res, body) = post(&c, &server, Some("b"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(
        (res.status().as_u16(), &body["error"]["type"]),
        (500, &"api_error".into())
    );
    assert_eq!(res.headers()["stripe-should-retry"], "false");
    // "a" saved nothing: it runs now. "b" saved its 500: the replay returns it.
    let (res, _) = post(&c, &server, Some("a"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(res.status(), 200);
    let (res, _) = post(&c, &server, Some("b"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(server.ledger().len(), 2);
    assert_eq!(server.log().faults(), 2);
}

#[tokio::test]
async fn an_api_error_after_the_effect_without_a_hint_is_saved_and_replayed_without_one() {
    let server = StripeServer::builder()
        .faults(Faults::script([Some(Fault::ApiErrorAfterEffectNoHint)]))
        .start()
        .await
        .expect("starts");
    let c = client();
    let (first, body) = post(&c, &server, Some("c"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(
        (first.status().as_u16(), &body["error"]["type"]),
        (500, &"api_error".into())
    );
    assert_eq!(first.headers().get("stripe-should-retry"), None);
    // The 500 was saved with the charge: the replay returns it, still without the header.
    let (again, replayed) = post(&c, &server, Some("c"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(again.status(), 500);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers().get("stripe-should-retry"), None);
    assert_eq!(
        again.headers()["original-request"],
        first.headers()["request-id"]
    );
    assert_eq!(replayed, body);
    assert_eq!(server.ledger().by_key("c").count(), 1);
    let log = server.log();
    assert_eq!(log.faults(), 1);
    assert_eq!(
        log.requests()[0].fault,
        Some(Fault::ApiErrorAfterEffectNoHint)
    );
    assert!(log.requests()[1].replayed);
}

#[tokio::test]
async fn malformed_requests_get_400_or_404_with_a_request_id_never_a_panic() {
    let server = StripeServer::builder()
        .body_limit(64)
        .start()
        .await
        .expect("starts");
    let c = client();
    let long_key = "k".repeat(256);
    let cases: Vec<(Option<&str>, &str, &'static [u8], u16)> = vec![
        (None, FORM, b"amount=%zz&currency=usd", 400),
        (None, FORM, b"\xff\xfe", 400),
        (None, "application/json", b"{not json", 400),
        (None, "application/json", br#"{"amount":{"nested":1}}"#, 400),
        (None, FORM, &[b'a'; 100], 400),
        (None, FORM, b"currency=usd", 400),
        (None, FORM, b"amount=5&currency=dollars", 400),
        (Some(&long_key), FORM, b"amount=5&currency=usd", 400),
    ];
    for (key, content_type, body, status) in cases {
        let (res, json) = post(&c, &server, key, content_type, body).await;
        assert_eq!(res.status(), status, "{body:?}");
        assert_eq!(json["error"]["type"], "invalid_request_error", "{body:?}");
        assert!(res.headers().contains_key("request-id"));
    }
    let req = Request::delete(format!("{}/v1/nothing", server.url()))
        .body(Full::new(Bytes::new()))
        .expect("a well-formed request");
    let (res, json) = split(c.request(req).await.expect("a response")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert!(server.ledger().is_empty());
}

#[tokio::test]
async fn dropping_the_server_closes_its_port() {
    let server = StripeServer::start().await.expect("starts");
    let addr = server.addr();
    drop(server);
    // The accept loop is aborted at its next poll, on this runtime's next turn.
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting on {addr}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_delay_of_duration_max_never_answers_and_never_panics() {
    // "Never answer" written the natural way: the charge is made, the key stays in use.
    let server = StripeServer::builder()
        .faults(Faults::script([Some(Fault::Delay(Duration::MAX))]))
        .start()
        .await
        .expect("starts");
    let c = client();
    let pending = spawn_charge(&c, &server, "forever");
    wait_for("the delayed charge", || {
        server.ledger().by_key("forever").count() == 1
    })
    .await;
    let (again, _) = post(&c, &server, Some("forever"), FORM, b"amount=5&currency=usd").await;
    assert_eq!(again.status(), 409, "the first is still executing");
    assert!(!pending.is_finished(), "no answer");
    pending.abort();
    assert_eq!(server.ledger().by_key("forever").count(), 1);
}

#[tokio::test]
async fn invalid_keys_are_refused_before_the_store_so_they_never_share_a_result() {
    let server = StripeServer::start().await.expect("starts");
    let c = client();
    // Two different keys that read as the same text once made UTF-8 (each ends in a
    // replacement character), one too long, an empty one, a space and a tab (valid in a
    // header, not in a key), two at once.
    let long = "k".repeat(256);
    let cases: [&[&[u8]]; 7] = [
        &[b"key\xff"],
        &[b"key\xfe"],
        &[long.as_bytes()],
        &[b""],
        &[b"key 1"],
        &[b"key\t1"],
        &[b"key-1", b"key-2"],
    ];
    for keys in cases {
        let mut req =
            Request::post(format!("{}/v1/charges", server.url())).header("content-type", FORM);
        for key in keys {
            let value = http::HeaderValue::from_bytes(key).expect("a header value");
            req = req.header("idempotency-key", value);
        }
        let req = req
            .body(Full::new(Bytes::from_static(b"amount=500&currency=usd")))
            .expect("a well-formed request");
        let (res, json) = split(c.request(req).await.expect("a response")).await;
        assert_eq!(res.status(), 400, "{keys:?}: {json}");
        assert_eq!(json["error"]["type"], "invalid_request_error", "{json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("idempotency key"),
            "{json}"
        );
        assert_eq!(res.headers().get("idempotent-replayed"), None);
    }
    assert!(server.ledger().is_empty(), "no charge was made");

    // The longest key there is: charged, saved under it.
    let longest = "k".repeat(255);
    let (res, _) = post(
        &c,
        &server,
        Some(&longest),
        FORM,
        b"amount=500&currency=usd",
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(server.ledger().by_key(&longest).count(), 1);
}

#[tokio::test]
async fn a_trailing_slash_is_the_same_endpoint_for_the_idempotency_store() {
    let server = StripeServer::start().await.expect("starts");
    let c = client();
    let body = b"amount=500&currency=usd";
    let (first, charge) = post_at(&c, &server, "/v1/charges/", Some("k1"), FORM, body).await;
    assert_eq!(first.status(), 200);
    let (again, replayed) = post(&c, &server, Some("k1"), FORM, body).await;
    assert_eq!(again.status(), 200, "{replayed}");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed, charge);
    assert_eq!(server.ledger().len(), 1);
}
