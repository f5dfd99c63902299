//! End to end on loopback: a hyper HTTP/1 server on 127.0.0.1 that answers every request
//! with 200 and a small JSON body, and eight clients side by side.
//!
//! `cargo bench --bench loopback --features reqwest`.
//!
//! | variant | client |
//! |---|---|
//! | `hyper_bare` | hyper-util's legacy `Client` |
//! | `hyper_timeout` | the same, each call under `tokio::time::timeout(80 s)`: the cost of arming one timer per call, as the retry layer's deadline does |
//! | `hyper_keyed` | the same under our `SetIdempotencyKeyLayer::random()` alone: what putting a key on every `POST` costs end to end (making it, and both sides writing and reading one more header), the least any stack that keeps the contract pays |
//! | `hyper_keyed_timeout` | our `SetIdempotencyKeyLayer::random()` with each call under `timeout(80 s)`: a key on every `POST` and a whole-call deadline, the two things every call must pay for, and nothing else (no copy to replay, no retry loop) |
//! | `hyper_keyed_retry` | the same under our `SetIdempotencyKeyLayer::random()` over `tower::retry` with a policy that clones the request, each call under `timeout(80 s)`: the least a stack that keys, keeps a copy to replay and has a deadline does |
//! | `hyper_stack` | hyper-util's client under `ResilientLayer::stripe()` |
//! | `reqwest_bare` | `reqwest::Client` |
//! | `reqwest_stack` | the same as `ReqwestService` under `ResilientLayer::stripe()` |
//! | `reqwest_retry` | `reqwest_middleware` + `reqwest_retry::RetryTransientMiddleware` (the main Rust peer) |
//!
//! Every call is one `POST /v1/charges` with a small form body, and its response body is
//! read to the end (so the connection goes back to the pool).
//!
//! The server runs on its own thread and single-threaded runtime, the clients on another
//! (this machine has two cores: one each).
//!
//! 1. **Allocations** (printed first): heap allocations (reallocations included) per call
//!    made on the client's thread (the client, its connection task and the layers; not
//!    the server), over `LOOPBACK_ALLOC_CALLS` (default 2000) sequential calls after a
//!    warm-up. One line per variant: `loopback: allocations variant=<name> per_call=<>`.
//! 2. **Throughput and latency, interleaved**: for each concurrency level
//!    in `LOOPBACK_CONCURRENCY` (default `1,32`), that many tasks send calls back to back
//!    for `LOOPBACK_ROUND_MS` (default 500) ms; `LOOPBACK_ROUNDS` (default 11) rounds per
//!    variant, the variants interleaved round by round (in a rotating order) so that drift
//!    in the machine's load hits them all alike. One line per variant:
//!    `loopback: concurrency=<n> variant=<name> rps=<median over rounds> p50_us=<>
//!    p99_us=<> ratio_to_bare=<>`, where the latencies are of every call of the median
//!    round, and `ratio_to_bare` is the median over rounds of the variant's calls per
//!    second divided by those of the bare client of the same library in the same round.
//!    Each line goes on with `client_cpu_us=<> server_cpu_us=<> cpu_ratio_to_bare=<>`:
//!    the CPU time (user and system) per call of the client's thread and of the rest of
//!    the process (the server), medians over rounds, and the median over rounds of the
//!    bare client's CPU time per call on the client's thread divided by the variant's.
//!    CPU time leaves out what the machine gave to other work, and counts the kernel's
//!    share of a call, which callgrind's instructions do not. With 32 calls in flight the
//!    client's thread is the busier of the two, and the CPU ratio is the share of bare
//!    throughput the variant keeps once that thread is saturated.
//! 3. **Latency** (criterion, group `loopback`): one call at a time, one per iteration,
//!    variant after variant (so more exposed to drift than part 2).
//!    `LOOPBACK_SKIP_CRITERION=1` skips it.
//!
//! `LOOPBACK_FRESH_PATHS=1` sends every call to a path of its own (`/v1/charges/<n>`).
//! `LOOPBACK_VARIANTS=<name>,<name>` measures only those variants (and their bare client).
//! For profilers, `LOOPBACK_PROFILE=<variant>` makes `LOOPBACK_PROFILE_CALLS` (default
//! 2000) calls of that variant one at a time (or `LOOPBACK_PROFILE_CONCURRENCY` at a
//! time), and exits.

