//! Bodies: buffering requests so they can be replayed, and the response body the caller
//! gets.
//!
//! **Requests.** Any `http_body::Body` is read once, up to a limit, into [`Bytes`], and
//! every attempt sends a `Full<Bytes>` of the same bytes. So no `Clone` bound on the body,
//! and no lazily replayed stream that could send duplicated or missing bytes. A body over
//! the limit, a body whose stream fails and a body with trailers are errors before
//! anything is sent.
//!
//! **Responses.** A 2xx body streams through untouched; if its stream fails midway, the
//! error is a [`ResponseBodyError`] that names the call's idempotency key and request id,
//! so a caller who reads the body can still reconcile. A non-2xx body is read up to a
//! limit (64 KiB by default) so the classifier can see Stripe's error object, and the
//! caller still gets the *whole* body: the bytes read so far, then, if the body was over
//! the limit, the rest of the stream; if it failed mid-way, the bytes read so far and then
//! the error. [`ResponseBody`] is that body.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use resilient_http::{RetryLayer, body::ResponseBody};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let inner = service_fn(|req: Request<Full<Bytes>>| async move {
//!     // Echo the request body.
//!     let bytes = req.into_body().collect().await.unwrap().to_bytes();
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes)))
//! });
//! let svc = RetryLayer::stripe().layer(inner);
//! let res = svc.oneshot(Request::post("/v1/echo").body(Full::new(Bytes::from("amount=2000"))).unwrap())
//!     .await
//!     .unwrap();
//! let body: ResponseBody<_> = res.into_body();
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "amount=2000");
//! # }
//! ```

use crate::headers::RequestId;
use crate::idempotency::IdempotencyKey;
use crate::report::CallReport;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A boxed error, as at tower's boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a failure response handed back inside an [`Error`](crate::Error). Not
/// `Sync`, so that any client's body fits.
pub type ErrorBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Default limit on a request body held for replay: 1 MiB. Stripe's requests are
/// form-encoded parameters, far below it.
pub(crate) const DEFAULT_REQUEST_BODY_LIMIT: usize = 1024 * 1024;

/// Default limit on the part of a non-2xx response body read for classification: 64 KiB.
/// Stripe's error objects are well under 1 KiB.
pub(crate) const DEFAULT_RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// Why a request body could not be held for replay. Nothing was sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum RequestBodyError {
    /// The body is larger than the request body limit.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body has trailers, which a replayed `Full` body cannot carry.
    Trailers,
    /// The body's stream failed.
    Failed(BoxError),
}

impl fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => {
                write!(
                    f,
                    "request body is over the limit of {limit} bytes held for replay"
                )
            }
            Self::Trailers => f.write_str("request body has trailers, which cannot be replayed"),
            Self::Failed(e) => write!(f, "request body failed: {e}"),
        }
    }
}

impl std::error::Error for RequestBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => Some(&**e),
            _ => None,
        }
    }
}

/// The error that ends the body of a final response whose body was not read to its end
/// before the call went on to retry, and was dropped then (to release the connection rather
/// than pin it while sleeping). It is only seen when the retry then could not be sent (the
/// inner service failed or stayed unready past the deadline, or the
/// [throttle](crate::throttle) refused a send slot): the caller gets the part that was
/// read, then this error, never a silently shortened body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyAbandoned;

impl fmt::Display for BodyAbandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the rest of this response body was dropped when the call went on to retry")
    }
}

impl std::error::Error for BodyAbandoned {}

/// The error of a successful response's body that failed midway: the server did the work,
/// and this names the call's idempotency key and the response's request id, so that the
/// caller can still reconcile after `into_body()`. The stream's own error is its
/// [`source()`](std::error::Error::source).
#[derive(Debug)]
pub struct ResponseBodyError {
    idempotency_key: Option<IdempotencyKey>,
    request_id: Option<RequestId>,
    source: BoxError,
}

impl ResponseBodyError {
    /// The idempotency key the call carried, if any.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.idempotency_key.as_ref()
    }

    /// The `Request-Id` of the response, if it had one.
    pub fn request_id(&self) -> Option<&RequestId> {
        self.request_id.as_ref()
    }
}

