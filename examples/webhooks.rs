//! Settling a lost answer with a webhook: `cargo run --example webhooks --features webhooks`.
//!
//! A charge is made but its answer never comes back in time, so the call ends
//! indeterminate: did the customer pay? The retry layer hands the call to a [`Reconciler`],
//! which records it as pending. resilient-http-testing's Stripe-like server then does
//! what Stripe does after every charge: it POSTs a signed `charge.succeeded` event to our
//! webhook endpoint (the [`Webhook`] service, mounted on a hyper server on 127.0.0.1). The
//! endpoint verifies the signature, and its handler gives the event to the reconciler,
//! which settles the pending call: the charge went through. Then the same event comes
//! again (Stripe redelivers) and changes nothing, and a forged event, signed with
//! another secret, is refused with 400.
//!
//! It prints one line per step, with the milliseconds since the start, and exits non-zero
//! on any surprise.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http::stripe::reconcile::{Reconciler, SettledBy};
use resilient_http::stripe::webhook::{Event, Verifier, Webhook};
use resilient_http::{ResilientLayer, RetryLayer};
use resilient_http_testing::{sign, Fault, Faults, StripeServer, Webhooks};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

/// The endpoint's signing secret, which Stripe's dashboard shows once per endpoint.
const SECRET: &str = "whsec_example_secret";
/// How long each attempt waits for an answer; the server takes longer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(150);
const SERVER_DELAY: Duration = Duration::from_secs(2);
/// How late the event comes after the charge.
const EVENT_DELAY: Duration = Duration::from_millis(300);
/// How long we wait for the event before giving up on it.
const WAIT: Duration = Duration::from_secs(5);

type Surprise = Box<dyn std::error::Error + Send + Sync>;

/// Prints each step with the milliseconds since the start.
#[derive(Clone, Copy)]
struct Timeline(Instant);

impl Timeline {
    fn say(&self, what: impl std::fmt::Display) {
        println!("{:>6} ms  {what}", self.0.elapsed().as_millis());
    }
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), Surprise> {
    if ok {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Timeline(Instant::now())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(surprise) => {
            eprintln!("surprise: {surprise}");
            ExitCode::FAILURE
        }
    }
}

