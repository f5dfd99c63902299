//! The server's webhook events as an endpoint receives them: a tiny hyper server on
//! loopback records each POST, and answers with the status a test scripts.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http_testing::{sign, DeliveryState, Fault, Faults, StripeServer, Webhooks};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

const SECRET: &str = "whsec_test_secret";
const FORM: &str = "application/x-www-form-urlencoded";
/// A bound on every wait: far longer than any machine needs.
const PATIENCE: Duration = Duration::from_secs(10);

/// One POST the endpoint received.
#[derive(Clone, Debug)]
struct Received {
    signature: String,
    body: Bytes,
}

impl Received {
    fn event(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("every event is JSON")
    }

    /// Checks the signature as an endpoint must: recompute it over the raw body.
    fn signed_with(&self, secret: &str) -> bool {
        let t = self
            .signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split(',').next())
            .and_then(|t| t.parse::<i64>().ok())
            .expect("a t= timestamp first");
        self.signature == sign(secret, t, &self.body)
    }
}

/// A webhook endpoint on 127.0.0.1: records what it gets; `answer` gives the status of
/// the n-th POST (from 0).
struct Endpoint {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Endpoint {
    async fn start(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let url = format!("http://{}/webhooks", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (log, answer) = (log.clone(), answer.clone());
                        async move {
                            let signature = req
                                .headers()
                                .get("stripe-signature")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let n = {
                                let mut log = log.lock().expect("not poisoned");
                                log.push(Received { signature, body });
                                log.len() - 1
                            };
                            let mut res = Response::new(Full::new(Bytes::new()));
                            *res.status_mut() = StatusCode::from_u16(answer(n))
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                            Ok::<_, hyper::Error>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Endpoint { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }
}

type Raw = Client<HttpConnector, Full<Bytes>>;

fn client() -> Raw {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POSTs a charge; the status, or `None` when the connection dropped.
async fn charge(client: &Raw, server: &StripeServer, key: &str, form: &'static str) -> Option<u16> {
    let req = Request::post(format!("{}/v1/charges", server.url()))
        .header("content-type", FORM)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(form.as_bytes())))
        .expect("a well-formed request");
    let res = client.request(req).await.ok()?;
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    Some(status)
}

async fn finished(server: &StripeServer) {
    tokio::time::timeout(PATIENCE, server.deliveries_finished())
        .await
        .expect("every delivery ends");
}

#[tokio::test]
async fn every_charge_sends_one_signed_event_even_when_its_answer_is_lost() {
    let endpoint = Endpoint::start(|_| 200).await;
    let server = StripeServer::builder()
        .faults(Faults::script([
            None,
            Some(Fault::DropAfterEffect),
            Some(Fault::ApiErrorAfterEffect),
            Some(Fault::ApiErrorAfterEffectNoHint),
            Some(Fault::Delay(Duration::from_millis(5))),
            Some(Fault::ApiErrorBeforeEffect),
        ]))
        .webhooks(Webhooks::new(&endpoint.url, SECRET))
        .start()
        .await
        .expect("starts");
    let c = client();
    let form = "amount=700&currency=usd";
    assert_eq!(charge(&c, &server, "ok", form).await, Some(200));
    assert_eq!(charge(&c, &server, "dropped", form).await, None);
    assert_eq!(charge(&c, &server, "api-error", form).await, Some(500));
    assert_eq!(charge(&c, &server, "no-hint", form).await, Some(500));
    assert_eq!(charge(&c, &server, "delayed", form).await, Some(200));
    // No charge before the effect: no event.
    assert_eq!(charge(&c, &server, "before", form).await, Some(500));
    // A replay makes no charge: no event either.
    assert_eq!(charge(&c, &server, "dropped", form).await, Some(200));
    finished(&server).await;

    let received = endpoint.received();
    assert_eq!(received.len(), 5, "{received:#?}");
    let ledger = server.ledger();
    let mut keys = BTreeSet::new();
    for r in &received {
        assert!(r.signed_with(SECRET), "{r:?}");
        assert!(!r.signed_with("whsec_other"));
        let event = r.event();
        assert_eq!(event["type"], "charge.succeeded");
        assert_eq!(event["object"], "event");
        let key = event["request"]["idempotency_key"].as_str().expect("a key");
        let made = ledger.by_key(key).next().expect("a charge under the key");
        assert_eq!(event["data"]["object"]["id"], made.id.as_str());
        assert_eq!(event["data"]["object"]["status"], "succeeded");
        assert_eq!(event["request"]["id"], made.request_id.as_str());
        keys.insert(key.to_owned());
    }
    let expected = ["api-error", "delayed", "dropped", "no-hint", "ok"];
    assert_eq!(keys, expected.map(String::from).into());
    let deliveries = server.deliveries();
    assert_eq!(deliveries.count(DeliveryState::Delivered), 5);
    assert!(deliveries.all().iter().all(|d| d.answers == [Some(200)]));
}

#[tokio::test]
async fn a_declined_card_sends_charge_failed_with_the_failed_charge() {
    let endpoint = Endpoint::start(|_| 200).await;
    let server = StripeServer::builder()
        .webhooks(Webhooks::new(&endpoint.url, SECRET))
        .start()
        .await
        .expect("starts");
    let c = client();
    let declined = "amount=300&currency=usd&source=tok_chargeDeclined";
    assert_eq!(charge(&c, &server, "declined", declined).await, Some(402));
    finished(&server).await;

    let received = endpoint.received();
    assert_eq!(received.len(), 1);
    let event = received[0].event();
    assert_eq!(event["type"], "charge.failed");
    assert_eq!(event["request"]["idempotency_key"], "declined");
    let object = &event["data"]["object"];
    assert_eq!(object["status"], "failed");
    assert_eq!(object["paid"], false);
    assert_eq!(object["failure_code"], "card_declined");
    assert_eq!(object["failure_message"], "Your card was declined.");
    let ledger = server.ledger();
    assert!(ledger.is_empty(), "no money moved");
    let failed = ledger.failed_by_key("declined").next().expect("recorded");
    assert_eq!(object["id"], failed.id.as_str());

    // Stripe keeps the failed charge: it can be read back.
    let req = Request::get(format!("{}/v1/charges/{}", server.url(), failed.id))
        .body(Full::new(Bytes::new()))
        .expect("a well-formed request");
    let res = c.request(req).await.expect("a response");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let read: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(read["status"], "failed");
}

#[tokio::test]
async fn a_decline_can_lose_its_answer_when_declines_draw_faults() {
    let endpoint = Endpoint::start(|_| 200).await;
    let server = StripeServer::builder()
        .faults(Faults::script([Some(Fault::DropAfterEffect)]))
        .fault_declines(true)
        .webhooks(Webhooks::new(&endpoint.url, SECRET))
        .start()
        .await
        .expect("starts");
    let c = client();
    let declined = "amount=300&currency=usd&source=tok_chargeDeclined";
    assert_eq!(charge(&c, &server, "k", declined).await, None);
    // The 402 was saved under the key before the connection dropped.
    assert_eq!(charge(&c, &server, "k", declined).await, Some(402));
    finished(&server).await;
    assert_eq!(server.ledger().failed().len(), 1);
    let received = endpoint.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].event()["type"], "charge.failed");
}

#[tokio::test]
async fn declines_draw_no_fault_by_default() {
    let server = StripeServer::builder()
        .faults(Faults::script([Some(Fault::DropAfterEffect)]))
        .start()
        .await
        .expect("starts");
    let c = client();
    let declined = "amount=300&currency=usd&source=tok_chargeDeclined";
    assert_eq!(charge(&c, &server, "k1", declined).await, Some(402));
    // The scripted fault is still there for the next charge.
    assert_eq!(
        charge(&c, &server, "k2", "amount=1&currency=usd").await,
        None
    );
    // Without webhooks nothing is scheduled, and waiting for deliveries ends at once.
    assert!(server.deliveries().is_empty());
    finished(&server).await;
}

#[tokio::test]
async fn a_non_2xx_answer_is_redelivered_until_a_2xx_or_the_last_attempt() {
    // The first event is refused twice then taken; the second (POSTs 3, 4, 5) never is.
    let endpoint = Endpoint::start(|n| if n == 2 { 204 } else { 500 }).await;
    let server = StripeServer::builder()
        .webhooks(
            Webhooks::new(&endpoint.url, SECRET)
                .attempts(3)
                .retry_delay(Duration::from_millis(1)),
        )
        .start()
        .await
        .expect("starts");
    let c = client();
    assert_eq!(
        charge(&c, &server, "first", "amount=1&currency=usd").await,
        Some(200)
    );
    finished(&server).await;
    assert_eq!(
        charge(&c, &server, "second", "amount=1&currency=usd").await,
        Some(200)
    );
    finished(&server).await;

    let deliveries = server.deliveries();
    let first = deliveries.by_key("first").next().expect("scheduled");
    assert_eq!(first.answers, [Some(500), Some(500), Some(204)]);
    assert_eq!(first.state, DeliveryState::Delivered);
    let second = deliveries.by_key("second").next().expect("scheduled");
    assert_eq!(second.answers, [Some(500); 3]);
    assert_eq!(second.state, DeliveryState::GaveUp);
    // Every attempt is signed anew, over the same bytes.
    let received = endpoint.received();
    assert_eq!(received.len(), 6);
    assert!(received.iter().all(|r| r.signed_with(SECRET)));
    assert!(received[..3].iter().all(|r| r.body == first.body));
}

#[tokio::test]
async fn an_endpoint_that_is_not_there_is_given_up_on() {
    // Bind, learn a free port, close it: nothing listens there.
    let url = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        format!("http://{}/webhooks", l.local_addr().expect("addr"))
    };
    let server = StripeServer::builder()
        .webhooks(
            Webhooks::new(url, SECRET)
                .attempts(2)
                .retry_delay(Duration::from_millis(1)),
        )
        .start()
        .await
        .expect("starts");
    assert_eq!(
        charge(&client(), &server, "k", "amount=1&currency=usd").await,
        Some(200)
    );
    finished(&server).await;
    let deliveries = server.deliveries();
    assert_eq!(deliveries.all()[0].answers, [None, None]);
    assert_eq!(deliveries.count(DeliveryState::GaveUp), 1);
}

