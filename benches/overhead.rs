//! Happy-path overhead of the layers over an in-memory service that answers 200 at once.
//!
//! `cargo bench --bench overhead`. One criterion group, one `POST` per iteration:
//!
//! | variant | what |
//! |---|---|
//! | `bare` | the inner service alone |
//! | `tower_retry` | `tower::retry::Retry` with a minimal policy that clones the request |
//! | `tower_retry_no_copy` | the same policy keeping no copy: `tower::retry`'s own machinery, without the clone and without the policy's look at the result (`tower::retry` asks the policy only when it holds a copy); not in the interleaved timings |
//! | `tower_retry_keyed` | our `SetIdempotencyKeyLayer::random()` over `tower_retry`: the least a keyed, replaying retry does |
//! | `tower_retry_keyed_timeout` | `tower::timeout::TimeoutLayer` (80 s) over `tower_retry_keyed`: the least a keyed, replaying retry with a deadline does (the floor as the loopback bench has it) |
//! | `tower_resilience_retry` | `tower-resilience`'s retry layer (3 attempts, exponential backoff): a current tower retry crate |
//! | `retry_layer` | our `RetryLayer::stripe()` alone |
//! | `idempotency_layer` | our `SetIdempotencyKeyLayer::random()` alone |
//! | `full_stack` | `ResilientLayer::stripe()` (keys above retries) |
//!
//! The inner service answers 200 with six headers, as Stripe's answers carry about that
//! many. Each request is a `POST` with one credential; with `OVERHEAD_REQUEST=sdk` it
//! carries what a Stripe client library sends instead: a secret key's `Authorization`
//! (115 bytes), `Content-Type`, `Stripe-Version` and `User-Agent`. Requests are built
//! outside the timed routine (`iter_batched`), and each call is driven by one poll with a
//! no-op waker: every variant answers on its first poll, so the timings hold the layers'
//! cost and not a runtime's. The call runs inside the runtime's context all the same, and
//! falls back to `block_on` if it is ever pending.
//!
//! Before criterion runs, a counting global allocator measures heap allocations per call
//! for each variant (requests built beforehand, so only the call, its response and their
//! drops are counted) and prints one line per variant:
//! `allocs: variant=<name> per_call=<n> bytes_per_call=<n> reallocs_per_call=<n>`.
//!
//! Then the variants are timed side by side, interleaved round by round (see
//! `interleaved`), and one line per variant gives the median ns per call and the ratios to
//! `bare` and `tower_retry` computed round by round in that same run:
//! `overhead: variant=<name> ns_per_call=<n> ratio_to_bare=<r> ratio_to_tower_retry=<r>
//! extra_ns_over_bare=<n>`. Criterion's own group follows.
//!
//! For profilers (callgrind, DHAT), `OVERHEAD_PROFILE=<variant>` runs 10 000 calls of that
//! variant and exits without criterion; `OVERHEAD_PROFILE_CALLS=<n>` changes the count.

mod common;

