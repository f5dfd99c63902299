//! Happy-path overhead of the layers over an in-memory service that answers 200 at once.
//!
//! `cargo bench --bench overhead`. Every variant pays the same `block_on` and request
//! construction, so the differences between them are the layers' own cost.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use resilient_http::{ResilientLayer, RetryLayer, SetIdempotencyKeyLayer};
use std::convert::Infallible;
use std::hint::black_box;
use tower::{service_fn, Layer, Service, ServiceExt};

fn request() -> Request<Full<Bytes>> {
    Request::post("https://api.stripe.com/v1/charges")
        .header("authorization", "Bearer sk_test_123")
        .body(Full::new(Bytes::from_static(b"amount=2000&currency=usd")))
        .expect("a valid request")
}

async fn ok(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"id\":\"ch_1\"}",
    ))))
}

fn run<S>(rt: &tokio::runtime::Runtime, svc: &S)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let res = rt.block_on(svc.clone().oneshot(request()));
    black_box(res.expect("the inner service always answers"));
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("happy_path");
    let bare = service_fn(ok);
    group.bench_function("bare", |b| b.iter(|| run(&rt, &bare)));
    let keys = SetIdempotencyKeyLayer::random().layer(service_fn(ok));
    group.bench_function("idempotency_layer", |b| b.iter(|| run(&rt, &keys)));
    let retry = RetryLayer::stripe().layer(service_fn(ok));
    group.bench_function("retry_layer", |b| b.iter(|| run(&rt, &retry)));
    let full = ResilientLayer::stripe().layer(service_fn(ok));
    group.bench_function("full_stack", |b| b.iter(|| run(&rt, &full)));
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
