//! The webhook endpoint as a tower service: read the body within its limit, verify it,
//! hand the event to a handler once per event id, answer Stripe.

use super::{Event, Verifier, WebhookError, STRIPE_SIGNATURE};
use crate::body::BoxError;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

/// How many handled event ids an endpoint remembers by default: 100,000, a few days of
/// events for most accounts (Stripe redelivers an event for up to three days).
pub const DEFAULT_REMEMBERED_EVENTS: usize = 100_000;

/// Wraps a handler in a [`Webhook`] endpoint. Cheap to clone; every service it makes
/// shares one memory of the event ids handled.
#[derive(Clone, Debug)]
pub struct WebhookLayer {
    shared: Arc<Shared>,
}

impl WebhookLayer {
    /// An endpoint layer that verifies requests with `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            shared: Arc::new(Shared::new(verifier, DEFAULT_REMEMBERED_EVENTS)),
        }
    }

    /// How many handled event ids to remember, the oldest forgotten first: a redelivery
    /// of an event id still remembered is answered 200 without calling the handler; one
    /// forgotten is handled again. Starts a fresh memory. Defaults to
    /// [`DEFAULT_REMEMBERED_EVENTS`] (100,000).
    pub fn remember(self, events: usize) -> Self {
        Self {
            shared: Arc::new(Shared::new(self.shared.verifier.clone(), events)),
        }
    }
}

impl<H> Layer<H> for WebhookLayer {
    type Service = Webhook<H>;

    fn layer(&self, handler: H) -> Webhook<H> {
        Webhook {
            handler,
            shared: self.shared.clone(),
        }
    }
}

/// A webhook endpoint: a service from `http::Request` to `http::Response` that hands each
/// verified [`Event`] to `handler`, a `Service<Event, Response = ()>`.
///
/// For each request it answers:
///
/// | request | answer | handler called |
/// |---|---|---|
/// | a body over the verifier's limit | 413, the refusal as text | no |
/// | any other [refusal](WebhookError) (no or bad signature, stale timestamp, not an event) | 400, the refusal as text | no |
/// | a body stream that fails | 400 | no |
/// | a verified event | 200 when the handler returns `Ok`, 500 when it fails (Stripe then redelivers) | yes |
/// | an event whose id was already handled (`Ok`) | 200 | no |
/// | an event whose id is being handled right now | the same answer as that first delivery, once it ends (a 500 there lets this one try again) | only if the first failed |
///
/// The service never fails (`Error = Infallible`), as hyper and axum want. Event ids are
/// remembered in memory (see [`WebhookLayer::remember`]), so a restart forgets them: a
/// handler should still be idempotent, as Stripe advises.
#[derive(Clone, Debug)]
pub struct Webhook<H> {
    handler: H,
    shared: Arc<Shared>,
}

impl<H> Webhook<H> {
    /// An endpoint that verifies requests with `verifier` and hands events to `handler`.
    pub fn new(verifier: Verifier, handler: H) -> Self {
        WebhookLayer::new(verifier).layer(handler)
    }

    /// A [`WebhookLayer`] with `verifier`.
    pub fn layer(verifier: Verifier) -> WebhookLayer {
        WebhookLayer::new(verifier)
    }

    /// The handler.
    pub fn get_ref(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub fn get_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The handler, consuming the endpoint.
    pub fn into_inner(self) -> H {
        self.handler
    }
}

impl<H, B> Service<Request<B>> for Webhook<H>
where
    H: Service<Event, Response = ()> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The handler is made ready only for a verified event, inside the future: a flood
        // of forged requests must not hold the handler's capacity.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        ResponseFuture {
            inner: Box::pin(handle(self.shared.clone(), self.handler.clone(), request)),
        }
    }
}

/// An endpoint's answer.
type Answer = Response<Full<Bytes>>;

/// The answer of a [`Webhook`] endpoint to one request.
///
/// Boxed: an endpoint gets a few requests a second at most, and the steps (read the body,
/// verify, wait for a concurrent delivery, call the handler) read best as one `async fn`.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

