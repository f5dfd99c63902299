//! tower-http integration (cargo feature `tower-http`): the same verdicts in `TraceLayer`.
//!
//! tower-http's `TraceLayer` (and anything else built on its
//! [`MakeClassifier`]) decides what counts as a failure through a classifier. The default,
//! `ServerErrorsAsFailures`, knows nothing of Stripe: it would log a card decline as a
//! success and a `lock_timeout` as nothing special. [`TraceClassifier`] gives it the
//! retry layer's own verdicts, with a [`Failure`] that names the [`Outcome`] and the
//! [`Class`].
//!
//! It works on either side of the stack:
//!
//! - **outside** (above [`ResilientLayer`](crate::ResilientLayer)), it sees each *call*:
//!   an `Ok` response is a success and an [`Error`] is classified by its
//!   outcome and its last attempt's class;
//! - **inside** (between the retry layer and the client), it sees each *attempt*, and
//!   classifies the response head with the wrapped [`Classify`] (no body: the retry layer
//!   has not read it yet, so a Stripe error body falls back to its status), and the
//!   client's error as the retry layer does. It can look into a boxed error, an
//!   `io::Error`, hyper-util's legacy client's error (feature `hyper-util`) and reqwest's
//!   (feature `reqwest`); any other error type is reported as indeterminate, the safe
//!   reading of an error it cannot look into.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use resilient_http::classify::trace::TraceClassifier;
//! use resilient_http::stripe::StripeClassifier;
//! use resilient_http::ResilientLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_http::trace::TraceLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let stripe = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("{}"))))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(TraceLayer::new(TraceClassifier::new(StripeClassifier)))
//!     .layer(ResilientLayer::stripe())
//!     .service(stripe);
//! let req = Request::post("https://api.stripe.com/v1/charges").body(Full::new(Bytes::new())).unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

use super::{classify_failure, Classify};
use crate::error::Error;
use crate::outcome::Class;
use crate::Outcome;
use http::{request, Request, Response, StatusCode};
use std::any::Any;
use std::fmt;
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos,
};

/// A tower-http [`MakeClassifier`] over a resilient-http [`Classify`]. See the
/// [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceClassifier<C> {
    classifier: C,
}

impl<C> TraceClassifier<C> {
    /// Classifies with `classifier`.
    pub const fn new(classifier: C) -> Self {
        TraceClassifier { classifier }
    }
}

/// The classifier [`TraceClassifier`] makes for one request.
#[derive(Clone, Debug)]
pub struct RequestClassifier<C> {
    classifier: C,
    request: request::Parts,
}

/// A failed call or attempt, as tower-http sees it: its outcome, what happened, and the
/// status if there was a response. `Display` reads like `indeterminate (server_error, 500)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failure {
    /// How the call ends (or would end, for an attempt).
    pub outcome: Outcome,
    /// What happened; `None` for an error the classifier could not see into.
    pub class: Option<Class>,
    /// The response status, if there was a response.
    pub status: Option<StatusCode>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.outcome)?;
        match (self.class, self.status) {
            (Some(class), Some(status)) => write!(f, " ({class}, {})", status.as_u16()),
            (Some(class), None) => write!(f, " ({class})"),
            (None, Some(status)) => write!(f, " ({})", status.as_u16()),
            (None, None) => Ok(()),
        }
    }
}

impl<C: Classify + Clone> MakeClassifier for TraceClassifier<C> {
    type Classifier = RequestClassifier<C>;
    type FailureClass = Failure;
    type ClassifyEos = NeverClassifyEos<Failure>;

    fn make_classifier<B>(&self, req: &Request<B>) -> Self::Classifier {
        // Method and URI are what classifiers look at; headers and extensions stay behind.
        let (mut request, ()) = Request::new(()).into_parts();
        request.method = req.method().clone();
        request.uri = req.uri().clone();
        RequestClassifier {
            classifier: self.classifier.clone(),
            request,
        }
    }
}

impl<C: Classify> ClassifyResponse for RequestClassifier<C> {
    type FailureClass = Failure;
    type ClassifyEos = NeverClassifyEos<Failure>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Failure, NeverClassifyEos<Failure>> {
        // Above the stack the retry layer answers `Ok` only for a success, so this gives
        // the same verdict for any classifier that calls only a 2xx a success.
        let head = response_head(res);
        let c = self
            .classifier
            .classify_response((&self.request).into(), &head, None);
        ClassifiedResponse::Ready(match c.outcome() {
            Outcome::Success => Ok(()),
            outcome => Err(Failure {
                outcome,
                class: Some(c.class()),
                status: Some(res.status()),
            }),
        })
    }

    fn classify_error<E>(self, error: &E) -> Failure
    where
        E: fmt::Display + 'static,
    {
        let any: &dyn Any = error;
        if let Some(e) = any.downcast_ref::<Error>() {
            return Failure {
                outcome: e.outcome(),
                class: e.report().last_class(),
                status: e.status(),
            };
        }
        // Below the stack: the client's own error, as the retry layer sees it. tower-http
        // hands over only `Display + 'static`, so the error types this crate knows are
        // looked for one by one: a boxed error, an `io::Error`, and (behind their
        // features) hyper-util's and reqwest's.
        let known: Option<&(dyn std::error::Error + 'static)> =
            if let Some(e) = any.downcast_ref::<crate::BoxError>() {
                Some(&**e)
            } else if let Some(e) = any.downcast_ref::<std::io::Error>() {
                Some(e)
            } else {
                client_error(any)
            };
        if let Some(e) = known {
            let c = classify_failure(&self.classifier, (&self.request).into(), e);
            return Failure {
                outcome: c.outcome(),
                class: Some(c.class()),
                status: None,
            };
        }
        // An error type we cannot look into: it may have happened after the request was
        // sent, so it is indeterminate.
        Failure {
            outcome: Outcome::Indeterminate,
            class: None,
            status: None,
        }
    }
}

/// The error of hyper-util's legacy client or of reqwest (the error of
/// [`ReqwestService`](crate::reqwest::ReqwestService)), when their features are on.
fn client_error(any: &dyn Any) -> Option<&(dyn std::error::Error + 'static)> {
    #[cfg(feature = "hyper-util")]
    if let Some(e) = any.downcast_ref::<hyper_util::client::legacy::Error>() {
        return Some(e);
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = any.downcast_ref::<::reqwest::Error>() {
        return Some(e);
    }
    let _ = any;
    None
}

/// The status and headers of `res`, as `response::Parts` (which cannot be cloned out of a
/// borrowed response directly).
fn response_head<B>(res: &Response<B>) -> http::response::Parts {
    let mut head = Response::new(());
    *head.status_mut() = res.status();
    *head.version_mut() = res.version();
    *head.headers_mut() = res.headers().clone();
    head.into_parts().0
}
