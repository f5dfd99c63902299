//! The fleet retry budget and the Redis pending store against a real `redis-server` on
//! loopback (started per test; a machine without one fails here, never skips): shared by
//! two processes' worth of clients, and when Redis is not running, killed, slow, restarted.
//! Real time throughout: the server's sockets do not follow tokio's paused clock.
#![cfg(feature = "redis")]

mod redis_server;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use redis_server::RedisServer;
use resilient_http::backoff::{ExponentialBackoff, Jitter};
use resilient_http::budget::RetryBudget;
use resilient_http::fleet::FleetBudget;
use resilient_http::{ResilientLayer, ResponseBody, RetryLayer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};

// ---- a log of the crate's events, read by each test for its own key ----

/// One event of target `resilient_http::fleet`: its level, message (followed by its other
/// fields, as ` name=value`) and `key` field.
#[derive(Clone, Debug)]
struct Seen {
    level: tracing::Level,
    message: String,
    key: String,
}

/// Every event of the fleet target, from every thread (the store's writer thread too).
/// Tests run in parallel, so each reads only the events of its own Redis key. Each test
/// calls it first: an event logged before the subscriber is set is lost.
fn events() -> &'static Mutex<Vec<Seen>> {
    static EVENTS: OnceLock<&'static Mutex<Vec<Seen>>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let events: &'static Mutex<Vec<Seen>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        // Fails only if a subscriber is set already: none other is, in this binary.
        let _ = tracing::subscriber::set_global_default(Log(events));
        events
    })
}

/// The events about `key` at `level`.
fn seen(key: &str, level: tracing::Level) -> Vec<String> {
    events()
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.key == key && e.level == level)
        .map(|e| e.message.clone())
        .collect()
}

struct Log(&'static Mutex<Vec<Seen>>);

#[derive(Default)]
struct Fields {
    message: String,
    key: String,
    others: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "key" => self.key = format!("{value:?}"),
            name => self.others.push_str(&format!(" {name}={value:?}")),
        }
    }
}

