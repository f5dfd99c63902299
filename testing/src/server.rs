//! The server: a hyper HTTP/1 server on loopback, its builder, and its handle.

use crate::faults::{Fault, Faults};
use crate::headers::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, ORIGINAL_REQUEST, REQUEST_ID};
use crate::key;
use crate::ledger::{Answer, Charge, Ledger, LoggedRequest, RequestLog};
use crate::params::Params;
use crate::store::{Begin, Saved, Store};
use crate::webhooks::{Deliveries, Made, Outbox, Webhooks};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// How long a request waits for a locked object by default before a 429 `lock_timeout`.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(50);

/// The largest request body read by default: 64 KiB. Larger bodies get a 400.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Configures and starts a [`StripeServer`]. Made by [`StripeServer::builder`].
#[derive(Debug)]
pub struct Builder {
    faults: Faults,
    rate_limit: Option<u32>,
    lock_timeout: Duration,
    body_limit: usize,
    webhooks: Option<Webhooks>,
    fault_declines: bool,
}

impl Builder {
    /// Injects faults into charges. Defaults to [`Faults::none`].
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Answers 429 `rate_limit` to requests past `per_second` a second (a token bucket
    /// holding one second's worth; 0 limits every request). Defaults to no limit.
    pub fn rate_limit(mut self, per_second: u32) -> Self {
        self.rate_limit = Some(per_second);
        self
    }

    /// Sets how long a charge waits for its customer's lock (charges with the same
    /// `customer` parameter run one at a time) before a 429 `lock_timeout`. Defaults to
    /// 50 ms.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Sets the largest request body read. Defaults to 64 KiB.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Sends a signed event to a webhook endpoint after every charge made, a declined one
    /// included (see [`Webhooks`]). [`StripeServer::deliveries`] tells what was sent and
    /// how it was answered. Defaults to no events.
    pub fn webhooks(mut self, webhooks: Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Lets declined charges draw [`Faults`] too, so that a decline can be lost as a
    /// charge can: the failed charge is recorded and its 402 saved under the key, then
    /// answered as the fault says ([`Fault::ApiErrorBeforeEffect`]: a 500 and no
    /// decline at all). Defaults to `false`: a decline is always answered with its 402.
    pub fn fault_declines(mut self, yes: bool) -> Self {
        self.fault_declines = yes;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(self) -> io::Result<StripeServer> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let (outbox, sender) = match self.webhooks {
            Some(webhooks) => {
                let (outbox, sender) = Outbox::start(webhooks)?;
                (Some(outbox), Some(sender))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            lock_timeout: self.lock_timeout,
            body_limit: self.body_limit,
            fault_declines: self.fault_declines,
            outbox,
            state: Mutex::new(State {
                store: Store::default(),
                ledger: Ledger::default(),
                log: RequestLog::default(),
                faults: self.faults,
                bucket: self.rate_limit.map(|rate| Bucket {
                    rate,
                    tokens: f64::from(rate),
                    at: now,
                }),
                locks: HashMap::new(),
                requests: 0,
            }),
        });
        let task = tokio::spawn(accept(listener, shared.clone())).abort_handle();
        Ok(StripeServer {
            addr,
            shared,
            task,
            sender,
        })
    }
}

/// A Stripe-like charge API on loopback, with an idempotency store, rate limits, object
/// locks, injected faults, a ledger and a request log. See the [crate docs](crate).
///
/// Stops serving (and closes every connection) when dropped.
pub struct StripeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: AbortHandle,
    /// The webhook sender, when events are sent.
    sender: Option<AbortHandle>,
}

impl StripeServer {
    /// A builder with no faults, no rate limit and a 50 ms lock timeout.
    pub fn builder() -> Builder {
        Builder {
            faults: Faults::none(),
            rate_limit: None,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
            webhooks: None,
            fault_declines: false,
        }
    }

    /// Starts a server with the defaults.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The charges made so far.
    pub fn ledger(&self) -> Ledger {
        self.shared.lock().ledger.clone()
    }

