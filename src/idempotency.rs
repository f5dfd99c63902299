//! Idempotency keys: a validated key type, key makers, and a layer that attaches a key to
//! every unsafe request.
//!
//! Stripe saves the result of the first request it sees under an `Idempotency-Key` and
//! answers every later request with the same key from that saved result. A retry is only
//! safe if it carries the *same* key, byte for byte, as the attempt it repeats.
//! [`SetIdempotencyKey`] chooses the key once per logical call, before the retry loop, so
//! every attempt below it sends the identical header.
//!
//! Which requests get a key:
//!
//! - `POST` and `PATCH` without an `Idempotency-Key` header get one: the
//!   [`IdempotencyKey`] found in the request's extensions if the caller put one there,
//!   otherwise one from the [`MakeIdempotencyKey`] (a random UUID v4 by default).
//! - A key the caller already set as a header is never changed, even if it is invalid:
//!   [`Retry`](crate::retry::Retry) rejects an invalid key before anything is sent.
//! - `GET`, `HEAD`, `OPTIONS`, `DELETE` (and every other method) never get one: they are
//!   idempotent by definition.
//!
//! The key travels in the header only: the layer does not also copy it into the request's
//! extensions, since the retry layer keeps a copy of the request head for replays and a
//! non-empty extension map would cost allocations to copy. The key comes back to the
//! caller in the [`CallReport`](crate::CallReport) (on success) or the
//! [`Error`](crate::Error).
//!
//! # Layer ordering
//!
//! `SetIdempotencyKeyLayer` must sit *outside* (above) the retry layer. Below it, each
//! attempt would get a fresh key and the server could not tell a retry from a new charge.
//! [`ResilientLayer`](crate::ResilientLayer) puts them in the right order for you.
//!
//! # Example
//!
//! ```
//! use http::{Method, Request};
//! use resilient_http::idempotency::{IdempotencyKey, SetIdempotencyKeyLayer};
//! use resilient_http::headers::IDEMPOTENCY_KEY;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = SetIdempotencyKeyLayer::random().layer(service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(req.headers().get(IDEMPOTENCY_KEY).cloned())
//! }));
//!
//! // A POST gets a fresh UUID v4 key.
//! let post = Request::post("https://api.stripe.com/v1/charges").body(()).unwrap();
//! let key = svc.clone().oneshot(post).await.unwrap().unwrap();
//! assert_eq!(key.len(), 36);
//!
//! // A GET never gets one.
//! let get = Request::get("https://api.stripe.com/v1/charges").body(()).unwrap();
//! assert!(svc.clone().oneshot(get).await.unwrap().is_none());
//!
//! // A key the caller chose is kept as it is.
//! let mut mine = Request::post("https://api.stripe.com/v1/charges").body(()).unwrap();
//! mine.extensions_mut().insert(IdempotencyKey::new("order-1234/charge").unwrap());
//! assert_eq!(svc.oneshot(mine).await.unwrap().unwrap(), "order-1234/charge");
//! # }
//! ```

use crate::headers::{first_two, IDEMPOTENCY_KEY};
use bytes::Bytes;
use http::header::HeaderValue;
use http::{request, Method, Request};
use rand::Rng;
use std::fmt;
use std::str::FromStr;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;
use uuid::Uuid;

/// A validated idempotency key: 1 to 255 visible ASCII characters (`!` to `~`).
///
/// The limit is Stripe's. A key that breaks it cannot be built, so a request that reached
/// the network always carried a valid key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(HeaderValue);

impl IdempotencyKey {
    /// The longest key Stripe accepts, in characters (bytes: keys are ASCII).
    pub const MAX_LEN: usize = 255;

    /// Validates `key` and wraps it.
    ///
    /// ```
    /// use resilient_http::idempotency::IdempotencyKey;
    ///
    /// assert!(IdempotencyKey::new("order-1234/charge").is_ok());
    /// let err = IdempotencyKey::new("x".repeat(256)).unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid idempotency key: 256 characters is over the limit of 255 visible ASCII characters"
    /// );
    /// ```
    pub fn new(key: impl AsRef<str>) -> Result<Self, InvalidIdempotencyKey> {
        let key = key.as_ref().as_bytes();
        validate(key)?;
        // One allocation that holds the text and its reference count, as for a random
        // key: a value made from a `Vec` would allocate again on its first clone, and the
        // stack clones the key of every call.
        let bytes = if key.len() <= SHORT_KEY {
            Bytes::from_owner(KeyText::<SHORT_KEY>::new(key))
        } else {
            Bytes::from_owner(KeyText::<{ IdempotencyKey::MAX_LEN }>::new(key))
        };
        let value =
            HeaderValue::from_maybe_shared(bytes).expect("visible ASCII is a valid header value");
        Ok(IdempotencyKey(value))
    }

