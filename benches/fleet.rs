//! What the fleet rate limit costs a call: `reserve` answered from a lease of slots taken
//! from Redis, and from the in-process fallback (Redis down).
//!
//! `cargo bench --bench fleet --features redis`. It starts its own `redis-server` on
//! 127.0.0.1 (as the tests do), then, for each variant, makes 4 000 calls a second on a
//! current-thread runtime (4 `reserve`s every millisecond, on tokio's timer), so that the
//! lease task runs beside them as it would beside real calls:
//!
//! | variant | what |
//! |---|---|
//! | `none` | the timer alone: the loop's own cost, subtracted from the others |
//! | `local` | a limit whose Redis is down: the in-process GCRA, and a probe every 100 ms |
//! | `redis` | a limit leasing from Redis: slots handed out locally, a lease every few calls |
//!
//! The rate is a million a second with a burst as large, so that no call waits or is
//! refused: only the bookkeeping is measured. Everything (calls, lease task, Redis client)
//! runs on the one thread, whose CPU time the kernel counts. It prints one line per
//! variant: `reserve: variant=<name> allocs_per_call=<n> cpu_ns_per_call=<n>
//! calls_per_round_trip=<n>` (heap allocations counted by a global allocator; the median of
//! interleaved rounds of the thread's CPU time; round trips counted by Redis's
//! `INFO commandstats`, which also gives the server's time per script run,
//! `redis_us_per_round_trip`).
//!
//! For callgrind, `FLEET_PROFILE=<variant>` makes `FLEET_PROFILE_CALLS` calls (10 000 by
//! default) of one variant and exits; the difference between two call counts is the
//! per-call figure:
//!
//! ```sh
//! cargo bench --bench fleet --features redis --no-run
//! FLEET_PROFILE=redis FLEET_PROFILE_CALLS=10000 valgrind --tool=callgrind target/release/deps/fleet-<hash>
//! FLEET_PROFILE=redis FLEET_PROFILE_CALLS=20000 valgrind --tool=callgrind target/release/deps/fleet-<hash>
//! ```

#[path = "../tests/redis_server/mod.rs"]
mod redis_server;

use redis_server::RedisServer;
use resilient_http::fleet::FleetRateLimit;
use resilient_http::retry::SendLimit;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Counts every allocation made through the global allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a plain atomic and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RATE: u32 = 1_000_000;
/// Calls per millisecond tick.
const PER_TICK: usize = 4;
const CALLS: usize = 2_000;
const ROUNDS: usize = 7;
const VARIANTS: [&str; 3] = ["none", "local", "redis"];

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let server = RedisServer::start();
    if let Ok(variant) = std::env::var("FLEET_PROFILE") {
        let calls = std::env::var("FLEET_PROFILE_CALLS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        runtime.block_on(async {
            let limit = limit(&variant, &server).await;
            calls_of(limit.as_ref(), calls).await;
        });
        return;
    }
    runtime.block_on(report(&server));
}

/// The variant's limit, warmed up: leasing from Redis, or gone alone.
async fn limit(variant: &str, server: &RedisServer) -> Option<FleetRateLimit> {
    let url = match variant {
        "none" => return None,
        "local" => RedisServer::unused_url(),
        "redis" => server.url(),
        other => panic!("no variant {other}: one of {VARIANTS:?}"),
    };
    let limit = FleetRateLimit::builder(url, format!("bench_{variant}"), RATE)
        .burst(RATE)
        .build()
        .expect("valid settings");
    let shared = variant == "redis";
    let warm = Instant::now() + Duration::from_secs(5);
    while limit.is_shared() != shared || server.calls("evalsha") == 0 && shared {
        assert!(Instant::now() < warm, "{variant} did not settle");
        calls_of(Some(&limit), 100).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(limit)
}

/// `n` calls, [`PER_TICK`] a millisecond, each a reserve (if a limit).
async fn calls_of(limit: Option<&FleetRateLimit>, n: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..n.div_ceil(PER_TICK) {
        tick.tick().await;
        for _ in 0..PER_TICK {
            if let Some(limit) = limit {
                let now = Instant::now();
                let wait = limit.reserve(now, now + Duration::from_secs(1));
                assert!(black_box(wait).is_ok(), "no call is refused at this rate");
            }
        }
    }
}

/// This thread's CPU time so far, in nanoseconds (Linux's schedstat).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("Linux's /proc/thread-self/schedstat")
}

async fn report(server: &RedisServer) {
    let mut limits = Vec::new();
    for variant in VARIANTS {
        limits.push((variant, limit(variant, server).await));
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut allocs = vec![0u64; VARIANTS.len()];
    let mut trips = 0;
    for _ in 0..ROUNDS {
        for (i, (variant, limit)) in limits.iter().enumerate() {
            let trips_before = server.calls("evalsha");
            let allocs_before = ALLOCS.load(Ordering::Relaxed);
            let started = cpu_ns();
            calls_of(limit.as_ref(), CALLS).await;
            ns[i].push((cpu_ns() - started) as f64 / CALLS as f64);
            allocs[i] += ALLOCS.load(Ordering::Relaxed) - allocs_before;
            if *variant == "redis" {
                trips += server.calls("evalsha") - trips_before;
            }
        }
    }
    let info = server.command(&["INFO", "commandstats"]);
    let redis_us = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|s| s.strip_prefix("usec_per_call="))
        })
        .unwrap_or("?")
        .to_owned();
    for (i, variant) in VARIANTS.iter().enumerate() {
        ns[i].sort_by(f64::total_cmp);
        let per_trip = if *variant == "redis" {
            format!(
                "{:.1} redis_us_per_round_trip={redis_us}",
                (ROUNDS * CALLS) as f64 / trips.max(1) as f64
            )
        } else {
            "-".to_owned()
        };
        println!(
            "reserve: variant={variant} allocs_per_call={:.3} cpu_ns_per_call={:.0} calls_per_round_trip={per_trip}",
            allocs[i] as f64 / (ROUNDS * CALLS) as f64,
            ns[i][ROUNDS / 2],
        );
    }
}