    /// The requests received so far.
    pub fn log(&self) -> RequestLog {
        self.shared.lock().log.clone()
    }

    /// The webhook events scheduled so far and how each delivery went (empty without
    /// [`Builder::webhooks`]).
    pub fn deliveries(&self) -> Deliveries {
        self.shared
            .outbox
            .as_ref()
            .map(|o| o.log())
            .unwrap_or_default()
    }

    /// Waits until every event scheduled so far was delivered or given up on (at once
    /// without [`Builder::webhooks`]). Runs on tokio's clock, as the deliveries do.
    pub async fn deliveries_finished(&self) {
        if let Some(outbox) = &self.shared.outbox {
            outbox.finished().await;
        }
    }
}

impl Drop for StripeServer {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it aborts them all. The
        // sender owns the deliveries in flight the same way.
        self.task.abort();
        if let Some(sender) = &self.sender {
            sender.abort();
        }
    }
}

impl fmt::Debug for StripeServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    lock_timeout: Duration,
    body_limit: usize,
    fault_declines: bool,
    outbox: Option<Arc<Outbox>>,
    state: Mutex<State>,
}

impl Shared {
    /// Never held across an await, so a poisoned lock only means a panic elsewhere in a
    /// test: the state is still consistent, keep serving.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    store: Store,
    ledger: Ledger,
    log: RequestLog,
    faults: Faults,
    bucket: Option<Bucket>,
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    requests: u64,
}

/// A token bucket on tokio's clock.
struct Bucket {
    rate: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.rate);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors or similar: back off a little rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            // A client that goes away, or a connection dropped on purpose, ends here.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Returned to hyper to close the connection without a response.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for DropConnection {}

type Reply = Result<Response<Full<Bytes>>, DropConnection>;

/// What is known of a request once its head is read.
struct Head {
    request_id: String,
    method: Method,
    path: String,
    key: Option<String>,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    // Checked before the store sees it: two invalid keys (non-ASCII bytes, say) could read
    // as the same text, and must never share a saved result.
    let invalid_key = key::from_headers(&parts.headers).err();
    let request_id = {
        let mut state = shared.lock();
        state.requests += 1;
        format!("req_{:014}", state.requests)
    };
    let head = Head {
        request_id,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        key: parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    // The body is read first, so that even a rate-limited request is logged with its
    // parameters: a test can tell which call every request belonged to.
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // Media types are case-insensitive (RFC 9110 section 8.3.1).
        .is_some_and(|v| {
            v.get(..16)
                .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
        });
    let params = match Limited::new(body, shared.body_limit).collect().await {
        Ok(collected) => Params::parse(&collected.to_bytes(), json),
        Err(e) => Err(format!("The request body could not be read: {e}")),
    };

    let limited = {
        let mut state = shared.lock();
        let now = Instant::now();
        state.bucket.as_mut().is_some_and(|b| !b.take(now))
    };
    if limited {
        let body = error_body(
            "invalid_request_error",
            Some("rate_limit"),
            "Too many requests hit the API too quickly.",
            None,
        );
        let params = params.unwrap_or_default();
        return Ok(answer(&shared, &head, &params, None, 429, body, &[]));
    }
    if let Some(invalid) = invalid_key {
        let message = invalid.to_string();
        let body = error_body("invalid_request_error", None, &message, None);
        let params = params.unwrap_or_default();
        return Ok(answer(&shared, &head, &params, None, 400, body, &[]));
    }
    let params = match params {
        Ok(params) => params,
        Err(message) => {
            let body = error_body("invalid_request_error", None, &message, None);
            return Ok(answer(
                &shared,
                &head,
                &Params::default(),
                None,
                400,
                body,
                &[],
            ));
        }
    };

    let segments: Vec<&str> = head.path.trim_matches('/').split('/').collect();
    match (&head.method, segments.as_slice()) {
        // `/v1/charges/` too: the idempotency store keys on the route, not the spelling.
        (&Method::POST, ["v1", "charges"]) => create_charge(shared, head, params).await,
        (&Method::GET, ["v1", "charges", id]) => {
            let found = {
                let state = shared.lock();
                let ledger = &state.ledger;
                ledger
                    .charges
                    .iter()
                    .find(|c| c.id == *id)
                    .map(charge_json)
                    .or_else(|| ledger.failed.iter().find(|c| c.id == *id).map(failed_json))
                    .map(|json| Bytes::from(json.to_string()))
            };
            let (status, body) = match found {
                Some(body) => (200, body),
                None => (
                    404,
                    error_body(
                        "invalid_request_error",
                        Some("resource_missing"),
                        &format!("No such charge: '{id}'"),
                        Some("id"),
                    ),
                ),
            };
            Ok(answer(
                &shared,
                &head,
                &Params::default(),
                None,
                status,
                body,
                &[],
            ))
        }
        _ => {
            let body = error_body(
                "invalid_request_error",
                None,
                &format!("Unrecognized request URL ({} {}).", head.method, head.path),
                None,
            );
            Ok(answer(
                &shared,
                &head,
                &Params::default(),
                None,
                404,
                body,
                &[],
            ))
        }
    }
}

/// Releases an executing key when the request ends without saving a result, including
/// when hyper drops the request's future because the client went away.
struct KeyGuard {
    shared: Arc<Shared>,
    key: Option<String>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.lock().store.release(&key);
        }
    }
}

