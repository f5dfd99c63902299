//! [`ReqwestService`]: a `reqwest::Client` under the layers (feature `reqwest`).
//!
//! reqwest's `Client` is a `tower_service::Service<reqwest::Request>`, while the layers of
//! this crate speak `http::Request`. [`ReqwestService`] is the small newtype in between
//! (a newtype, because this crate implements no trait on a type it does not own): it
//! turns each `http::Request<B>` into a `reqwest::Request`, sends it with the client it
//! wraps, and hands back an `http::Response<reqwest::Body>`, with reqwest's own
//! [`reqwest::Error`] unchanged, so the classifier still sees the `io::Error` at the end
//! of a connect error's chain.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use resilient_http::reqwest::ReqwestService;
//! use resilient_http::ResilientLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = reqwest::Client::new();
//! let stripe = ServiceBuilder::new()
//!     .layer(ResilientLayer::stripe())
//!     .service(ReqwestService::new(client));
//!
//! let req = http::Request::post("http://127.0.0.1:12111/v1/charges")
//!     .header("authorization", "Bearer sk_test_123")
//!     .body(Full::new(Bytes::from("amount=2000&currency=usd")))?;
//! match stripe.oneshot(req).await {
//!     Ok(res) => println!("charged: {}", res.status()),
//!     Err(e) if e.is_indeterminate() => println!("unknown, reconcile with {:?}", e.idempotency_key()),
//!     Err(e) => println!("failed: {e}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Against the Stripe-like server of `resilient-http-testing` on loopback, a connection
//! dropped after the charge was made is retried with the same key and answered from the
//! idempotency store:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use resilient_http::reqwest::ReqwestService;
//! use resilient_http::{ResilientLayer, RetryLayer};
//! use resilient_http_testing::{Fault, Faults, StripeServer};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let server = StripeServer::builder()
//!     .faults(Faults::script([Some(Fault::DropAfterEffect)]))
//!     .start()
//!     .await?;
//! let client = reqwest::Client::builder().no_proxy().build()?;
//! let retry = RetryLayer::builder()
//!     .base_delay(Duration::from_millis(10))
//!     .build()?;
//! let stripe = ServiceBuilder::new()
//!     .layer(ResilientLayer::new(retry))
//!     .service(ReqwestService::new(client));
//!
//! let req = http::Request::post(format!("{}/v1/charges", server.url()))
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body(Full::new(Bytes::from("amount=2000&currency=usd")))?;
//! let res = stripe.oneshot(req).await?;
//! assert_eq!(res.headers()["idempotent-replayed"], "true");
//! assert_eq!(server.ledger().len(), 1);
//! # Ok(()) }
//! ```
//!
//! # What reqwest does on its own
//!
//! - **Retries.** reqwest (like hyper-util's legacy client beneath it) replays a request
//!   that failed on a reused idle connection before anything was written, and reqwest
//!   retries some HTTP/2 refusals (`REFUSED_STREAM`, GOAWAY before processing). Those
//!   attempts never reached the server's application, but they are not counted in the
//!   [`CallReport`](crate::CallReport): one of our attempts may be more than one connection
//!   attempt. Configure `reqwest::ClientBuilder::retry` if you want none of them.
//!   [`ReqwestService`] hands the request body to reqwest as a stream, so reqwest cannot
//!   replay a request that was written; only the retry layer replays those, with the same
//!   idempotency key.
//! - **Timeouts.** `reqwest::ClientBuilder::timeout` (and `RequestBuilder::timeout`) bound
//!   one reqwest request, body included; they are separate from this crate's
//!   [`attempt_timeout`](crate::retry::Builder::attempt_timeout) and
//!   [`deadline`](crate::retry::Builder::deadline). A reqwest timeout ends that attempt with a
//!   transport error (indeterminate, retried with the same key). Prefer the retry layer's
//!   timeouts: they are on tokio's clock, and the attempt timeout stops at the response
//!   head, so a slow error body is still read and classified.
//! - **Redirects.** reqwest follows redirects by default; Stripe's API never redirects.

use crate::body::BoxError;
use ::reqwest::Url;
use bytes::Bytes;
use http_body::Body;
use pin_project_lite::pin_project;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_service::Service;

