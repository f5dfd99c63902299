//! Shared test kit: a scripted inner service that plays a list of steps (responses,
//! transport errors, delays) and records every request it receives, on tokio's clock.
#![allow(dead_code)] // each test binary uses a different part of the kit

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use resilient_http::backoff::{ExponentialBackoff, Jitter};
use resilient_http::retry::Builder;
use resilient_http::stripe::StripeClassifier;
use resilient_http::{BoxError, Resilient, ResilientLayer, RetryLayer};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::Layer;
use tower_service::Service;

/// Base delay used by [`stack`]: with `Jitter::None` the n-th retry sleeps `BASE * 2^(n-1)`.
pub const BASE: Duration = Duration::from_millis(100);
/// Cap used by [`stack`].
pub const CAP: Duration = Duration::from_secs(2);

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Answer with this response.
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    /// Fail the attempt with an I/O error of this kind.
    Fail(io::ErrorKind),
    /// Wait on tokio's clock, then play the inner step.
    Delay(Duration, Box<Step>),
}

impl Step {
    /// A response with no body.
    pub fn status(status: u16) -> Self {
        Step::Respond {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A response with this body.
    pub fn body(status: u16, body: impl Into<Bytes>) -> Self {
        Step::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A 200 with a small JSON body.
    pub fn ok() -> Self {
        Self::body(200, r#"{"id":"ch_1","object":"charge"}"#)
    }

    /// A Stripe error body `{"error":{"type":..,"code":..}}` (`code` omitted when empty).
    pub fn stripe(status: u16, error_type: &str, code: &str) -> Self {
        let body = if code.is_empty() {
            format!(r#"{{"error":{{"type":"{error_type}","message":"scripted"}}}}"#)
        } else {
            format!(r#"{{"error":{{"type":"{error_type}","code":"{code}","message":"scripted"}}}}"#)
        };
        Self::body(status, body)
    }

    /// Adds a response header (no effect on `Fail`).
    pub fn header(self, name: &'static str, value: impl Into<String>) -> Self {
        match self {
            Step::Respond {
                status,
                mut headers,
                body,
            } => {
                headers.push((name, value.into()));
                Step::Respond {
                    status,
                    headers,
                    body,
                }
            }
            Step::Delay(d, inner) => Step::Delay(d, Box::new(inner.header(name, value))),
            other => other,
        }
    }

    /// Waits `delay` before playing this step.
    pub fn after(self, delay: Duration) -> Self {
        Step::Delay(delay, Box::new(self))
    }
}

/// What the scripted service saw of one attempt.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// The `Idempotency-Key` header as a string, if present.
    pub fn key(&self) -> Option<String> {
        self.headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// An inner service that plays a script and records what it receives. Clones share both.
/// When the script runs out it answers 200.
#[derive(Clone, Debug, Default)]
pub struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    started: Arc<Mutex<Option<Instant>>>,
}

impl Scripted {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Scripted {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            seen: Arc::default(),
            started: Arc::new(Mutex::new(Some(Instant::now()))),
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The `Idempotency-Key` of every request received so far, in order.
    pub fn keys(&self) -> Vec<Option<String>> {
        self.seen().iter().map(Seen::key).collect()
    }

    /// Number of requests received.
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Gaps between consecutive attempts, measured on tokio's clock.
    pub fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen();
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }

    /// Time of each attempt since the script was made.
    pub fn offsets(&self) -> Vec<Duration> {
        let start = self.started.lock().unwrap().unwrap_or_else(Instant::now);
        self.seen().iter().map(|s| s.at - start).collect()
    }
}

impl Service<Request<Full<Bytes>>> for Scripted {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(Step::ok);
        let seen = self.seen.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            seen.lock().unwrap().push(Seen {
                at: Instant::now(),
                method: parts.method,
                headers: parts.headers,
                body,
            });
            play(step).await
        })
    }
}

/// What the scripted service returns for one call.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>>;

fn play(step: Step) -> Answer {
    Box::pin(async move {
        match step {
            Step::Respond {
                status,
                headers,
                body,
            } => {
                let mut res = Response::new(Full::new(body));
                *res.status_mut() = StatusCode::from_u16(status)?;
                for (name, value) in headers {
                    res.headers_mut().append(
                        HeaderName::from_static(name),
                        HeaderValue::from_str(&value)?,
                    );
                }
                Ok(res)
            }
            Step::Fail(kind) => Err(Box::new(io::Error::new(kind, "scripted failure")) as BoxError),
            Step::Delay(delay, inner) => {
                tokio::time::sleep(delay).await;
                play(*inner).await
            }
        }
    })
}

/// The retry settings most tests start from: Stripe classifier, no jitter, [`BASE`]/[`CAP`].
pub fn builder() -> Builder<StripeClassifier> {
    RetryLayer::builder().backoff(ExponentialBackoff::new(BASE, CAP).jitter(Jitter::None))
}

/// The retry layer used by most tests: [`builder`] as it is.
pub fn retry_layer() -> RetryLayer<StripeClassifier> {
    builder().build().expect("the test settings are valid")
}

/// The whole stack (keys + retry) over `inner`, with the retry layer `builder` makes.
pub fn stack_with<S, C>(inner: S, builder: Builder<C>) -> Resilient<S, C> {
    let retry = builder.build().expect("the test settings are valid");
    ResilientLayer::new(retry).layer(inner)
}

/// The whole default stack (keys + retry) over `inner`, with [`retry_layer`]'s backoff.
pub fn stack(inner: Scripted) -> Resilient<Scripted> {
    stack_with(inner, builder())
}

/// A `POST /v1/charges` with a form body.
pub fn post_charge() -> Request<Full<Bytes>> {
    Request::post("http://stripe.test/v1/charges")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))
        .unwrap()
}

/// A request with `method` and no body.
pub fn request(method: Method) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://stripe.test/v1/charges/ch_1")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Reads a whole body into bytes.
pub async fn read<B>(body: B) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

/// A body that yields scripted frames, each at once, with the size hint it is given
/// (unknown by default, as for a chunked stream), and counts the frames polled out.
#[derive(Debug, Default)]
pub struct Chunks {
    frames: VecDeque<Result<Frame<Bytes>, String>>,
    polled: Option<Arc<AtomicUsize>>,
    hint: SizeHint,
}

impl Chunks {
    pub fn data(parts: impl IntoIterator<Item = Bytes>) -> Self {
        Chunks {
            frames: parts.into_iter().map(|b| Ok(Frame::data(b))).collect(),
            ..Chunks::default()
        }
    }