impl fmt::Display for ResponseBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response body failed after a successful answer")?;
        match (&self.idempotency_key, &self.request_id) {
            (Some(key), Some(id)) => write!(f, " (idempotency key {key}, request id {id})"),
            (Some(key), None) => write!(f, " (idempotency key {key})"),
            (None, Some(id)) => write!(f, " (request id {id})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for ResponseBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

pin_project! {
    /// The body of a response from the retry layer: the inner body untouched for a 2xx,
    /// or the buffered part of a non-2xx body followed by whatever was not read.
    ///
    /// The body of a successful call carries the call's [`CallReport`]
    /// ([`report`](Self::report)), so the account of every attempt stays with the response
    /// after `into_body()`, and costs no allocation of its own.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        report: Option<CallReport>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Streaming {
            #[pin]
            inner: B,
        },
        Buffered {
            data: Option<Bytes>,
            // Boxed as the collector boxed them: trailers are rare, and every response
            // body is moved on its way to the caller.
            trailers: Option<Box<HeaderMap>>,
            error: Option<BoxError>,
        },
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B> ResponseBody<B> {
    /// A 2xx body, streaming through, with the call's report (`None` when the body goes
    /// back to the caller inside an `Error`, which holds the report itself).
    pub(crate) fn streaming(inner: B, report: Option<CallReport>) -> Self {
        ResponseBody {
            kind: Kind::Streaming { inner },
            report,
        }
    }

    pub(crate) fn with_report(mut self, report: CallReport) -> Self {
        self.report = Some(report);
        self
    }

    /// The report of the call whose successful response this is: every attempt, its
    /// class, status, request id and delay, and the idempotency key. `None` only for a
    /// body handed back inside an [`Error`](crate::Error), which holds the report itself.
    pub fn report(&self) -> Option<&CallReport> {
        self.report.as_ref()
    }

    pub(crate) fn buffered(
        data: Bytes,
        trailers: Option<Box<HeaderMap>>,
        error: Option<BoxError>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Buffered {
                data: Some(data),
                trailers,
                error,
            },
            report: None,
        }
    }

    pub(crate) fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        ResponseBody {
            kind: Kind::Prefixed {
                prefix: Some(prefix),
                rest,
            },
            report: None,
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseBody");
        match &self.kind {
            Kind::Streaming { .. } => d.field("kind", &"streaming"),
            Kind::Buffered { data, error, .. } => d
                .field("kind", &"buffered")
                .field("remaining", &data.as_ref().map_or(0, Bytes::len))
                .field("error", error),
            Kind::Prefixed { prefix, .. } => d
                .field("kind", &"prefixed")
                .field("prefix", &prefix.as_ref().map_or(0, Bytes::len)),
        };
        d.finish()
    }
}

fn map_frame<B>(
    frame: Option<Result<Frame<B::Data>, B::Error>>,
) -> Option<Result<Frame<Bytes>, BoxError>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    frame.map(|r| {
        r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(Into::into)
    })
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Streaming { inner } => match ready!(inner.poll_frame(cx).map(map_frame::<B>))
            {
                Some(Err(source)) => {
                    let report = this.report.as_ref();
                    Poll::Ready(Some(Err(Box::new(ResponseBodyError {
                        idempotency_key: report.and_then(|r| r.idempotency_key().cloned()),
                        request_id: report.and_then(|r| r.request_ids().last().cloned()),
                        source,
                    }))))
                }
                other => Poll::Ready(other),
            },
            KindProj::Buffered {
                data,
                trailers,
                error,
            } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if let Some(trailers) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(*trailers))));
                }
                Poll::Ready(error.take().map(Err))
            }
            KindProj::Prefixed { prefix, rest } => {
                if let Some(prefix) = prefix.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                rest.as_mut().poll_frame(cx).map(map_frame::<B>)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Streaming { inner, .. } => inner.is_end_stream(),
            Kind::Buffered {
                data,
                trailers,
                error,
            } => data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none() && error.is_none(),
            Kind::Prefixed { prefix, rest } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && rest.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Streaming { inner, .. } => inner.size_hint(),
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

/// Bytes gathered from a body, kept as a single `Bytes` when the body had one chunk.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    first: Option<Bytes>,
    rest: BytesMut,
    len: usize,
    // Boxed: trailers are rare, and the collector lives inside every retry future.
    pub(crate) trailers: Option<Box<HeaderMap>>,
}

/// How collecting a body ended.
#[derive(Debug)]
pub(crate) enum Collected {
    /// The whole body was read.
    Complete,
    /// The body went past the limit; the bytes read so far are kept.
    OverLimit,
    /// The body's stream failed.
    Failed(BoxError),
}