mod common;

use bytes::Bytes;
use common::CloneRequest;
use criterion::Criterion;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_http::idempotency::SetIdempotencyKeyLayer;
use resilient_http::reqwest::ReqwestService;
use resilient_http::ResilientLayer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

const BODY: &[u8] = b"amount=2000&currency=usd";

/// Counts allocations made on threads that ask for it (the client's), so that the
/// server's thread, which runs alongside, does not blur the count.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
}

fn count_this_thread(on: bool) {
    COUNT_HERE.with(|c| c.set(on));
}

fn note_alloc() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    if COUNT_HERE.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` unchanged; counting has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts the server on its own thread; returns its address.
fn serve() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let addr = listener.local_addr().expect("a local address");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        // Read the request body, as a real server would.
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"id\":\"ch_1\",\"object\":\"charge\"}",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime")
}

/// The three clients the variants are built on: hyper-util's, reqwest's, and reqwest's under
/// reqwest-middleware with reqwest-retry.
struct Clients {
    url: String,
    hyper: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    reqwest: reqwest::Client,
    middleware: reqwest_middleware::ClientWithMiddleware,
}

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("authorization", "Bearer sk_test_123")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("a valid request")
}

impl Clients {
    fn new(addr: SocketAddr) -> Self {
        let hyper = Client::builder(TokioExecutor::new()).build_http();
        let reqwest = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a reqwest client");
        let policy =
            reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(2);
        let middleware = reqwest_middleware::ClientBuilder::new(reqwest.clone())
            .with(reqwest_retry::RetryTransientMiddleware::new_with_policy(
                policy,
            ))
            .build();
        Clients {
            url: format!("http://{addr}/v1/charges"),
            hyper,
            reqwest,
            middleware,
        }
    }
}

/// One call through a tower service of `http::Request`s (hyper-util's client, or our stack
/// over either client): the whole response body.
async fn tower_call<S, B>(svc: S, url: Arc<str>) -> Bytes
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let res = svc.oneshot(post(&target(&url))).await.expect("a response");
    assert!(res.status().is_success());
    res.into_body().collect().await.expect("a body").to_bytes()
}

/// `LOOPBACK_FRESH_PATHS=1`: every call goes to a path of its own (`/v1/charges/<n>`), as
/// calls on objects do, so that no client can reuse a URL it parsed before.
static FRESH_PATHS: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("LOOPBACK_FRESH_PATHS").is_ok_and(|v| v == "1"));

/// The URL of the next call: `url`, or a fresh path under it.
fn target(url: &str) -> std::borrow::Cow<'_, str> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if *FRESH_PATHS {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::borrow::Cow::Owned(format!("{url}/{n}"))
    } else {
        std::borrow::Cow::Borrowed(url)
    }
}

/// `call` under `tokio::time::timeout(80 s)`: one armed timer, as the retry layer's
/// whole-call deadline arms.
async fn under_deadline<F: Future>(call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(80), call)
        .await
        .expect("in time")
}

/// The rest of one reqwest (or reqwest-middleware) call, once sent: the whole response
/// body.
async fn read_reqwest<E: std::fmt::Debug>(
    sent: impl Future<Output = Result<reqwest::Response, E>>,
) -> Bytes {
    let res = sent.await.expect("a response");
    assert!(res.status().is_success());
    res.bytes().await.expect("a body")
}

/// The call's request on a reqwest (or reqwest-middleware) client: the same head and body
/// as [`post`] (a macro: the two clients' builders are different types).
macro_rules! reqwest_post {
    ($client:expr, $url:expr) => {
        $client
            .post(&*target($url))
            .header("authorization", "Bearer sk_test_123")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Bytes::from_static(BODY))
    };
}

/// Runs `$body` with `$call` bound to a cloneable async closure making one call of the
/// variant `$name` (a macro, since every variant's call has a future type of its own).
macro_rules! with_variant {
    ($clients:expr, $name:expr, |$call:ident| $body:expr) => {{
        let c: &Clients = $clients;
        let url: Arc<str> = c.url.as_str().into();
        match $name {
            "hyper_bare" => {
                let svc = c.hyper.clone();
                let $call = move || tower_call(svc.clone(), url.clone());
                $body
            }
            "hyper_timeout" => {
                let svc = c.hyper.clone();
                let $call = move || under_deadline(tower_call(svc.clone(), url.clone()));
                $body
            }
            "hyper_keyed" => {
                let svc = SetIdempotencyKeyLayer::random().layer(c.hyper.clone());
                let $call = move || tower_call(svc.clone(), url.clone());
                $body
            }
            "hyper_keyed_timeout" => {
                let svc = SetIdempotencyKeyLayer::random().layer(c.hyper.clone());
                let $call = move || under_deadline(tower_call(svc.clone(), url.clone()));
                $body
            }
            "hyper_keyed_retry" => {
                let svc = SetIdempotencyKeyLayer::random()
                    .layer(tower::retry::RetryLayer::new(CloneRequest).layer(c.hyper.clone()));
                let $call = move || under_deadline(tower_call(svc.clone(), url.clone()));
                $body
            }
            "hyper_stack" => {
                let svc = ResilientLayer::stripe().layer(c.hyper.clone());
                let $call = move || tower_call(svc.clone(), url.clone());
                $body
            }
            "reqwest_bare" => {
                let client = c.reqwest.clone();
                let $call = move || read_reqwest(reqwest_post!(client, &*url).send());
                $body
            }
            "reqwest_stack" => {
                let svc = ResilientLayer::stripe().layer(ReqwestService::new(c.reqwest.clone()));
                let $call = move || tower_call(svc.clone(), url.clone());
                $body
            }
            "reqwest_retry" => {
                let client = c.middleware.clone();
                let $call = move || read_reqwest(reqwest_post!(client, &*url).send());
                $body
            }
            other => unreachable!("no variant {other}"),
        }
    }};
}

const VARIANTS: [&str; 9] = [
    "hyper_bare",
    "hyper_timeout",
    "hyper_keyed",
    "hyper_keyed_timeout",
    "hyper_keyed_retry",
    "hyper_stack",
    "reqwest_bare",
    "reqwest_stack",
    "reqwest_retry",
];

/// The variants to measure: all, or those `LOOPBACK_VARIANTS` names (comma-separated; a
/// variant's bare client is added when missing, for its ratio).
fn selected() -> Vec<&'static str> {
    let Ok(wanted) = std::env::var("LOOPBACK_VARIANTS") else {
        return VARIANTS.to_vec();
    };
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
    for name in &wanted {
        assert!(VARIANTS.contains(name), "no variant {name}");
    }
    let bare_wanted = |library: &str| wanted.iter().any(|w| w.starts_with(library));
    VARIANTS
        .into_iter()
        .filter(|v| {
            wanted.contains(v)
                || (*v == "hyper_bare" && bare_wanted("hyper"))
                || (*v == "reqwest_bare" && bare_wanted("reqwest"))
        })
        .collect()
}

/// One round: `concurrency` tasks making calls back to back for `length`.
async fn round<F, Fut>(call: F, concurrency: usize, length: Duration) -> Round
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Bytes> + Send + 'static,
{
    let cpu = CpuTimes::now();
    let start = Instant::now();
    let end = start + length;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < end {
                    let t = Instant::now();
                    black_box(call().await);
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a worker task"));
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(cpu).per_call(all.len());
    all.sort_by(f64::total_cmp);
    Round {
        rps: all.len() as f64 / secs,
        latencies: all,
        cpu,
    }
}

/// Makes `calls` calls, `concurrency` at a time.
async fn calls_in_flight<F, Fut>(call: F, calls: usize, concurrency: usize)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Bytes> + Send + 'static,
{
    let left = Arc::new(AtomicUsize::new(calls));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, left) = (call.clone(), left.clone());
            tokio::spawn(async move {
                let take = |n: usize| n.checked_sub(1);
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take)
                    .is_ok()
                {
                    black_box(call().await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a worker task");
    }
}

/// What one round measured.
#[derive(Clone)]
struct Round {
    rps: f64,
    /// Of every call, in microseconds, sorted.
    latencies: Vec<f64>,
    cpu: CpuTimes,
}

/// CPU time (user and system) spent by the client's thread, which runs the client runtime
/// and so every call, the layers and the connections' tasks, and by the whole process
/// (the server's thread besides). Unlike calls per second, it leaves out the time the
/// machine gave to other work; unlike callgrind's instructions, it counts the kernel's
/// share of a call (sockets, wake-ups).
#[derive(Clone, Copy, Debug)]
struct CpuTimes {
    client: Duration,
    process: Duration,
}

impl CpuTimes {
    fn now() -> Self {
        CpuTimes {
            client: cpu_clock(CpuClock::Thread),
            process: cpu_clock(CpuClock::Process),
        }
    }

    fn since(self, earlier: CpuTimes) -> Self {
        CpuTimes {
            client: self.client.saturating_sub(earlier.client),
            process: self.process.saturating_sub(earlier.process),
        }
    }

    fn per_call(self, calls: usize) -> Self {
        let calls = u32::try_from(calls.max(1)).unwrap_or(u32::MAX);
        CpuTimes {
            client: self.client / calls,
            process: self.process / calls,
        }
    }

    /// The server's share: the process less the client's thread.
    fn server(self) -> Duration {
        self.process.saturating_sub(self.client)
    }
}

/// Which CPU time [`cpu_clock`] reads: the calling thread's, or the whole process's.
enum CpuClock {
    Thread,
    Process,
}

#[cfg(unix)]
fn cpu_clock(clock: CpuClock) -> Duration {
    let clock = match clock {
        CpuClock::Thread => libc::CLOCK_THREAD_CPUTIME_ID,
        CpuClock::Process => libc::CLOCK_PROCESS_CPUTIME_ID,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`; the clock ids are the standard ones.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Elsewhere no CPU time is read: the CPU times print as zero, their ratio as not a number.