    /// Validates the value of an `Idempotency-Key` header.
    pub fn from_header_value(value: &HeaderValue) -> Result<Self, InvalidIdempotencyKey> {
        validate(value.as_bytes())?;
        Ok(IdempotencyKey(value.clone()))
    }

    /// The key a request's headers carry: `None` without an `Idempotency-Key`; an error if
    /// it is invalid or repeated.
    pub(crate) fn from_headers(
        headers: &http::HeaderMap,
    ) -> Result<Option<Self>, InvalidIdempotencyKey> {
        match first_two(headers, &IDEMPOTENCY_KEY) {
            (None, _) => Ok(None),
            (Some(value), None) => Self::from_header_value(value).map(Some),
            (Some(_), Some(_)) => Err(InvalidIdempotencyKey::Repeated),
        }
    }

    /// A fresh random key: a UUID v4 in its 36-character hyphenated form.
    ///
    /// The 122 random bits come from `rand`'s thread-local generator, which is
    /// cryptographically secure (as RFC 9562 asks of UUID v4) and reseeds itself from the
    /// operating system. One key costs one allocation, which holds its text and its
    /// reference count, so every copy of the request head shares it.
    ///
    /// `rand`'s thread generator is not reseeded when a process `fork`s: a child that
    /// sends keyed requests from the thread that forked, without `exec`, should make its
    /// keys another way (a [`MakeIdempotencyKey`] of its own, or keys from operation ids).
    ///
    /// Called while its thread exits (from a thread-local destructor), after the thread's
    /// generator is gone, it draws that one key from the operating system instead.
    pub fn random() -> Self {
        let bytes = THREAD_RNG
            .try_with(|rng| rng.clone().random::<[u8; 16]>())
            .unwrap_or_else(|_| one_from_os());
        Self::from_uuid(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// A key derived from an operation id: the UUID v5 of `namespace` and `operation`.
    ///
    /// The same inputs give the same key on any machine and after any restart, so a call
    /// replayed after a crash or a redeploy is recognised by the server as the same call.
    ///
    /// ```
    /// use resilient_http::idempotency::IdempotencyKey;
    /// use uuid::Uuid;
    ///
    /// let ns = Uuid::from_u128(0x6ba7b810_9dad_11d1_80b4_00c04fd430c8);
    /// let a = IdempotencyKey::from_operation_id(&ns, "order-1234/charge");
    /// let b = IdempotencyKey::from_operation_id(&ns, "order-1234/charge");
    /// assert_eq!(a, b);
    /// assert_ne!(a, IdempotencyKey::from_operation_id(&ns, "order-1235/charge"));
    /// ```
    pub fn from_operation_id(namespace: &Uuid, operation: &str) -> Self {
        Self::from_uuid(Uuid::new_v5(namespace, operation.as_bytes()))
    }

    fn from_uuid(uuid: Uuid) -> Self {
        // Encode into a stack buffer rather than through `format!`, then hand the buffer to
        // `Bytes::from_owner`: one allocation that holds the text and its reference count,
        // so the retry layer's copy of the request head shares it instead of allocating
        // again (a `Bytes` made from a `Vec` allocates on its first clone).
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid.hyphenated().encode_lower(&mut buf);
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
            .expect("a UUID is visible ASCII");
        IdempotencyKey(value)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("a validated key is visible ASCII")
    }

    /// The key as the header value it is sent as.
    pub fn as_header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// Unwraps the header value.
    pub fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

/// The longest key whose text is held in a buffer of its own size class: keys made from
/// an order or operation id are usually short, and the buffer is allocated whole.
const SHORT_KEY: usize = 64;

/// A key's text in a fixed buffer, the owner of its shared `Bytes`.
struct KeyText<const N: usize> {
    len: u8,
    buf: [u8; N],
}

impl<const N: usize> KeyText<N> {
    fn new(key: &[u8]) -> Self {
        let mut buf = [0u8; N];
        buf[..key.len()].copy_from_slice(key);
        let len = u8::try_from(key.len()).expect("a valid key is at most 255 bytes");
        KeyText { len, buf }
    }
}

impl<const N: usize> AsRef<[u8]> for KeyText<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

thread_local! {
    // A handle on `rand`'s thread generator, held by this crate's own thread-local so that
    // a key made in another thread-local's destructor finds out, through `try_with`,
    // whether the generator is still there.
    static THREAD_RNG: rand::rngs::ThreadRng = rand::rng();
}

/// 16 random bytes from the operating system, for a thread whose generator is already
/// destroyed: a key made in a thread-local destructor.
#[cold]
fn one_from_os() -> [u8; 16] {
    use rand::TryRngCore;
    let mut random = [0u8; 16];
    // Failing here means the system has no randomness left to give: the same condition
    // under which `rand`'s thread generator (and `Uuid::new_v4`) panic when they (re)seed.
    rand::rngs::OsRng
        .try_fill_bytes(&mut random)
        .expect("the operating system's random source");
    random
}

fn validate(bytes: &[u8]) -> Result<(), InvalidIdempotencyKey> {
    if bytes.is_empty() {
        return Err(InvalidIdempotencyKey::Empty);
    }
    // The common case (every byte visible) in one pass the compiler can vectorise; the
    // position of the culprit is looked for only when there is one.
    if !bytes.iter().fold(true, |ok, b| ok & b.is_ascii_graphic()) {
        let index = bytes
            .iter()
            .position(|b| !b.is_ascii_graphic())
            .unwrap_or(0);
        return Err(InvalidIdempotencyKey::InvalidCharacter { index });
    }
    if bytes.len() > IdempotencyKey::MAX_LEN {
        return Err(InvalidIdempotencyKey::TooLong { len: bytes.len() });
    }
    Ok(())
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey")
            .field(&self.as_str())
            .finish()
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidIdempotencyKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = InvalidIdempotencyKey;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = InvalidIdempotencyKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// Why a string is not a valid idempotency key. Nothing is sent with an invalid key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidIdempotencyKey {
    /// The key is empty.
    Empty,
    /// The key is longer than [`IdempotencyKey::MAX_LEN`].
    TooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key has a byte that is not visible ASCII (a space, a control character such as
    /// a newline, or a non-ASCII byte).
    InvalidCharacter {
        /// Where the first such byte is.
        index: usize,
    },
    /// The request carries more than one `Idempotency-Key` header.
    Repeated,
}

impl fmt::Display for InvalidIdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str(
                "invalid idempotency key: it is empty; keys are 1 to 255 visible ASCII characters",
            ),
            Self::TooLong { len } => write!(
                f,
                "invalid idempotency key: {len} characters is over the limit of 255 visible ASCII characters"
            ),
            Self::InvalidCharacter { index } => write!(
                f,
                "invalid idempotency key: byte {index} is not visible ASCII; keys are 1 to 255 visible ASCII characters"
            ),
            Self::Repeated => f.write_str(
                "invalid idempotency key: the request has more than one idempotency-key header",
            ),
        }
    }
}

impl std::error::Error for InvalidIdempotencyKey {}

/// Chooses the idempotency key of a request that needs one and has none.
///
/// Returning `None` sends the request without a key. The retry layer then never replays it
/// after an outcome that may have taken effect (see [`Retry`](crate::retry::Retry)).
///
/// Closures `FnMut(&http::request::Parts) -> Option<IdempotencyKey>` implement it:
///
/// ```
/// use resilient_http::idempotency::{IdempotencyKey, SetIdempotencyKeyLayer};
///
/// let layer = SetIdempotencyKeyLayer::new(|parts: &http::request::Parts| {
///     let order = parts.headers.get("x-order-id")?.to_str().ok()?;
///     IdempotencyKey::new(format!("order-{order}")).ok()
/// });
/// # let _ = layer;
/// ```
pub trait MakeIdempotencyKey {
    /// Makes the key for `request`.
    fn make_idempotency_key(&mut self, request: &request::Parts) -> Option<IdempotencyKey>;
}

impl<F> MakeIdempotencyKey for F
where
    F: FnMut(&request::Parts) -> Option<IdempotencyKey>,
{
    fn make_idempotency_key(&mut self, request: &request::Parts) -> Option<IdempotencyKey> {
        self(request)
    }
}

/// Makes a random UUID v4 key for every call (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomKey;

impl MakeIdempotencyKey for RandomKey {
    fn make_idempotency_key(&mut self, _: &request::Parts) -> Option<IdempotencyKey> {
        Some(IdempotencyKey::random())
    }
}

/// The id of a logical operation, such as `"order-1234/charge"`, put in a request's
/// extensions so that [`DeriveKey`] can derive a stable key from it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OperationId(pub String);

/// Derives the key from the request's [`OperationId`] extension: the UUID v5 of a
/// namespace and the operation id, stable across restarts and machines.
///
/// A request without an `OperationId` gets a random key (and a `warn` tracing event), the
/// safe fallback: the call is still protected against duplicates from its own retries.
///
/// ```
/// use http::Request;
/// use resilient_http::idempotency::{DeriveKey, OperationId, SetIdempotencyKeyLayer};
/// use resilient_http::headers::IDEMPOTENCY_KEY;
/// use tower::{service_fn, Layer, ServiceExt};
/// use uuid::Uuid;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ns = Uuid::from_u128(0x1234);
/// let svc = SetIdempotencyKeyLayer::new(DeriveKey::new(ns)).layer(service_fn(|req: Request<()>| async move {
///     Ok::<_, std::convert::Infallible>(req.headers()[IDEMPOTENCY_KEY].clone())
/// }));
/// let call = || {
///     let mut req = Request::post("https://api.stripe.com/v1/charges").body(()).unwrap();
///     req.extensions_mut().insert(OperationId("order-1234/charge".into()));
///     req
/// };
/// // Two separate calls (say, before and after a crash) carry the same key.
/// let first = svc.clone().oneshot(call()).await.unwrap();
/// let after_restart = svc.oneshot(call()).await.unwrap();
/// assert_eq!(first, after_restart);
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct DeriveKey {
    namespace: Uuid,
}

impl DeriveKey {
    /// Derives keys in `namespace`: pick one UUID for your application and keep it.
    pub const fn new(namespace: Uuid) -> Self {
        DeriveKey { namespace }
    }
}

impl MakeIdempotencyKey for DeriveKey {
    fn make_idempotency_key(&mut self, request: &request::Parts) -> Option<IdempotencyKey> {
        match request.extensions.get::<OperationId>() {
            Some(op) => Some(IdempotencyKey::from_operation_id(&self.namespace, &op.0)),
            None => {
                tracing::warn!(
                    target: "resilient_http::idempotency",
                    method = %request.method,
                    uri = %request.uri,
                    "request has no OperationId extension; using a random idempotency key"
                );
                Some(IdempotencyKey::random())
            }
        }
    }
}

/// Whether requests with this method get an idempotency key: `POST` and `PATCH` only.
pub(crate) fn needs_key(method: &Method) -> bool {
    method == Method::POST || method == Method::PATCH
}

/// Applies [`SetIdempotencyKey`] to a service.
#[derive(Clone)]
pub struct SetIdempotencyKeyLayer<M = RandomKey> {
    make: M,
}

impl<M> SetIdempotencyKeyLayer<M> {
    /// Attaches keys made by `make` to requests that need one and have none.
    pub const fn new(make: M) -> Self {
        SetIdempotencyKeyLayer { make }
    }
}

impl<M> SetIdempotencyKeyLayer<M> {
    pub(crate) fn maker(&self) -> &M {
        &self.make
    }
}

impl SetIdempotencyKeyLayer<RandomKey> {
    /// Attaches a random UUID v4 key to requests that need one and have none.
    pub const fn random() -> Self {
        SetIdempotencyKeyLayer { make: RandomKey }
    }
}

impl Default for SetIdempotencyKeyLayer<RandomKey> {
    fn default() -> Self {
        Self::random()
    }
}

impl<S, M: Clone> Layer<S> for SetIdempotencyKeyLayer<M> {
    type Service = SetIdempotencyKey<S, M>;
    fn layer(&self, inner: S) -> Self::Service {
        SetIdempotencyKey {
            inner,
            make: self.make.clone(),
        }
    }
}

/// Middleware that attaches an `Idempotency-Key` header to `POST` and `PATCH` requests that
/// have none. See the [module docs](self).
#[derive(Clone)]
pub struct SetIdempotencyKey<S, M = RandomKey> {
    inner: S,
    make: M,
}

// By hand, so that a closure key maker (which has no `Debug`) prints its type name.
impl<M> fmt::Debug for SetIdempotencyKeyLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetIdempotencyKeyLayer")
            .field("make", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S: fmt::Debug, M> fmt::Debug for SetIdempotencyKey<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetIdempotencyKey")
            .field("inner", &self.inner)
            .field("make", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S, M> SetIdempotencyKey<S, M> {
    /// Wraps `inner`, making keys with `make`.
    pub const fn new(inner: S, make: M) -> Self {
        SetIdempotencyKey { inner, make }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, B> Service<Request<B>> for SetIdempotencyKey<S, M>
where
    S: Service<Request<B>>,
    M: MakeIdempotencyKey,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        attach_key(&mut self.make, &mut parts);
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// Gives a request that needs a key and has none the key from its extensions, or one
/// from `make`; returns the key it attached (`None`: the request keeps what it had).
pub(crate) fn attach_key<M: MakeIdempotencyKey>(
    make: &mut M,
    parts: &mut request::Parts,
) -> Option<IdempotencyKey> {
    // A scan of a small map, not `contains_key`: the insert below hashes the name anyway.
    if !needs_key(&parts.method) || first_two(&parts.headers, &IDEMPOTENCY_KEY).0.is_some() {
        return None;
    }
    let key = match parts.extensions.get::<IdempotencyKey>() {
        Some(key) => Some(key.clone()),
        None => make.make_idempotency_key(parts),
    }?;
    // A clone of a key's value is a reference count: the key made with it shares it.
    parts
        .headers
        .insert(IDEMPOTENCY_KEY, key.as_header_value().clone());
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_1_to_255_visible_ascii_are_valid() {
        assert!(IdempotencyKey::new("a").is_ok());
        assert!(IdempotencyKey::new("~".repeat(255)).is_ok());
        assert!(IdempotencyKey::new("!#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~").is_ok());
    }

    #[test]
    fn invalid_keys_name_the_limit() {
        assert_eq!(
            IdempotencyKey::new("").unwrap_err(),
            InvalidIdempotencyKey::Empty
        );
        assert_eq!(
            IdempotencyKey::new("k".repeat(256)).unwrap_err(),
            InvalidIdempotencyKey::TooLong { len: 256 }
        );
        for (bad, index) in [("a b", 1), ("ab\n", 2), ("é", 0), ("\t", 0)] {
            let err = IdempotencyKey::new(bad).unwrap_err();
            assert_eq!(err, InvalidIdempotencyKey::InvalidCharacter { index });
            assert!(err.to_string().contains("255 visible ASCII"), "{err}");
        }
        assert!(IdempotencyKey::new("")
            .unwrap_err()
            .to_string()
            .contains("255"));
    }

    #[test]
    fn header_values_with_non_ascii_bytes_are_rejected() {
        let v = HeaderValue::from_bytes(b"key\xff").unwrap();
        assert_eq!(
            IdempotencyKey::from_header_value(&v).unwrap_err(),
            InvalidIdempotencyKey::InvalidCharacter { index: 3 }
        );
    }

    #[test]
    fn random_keys_are_uuid_v4_and_distinct() {
        let a = IdempotencyKey::random();
        let b = IdempotencyKey::random();
        assert_ne!(a, b);
        let uuid = Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(a.as_str().len(), 36);
    }

    #[test]
    fn many_keys_are_distinct_v4_and_outlive_their_thread() {
        let keys: Vec<IdempotencyKey> =
            std::thread::spawn(|| (0..1000).map(|_| IdempotencyKey::random()).collect())
                .join()
                .unwrap();
        let distinct: std::collections::HashSet<&str> =
            keys.iter().map(IdempotencyKey::as_str).collect();
        assert_eq!(distinct.len(), keys.len());
        for key in &keys {
            let uuid = Uuid::parse_str(key.as_str()).unwrap();
            assert_eq!(uuid.get_version_num(), 4, "{key}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{key}");
        }
    }

    #[test]
    fn a_key_made_in_a_thread_local_destructor_comes_from_the_os() {
        struct MakesAKeyOnExit(std::sync::mpsc::Sender<IdempotencyKey>);
        impl Drop for MakesAKeyOnExit {
            fn drop(&mut self) {
                let _ = self.0.send(IdempotencyKey::random());
            }
        }
        thread_local! {
            static ON_EXIT: std::cell::RefCell<Option<MakesAKeyOnExit>> =
                const { std::cell::RefCell::new(None) };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = IdempotencyKey::random();
            ON_EXIT.with_borrow_mut(|slot| *slot = Some(MakesAKeyOnExit(tx)));
        })
        .join()
        .unwrap();
        let key = rx.recv().unwrap();
        assert_eq!(Uuid::parse_str(key.as_str()).unwrap().get_version_num(), 4);
    }

    #[test]
    fn derived_keys_are_uuid_v5() {
        let ns = Uuid::from_u128(7);
        let k = IdempotencyKey::from_operation_id(&ns, "op");
        assert_eq!(k.as_str(), Uuid::new_v5(&ns, b"op").to_string());
    }

    #[test]
    fn only_post_and_patch_need_keys() {
        assert!(needs_key(&Method::POST));
        assert!(needs_key(&Method::PATCH));
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::DELETE,
            Method::PUT,
        ] {
            assert!(!needs_key(&m), "{m}");
        }
    }
}