/// The route of [`create_charge`], as the idempotency store fingerprints it.
const CHARGES: &str = "/v1/charges";

async fn create_charge(shared: Arc<Shared>, head: Head, params: Params) -> Reply {
    let mut guard = KeyGuard {
        shared: shared.clone(),
        key: None,
    };
    // A key that reaches here passed `key::from_headers`: one header, 1 to 255 visible
    // ASCII characters, so its lossy text is the key itself.
    if let Some(key) = &head.key {
        let begin = shared
            .lock()
            .store
            .begin(key, CHARGES, &params, Instant::now());
        match begin {
            Begin::Execute => guard.key = Some(key.clone()),
            Begin::Replay(saved) => return Ok(replay(&shared, &head, &params, saved)),
            Begin::InUse => {
                let body = error_body(
                    "idempotency_error",
                    Some("idempotency_key_in_use"),
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through). Please try again later.",
                    None,
                );
                let headers = [("stripe-should-retry", "true")];
                return Ok(answer(&shared, &head, &params, None, 409, body, &headers));
            }
            Begin::Mismatch => {
                let body = error_body(
                    "idempotency_error",
                    None,
                    &format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."),
                    None,
                );
                return Ok(answer(&shared, &head, &params, None, 400, body, &[]));
            }
        }
    }

    // Validation failures are not saved: the guard releases the key.
    let (amount, currency) = match validate(&params) {
        Ok(valid) => valid,
        Err((param, message)) => {
            let body = error_body("invalid_request_error", None, &message, Some(param));
            return Ok(answer(&shared, &head, &params, None, 400, body, &[]));
        }
    };

    // Charges for one customer run one at a time, as Stripe locks the objects a request
    // touches; a request that cannot get the lock in time saves nothing. Held until the
    // request ends, a delayed one included (it is still executing: see `Fault::Delay`).
    let _object_lock = match params.get("customer") {
        Some(customer) => {
            let lock = shared
                .lock()
                .locks
                .entry(customer.to_owned())
                .or_default()
                .clone();
            match tokio::time::timeout(shared.lock_timeout, lock.lock_owned()).await {
                Ok(held) => Some(held),
                Err(_) => {
                    let body = error_body(
                        "invalid_request_error",
                        Some("lock_timeout"),
                        "This object cannot be accessed right now because another API request or Stripe process is currently accessing it. If you see this error intermittently, retry the request.",
                        None,
                    );
                    let headers = [("stripe-should-retry", "true")];
                    return Ok(answer(&shared, &head, &params, None, 429, body, &headers));
                }
            }
        }
        None => None,
    };

    // A declined card makes a failed charge (Stripe keeps one) and answers 402; it draws
    // no fault unless the builder says so.
    let declined = params.get("source") == Some(DECLINED_CARD);
    let fault = if declined && !shared.fault_declines {
        None
    } else {
        shared.lock().faults.next()
    };
    if fault == Some(Fault::ApiErrorBeforeEffect) {
        let body = error_body(
            "api_error",
            None,
            "An unknown error occurred before the charge was attempted.",
            None,
        );
        let headers = [("stripe-should-retry", "true")];
        return Ok(answer(&shared, &head, &params, fault, 500, body, &headers));
    }

    // The effect, and its event: sent whatever becomes of the answer.
    let (status, made) = {
        let mut state = shared.lock();
        let (status, body, object) = if declined {
            let charge = Charge {
                id: format!("ch_failed_{}", state.ledger.failed.len() + 1),
                amount,
                currency,
                idempotency_key: guard.key.clone(),
                request_id: head.request_id.clone(),
            };
            let object = failed_json(&charge);
            state.ledger.failed.push(charge);
            (402, Bytes::from_static(DECLINED_BODY), object)
        } else {
            let charge = Charge {
                id: format!("ch_{}", state.ledger.charges.len() + 1),
                amount,
                currency,
                idempotency_key: guard.key.clone(),
                request_id: head.request_id.clone(),
            };
            let object = charge_json(&charge);
            state.ledger.charges.push(charge);
            (200, Bytes::from(object.to_string()), object)
        };
        // Scheduled under the state lock, so that events are drawn in the order charges
        // are made.
        if let Some(outbox) = &shared.outbox {
            outbox.charge_made(Made {
                object,
                failed: declined,
                request_id: &head.request_id,
                idempotency_key: guard.key.as_deref(),
            });
        }
        (status, body)
    };

    let now = Instant::now();
    match fault {
        Some(Fault::ApiErrorAfterEffect | Fault::ApiErrorAfterEffectNoHint) => {
            let body = error_body(
                "api_error",
                None,
                "Something went wrong on Stripe's end.",
                None,
            );
            let headers: &[_] = if fault == Some(Fault::ApiErrorAfterEffect) {
                &[("stripe-should-retry", "false")]
            } else {
                &[]
            };
            Ok(finish(
                &shared, &mut guard, &head, &params, fault, 500, body, headers, now,
            ))
        }
        Some(Fault::DropAfterEffect) => {
            finish(
                &shared,
                &mut guard,
                &head,
                &params,
                fault,
                status,
                made,
                &[],
                now,
            );
            // Other requests may have been logged since: find this one (near the end).
            if let Some(logged) = shared
                .lock()
                .log
                .requests
                .iter_mut()
                .rev()
                .find(|r| r.request_id == head.request_id)
            {
                logged.answer = Answer::Dropped;
            }
            Err(DropConnection)
        }
        Some(Fault::Delay(delay)) => {
            let res = finish(
                &shared,
                &mut guard,
                &head,
                &params,
                fault,
                status,
                made,
                &[],
                // A delay as long as `Duration::MAX` means "never answer": no overflow.
                now.checked_add(delay).unwrap_or_else(far_future),
            );
            tokio::time::sleep(delay).await;
            Ok(res)
        }
        _ => Ok(finish(
            &shared,
            &mut guard,
            &head,
            &params,
            fault,
            status,
            made,
            &[],
            now,
        )),
    }
}

