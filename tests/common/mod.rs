//! Shared test kit: a scripted inner service that plays a list of steps (responses,
//! transport errors, delays) and records every request it receives, on tokio's clock.
#![allow(dead_code)] // each test binary uses a different part of the kit

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use resilient_http::backoff::{ExponentialBackoff, Jitter};
use resilient_http::{BoxError, Resilient, ResilientLayer, RetryLayer};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
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

/// The retry layer used by most tests: Stripe classifier, no jitter, [`BASE`]/[`CAP`].
pub fn retry_layer() -> RetryLayer {
    RetryLayer::stripe().backoff(ExponentialBackoff::new(BASE, CAP).jitter(Jitter::None))
}

/// The whole default stack (keys + retry) over `inner`, with [`retry_layer`]'s backoff.
pub fn stack(inner: Scripted) -> Resilient<Scripted> {
    ResilientLayer::stripe()
        .retry(|_| retry_layer())
        .layer(inner)
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