async fn handle<H, B>(
    shared: Arc<Shared>,
    mut handler: H,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    H: Service<Event, Response = ()>,
    H::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let (head, body) = request.into_parts();
    let body = match read_body(body, shared.verifier.limit()).await {
        Ok(body) => body,
        Err(answer) => return Ok(answer),
    };
    let event = match shared
        .verifier
        .construct_event(head.headers.get(STRIPE_SIGNATURE), &body)
    {
        Ok(event) => event,
        Err(refusal) => return Ok(refuse(&refusal)),
    };
    let delivery = loop {
        match shared.claim(&event.id) {
            Claim::Handled => {
                tracing::debug!(event = %event.id, "webhook event already handled");
                return Ok(answer(StatusCode::OK, "already handled"));
            }
            // Another delivery of this event is in the handler: its end (success or not)
            // decides this one. `Err` means it ended.
            Claim::Wait(mut done) => while done.changed().await.is_ok() {},
            Claim::Mine(delivery) => break delivery,
        }
    };
    let id = event.id.clone();
    let result = async {
        poll_fn(|cx| handler.poll_ready(cx)).await?;
        handler.call(event).await
    }
    .await;
    Ok(match result {
        Ok(()) => {
            delivery.succeeded();
            answer(StatusCode::OK, "handled")
        }
        Err(e) => {
            let e: BoxError = e.into();
            tracing::error!(event = %id, error = %e, "webhook handler failed; Stripe will redeliver");
            answer(StatusCode::INTERNAL_SERVER_ERROR, "handler failed")
        }
    })
}

/// Reads the whole body, refusing it (413) as soon as it is known to be over `limit`.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let too_large = || refuse(&WebhookError::BodyTooLarge { limit });
    // A `Content-Length` over the limit is refused before a byte is read.
    if usize::try_from(body.size_hint().lower()).map_or(true, |lower| lower > limit) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => {
            tracing::warn!(error = %e, "webhook body could not be read");
            Err(answer(
                StatusCode::BAD_REQUEST,
                format!("webhook body could not be read: {e}"),
            ))
        }
    }
}

fn refuse(refusal: &WebhookError) -> Response<Full<Bytes>> {
    tracing::warn!(error = %refusal, "webhook refused");
    answer(refusal.status(), refusal.to_string())
}

fn answer(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What every service of one layer shares.
struct Shared {
    verifier: Verifier,
    seen: Mutex<Seen>,
}

/// The event ids handled (the last `capacity` of them) and those in a handler now.
struct Seen {
    capacity: usize,
    handled: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    in_flight: HashMap<Arc<str>, watch::Receiver<()>>,
}

/// What a delivery of an event may do.
enum Claim {
    /// The event was handled: answer 200.
    Handled,
    /// Another delivery is in the handler: wait for it to end, then claim again.
    Wait(watch::Receiver<()>),
    /// This delivery calls the handler.
    Mine(Delivery),
}

impl Shared {
    fn new(verifier: Verifier, capacity: usize) -> Self {
        Self {
            verifier,
            seen: Mutex::new(Seen {
                capacity,
                handled: HashSet::new(),
                order: VecDeque::new(),
                in_flight: HashMap::new(),
            }),
        }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        // The lock guards plain collections that every step leaves consistent.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let mut seen = self.seen();
        if seen.handled.contains(id) {
            return Claim::Handled;
        }
        if let Some(done) = seen.in_flight.get(id) {
            return Claim::Wait(done.clone());
        }
        let id: Arc<str> = Arc::from(id);
        let (done, waiting) = watch::channel(());
        seen.in_flight.insert(id.clone(), waiting);
        Claim::Mine(Delivery {
            shared: self.clone(),
            id,
            succeeded: false,
            _done: done,
        })
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = self.seen();
        f.debug_struct("Shared")
            .field("verifier", &self.verifier)
            .field("remember", &seen.capacity)
            .field("handled", &seen.handled.len())
            .field("in_flight", &seen.in_flight.len())
            .finish()
    }
}

/// The claim of one delivery on its event id while the handler runs. Dropped (the
/// handler done, failed, or the request abandoned), it frees the id, remembers it as
/// handled if [`succeeded`](Self::succeeded), and wakes the deliveries waiting on it.
struct Delivery {
    shared: Arc<Shared>,
    id: Arc<str>,
    succeeded: bool,
    /// Dropped after `drop` has updated `Seen`: its receivers then see the end.
    _done: watch::Sender<()>,
}

impl Delivery {
    fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let mut seen = self.shared.seen();
        seen.in_flight.remove(&self.id);
        if self.succeeded && seen.handled.insert(self.id.clone()) {
            seen.order.push_back(self.id.clone());
            while seen.order.len() > seen.capacity {
                if let Some(oldest) = seen.order.pop_front() {
                    seen.handled.remove(&oldest);
                }
            }
        }
    }
}
