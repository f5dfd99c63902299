//! The fleet rate limit against a real `redis-server` on loopback (each test starts its
//! own; a machine without one fails here, never skips): two limiters sharing a key, the
//! lease saving round trips, and Redis not running, killed, restarted, slow and dropping
//! its clients. Then the fleet: four stacks, as four processes would have them, against
//! resilient-http-testing's rate-limited server, with the limit shared, not shared, and
//! Redis killed halfway.
//!
//! ```sh
//! cargo test --all-features --test fleet -- --nocapture
//! ```
//!
//! The fleet test prints three lines:
//! `fleet: stacks=4 offered=<n> limit=<R>/s rejected_by_server=<share> redis=on` (then
//! `redis=off`, then `redis=killed lost=<l> blocked_past_deadline=<b>`).
//!
//! Real time throughout: Redis's clock and sockets do not follow tokio's paused clock.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisServer;
use resilient_http::fleet::{FleetLimited, FleetRateLimit};
use resilient_http::retry::SendLimit;
use resilient_http::{Outcome, ResilientLayer, RetryLayer, StopReason};
use resilient_http_testing::{Answer, StripeServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const MS: Duration = Duration::from_millis(1);
/// Every limit's Redis time limit here: the default.
const OP_TIMEOUT: Duration = Duration::from_millis(250);

// ---- helpers ----

/// Warnings of target `resilient_http::fleet` on this thread.
fn count_warnings() -> (Arc<AtomicUsize>, tracing::subscriber::DefaultGuard) {
    common::count_warnings("resilient_http::fleet")
}

fn limit(url: &str, key: &str, per_second: u32) -> FleetRateLimit {
    FleetRateLimit::builder(url, key, per_second)
        .op_timeout(OP_TIMEOUT)
        .build()
        .expect("valid settings")
}

/// What a caller was told by [`drive`].
#[derive(Debug, Default)]
struct Driven {
    /// When each granted attempt may be sent.
    sends: Vec<Instant>,
    refused: usize,
    /// The longest a `reserve` took to answer, in real time.
    slowest: Duration,
}

/// Asks `limit` for a slot every `every` for `how_long` (each with a deadline a second
/// away), as a stream of calls would.
async fn drive(limit: &FleetRateLimit, every: Duration, how_long: Duration) -> Driven {
    let end = Instant::now() + how_long;
    let mut driven = Driven::default();
    let mut tick = tokio::time::interval(every);
    while Instant::now() < end {
        tick.tick().await;
        let started = std::time::Instant::now();
        let now = Instant::now();
        let answer = limit.reserve(now, now + Duration::from_secs(1));
        driven.slowest = driven.slowest.max(started.elapsed());
        match answer {
            Ok(wait) => driven.sends.push(now + wait),
            Err(e) => {
                assert!(e.is::<FleetLimited>(), "a typed refusal: {e}");
                driven.refused += 1;
            }
        }
    }
    driven
}

/// Drives `limit` until `done` holds, for at most `limit_time`.
async fn drive_until(
    limit: &FleetRateLimit,
    limit_time: Duration,
    mut done: impl FnMut(&FleetRateLimit) -> bool,
) -> bool {
    let end = Instant::now() + limit_time;
    while Instant::now() < end {
        if done(limit) {
            return true;
        }
        drive(limit, 2 * MS, 10 * MS).await;
    }
    done(limit)
}

/// The most sends that fall within any one second.
fn most_in_a_second(sends: &mut [Instant]) -> usize {
    sends.sort();
    let mut most = 0;
    let mut first = 0;
    for last in 0..sends.len() {
        while sends[last] - sends[first] >= Duration::from_secs(1) {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// Lease round trips the server has run (the script by hash, or loaded and run).
fn round_trips(server: &RedisServer) -> u64 {
    server.calls("evalsha") + server.calls("eval")
}

// ---- the limit itself ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_sharing_a_key_keep_to_one_rate_between_them() {
    const RATE: u32 = 50;
    let server = RedisServer::start();
    let a = limit(&server.url(), "acct_shared", RATE);
    let b = limit(&server.url(), "acct_shared", RATE);
    // Each asks five times the rate.
    let (a_driven, b_driven) = tokio::join!(
        drive(&a, 4 * MS, Duration::from_millis(1500)),
        drive(&b, 4 * MS, Duration::from_millis(1500)),
    );
    assert!(a.is_shared() && b.is_shared());
    let mut sends: Vec<_> = a_driven
        .sends
        .iter()
        .chain(&b_driven.sends)
        .copied()
        .collect();
    let most = most_in_a_second(&mut sends);
    println!(
        "two limiters at {RATE}/s: {} + {} slots, at most {most} in a second, {} + {} refused",
        a_driven.sends.len(),
        b_driven.sends.len(),
        a_driven.refused,
        b_driven.refused
    );
    // Two slots a second more per limiter: a first call goes on credit before its lease,
    // and a slot handed out late (a loaded machine) bunches with the next.
    assert!(most <= RATE as usize + 4, "{most} sends in one second");
    assert!(most >= RATE as usize * 8 / 10, "the rate is used: {most}");
    assert!(a_driven.sends.len() >= 10 && b_driven.sends.len() >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_serves_several_calls_per_round_trip() {
    let server = RedisServer::start();
    let limit = limit(&server.url(), "acct_lease", 5000);
    let driven = drive(&limit, MS, Duration::from_millis(600)).await;
    assert!(limit.is_shared());
    assert_eq!(driven.refused, 0);
    let calls = driven.sends.len() as u64;
    let trips = round_trips(&server);
    println!("lease: {calls} calls, {trips} round trips");
    assert!(trips > 0, "Redis was used");
    assert!(calls >= 3 * trips, "{calls} calls took {trips} round trips");
}

#[tokio::test(flavor = "current_thread")]
async fn with_redis_not_running_at_start_the_process_paces_itself_and_warns_once() {
    let (warnings, _guard) = count_warnings();
    let limit = limit(&RedisServer::unused_url(), "acct_alone", 100);
    let driven = drive(&limit, 5 * MS, Duration::from_millis(300)).await;
    assert!(!limit.is_shared());
    assert_eq!(driven.refused, 0);
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        1,
        "one warning for the outage"
    );
    // Alone, at the same rate: 10 ms between two sends asked for at once.
    let now = Instant::now() + Duration::from_secs(1);
    let first = limit.reserve(now, now + Duration::from_secs(1)).unwrap();
    let second = limit.reserve(now, now + Duration::from_secs(1)).unwrap();
    assert_eq!(second - first, 10 * MS);
}

#[tokio::test(flavor = "current_thread")]
async fn a_redis_killed_mid_run_leaves_the_process_alone_and_a_restart_shares_it_again() {
    let (warnings, _guard) = count_warnings();
    let mut server = RedisServer::start();
    let limit = limit(&server.url(), "acct_killed", 1000);
    assert!(drive_until(&limit, Duration::from_secs(2), |_| round_trips(&server) > 0).await);
    assert!(limit.is_shared());

    server.kill();
    let driven = drive(&limit, 2 * MS, Duration::from_millis(300)).await;
    assert_eq!(driven.refused, 0, "calls go on");
    assert!(!limit.is_shared());
    assert_eq!(warnings.load(Ordering::SeqCst), 1);

    server.restart();
    assert!(
        drive_until(&limit, Duration::from_secs(3), FleetRateLimit::is_shared).await,
        "shared again once Redis answers"
    );
    assert!(round_trips(&server) > 0, "the new server leases");
    assert_eq!(warnings.load(Ordering::SeqCst), 1, "still the one outage");

    server.kill();
    drive(&limit, 2 * MS, Duration::from_millis(200)).await;
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        2,
        "a second outage, a second warning"
    );
}

/// Busy-waits on the server for `ms` milliseconds: nothing else runs there meanwhile.
const SPIN: &str = "local function now() local t = redis.call('TIME') \
                    return t[1] * 1000 + t[2] / 1000 end \
                    local stop = now() + tonumber(ARGV[1]) \
                    while now() < stop do end return 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_holds_no_call_for_longer_than_the_op_timeout() {
    let server = Arc::new(RedisServer::start());
    let limit = limit(&server.url(), "acct_slow", 1000);
    assert!(drive_until(&limit, Duration::from_secs(2), |_| round_trips(&server) > 0).await);

    let busy = {
        let server = server.clone();
        std::thread::spawn(move || server.command(&["EVAL", SPIN, "0", "1500"]))
    };
    tokio::time::sleep(20 * MS).await;
    // Calls through a stack while Redis is busy: none waits on it.
    let retry = RetryLayer::builder()
        .send_limit(limit.clone())
        .build()
        .unwrap();
    let svc =
        ResilientLayer::new(retry).layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
        }));
    let mut slowest_call = Duration::ZERO;
    let end = Instant::now() + Duration::from_millis(300);
    let mut calls = 0;
    while Instant::now() < end {
        let started = Instant::now();
        let res = svc.clone().oneshot(charge()).await;
        assert!(res.is_ok(), "{:?}", res.err());
        slowest_call = slowest_call.max(started.elapsed());
        calls += 1;
        tokio::time::sleep(2 * MS).await;
    }
    let driven = drive(&limit, 2 * MS, Duration::from_millis(100)).await;
    assert!(
        !limit.is_shared(),
        "Redis is still busy: the process went on alone"
    );
    println!(
        "slow redis: {calls} calls, slowest {slowest_call:?}; slowest reserve {:?}",
        driven.slowest
    );
    assert!(slowest_call < OP_TIMEOUT, "a call waited {slowest_call:?}");
    assert!(
        driven.slowest < 50 * MS,
        "reserve took {:?}",
        driven.slowest
    );
    assert_eq!(driven.refused, 0);

    assert_eq!(busy.join().unwrap(), "1");
    assert!(
        drive_until(&limit, Duration::from_secs(3), FleetRateLimit::is_shared).await,
        "shared again once Redis is free"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_dropped_by_redis_is_made_again_by_the_manager() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let limit = FleetRateLimit::builder_with_manager(manager, "acct_reconnect", 1000)
        .build()
        .unwrap();
    assert!(drive_until(&limit, Duration::from_secs(2), |_| round_trips(&server) > 0).await);

    // Redis closes every client's connection (but this one's).
    let killed = server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    assert_ne!(killed, "0", "the limit's connection was closed");
    let before = round_trips(&server);
    let leased_again = drive_until(&limit, Duration::from_secs(3), |limit| {
        limit.is_shared() && round_trips(&server) > before + 5
    })
    .await;
    assert!(leased_again, "the limit leases over a new connection");
}