use bytes::Bytes;
use common::CloneRequest;
use criterion::{criterion_group, BatchSize, Criterion};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use resilient_http::idempotency::SetIdempotencyKeyLayer;
use resilient_http::{ResilientLayer, RetryLayer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use tower::{service_fn, Layer, Service, ServiceExt};

/// Counts every allocation and reallocation made through the global allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(
            new_size.saturating_sub(layout.size()) as u64,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Whether requests carry what a Stripe client library sends (`OVERHEAD_REQUEST=sdk`),
/// rather than one credential.
static SDK_REQUEST: LazyLock<bool> =
    LazyLock::new(|| std::env::var("OVERHEAD_REQUEST").is_ok_and(|shape| shape == "sdk"));

fn request() -> Request<Full<Bytes>> {
    let body = Full::new(Bytes::from_static(b"amount=2000&currency=usd"));
    let builder = Request::post("https://api.stripe.com/v1/charges");
    let builder = if *SDK_REQUEST {
        // A secret key is `sk_test_` and 99 more characters, parsed per request; the rest
        // are a client's constants. `stripe-version` is a name http does not know.
        let key = format!("Bearer sk_test_{}", "5".repeat(99));
        builder
            .header("authorization", key.as_str())
            .header(
                "content-type",
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header("stripe-version", HeaderValue::from_static("2024-06-20"))
            .header(
                "user-agent",
                HeaderValue::from_static("Stripe/v1 RustBindings/0.41.0"),
            )
    } else {
        builder.header("authorization", "Bearer sk_test_123")
    };
    builder.body(body).expect("a valid request")
}

/// A 200 with the headers Stripe's answers carry, so that the layers' header look-ups
/// (`Request-Id`, `Idempotent-Replayed`, `Stripe-Should-Retry`, `Retry-After`) search a
/// map of realistic size.
async fn ok(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let res = Response::builder()
        .header("content-type", HeaderValue::from_static("application/json"))
        .header("request-id", HeaderValue::from_static("req_8yqGjWgJ1ZKxG6"))
        .header("stripe-version", HeaderValue::from_static("2024-06-20"))
        .header(
            "cache-control",
            HeaderValue::from_static("no-cache, no-store"),
        )
        .header("access-control-allow-origin", HeaderValue::from_static("*"))
        .header("server", HeaderValue::from_static("nginx"))
        .body(Full::new(Bytes::from_static(b"{\"id\":\"ch_1\"}")))
        .expect("a valid response");
    Ok(res)
}

/// One call: `oneshot` on a clone of the service, polled once with a no-op waker inside
/// the runtime's context (every variant here is ready at once); `block_on` if not.
fn call<S>(rt: &tokio::runtime::Runtime, svc: &S, req: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let _guard = rt.enter();
    let mut fut = std::pin::pin!(svc.clone().oneshot(req));
    let res = match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(res) => res,
        Poll::Pending => rt.block_on(fut),
    };
    black_box(res.expect("the inner service always answers"));
}

/// Heap allocations per call, counted over `calls` calls after a warm-up.
fn count_allocs<S>(rt: &tokio::runtime::Runtime, name: &str, svc: &S)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    const CALLS: u64 = 10_000;
    for _ in 0..100 {
        call(rt, svc, request());
    }
    let requests: Vec<_> = (0..CALLS).map(|_| request()).collect();
    let (a0, r0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for req in requests {
        call(rt, svc, req);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    let reallocs = REALLOCS.load(Ordering::Relaxed) - r0;
    let bytes = BYTES.load(Ordering::Relaxed) - b0;
    println!(
        "allocs: variant={name} per_call={} bytes_per_call={} reallocs_per_call={}",
        fmt_ratio(allocs, CALLS),
        fmt_ratio(bytes, CALLS),
        fmt_ratio(reallocs, CALLS),
    );
}

fn fmt_ratio(n: u64, d: u64) -> String {
    let x = n as f64 / d as f64;
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// The seven variants timed side by side: `OVERHEAD_ROUNDS` (default 31) rounds, each
/// timing one batch of 2000 calls of every variant in a rotating order, so that drift in
/// the machine's load hits them all alike. Prints per variant the median ns per call and
/// the medians of its per-round ratios to `bare` and to `tower_retry`.
fn interleaved(rt: &tokio::runtime::Runtime) {
    const NAMES: [&str; 7] = [
        "bare",
        "tower_retry",
        "tower_retry_keyed",
        "tower_retry_keyed_timeout",
        "retry_layer",
        "idempotency_layer",
        "full_stack",
    ];
    let rounds: usize = std::env::var("OVERHEAD_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(31);
    let mut ns = vec![Vec::with_capacity(rounds); NAMES.len()];
    for r in 0..rounds {
        for k in 0..NAMES.len() {
            let i = (k + r) % NAMES.len();
            let mut run = |_: &tokio::runtime::Runtime, name: &str, svc: &dyn CallOnce| {
                if name == NAMES[i] {
                    let requests: Vec<_> = (0..2000).map(|_| request()).collect();
                    let start = std::time::Instant::now();
                    for req in requests {
                        svc.call_once(rt, req);
                    }
                    ns[i].push(start.elapsed().as_nanos() as f64 / 2000.0);
                }
            };
            profile_each(rt, &mut run);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |i: usize, j: usize| median(ns[i].iter().zip(&ns[j]).map(|(a, b)| a / b).collect());
    for (i, name) in NAMES.iter().enumerate() {
        println!(
            "overhead: variant={name} ns_per_call={:.0} ratio_to_bare={:.2} ratio_to_tower_retry={:.2} extra_ns_over_bare={:.0}",
            median(ns[i].clone()),
            ratio(i, 0),
            ratio(i, 1),
            median(ns[i].iter().zip(&ns[0]).map(|(a, b)| a - b).collect()),
        );
    }
}

/// [`CloneRequest`] keeping no copy: `tower::retry`'s own machinery, which never retries
/// because it has nothing to send again. `tower::retry` does not ask the policy about a
/// result when it holds no copy, so `retry` here is never called: against `tower_retry`
/// this leaves out the clone, its drop and the policy's look at the status.
#[derive(Clone, Copy)]
struct KeepNoCopy;

impl<ResB, E> tower::retry::Policy<Request<Full<Bytes>>, Response<ResB>, E> for KeepNoCopy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        req: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        CloneRequest.retry(req, result)
    }

    fn clone_request(&mut self, _: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        None
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// Runs `f` once per variant, with the variant's name and service.
macro_rules! each_variant {
    ($f:ident($($arg:expr),*)) => {{
        $f($($arg,)* "bare", &service_fn(ok));
        $f($($arg,)* "tower_retry", &tower::retry::RetryLayer::new(CloneRequest).layer(service_fn(ok)));
        $f($($arg,)* "tower_retry_no_copy", &tower::retry::RetryLayer::new(KeepNoCopy).layer(service_fn(ok)));
        $f($($arg,)* "tower_retry_keyed", &SetIdempotencyKeyLayer::random().layer(tower::retry::RetryLayer::new(CloneRequest).layer(service_fn(ok))));
        $f($($arg,)* "tower_retry_keyed_timeout", &tower::timeout::TimeoutLayer::new(std::time::Duration::from_secs(80)).layer(SetIdempotencyKeyLayer::random().layer(tower::retry::RetryLayer::new(CloneRequest).layer(service_fn(ok)))));
        $f($($arg,)* "tower_resilience_retry", &tower_resilience_retry::RetryLayer::<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>::builder()
            .max_attempts(3)
            .exponential_backoff(std::time::Duration::from_millis(500))
            .build()
            .layer(service_fn(ok)));
        $f($($arg,)* "retry_layer", &RetryLayer::stripe().layer(service_fn(ok)));
        $f($($arg,)* "idempotency_layer", &SetIdempotencyKeyLayer::random().layer(service_fn(ok)));
        $f($($arg,)* "full_stack", &ResilientLayer::stripe().layer(service_fn(ok)));
    }};
}

/// `OVERHEAD_PROFILE=<variant>`: many calls of one variant, for a profiler, then exit.
fn profile_only(rt: &tokio::runtime::Runtime) -> bool {
    let Ok(wanted) = std::env::var("OVERHEAD_PROFILE") else {
        return false;
    };
    let calls: usize = std::env::var("OVERHEAD_PROFILE_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut found = false;
    let mut run = |rt: &tokio::runtime::Runtime, name: &str, svc: &dyn CallOnce| {
        if name == wanted {
            found = true;
            let requests: Vec<_> = (0..calls).map(|_| request()).collect();
            for req in requests {
                svc.call_once(rt, req);
            }
        }
    };
    profile_each(rt, &mut run);
    assert!(found, "OVERHEAD_PROFILE={wanted} is not a variant");
    true
}

// A closure cannot be generic over the service type, so the profile and interleaved runs
// go through a small trait object per variant.
fn profile_each(
    rt: &tokio::runtime::Runtime,
    run: &mut impl FnMut(&tokio::runtime::Runtime, &str, &dyn CallOnce),
) {
    each_variant!(run(rt));
}

/// A service that can make one call: lets the profile run name variants of different types.
trait CallOnce {
    fn call_once(&self, rt: &tokio::runtime::Runtime, req: Request<Full<Bytes>>);
}

impl<S> CallOnce for S
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    fn call_once(&self, rt: &tokio::runtime::Runtime, req: Request<Full<Bytes>>) {
        call(rt, self, req);
    }
}

fn bench_one<S>(
    rt: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: &S,
) where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.iter_batched(request, |req| call(rt, svc, req), BatchSize::SmallInput)
    });
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("happy_path");
    each_variant!(bench_one(&rt, &mut group));
    group.finish();
}

fn allocations() {
    let rt = runtime();
    each_variant!(count_allocs(&rt));
}

fn main() {
    let rt = runtime();
    if profile_only(&rt) {
        return;
    }
    allocations();
    interleaved(&rt);
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, overhead);