/// A `reqwest::Client` that speaks `http::Request<B>` and `http::Response<reqwest::Body>`,
/// so that [`ResilientLayer`](crate::ResilientLayer) and the other layers can sit on it.
///
/// Cheap to clone: clones share reqwest's connection pool. See the [module docs](self) for
/// an example, and for the retries and timeouts reqwest has of its own.
///
/// Each request is converted as reqwest's own `TryFrom<http::Request>` converts it, with
/// one saving: reqwest parses the URI into a `Url` every time, which costs more than all
/// of this crate's layers together, so each thread keeps the last four URIs it parsed
/// (without a query) and reuses their `Url`s: as they are when the same URI (byte for
/// byte) comes again, and with the new path and query set (so that only those are parsed)
/// when one with the same scheme and host does. A request with extensions (such as an
/// [`IdempotencyKey`](crate::IdempotencyKey) put there for
/// [`SetIdempotencyKey`](crate::idempotency::SetIdempotencyKey), which leaves it in
/// place), or with a user name, or a URI that does not parse, goes through reqwest's
/// conversion unchanged.
#[derive(Clone, Debug, Default)]
pub struct ReqwestService {
    client: ::reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub const fn new(client: ::reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The client.
    pub fn get_ref(&self) -> &::reqwest::Client {
        &self.client
    }

    /// The client, mutably.
    pub fn get_mut(&mut self) -> &mut ::reqwest::Client {
        &mut self.client
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> ::reqwest::Client {
        self.client
    }
}

impl From<::reqwest::Client> for ReqwestService {
    fn from(client: ::reqwest::Client) -> Self {
        Self::new(client)
    }
}

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<::reqwest::Body>;
    type Error = ::reqwest::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<::reqwest::Request>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let body = ::reqwest::Body::wrap(body);
        // reqwest's own conversion (`TryFrom<http::Request>`) parses the URI into a `Url`
        // on every call, which costs more than the rest of the layers together. A recently
        // parsed one is reused instead when the conversion would do nothing else: with
        // extensions (which only reqwest's conversion can hand over), or a URI that does
        // not parse (whose error only reqwest can make), reqwest converts as before.
        let url = if parts.extensions.is_empty() {
            recent_url(&parts.uri)
        } else {
            None
        };
        let converted = match url {
            Some(url) => {
                let mut req = ::reqwest::Request::new(parts.method, url);
                *req.headers_mut() = parts.headers;
                *req.version_mut() = parts.version;
                *req.body_mut() = Some(body);
                Ok(req)
            }
            None => ::reqwest::Request::try_from(http::Request::from_parts(parts, body)),
        };
        // Fails only for a URI that is not an absolute URL reqwest can parse.
        let state = match converted {
            Ok(req) => State::Sending {
                future: self.client.call(req),
            },
            Err(error) => State::Failed { error: Some(error) },
        };
        ResponseFuture { state }
    }
}

/// How many parsed URLs each thread keeps: a client calls a few endpoints over and over.
const RECENT_URLS: usize = 4;

thread_local! {
    static URLS: RefCell<RecentUrls> = const {
        RefCell::new(RecentUrls { entries: [const { None }; RECENT_URLS], next: 0 })
    };
}

/// The URLs this thread parsed last, each with the URI it came from; the oldest goes
/// first.
struct RecentUrls {
    entries: [Option<(http::Uri, Url)>; RECENT_URLS],
    next: usize,
}

/// `uri` as reqwest would parse it (`Url::parse(&uri.to_string())`), from this thread's
/// recent URLs: the same URL if the URI is among them, or one of them with this URI's
/// path and query (which parses only those) if its scheme and host are; `None` to leave
/// the conversion to reqwest: the URI does not parse, carries a user name, or the thread is
/// shutting down.
fn recent_url(uri: &http::Uri) -> Option<Url> {
    if has_user(uri) {
        return None;
    }
    let lookup = URLS.try_with(|recent| {
        let mut recent = recent.borrow_mut();
        let mut same_origin = None;
        for (seen, url) in recent.entries.iter().flatten() {
            if !same_scheme_and_host(seen, uri) {
                continue;
            }
            if seen.path_and_query().map(|p| p.as_str()) == uri.path_and_query().map(|p| p.as_str())
            {
                return Some(url.clone());
            }
            same_origin.get_or_insert(url);
        }
        let url = match same_origin {
            Some(url) => {
                // What parsing the whole text would do to the path and the query: the
                // same parser runs on them, with the same scheme.
                let mut url = url.clone();
                url.set_path(uri.path());
                url.set_query(uri.query());
                url
            }
            None => Url::parse(&uri.to_string()).ok()?,
        };
        if keepable(uri) {
            let slot = recent.next;
            recent.entries[slot] = Some((uri.clone(), url.clone()));
            recent.next = (slot + 1) % RECENT_URLS;
        }
        Some(url)
    });
    lookup.ok().flatten()
}

/// Whether a URI carries a user name or password: never kept, nor made from a kept one
/// (it should not linger in a thread's memory after the call).
fn has_user(uri: &http::Uri) -> bool {
    uri.authority().is_some_and(|a| a.as_str().contains('@'))
}

/// Whether a URI may be kept: not if it carries a query (cursors and filters change from
/// call to call, and some APIs put secrets there) or a user. One with a query is still
/// made from a kept URI with its scheme and host.
fn keepable(uri: &http::Uri) -> bool {
    uri.query().is_none() && !has_user(uri)
}

/// Whether two URIs have the same scheme and host (port included), as text. (`Uri`'s `==`
/// ignores the case of the scheme and host, which `Url::parse` would also ignore; exact
/// text is simpler to trust.)
fn same_scheme_and_host(a: &http::Uri, b: &http::Uri) -> bool {
    a.scheme_str().is_some()
        && a.scheme_str() == b.scheme_str()
        && a.authority().map(|h| h.as_str()) == b.authority().map(|h| h.as_str())
}