impl Collector {
    fn push(&mut self, mut data: impl Buf) {
        let chunk = data.copy_to_bytes(data.remaining());
        self.len += chunk.len();
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(chunk);
        } else {
            if let Some(first) = self.first.take() {
                self.rest.extend_from_slice(&first);
            }
            self.rest.extend_from_slice(&chunk);
        }
    }

    /// The bytes gathered, taken out of the collector (left empty) without copying them
    /// again: the collector is done with once its body is read.
    pub(crate) fn take_bytes(&mut self) -> Bytes {
        self.len = 0;
        match self.first.take() {
            Some(first) => first,
            None => std::mem::take(&mut self.rest).freeze(),
        }
    }

    /// Reads frames from `body` until it ends, fails, or holds more than `limit` bytes.
    ///
    /// At most [`FRAMES_PER_POLL`] frames a poll: a body that is always ready but never
    /// grows (empty data frames, trailers over and over) would otherwise hold the thread
    /// in this loop, where no deadline can be checked. After that many, it asks to be
    /// polled again and returns `Pending`, so that the caller looks at its timer.
    pub(crate) fn poll_collect<B>(
        &mut self,
        mut body: Pin<&mut B>,
        limit: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Collected>
    where
        B: Body + ?Sized,
        B::Error: Into<BoxError>,
    {
        for _ in 0..FRAMES_PER_POLL {
            match ready!(body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Collected::Complete),
                Some(Err(e)) => return Poll::Ready(Collected::Failed(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.push(data);
                        if self.len > limit {
                            return Poll::Ready(Collected::OverLimit);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut self.trailers {
                                Some(t) => t.extend(trailers),
                                None => self.trailers = Some(Box::new(trailers)),
                            }
                        }
                    }
                },
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// How many frames [`Collector::poll_collect`] reads in one poll before it yields.
const FRAMES_PER_POLL: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields scripted frames, each at once.
    struct Chunks(std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn stream(chunks: Vec<Result<Frame<Bytes>, BoxError>>) -> Chunks {
        Chunks(chunks.into())
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    fn collect_sync<B: Body + Unpin>(body: &mut B, c: &mut Collector, limit: usize) -> Collected
    where
        B::Error: Into<BoxError>,
    {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match c.poll_collect(Pin::new(body), limit, &mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("test bodies are always ready"),
        }
    }

    #[tokio::test]
    async fn over_limit_bodies_are_delivered_whole() {
        let mut body = stream(vec![data("abc"), data("def"), data("ghi")]);
        let mut c = Collector::default();
        assert!(matches!(
            collect_sync(&mut body, &mut c, 4),
            Collected::OverLimit
        ));
        let read = c.take_bytes();
        assert_eq!(read, "abcdef");
        assert!(c.take_bytes().is_empty(), "taken out");
        let whole = ResponseBody::prefixed(read, Box::pin(body));
        assert_eq!(whole.collect().await.unwrap().to_bytes(), "abcdefghi");
    }

    #[tokio::test]
    async fn failed_bodies_deliver_the_prefix_then_the_error() {
        let mut body = stream(vec![data("abc"), Err("boom".into())]);
        let mut c = Collector::default();
        let Collected::Failed(err) = collect_sync(&mut body, &mut c, 100) else {
            panic!("expected a failure")
        };
        let mut whole =
            ResponseBody::<http_body_util::Empty<Bytes>>::buffered(c.take_bytes(), None, Some(err));
        let first = whole.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        let second = whole.frame().await.unwrap();
        assert_eq!(second.unwrap_err().to_string(), "boom");
        assert!(whole.frame().await.is_none());
    }

    #[tokio::test]
    async fn trailers_survive_buffering() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().unwrap());
        let mut body = stream(vec![data("a"), Ok(Frame::trailers(trailers.clone()))]);
        let mut c = Collector::default();
        assert!(matches!(
            collect_sync(&mut body, &mut c, 100),
            Collected::Complete
        ));
        let whole = ResponseBody::<http_body_util::Empty<Bytes>>::buffered(
            c.take_bytes(),
            c.trailers.take(),
            None,
        );
        let collected = whole.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "a");
    }

    #[test]
    fn single_chunks_are_not_copied() {
        let original = Bytes::from(vec![7u8; 1000]);
        let mut body = http_body_util::Full::new(original.clone());
        let mut c = Collector::default();
        let r = collect_sync(&mut body, &mut c, 10_000);
        assert!(matches!(r, Collected::Complete));
        let got = c.take_bytes();
        assert_eq!(got.as_ptr(), original.as_ptr());
    }
}