    /// Static text chunks.
    pub fn new(chunks: &[&'static str]) -> Self {
        Self::data(chunks.iter().map(|c| Bytes::from_static(c.as_bytes())))
    }

    /// `bytes` cut into chunks of `size`.
    pub fn split(bytes: &Bytes, size: usize) -> Self {
        Self::data(
            (0..bytes.len())
                .step_by(size)
                .map(|i| bytes.slice(i..(i + size).min(bytes.len()))),
        )
    }

    pub fn then_error(mut self, message: &str) -> Self {
        self.frames.push_back(Err(message.to_owned()));
        self
    }

    pub fn then_trailers(mut self, trailers: HeaderMap) -> Self {
        self.frames.push_back(Ok(Frame::trailers(trailers)));
        self
    }

    pub fn counting(mut self, polled: Arc<AtomicUsize>) -> Self {
        self.polled = Some(polled);
        self
    }

    /// Claims an exact length (which the frames need not add up to).
    pub fn claiming(mut self, len: u64) -> Self {
        self.hint = SizeHint::with_exact(len);
        self
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = self.frames.pop_front();
        if frame.is_some() {
            if let Some(polled) = &self.polled {
                polled.fetch_add(1, Ordering::SeqCst);
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// An inner service that answers with bodies of type [`Chunks`], made by `make` for each
/// attempt (numbered from 0), and counts its calls.
#[derive(Clone)]
pub struct Streaming {
    calls: Arc<AtomicUsize>,
    make: Arc<dyn Fn(usize) -> Response<Chunks> + Send + Sync>,
}

impl Streaming {
    pub fn new(make: impl Fn(usize) -> Response<Chunks> + Send + Sync + 'static) -> Self {
        Streaming {
            calls: Arc::default(),
            make: Arc::new(make),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<Full<Bytes>>> for Streaming {
    type Response = Response<Chunks>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Chunks>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let res = (self.make)(n);
        Box::pin(async move { Ok(res) })
    }
}

/// The whole default stack over a [`Streaming`] service, with [`retry_layer`]'s backoff.
pub fn streaming_stack(inner: Streaming) -> Resilient<Streaming> {
    stack_with(inner, builder())
}

/// Asserts that a call ended as "gave up" after 3 attempts that each failed to connect:
/// the server saw nothing.
pub fn assert_never_connected(err: &resilient_http::Error) {
    use resilient_http::{Class, StopReason};
    assert!(err.is_gave_up(), "the server saw nothing: {err}");
    let classes: Vec<Class> = err.report().attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes, [Class::Connect; 3]);
    assert_eq!(err.report().stop_reason(), StopReason::AttemptsExhausted);
    assert!(
        err.underlying_error().is_some(),
        "the transport error is kept"
    );
}

/// A careless classifier: Stripe's verdicts on responses, but every transport error a
/// success. For the tests that an error is never a success, whatever a classifier says.
#[derive(Clone, Copy)]
pub struct ErrorsAreFine;

impl resilient_http::classify::Classify for ErrorsAreFine {
    fn classify_response(
        &self,
        request: resilient_http::classify::SentRequest<'_>,
        response: &http::response::Parts,
        body: Option<&[u8]>,
    ) -> resilient_http::Classification {
        StripeClassifier.classify_response(request, response, body)
    }

    fn classify_error(
        &self,
        _: resilient_http::classify::SentRequest<'_>,
        _: &(dyn std::error::Error + 'static),
    ) -> resilient_http::Classification {
        resilient_http::Classification::success()
    }
}

/// Counts the events of one tracing target: at one level, or at any.
struct Events {
    target: &'static str,
    level: Option<tracing::Level>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        if self.level.is_none_or(|l| *meta.level() == l) && meta.target() == self.target {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Counts this thread's `warn` events of `target` while the guard lives (the tests that
/// count them run on one thread).
pub fn count_warnings(
    target: &'static str,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    tracing::subscriber::DefaultGuard,
) {
    count_events(target, Some(tracing::Level::WARN))
}

/// Counts this thread's events of `target` (at `level`, or at any) while the guard lives.
pub fn count_events(
    target: &'static str,
    level: Option<tracing::Level>,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    tracing::subscriber::DefaultGuard,
) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let guard = tracing::subscriber::set_default(Events {
        target,
        level,
        count: count.clone(),
    });
    (count, guard)
}

/// Proptest's settings for a test binary: `cases` cases per property unless
/// `PROPTEST_CASES` says otherwise, and no failure files written into the tree.
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