type Pending = <::reqwest::Client as Service<::reqwest::Request>>::Future;

pin_project! {
    /// The response future of [`ReqwestService`].
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Sending { #[pin] future: Pending },
        Failed { error: Option<::reqwest::Error> },
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<::reqwest::Body>, ::reqwest::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending { future } => future.poll(cx).map_ok(http::Response::from),
            StateProj::Failed { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => panic!("ResponseFuture polled after it completed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn recent_urls_are_what_reqwest_would_parse_each_time() {
        let uris = [
            "http://127.0.0.1:8080/v1/charges",
            "http://127.0.0.1:8081/v1/charges",
            "http://127.0.0.1:8080/v1/charges/",
            "http://127.0.0.1:8080/v1/refunds",
            "https://api.stripe.com/v1/charges",
            "HTTPS://API.Stripe.com/v1/charges",
            "https://api.stripe.com/v1/charges/ch_1",
            "https://api.stripe.com:443/v1/charges",
            "/v1/charges",
        ];
        // Several rounds, more URIs than are kept: hits, misses and evictions.
        for round in 0..3 {
            for text in uris.iter().chain(uris.iter().rev()) {
                let uri: http::Uri = text.parse().expect("a valid URI");
                let expected = Url::parse(&uri.to_string()).ok();
                assert_eq!(recent_url(&uri), expected, "round {round}: {text}");
            }
        }
    }

    #[test]
    fn uris_with_a_query_are_made_but_not_kept_and_users_are_left_to_reqwest() {
        let base: http::Uri = "http://127.0.0.1:8080/v1/charges".parse().unwrap();
        assert!(recent_url(&base).is_some());
        let query: http::Uri = "http://127.0.0.1:8080/v1/charges?limit=3&starting_after=ch_1"
            .parse()
            .unwrap();
        assert_eq!(recent_url(&query), Url::parse(&query.to_string()).ok());
        let user: http::Uri = "http://user:secret@127.0.0.1:8080/v1/charges"
            .parse()
            .unwrap();
        assert_eq!(recent_url(&user), None);
        let kept = URLS.with_borrow(|recent| {
            recent
                .entries
                .iter()
                .flatten()
                .map(|(uri, url)| format!("{uri} {url}"))
                .collect::<Vec<_>>()
        });
        assert!(
            kept.iter().all(|u| !u.contains('?') && !u.contains('@')),
            "{kept:?}"
        );
    }

    /// Text http's URI parser takes in a path or a query, with what URL parsing treats
    /// specially: dot segments (also percent-encoded), doubled and back slashes, percent
    /// signs, and characters it percent-encodes.
    fn part() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pieces = prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just("%2e"),
            Just("%2E%2e"),
            Just("//"),
            Just("\\"),
            Just("%"),
            Just("%41"),
            Just("a"),
            Just("Z9"),
            Just("-_~"),
            Just("!$&'()*+,;=:@"),
            Just("\""),
            Just("<>"),
            Just("{}|^`"),
            Just("[]"),
            Just("?"),
            Just("é"),
        ];
        proptest::collection::vec(pieces, 0..8).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// A URL made from a kept one's scheme and host is the URL reqwest would parse.
        #[test]
        fn urls_made_from_a_kept_origin_are_what_parsing_gives(
            path in part(),
            query in proptest::option::of(part()),
            host in proptest::sample::select(vec!["http://127.0.0.1:8080", "https://api.stripe.com", "https://API.stripe.com:443"]),
        ) {
            let base: http::Uri = format!("{host}/v1/charges").parse().unwrap();
            proptest::prop_assert!(recent_url(&base).is_some());
            let mut text = format!("{host}/{path}");
            if let Some(query) = &query {
                text.push('?');
                text.push_str(query);
            }
            let Ok(uri) = text.parse::<http::Uri>() else {
                return Ok(());
            };
            let expected = Url::parse(&uri.to_string()).ok();
            proptest::prop_assert_eq!(recent_url(&uri), expected.clone(), "{}", text);
            // Again: now from the kept URL itself, if it was kept.
            proptest::prop_assert_eq!(recent_url(&uri), expected, "{}", text);
        }
    }

    #[tokio::test]
    async fn a_relative_uri_is_an_error_not_a_panic() {
        let mut svc = ReqwestService::default();
        let req = http::Request::post("/v1/charges")
            .body(Full::new(Bytes::from_static(b"amount=1")))
            .expect("a valid request");
        let err = svc.call(req).await.expect_err("no host to send to");
        assert!(err.is_builder(), "{err:?}");
    }

    #[tokio::test]
    async fn connection_refused_is_a_connect_error_the_classifier_sees() {
        // Bind, learn a free port, close it: nothing listens there now.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let mut svc = ReqwestService::new(
            ::reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a plain client builds"),
        );
        let req = http::Request::post(format!("http://{addr}/v1/charges"))
            .body(Full::new(Bytes::from_static(b"amount=1")))
            .expect("a valid request");
        let err = svc.call(req).await.expect_err("nothing listens");
        assert!(crate::classify::is_connect_error(&err), "{err:?}");
    }
}