#[cfg(not(unix))]
fn cpu_clock(_: CpuClock) -> Duration {
    Duration::ZERO
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn throughput(rt: &tokio::runtime::Runtime, clients: &Clients, concurrency: usize) {
    let variants = selected();
    let length = Duration::from_millis(env_or("LOOPBACK_ROUND_MS", 500));
    let rounds: usize = env_or("LOOPBACK_ROUNDS", 11);
    // Warm every pool up to the concurrency used.
    for &name in &variants {
        with_variant!(clients, name, |call| rt.block_on(round(
            call,
            concurrency,
            Duration::from_millis(200)
        )));
    }
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        // Rotate the order each round.
        for k in 0..variants.len() {
            let i = (k + r) % variants.len();
            let result = with_variant!(clients, variants[i], |call| rt.block_on(round(
                call,
                concurrency,
                length
            )));
            results[i].push(result);
        }
    }
    // Ratios to the bare client of the same library, round by round (the two ran
    // moments apart), then the median of those ratios.
    let bare_of = |name: &str| {
        let bare = if name.starts_with("hyper") {
            "hyper_bare"
        } else {
            "reqwest_bare"
        };
        variants
            .iter()
            .position(|v| *v == bare)
            .expect("a bare client")
    };
    let ratio = |i: usize, of: fn(&Round, &Round) -> f64| {
        let bare = &results[bare_of(variants[i])];
        median(results[i].iter().zip(bare).map(|(v, b)| of(v, b)).collect())
    };
    println!(
        "loopback: concurrency={concurrency} round_ms={} rounds={rounds}",
        length.as_millis()
    );
    for (i, name) in variants.iter().enumerate() {
        let throughput = ratio(i, |v, b| v.rps / b.rps);
        // The bare client's CPU time per call over the variant's: the share of bare
        // throughput the variant would keep were the client's thread the bottleneck.
        let cpu = ratio(i, |v, b| {
            b.cpu.client.as_secs_f64() / v.cpu.client.as_secs_f64()
        });
        let rounds = &results[i];
        let client_us = median(
            rounds
                .iter()
                .map(|r| r.cpu.client.as_secs_f64() * 1e6)
                .collect(),
        );
        let server_us = median(
            rounds
                .iter()
                .map(|r| r.cpu.server().as_secs_f64() * 1e6)
                .collect(),
        );
        // The latencies of every call of the median round by throughput.
        let mut by_rps: Vec<&Round> = rounds.iter().collect();
        by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let mid = by_rps[by_rps.len() / 2];
        println!(
            "loopback: concurrency={concurrency} variant={name} rps={:.0} p50_us={:.1} p99_us={:.1} ratio_to_bare={throughput:.3} client_cpu_us={client_us:.2} server_cpu_us={server_us:.2} cpu_ratio_to_bare={cpu:.3}",
            mid.rps,
            percentile(&mid.latencies, 0.5),
            percentile(&mid.latencies, 0.99),
        );
    }
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

/// Allocations per call on the client's thread, variant by variant.
fn allocations(rt: &tokio::runtime::Runtime, clients: &Clients) {
    let calls: u64 = env_or("LOOPBACK_ALLOC_CALLS", 2000);
    for name in selected() {
        with_variant!(clients, name, |call| {
            // Warm up: connections pooled, lazily made state made.
            for _ in 0..200 {
                rt.block_on(call());
            }
            count_this_thread(true);
            let before = ALLOCS.load(Ordering::Relaxed);
            for _ in 0..calls {
                rt.block_on(call());
            }
            let made = ALLOCS.load(Ordering::Relaxed) - before;
            count_this_thread(false);
            println!(
                "loopback: allocations variant={name} per_call={:.2}",
                made as f64 / calls as f64
            );
        });
    }
}

fn latency(c: &mut Criterion, rt: &tokio::runtime::Runtime, clients: &Clients) {
    let mut group = c.benchmark_group("loopback");
    for name in VARIANTS {
        with_variant!(clients, name, |call| group
            .bench_function(name, |b| { b.iter(|| rt.block_on(call())) }));
    }
    group.finish();
}

fn main() {
    let addr = serve();
    let rt = client_runtime();
    let clients = Clients::new(addr);
    // `LOOPBACK_PROFILE=<variant>`: calls of one variant, for a profiler: one at a time,
    // or `LOOPBACK_PROFILE_CONCURRENCY` at a time.
    if let Ok(wanted) = std::env::var("LOOPBACK_PROFILE") {
        let calls: usize = env_or("LOOPBACK_PROFILE_CALLS", 2000);
        let concurrency: usize = env_or("LOOPBACK_PROFILE_CONCURRENCY", 1);
        assert!(VARIANTS.contains(&wanted.as_str()), "no variant {wanted}");
        with_variant!(&clients, wanted.as_str(), |call| {
            if concurrency <= 1 {
                for _ in 0..calls {
                    rt.block_on(call());
                }
            } else {
                rt.block_on(calls_in_flight(call, calls, concurrency));
            }
        });
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs each bench binary once without `--bench`: keep that fast.
    if !args.iter().any(|a| a == "--bench") {
        for name in VARIANTS {
            with_variant!(&clients, name, |call| {
                rt.block_on(call());
            });
        }
        return;
    }
    allocations(&rt, &clients);
    let levels = std::env::var("LOOPBACK_CONCURRENCY").unwrap_or_else(|_| "1,32".into());
    for level in levels.split(',').filter_map(|n| n.trim().parse().ok()) {
        throughput(&rt, &clients, level);
    }
    if std::env::var_os("LOOPBACK_SKIP_CRITERION").is_some() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    latency(&mut c, &rt, &clients);
    c.final_summary();
}