async fn run(t: Timeline) -> Result<(), Surprise> {
    let reconciler = Reconciler::new();

    // Our webhook endpoint: verify, then hand each event to the reconciler once.
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (reconciler, handled) = (reconciler.clone(), handled.clone());
        tower::service_fn(move |event: Event| {
            handled.fetch_add(1, Ordering::SeqCst);
            let settled = reconciler.settle_with_event(&event);
            t.say(format_args!(
                "endpoint: {} {} verified, key {}: {}",
                event.id,
                event.event_type,
                event.idempotency_key().unwrap_or("-"),
                match &settled {
                    Some(s) if s.is_succeeded() => "settles the pending call as succeeded",
                    Some(_) => "settles the pending call as failed",
                    None => "no pending call (yet): remembered",
                }
            ));
            async { Ok::<(), Infallible>(()) }
        })
    };
    let endpoint = Webhook::new(Verifier::new(SECRET), handler);
    let hooks = serve(endpoint).await?;
    let hooks_url = format!("http://{hooks}/webhooks");
    t.say(format_args!("webhook endpoint listening on {hooks_url}"));

    // Fake Stripe: the first charge answers only after 2 s; events come 300 ms late.
    let server = StripeServer::builder()
        .faults(Faults::script([Some(Fault::Delay(SERVER_DELAY))]))
        .webhooks(Webhooks::new(&hooks_url, SECRET).delay(EVENT_DELAY..=EVENT_DELAY))
        .start()
        .await?;
    t.say(format_args!(
        "Stripe-like server on {}, sending signed events to the endpoint",
        server.url()
    ));

    // The client: two attempts of 150 ms each, the reconciler told of every call that
    // ends indeterminate.
    let retry = RetryLayer::builder()
        .max_attempts(2)
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .base_delay(Duration::from_millis(10))
        .on_indeterminate(reconciler.clone())
        .build()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stripe = ResilientLayer::new(retry).layer(client);

    t.say("POST /v1/charges amount=2000: the server charges, then holds the answer for 2 s");
    let charge = Request::post(format!("{}/v1/charges", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))?;
    let err = match stripe.oneshot(charge).await {
        Ok(res) => return Err(format!("the charge answered {}", res.status()).into()),
        Err(err) => err,
    };
    let key = err
        .idempotency_key()
        .ok_or("an indeterminate call has a key")?
        .as_str()
        .to_owned();
    for attempt in err.report().attempts() {
        t.say(format_args!(
            "  attempt {}: {}{}",
            attempt.number,
            attempt.class,
            attempt
                .status
                .map_or(String::new(), |s| format!(" ({})", s.as_u16()))
        ));
    }
    let ids: Vec<&str> = err
        .report()
        .request_ids()
        .filter_map(|id| id.to_str())
        .collect();
    t.say(format_args!(
        "call ended {} after {} attempts (key {key}, request ids {ids:?})",
        err.outcome(),
        err.report().attempts().len()
    ));
    check(err.is_indeterminate(), "the call should end indeterminate")?;
    let pending = reconciler.pending()?;
    t.say(format_args!(
        "reconciler: {} pending call(s), key {}",
        pending.len(),
        pending.first().map_or("-", |p| p.idempotency_key.as_str())
    ));

    // The event settles it (it may already have: then `wait` returns at once).
    let settled = reconciler.wait(&key, WAIT).await?;
    let object_id = settled
        .object()
        .and_then(|o| o.get("id"))
        .and_then(|id| id.as_str())
        .unwrap_or("-")
        .to_owned();
    let by = match settled.by() {
        SettledBy::Event { id } => format!("event {id}"),
        other => format!("{other:?}"),
    };
    t.say(format_args!(
        "wait({key}): {} by {by}, charge {object_id}",
        if settled.is_succeeded() {
            "succeeded"
        } else {
            "failed"
        },
    ));
    check(
        settled.is_succeeded(),
        "the call should settle as succeeded",
    )?;
    check(
        matches!(settled.by(), SettledBy::Event { .. }),
        "the event should settle it",
    )?;
    check(
        reconciler.pending()?.is_empty(),
        "nothing should stay pending",
    )?;

    let ledger = server.ledger();
    let charges: Vec<&str> = ledger.by_key(&key).map(|c| c.id.as_str()).collect();
    t.say(format_args!(
        "server's ledger under the key: {charges:?}: the settlement agrees"
    ));
    check(charges == [object_id.as_str()], "the ledger should agree")?;

    // Stripe redelivers: the same event, signed anew, is answered 200 and changes nothing.
    let event = server
        .deliveries()
        .all()
        .first()
        .map(|d| d.body.clone())
        .ok_or("one event was sent")?;
    let (status, text) = post(&hooks_url, &event, &sign(SECRET, now(), &event)).await?;
    t.say(format_args!(
        "the same event redelivered: {} {text:?}",
        status.as_u16()
    ));
    check(status == StatusCode::OK, "a redelivery should get 200")?;

    // A forged event: the same body, signed with a secret that is not ours.
    let (status, text) = post(&hooks_url, &event, &sign("whsec_forged", now(), &event)).await?;
    t.say(format_args!(
        "a forged event (another secret): {} {text:?}",
        status.as_u16()
    ));
    check(
        status == StatusCode::BAD_REQUEST,
        "a forged event should get 400",
    )?;
    check(
        handled.load(Ordering::SeqCst) == 1,
        "the handler should have run once, for the genuine event",
    )?;
    t.say("done: one charge, one settlement, the forgery refused");
    Ok(())
}

/// Serves `endpoint` on 127.0.0.1, every connection on a task of its own.
async fn serve<S>(endpoint: S) -> std::io::Result<SocketAddr>
where
    S: tower::Service<
            Request<Incoming>,
            Response = http::Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| endpoint.clone().oneshot(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// POSTs an event to the endpoint with `signature`; the status and the answer's text.
async fn post(url: &str, body: &Bytes, signature: &str) -> Result<(StatusCode, String), Surprise> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(url)
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(Full::new(body.clone()))?;
    let res = client.request(req).await?;
    let status = res.status();
    let text = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