// ---- the fleet ----

/// The test server's limit, requests a second.
const R: u32 = 40;
const STACKS: usize = 4;
/// How long calls are offered, at 5R a second in all.
const OFFERED_FOR: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(1);
/// Scheduling on a loaded 2-core machine: a call ending this much past its deadline counts
/// as blocked.
const LATE: Duration = Duration::from_millis(200);
/// A call that has not ended after this long is lost.
const HANG: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Redis {
    /// The four stacks share one limit in Redis.
    On,
    /// Each stack has its own limit at R (no Redis to reach).
    Off,
    /// Shared, until Redis is killed halfway.
    Killed,
}

/// What one run of the fleet did.
#[derive(Debug, Default)]
struct Run {
    offered: usize,
    succeeded: usize,
    /// Calls that ended before the server saw them: the limit refused them.
    limited: usize,
    lost: usize,
    blocked_past_deadline: usize,
    /// The longest a call took.
    slowest: Duration,
    received: usize,
    rejected: usize,
}

impl Run {
    fn share(&self) -> f64 {
        self.rejected as f64 / self.received.max(1) as f64
    }
}

fn charge() -> Request<Full<Bytes>> {
    Request::post("http://127.0.0.1/v1/charges")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(
            b"amount=100&currency=usd&source=tok_visa",
        )))
        .expect("a well-formed request")
}