impl tracing::Subscriber for Log {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.target() == "resilient_http::fleet"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(Seen {
            level: *event.metadata().level(),
            message: fields.message + &fields.others,
            key: fields.key,
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---- helpers ----

/// Waits (real time) until `done` holds, for at most 5 s; panics with `what` if it never
/// does.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Keeps Redis busy for `busy` with a script that spins on the server's clock, so that
/// every other client's command waits (a slow Redis). Returns once the script runs; the
/// connection it returns ends with the script's reply.
fn make_slow(server: &RedisServer, busy: Duration) -> std::net::TcpStream {
    use std::io::Write;
    const SPIN: &str = "local function now() local t = redis.call('TIME') \
        return t[1] * 1000000 + t[2] end \
        local stop = now() + tonumber(ARGV[1]) while now() < stop do end return 1";
    let micros = busy.as_micros().to_string();
    let mut command = String::from("*4\r\n");
    for arg in ["EVAL", SPIN, "0", &micros] {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port()))
        .expect("redis-server takes a connection");
    stream
        .write_all(command.as_bytes())
        .expect("redis-server takes the script");
    // Returns once the server spins: a PING on another connection goes unanswered.
    let start = std::time::Instant::now();
    loop {
        let mut probe = std::net::TcpStream::connect(("127.0.0.1", server.port()))
            .expect("redis-server takes a connection");
        probe
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("a read timeout");
        probe
            .write_all(b"PING\r\n")
            .expect("redis-server takes a PING");
        let mut reply = [0; 16];
        if std::io::Read::read(&mut probe, &mut reply).is_err() {
            return stream;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "redis-server never ran the script"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

const API_ERROR: &[u8] = br#"{"error":{"type":"api_error","message":"try again"}}"#;

type Stack = BoxCloneService<
    Request<Full<Bytes>>,
    Response<ResponseBody<Full<Bytes>>>,
    resilient_http::Error,
>;

/// A client whose server answers every attempt with Stripe's retryable `api_error`: three
/// attempts a call, a 1 ms backoff, and `budget`. Counts its calls and the requests sent.
struct Client {
    stack: Stack,
    requests: Arc<AtomicUsize>,
    calls: usize,
}

impl Client {
    fn new(budget: RetryBudget) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let server = service_fn(move |_req: Request<Full<Bytes>>| {
            count.fetch_add(1, Ordering::SeqCst);
            async {
                // A round trip's worth of time, in which the budget's task may run.
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(500)
                        .body(Full::new(Bytes::from_static(API_ERROR)))
                        .expect("a valid response"),
                )
            }
        });
        let one_ms = Duration::from_millis(1);
        let retry = RetryLayer::builder()
            .backoff(ExponentialBackoff::new(one_ms, one_ms).jitter(Jitter::None))
            .max_attempts(3)
            .retry_budget(budget)
            .build()
            .expect("valid settings");
        Client {
            stack: BoxCloneService::new(ResilientLayer::new(retry).layer(server)),
            requests,
            calls: 0,
        }
    }

    /// One call, which fails.
    async fn call(&mut self) {
        let answer = self.stack.clone().oneshot(charge()).await;
        assert!(answer.is_err(), "every call fails");
        self.calls += 1;
    }

    /// The retries sent so far: the requests beyond each call's first.
    fn retries(&self) -> usize {
        self.requests.load(Ordering::SeqCst) - self.calls
    }
}

fn charge() -> Request<Full<Bytes>> {
    Request::post("http://stripe.test/v1/charges")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))
        .expect("a valid request")
}

// ---- the fleet retry budget ----

/// A fleet budget over `key` at `url`: no retries earned by calls (ratio 0, unless
/// given), leases of one token, and a sync every 5 ms.
fn fleet(url: &str, key: &str) -> FleetBudget {
    FleetBudget::new(url, key)
        .ratio(0.0)
        .lease(1)
        .sync_interval(Duration::from_millis(5))
        // Generous: a test that asserts no outage must not see one on a loaded machine.
        .op_timeout(Duration::from_millis(300))
}

#[tokio::test]
async fn two_budgets_over_one_key_keep_retries_within_ratio_and_reserve_across_both() {
    events(); // Listening before anything is logged.
    let server = RedisServer::start();
    let key = "budget:two-processes";
    const CALLS: usize = 150;
    const RATIO: f64 = 0.1;
    const RESERVE: u32 = 5;
    let budget = || {
        fleet(&server.url(), key)
            .ratio(RATIO)
            .reserve(RESERVE)
            .lease(2)
            .build()
            .expect("a valid budget")
    };
    // Two processes' worth: budgets built apart, each with its own connection.
    let (a, b) = (budget(), budget());
    eventually("both budgets hold a lease", || {
        a.available() == 2.0 && b.available() == 2.0
    })
    .await;
    let (mut a, mut b) = (Client::new(a), Client::new(b));
    for _ in 0..CALLS {
        a.call().await;
        b.call().await;
    }
    let retries = a.retries() + b.retries();
    let calls = a.calls + b.calls;
    let bound = RATIO * calls as f64 + f64::from(RESERVE);
    // Each on its own bucket, the two would send up to 2 * (5 + 15) = 40 retries.
    let apart = 2.0 * (RATIO * CALLS as f64 + f64::from(RESERVE));
    println!(
        "fleet budget: calls={calls} retries={retries} (a={} b={}) bound={bound} each-on-its-own={apart}",
        a.retries(),
        b.retries()
    );
    assert!(
        retries as f64 <= bound,
        "{retries} retries for {calls} calls: over {RATIO} of the calls plus {RESERVE}"
    );
    assert!(
        a.retries() > 0 && b.retries() > 0,
        "both drew on the shared bucket"
    );
    // Well above the reserve: the calls' deposits reach the shared bucket and fund
    // retries (some are refused while the tokens sit in the other's lease, or are on
    // their way).
    assert!(
        retries as f64 >= bound - 15.0,
        "{retries} retries: the deposits of both reach the shared bucket"
    );
    assert!(seen(key, tracing::Level::WARN).is_empty());
}

#[tokio::test]
async fn a_budget_whose_redis_is_not_running_at_start_uses_its_own_bucket_and_warns_once() {
    events(); // Listening before anything is logged.
    let key = "budget:not-running";
    let budget = fleet(&RedisServer::unused_url(), key)
        .reserve(3)
        .build()
        .expect("a budget is built without Redis");
    // A few syncs, each of which tries Redis again.
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(budget.available(), 3.0, "the local bucket, full");

    let mut client = Client::new(budget);
    for _ in 0..5 {
        client.call().await;
    }
    assert_eq!(
        client.retries(),
        3,
        "the local reserve, as a budget of its own"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let warnings = seen(key, tracing::Level::WARN);
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the outage: {warnings:?}"
    );
    assert!(warnings[0].contains("own budget"), "{warnings:?}");
}

#[tokio::test]
async fn a_budget_whose_redis_is_killed_goes_on_alone_then_uses_redis_again_once_it_is_back() {
    events(); // Listening before anything is logged.
    let mut server = RedisServer::start();
    let key = "budget:killed";
    let budget = fleet(&server.url(), key)
        .reserve(2)
        .build()
        .expect("a valid budget");
    eventually("the lease is held", || budget.available() == 1.0).await;
    let mut client = Client::new(budget.clone());

    // Redis decides: its reserve of 2, no more.
    for _ in 0..6 {
        client.call().await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(client.retries(), 2, "the shared reserve");
    assert_eq!(
        server.command(&["GET", &format!("resilient_http:budget:{key}")]),
        "0",
        "the shared bucket is empty"
    );

    // Killed: the process's own bucket (full: the shared one decided so far) takes over.
    server.kill();
    for _ in 0..6 {
        client.call().await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(client.retries(), 2 + 2, "then the local reserve");
    assert_eq!(budget.available(), 0.0);
    assert_eq!(seen(key, tracing::Level::WARN).len(), 1);

    // Back (empty, so its bucket is full again): with the local bucket spent, a retry now
    // can only be Redis's.
    server.restart();
    eventually("the lease is held again", || budget.available() == 1.0).await;
    for _ in 0..6 {
        client.call().await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(client.retries(), 2 + 2 + 2, "the shared reserve again");
    assert_eq!(
        server.command(&["GET", &format!("resilient_http:budget:{key}")]),
        "0"
    );
    assert_eq!(
        seen(key, tracing::Level::WARN).len(),
        1,
        "one warning for the one outage"
    );
    assert_eq!(
        seen(key, tracing::Level::INFO).len(),
        1,
        "and one note that it ended"
    );
}

#[tokio::test]
async fn a_slow_redis_never_holds_up_a_retry_the_local_bucket_decides_meanwhile() {
    events(); // Listening before anything is logged.
    let server = RedisServer::start();
    let key = "budget:slow";
    let budget = fleet(&server.url(), key)
        .reserve(2)
        .op_timeout(Duration::from_millis(150))
        .build()
        .expect("a valid budget");
    eventually("the lease is held", || budget.available() == 1.0).await;
    let mut client = Client::new(budget.clone());

    // Slow for far longer than the operation timeout, and than the calls below.
    let slow = make_slow(&server, Duration::from_millis(2000));
    let start = Instant::now();
    for _ in 0..14 {
        client.call().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "six calls and their sleeps took {took:?}: a call waited on Redis"
    );
    assert_eq!(
        client.retries(),
        1 + 2,
        "the leased token, then the local reserve"
    );
    assert_eq!(seen(key, tracing::Level::WARN).len(), 1);
    drop(slow);
}

// ---- the pending store ----

#[cfg(feature = "webhooks")]
mod pending {
    use super::*;
    use http::HeaderValue;
    use resilient_http::fleet::RedisStore;
    use resilient_http::headers::IDEMPOTENCY_KEY;
    use resilient_http::stripe::reconcile::{Pending, PendingStore, Reconciler, StoreOp};
    use resilient_http::stripe::webhook::Event;
    use std::time::SystemTime;

    /// A store over the hash `hash` at `url`, quick to time out and to retry.
    fn open_store(url: &str, hash: &str) -> RedisStore {
        store_with(
            url,
            hash,
            Duration::from_millis(50),
            Duration::from_millis(10),
        )
    }

    /// A store over the hash `hash` at `url`, with these time limit and retry interval.
    fn store_with(url: &str, hash: &str, op_timeout: Duration, retry: Duration) -> RedisStore {
        RedisStore::builder(url)
            .key(hash)
            .op_timeout(op_timeout)
            .retry_interval(retry)
            .open()
            .expect("a valid URL")
    }

    /// A charge with key `key`, recorded now.
    fn pending(key: &str) -> Pending {
        let uri = "/v1/charges".parse().expect("a valid URI");
        Pending::new(key, http::Method::POST, uri, SystemTime::now())
    }

    /// Runs one charge with key `key`, with credentials, through a stack whose server
    /// answers every attempt with an `api_error` and a request id: the call ends
    /// indeterminate, and `reconciler` records it.
    async fn record(reconciler: &Reconciler, key: &str) {
        let attempts = Arc::new(AtomicUsize::new(0));
        let server = service_fn(move |_req: Request<Full<Bytes>>| {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(500)
                        .header("request-id", format!("req_{n}"))
                        .body(Full::new(Bytes::from_static(API_ERROR)))
                        .expect("a valid response"),
                )
            }
        });
        let one_ms = Duration::from_millis(1);
        let retry = RetryLayer::builder()
            .backoff(ExponentialBackoff::new(one_ms, one_ms).jitter(Jitter::None))
            .on_indeterminate(reconciler.clone())
            .build()
            .expect("valid settings");
        let mut charge = charge();
        charge.headers_mut().insert(
            "authorization",
            HeaderValue::from_static("Bearer sk_test_secret"),
        );
        charge.headers_mut().insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_str(key).expect("a valid key"),
        );
        let err = ResilientLayer::new(retry)
            .layer(server)
            .oneshot(charge)
            .await
            .expect_err("every attempt fails");
        assert!(err.is_indeterminate(), "{err}");
    }

    /// How many records the hash holds, as Redis says.
    fn hlen(server: &RedisServer, hash: &str) -> u64 {
        let reply = server.command(&["HLEN", hash]);
        // An integer reply, with or without its RESP `:` marker.
        let count = reply.trim().trim_start_matches(':');
        count
            .parse()
            .unwrap_or_else(|_| panic!("HLEN answered {reply:?}"))
    }

    fn keys(reconciler: &Reconciler) -> Vec<String> {
        let pending = reconciler.pending().expect("the store lists");
        pending.into_iter().map(|p| p.idempotency_key).collect()
    }

    fn charge_succeeded(key: &str) -> Event {
        let body = serde_json::json!({
            "id": "evt_1", "object": "event", "type": "charge.succeeded",
            "data": {"object": {"id": "ch_1", "object": "charge", "status": "succeeded"}},
            "request": {"id": "req_3", "idempotency_key": key},
        });
        Event::from_slice(body.to_string().as_bytes()).expect("a valid event")
    }

    #[tokio::test]
    async fn a_call_recorded_by_one_process_is_settled_by_the_webhook_of_another() {
        events(); // Listening before anything is logged.
        let server = RedisServer::start();
        let hash = "pending:two-processes";
        let a = Reconciler::with_store(open_store(&server.url(), hash));
        let b = Reconciler::with_store(open_store(&server.url(), hash));

        record(&a, "key_1").await;
        assert_eq!(keys(&a), ["key_1"]);
        eventually("the other process sees it", || keys(&b) == ["key_1"]).await;
        let listed = &b.pending().unwrap()[0];
        assert_eq!(listed.request_ids, ["req_1", "req_2", "req_3"]);
        assert_eq!(listed.body, "amount=2000&currency=usd");
        assert_eq!(
            listed
                .headers
                .get(IDEMPOTENCY_KEY)
                .map(HeaderValue::as_bytes),
            Some(&b"key_1"[..])
        );
        assert!(listed.headers.get("authorization").is_none());
        let raw = server.command(&["HGET", hash, "key_1"]);
        assert!(!raw.contains("sk_test"), "no credentials in Redis: {raw}");

        let settled = b.settle_with_event(&charge_succeeded("key_1"));
        assert!(settled.is_some_and(|s| s.is_succeeded()));
        assert!(keys(&b).is_empty());
        assert!(
            keys(&a).is_empty(),
            "gone for the process that recorded it too"
        );
        assert_eq!(hlen(&server, hash), 0);
        assert!(seen(hash, tracing::Level::WARN).is_empty());
    }

    #[tokio::test]
    async fn a_record_made_while_redis_is_down_is_kept_listed_and_written_once_it_is_back() {
        events(); // Listening before anything is logged.
        let mut server = RedisServer::start();
        let hash = "pending:killed";
        let store = open_store(&server.url(), hash);
        let reconciler = Reconciler::with_store(store.clone());
        record(&reconciler, "key_1").await;
        eventually("the writer writes the record", || hlen(&server, hash) == 1).await;

        server.kill();
        record(&reconciler, "key_2").await;
        record(&reconciler, "key_3").await;
        let mut listed = keys(&reconciler);
        listed.sort();
        assert_eq!(
            listed,
            ["key_2", "key_3"],
            "what this process holds is listed while Redis is down"
        );
        assert_eq!(store.unwritten(), 2);
        assert_eq!(
            seen(hash, tracing::Level::WARN).len(),
            1,
            "one warning for the outage"
        );

        // Back, empty (no persistence): the writer thread writes what waited, unasked.
        server.restart();
        eventually("the kept records are written", || hlen(&server, hash) == 2).await;
        eventually("and taken off the queue", || store.unwritten() == 0).await;
        let other = Reconciler::with_store(open_store(&server.url(), hash));
        let mut listed = keys(&other);
        listed.sort();
        assert_eq!(listed, ["key_2", "key_3"], "and another process sees them");
        assert_eq!(
            other.pending().unwrap()[0].request_ids,
            ["req_1", "req_2", "req_3"]
        );
        assert_eq!(seen(hash, tracing::Level::WARN).len(), 1);
        assert_eq!(
            seen(hash, tracing::Level::INFO).len(),
            1,
            "a note that it ended"
        );
    }

    #[tokio::test]
    async fn a_store_that_cannot_reach_redis_at_start_keeps_every_change_for_later() {
        events(); // Listening before anything is logged.
        let hash = "pending:not-running";
        let store = open_store(&RedisServer::unused_url(), hash);
        let call = pending("key_1");
        store.insert(&call).expect("kept in the process");
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&call));
        assert_eq!(store.get("key_1").unwrap(), Some(call.clone()));
        let unknown = store.get("key_2").expect_err("Redis alone could say");
        assert_eq!(unknown.op(), StoreOp::Get);
        assert!(
            unknown.to_string().contains("look up a pending call"),
            "{unknown}"
        );
        assert_eq!(store.remove("key_1").unwrap(), Some(call));
        assert!(store.list().unwrap().is_empty());
        let unknown = store.remove("key_2").expect_err("Redis alone could say");
        assert_eq!(unknown.op(), StoreOp::Remove);
        assert!(
            std::error::Error::source(&unknown)
                .is_some_and(|e| e.to_string().contains("kept and made once it does")),
            "{unknown:?}"
        );
        assert_eq!(store.unwritten(), 2, "two removals wait for Redis");
        assert_eq!(seen(hash, tracing::Level::WARN).len(), 1);
    }

    #[tokio::test]
    async fn a_removal_made_while_redis_is_slow_is_made_once_it_answers() {
        events(); // Listening before anything is logged.
        let server = RedisServer::start();
        let hash = "pending:slow";
        let a = open_store(&server.url(), hash);
        let call = pending("key_1");
        a.insert(&call).unwrap();
        a.flush().expect("Redis takes it");
        assert_eq!(a.unwritten(), 0);
        assert_eq!(hlen(&server, hash), 1);

        // Another process settles it while Redis is busy: the removal times out, and waits.
        let b = open_store(&server.url(), hash);
        let slow = make_slow(&server, Duration::from_millis(400));
        let start = Instant::now();
        assert!(b.remove("key_1").is_err(), "Redis did not answer in time");
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "the timeout held: {:?}",
            start.elapsed()
        );
        assert_eq!(b.unwritten(), 1);
        assert!(b.list().unwrap().is_empty(), "and is not listed by it");

        drop(slow);
        eventually("the removal is made", || hlen(&server, hash) == 0).await;
        eventually("and taken off the queue", || b.unwritten() == 0).await;
        assert!(a.list().unwrap().is_empty());
        assert_eq!(seen(hash, tracing::Level::WARN).len(), 1);
    }

    #[tokio::test]
    async fn a_call_that_ends_indeterminate_while_redis_is_slow_does_not_wait_for_it() {
        events(); // Listening before anything is logged.
        let server = RedisServer::start();
        let hash = "pending:slow-call";
        // A time limit far above how long Redis stays busy: a store that wrote on the
        // call's task would hold the call for the whole second.
        let store = store_with(
            &server.url(),
            hash,
            Duration::from_secs(3),
            Duration::from_millis(10),
        );
        let reconciler = Reconciler::with_store(store.clone());

        let _slow = make_slow(&server, Duration::from_millis(1000));
        let start = Instant::now();
        record(&reconciler, "key_1").await;
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "the call waited on Redis: {took:?}"
        );
        assert_eq!(store.unwritten(), 1, "queued while Redis is busy");

        eventually("written once Redis is free", || hlen(&server, hash) == 1).await;
        eventually("and taken off the queue", || store.unwritten() == 0).await;
        assert!(
            seen(hash, tracing::Level::WARN).is_empty(),
            "slow is not down"
        );
    }

    #[tokio::test]
    async fn a_record_made_while_a_removal_waits_on_redis_is_kept() {
        events(); // Listening before anything is logged.
        let server = RedisServer::start();
        let hash = "pending:remove-then-record";
        let store = store_with(
            &server.url(),
            hash,
            Duration::from_millis(300),
            Duration::from_millis(10),
        );
        let mut call = pending("key_1");
        store.insert(&call).unwrap();
        store.flush().expect("Redis takes it");

        // A removal that waits on a busy Redis, and runs out of time...
        let _slow = make_slow(&server, Duration::from_millis(600));
        let remover = {
            let store = store.clone();
            std::thread::spawn(move || store.remove("key_1"))
        };
        // (`Debug` leaves the connection's state out while an operation holds it.)
        eventually("the removal waits on Redis", || {
            !format!("{store:?}").contains("redis_up")
        })
        .await;
        // ...while the call is recorded again (a replay that ended indeterminate).
        call.request_ids = vec!["req_2".into()];
        store.insert(&call).unwrap();
        let removed = remover.join().expect("no panic");
        assert!(removed.is_err(), "Redis was busy: {removed:?}");

        eventually("Redis took the queue", || store.unwritten() == 0).await;
        assert_eq!(
            store.list().unwrap(),
            [call],
            "the later record stands, in Redis too"
        );
        assert_eq!(hlen(&server, hash), 1);
    }

    #[tokio::test]
    async fn the_last_clone_of_a_store_writes_what_is_queued_as_it_drops() {
        events(); // Listening before anything is logged.
        let mut server = RedisServer::start();
        let hash = "pending:drop-writes";
        // The writer would not try Redis again for a minute after a failure; the drop's
        // one attempt has a second.
        let store = store_with(
            &server.url(),
            hash,
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        server.kill();
        let call = pending("key_1");
        store.insert(&call).unwrap();
        eventually("the writer finds Redis down", || {
            !seen(hash, tracing::Level::WARN).is_empty()
        })
        .await;
        server.restart();
        assert_eq!(store.unwritten(), 1, "the writer waits out its interval");

        let clone = store.clone();
        drop(store);
        assert_eq!(hlen(&server, hash), 0, "a clone still holds it");
        drop(clone);
        assert_eq!(hlen(&server, hash), 1, "the last drop wrote it");
        assert!(seen(hash, tracing::Level::ERROR).is_empty());
    }

    #[tokio::test]
    async fn a_store_dropped_with_records_redis_never_took_names_them_in_an_error() {
        events(); // Listening before anything is logged.
        let hash = "pending:dropped-lost";
        let store = open_store(&RedisServer::unused_url(), hash);
        for key in ["key_2", "key_1"] {
            let call = pending(key);
            store.insert(&call).unwrap();
        }
        assert!(store.flush().is_err(), "nothing listens there");
        assert!(seen(hash, tracing::Level::ERROR).is_empty());

        drop(store);
        let errors = seen(hash, tracing::Level::ERROR);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("lost=2") && errors[0].contains(r#"["key_1", "key_2"]"#),
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn records_outlive_the_process_that_made_them() {
        let server = RedisServer::start();
        let hash = "pending:restart";
        let first = Reconciler::with_store(open_store(&server.url(), hash));
        record(&first, "key_1").await;
        let before = first.pending().unwrap();
        drop(first);

        // A new process, a new store over the same Redis: the same record, whole.
        let after = Reconciler::with_store(open_store(&server.url(), hash));
        assert_eq!(after.pending().unwrap(), before);
        assert_eq!(before[0].request_ids, ["req_1", "req_2", "req_3"]);
    }
}