/// Saves the result under the request's key (if any) and answers with it.
#[allow(clippy::too_many_arguments)]
fn finish(
    shared: &Shared,
    guard: &mut KeyGuard,
    head: &Head,
    params: &Params,
    fault: Option<Fault>,
    status: u16,
    body: Bytes,
    headers: &[(&'static str, &'static str)],
    ready_at: Instant,
) -> Response<Full<Bytes>> {
    if let Some(key) = guard.key.take() {
        let saved = Saved {
            status,
            body: body.clone(),
            headers: headers.to_vec(),
            request_id: head.request_id.clone(),
        };
        shared.lock().store.save(&key, saved, ready_at);
    }
    answer(shared, head, params, fault, status, body, headers)
}

fn replay(shared: &Shared, head: &Head, params: &Params, saved: Saved) -> Response<Full<Bytes>> {
    let mut res = answer(
        shared,
        head,
        params,
        None,
        saved.status,
        saved.body,
        &saved.headers,
    );
    // Other requests may have been logged since: find this one (near the end).
    if let Some(logged) = shared
        .lock()
        .log
        .requests
        .iter_mut()
        .rev()
        .find(|r| r.request_id == head.request_id)
    {
        logged.replayed = true;
    }
    let h = res.headers_mut();
    h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(&saved.request_id) {
        h.insert(ORIGINAL_REQUEST, v);
    }
    res
}