#[tokio::test]
async fn late_and_duplicated_events_arrive_out_of_order_with_the_same_ids() {
    const CHARGES: usize = 30;
    let endpoint = Endpoint::start(|_| 200).await;
    let server = StripeServer::builder()
        .webhooks(
            Webhooks::new(&endpoint.url, SECRET)
                .delay(Duration::ZERO..=Duration::from_millis(30))
                .duplicates(0.5)
                .seed(11),
        )
        .start()
        .await
        .expect("starts");
    let c = client();
    for n in 0..CHARGES {
        let key = format!("k{n}");
        assert_eq!(
            charge(&c, &server, &key, "amount=1&currency=usd").await,
            Some(200)
        );
    }
    finished(&server).await;

    let deliveries = server.deliveries();
    let duplicates = deliveries.all().iter().filter(|d| d.duplicate).count();
    assert!((5..=25).contains(&duplicates), "{duplicates} of {CHARGES}");
    assert_eq!(deliveries.len(), CHARGES + duplicates);
    let received = endpoint.received();
    assert_eq!(received.len(), deliveries.len());

    // A duplicate is the same event: same id, same body.
    let mut by_id: HashMap<String, Vec<Bytes>> = HashMap::new();
    for r in &received {
        assert!(r.signed_with(SECRET));
        let id = r.event()["id"].as_str().expect("an id").to_owned();
        by_id.entry(id).or_default().push(r.body.clone());
    }
    assert_eq!(by_id.len(), CHARGES);
    assert!(by_id
        .values()
        .all(|bodies| bodies.windows(2).all(|w| w[0] == w[1])));

    // Late by a random delay each: they do not arrive in the order the charges were made.
    let order: Vec<u64> = received
        .iter()
        .filter_map(|r| r.event()["id"].as_str()?.strip_prefix("evt_")?.parse().ok())
        .collect();
    assert!(order.windows(2).any(|w| w[0] > w[1]), "{order:?}");
}

#[tokio::test]
async fn the_same_seed_draws_the_same_duplicates() {
    let draws = |seed| async move {
        let endpoint = Endpoint::start(|_| 200).await;
        let server = StripeServer::builder()
            .webhooks(
                Webhooks::new(&endpoint.url, SECRET)
                    .duplicates(0.5)
                    .seed(seed),
            )
            .start()
            .await
            .expect("starts");
        let c = client();
        for n in 0..20 {
            charge(&c, &server, &format!("k{n}"), "amount=1&currency=usd").await;
        }
        finished(&server).await;
        server
            .deliveries()
            .all()
            .iter()
            .map(|d| (d.event_id.clone(), d.duplicate))
            .collect::<Vec<_>>()
    };
    let a = draws(5).await;
    assert_eq!(a, draws(5).await);
    assert!(a.iter().any(|(_, dup)| *dup));
}

#[tokio::test]
async fn a_webhook_url_that_is_not_http_is_refused_at_start() {
    for url in ["not a url", "https://example.com/hooks", "/webhooks"] {
        let err = StripeServer::builder()
            .webhooks(Webhooks::new(url, SECRET))
            .start()
            .await
            .expect_err(url);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{url}: {err}");
    }
}