async fn run_fleet(redis: &mut RedisServer, mode: Redis) -> Run {
    let server = StripeServer::builder()
        .rate_limit(R)
        .start()
        .await
        .expect("the test server starts on loopback");
    let key = format!("acct_fleet_{mode:?}");
    let url = match mode {
        Redis::Off => RedisServer::unused_url(),
        Redis::On | Redis::Killed => redis.url(),
    };
    let mut limits = Vec::new();
    let mut stacks = Vec::new();
    for _ in 0..STACKS {
        let limit = limit(&url, &key, R);
        let retry = RetryLayer::builder()
            .send_limit(limit.clone())
            .deadline(DEADLINE)
            .base_delay(10 * MS)
            .max_delay(100 * MS)
            .build()
            .expect("valid settings");
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        stacks.push(ResilientLayer::new(retry).layer(client));
        limits.push(limit);
    }

    let uri: http::Uri = format!("{}/v1/charges", server.url()).parse().unwrap();
    let offered = (5 * R as usize) * OFFERED_FOR.as_secs() as usize;
    let every = OFFERED_FOR / offered as u32;
    let start = Instant::now();
    let mut calls = Vec::with_capacity(offered);
    for i in 0..offered {
        tokio::time::sleep_until(start + every * i as u32).await;
        if mode == Redis::Killed && i == offered / 2 {
            redis.kill();
        }
        let stack = stacks[i % STACKS].clone();
        let mut req = charge();
        *req.uri_mut() = uri.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let ended = tokio::time::timeout(HANG, stack.oneshot(req)).await;
            (ended, started.elapsed())
        }));
    }

    let mut run = Run {
        offered,
        ..Run::default()
    };
    for call in calls {
        match call.await {
            Ok((Ok(ended), elapsed)) => {
                run.slowest = run.slowest.max(elapsed);
                if elapsed > DEADLINE + LATE {
                    run.blocked_past_deadline += 1;
                }
                match ended {
                    Ok(_) => run.succeeded += 1,
                    Err(e) if e.report().stop_reason() == StopReason::Throttled => {
                        assert_eq!(e.outcome(), Outcome::GaveUp);
                        run.limited += 1;
                    }
                    Err(_) => {}
                }
            }
            Ok((Err(_), _)) | Err(_) => run.lost += 1,
        }
    }
    let log = server.log();
    run.received = log.requests().len();
    run.rejected = log
        .requests()
        .iter()
        .filter(|r| r.answer == Answer::Status(429))
        .count();
    if mode == Redis::Killed {
        assert!(
            limits.iter().all(|l| !l.is_shared()),
            "every stack went on alone"
        );
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_of_four_stacks_keeps_to_the_servers_rate_with_one_limit_in_redis() {
    let mut redis = RedisServer::start();
    let line = |mode: &str, run: &Run| {
        println!(
            "fleet: stacks={STACKS} offered={} limit={R}/s rejected_by_server={:.3} redis={mode}",
            run.offered,
            run.share()
        );
        eprintln!("  ({run:?})");
    };

    let on = run_fleet(&mut redis, Redis::On).await;
    line("on", &on);
    let off = run_fleet(&mut redis, Redis::Off).await;
    line("off", &off);
    let killed = run_fleet(&mut redis, Redis::Killed).await;
    println!(
        "fleet: stacks={STACKS} offered={} limit={R}/s rejected_by_server={:.3} redis=killed lost={} blocked_past_deadline={}",
        killed.offered,
        killed.share(),
        killed.lost,
        killed.blocked_past_deadline
    );
    eprintln!("  ({killed:?})");

    assert!(on.share() <= 0.10, "shared: {:.3} rejected", on.share());
    // The shared limit does not pass the test by refusing everything: the fleet gets about
    // the server's rate (2 s at R, and its bucket of R at the start).
    assert!(
        on.succeeded >= (2 * R as usize) * 7 / 10,
        "only {} calls went through",
        on.succeeded
    );
    // Without sharing, four stacks each at R overrun a server at R.
    assert!(
        off.share() > on.share() + 0.2,
        "not shared: {:.3}",
        off.share()
    );
    for run in [&on, &off, &killed] {
        assert_eq!(run.lost, 0, "every call ended");
        assert_eq!(
            run.blocked_past_deadline, 0,
            "no call outlived its deadline"
        );
    }
}