/// Logs the request and builds its response, with a `Request-Id`.
fn answer(
    shared: &Shared,
    head: &Head,
    params: &Params,
    fault: Option<Fault>,
    status: u16,
    body: Bytes,
    headers: &[(&'static str, &'static str)],
) -> Response<Full<Bytes>> {
    shared.lock().log.requests.push(LoggedRequest {
        request_id: head.request_id.clone(),
        method: head.method.clone(),
        path: head.path.clone(),
        idempotency_key: head.key.clone(),
        params: params.clone(),
        answer: Answer::Status(status),
        fault,
        replayed: false,
    });
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&head.request_id) {
        h.insert(REQUEST_ID, v);
    }
    for (name, value) in headers {
        h.insert(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    res
}

fn validate(params: &Params) -> Result<(u64, String), (&'static str, String)> {
    let amount = match params.get("amount") {
        None => return Err(("amount", "Missing required param: amount.".to_owned())),
        Some(a) => match a.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err((
                    "amount",
                    format!("Invalid positive integer: amount ({a:?})."),
                ))
            }
        },
    };
    let currency = match params.get("currency") {
        None => return Err(("currency", "Missing required param: currency.".to_owned())),
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            c.to_ascii_lowercase()
        }
        Some(c) => return Err(("currency", format!("Invalid currency: {c}."))),
    };
    Ok((amount, currency))
}

/// The `source` that is declined.
const DECLINED_CARD: &str = "tok_chargeDeclined";

/// The 402 a declined card gets, saved under its key as any result.
const DECLINED_BODY: &[u8] = br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined.","param":"source"}}"#;

fn charge_json(charge: &Charge) -> serde_json::Value {
    serde_json::json!({
        "id": charge.id,
        "object": "charge",
        "amount": charge.amount,
        "currency": charge.currency,
        "livemode": false,
        "paid": true,
        "status": "succeeded",
    })
}

/// A declined charge, as Stripe keeps it: `status: failed`, with why.
fn failed_json(charge: &Charge) -> serde_json::Value {
    serde_json::json!({
        "id": charge.id,
        "object": "charge",
        "amount": charge.amount,
        "currency": charge.currency,
        "livemode": false,
        "paid": false,
        "status": "failed",
        "failure_code": "card_declined",
        "failure_message": "Your card was declined.",
        "outcome": { "type": "issuer_declined", "reason": "generic_decline" },
    })
}

/// A Stripe error body: `{"error":{"type","code","message","param"}}`.
fn error_body(error_type: &str, code: Option<&str>, message: &str, param: Option<&str>) -> Bytes {
    let mut error = serde_json::json!({ "type": error_type, "message": message });
    if let Some(code) = code {
        error["code"] = code.into();
    }
    if let Some(param) = param {
        error["param"] = param.into();
    }
    Bytes::from(serde_json::json!({ "error": error }).to_string())
}

/// About 30 years on: "never", as tokio itself counts it.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
