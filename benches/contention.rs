//! Backoff under contention: the model of the AWS Architecture Blog study "Exponential
//! Backoff And Jitter" (2015), as a discrete-event simulation on a virtual clock.
//!
//! `cargo bench --bench contention`. Not a timing benchmark: it counts calls and virtual
//! milliseconds, so it gives the same figures on any machine, and runs in seconds.
//!
//! The model, as in the study's simulator:
//!
//! - one row under optimistic concurrency: `read` returns its version; `write(v)` succeeds
//!   and bumps the version only if `v` is still current;
//! - every client updates the row once; all start at t = 0 with a read;
//! - every network hop (request or reply) takes |Normal(10 ms, sd 2 ms)|;
//! - after a failed write the client counts one more attempt and sends its next read
//!   after one hop plus `backoff(attempt)`; the study's exponential ceiling for attempt
//!   `n` is `base * 2^n`, so its first backoff is 2 x base;
//! - base 5 ms, cap 2 s; only writes count as calls; completion is when the last client
//!   learns its write succeeded; 100 trials per point, 10 to 190 clients in steps of 10.
//!
//! Delays come from the crate's own [`ExponentialBackoff`], seeded, one schedule per
//! client. Our schedule's retry `n` has ceiling `base * 2^(n-1)`, so the study's attempt
//! `n` is our retry `n + 1`: for the ceiling-based strategies the schedule's first draw is
//! skipped. Decorrelated jitter ignores the ceiling (`min(cap, uniform(base, 3 *
//! previous))`, drawn first and capped after), and is taken as is, as in the study.
//!
//! It prints, per strategy at 100 clients,
//! `contention: strategy=<name> clients=100 writes=<mean> completion_ms=<mean>`,
//! then the whole table. With `CONTENTION_CSV=<path>` it also writes the table as CSV
//! (`strategy,clients,writes,completion_ms,writes_se,completion_ms_se`, the last two the
//! standard errors of the means), from which `docs/contention.py` draws the plot.
//!
//! With `CONTENTION_EXPLORE=1` it also runs the candidates tried in the search for a
//! strategy that beats both full jitter (on writes) and decorrelated jitter (on completion
//! time); they are written here, not in the crate, and BENCHMARKS.md says what each gave.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use resilient_http::backoff::{Delays, ExponentialBackoff, Jitter};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::Duration;

const BASE: Duration = Duration::from_millis(5);
const CAP: Duration = Duration::from_secs(2);
const NET_MEAN_MS: f64 = 10.0;
const NET_SD_MS: f64 = 2.0;
const TRIALS: u64 = 100;
const REPORT_CLIENTS: usize = 100;

/// A backoff strategy under test: how to make one client's schedule.
struct Strategy {
    name: &'static str,
    backoff: ExponentialBackoff,
    /// Whether to drop the schedule's first delay, so that the first backoff's ceiling is
    /// 2 x base as in the study.
    skip_first: bool,
    /// A candidate not in the crate: `(rng, study attempt n, previous delay) -> delay`.
    candidate: Option<fn(&mut SmallRng, u32, f64) -> f64>,
}

fn ceiling_ms(n: u32) -> f64 {
    (ms(BASE) * 2f64.powi(n as i32)).min(ms(CAP))
}

fn candidates() -> Vec<Strategy> {
    let c = |name, f| Strategy {
        name,
        backoff: ExponentialBackoff::new(BASE, CAP),
        skip_first: false,
        candidate: Some(f),
    };
    // Growth `g` per attempt (the crate's is 2) up to the cap.
    fn ceil_g(g: f64, n: u32) -> f64 {
        (ms(BASE) * 2.0 * g.powi(n as i32 - 1)).min(ms(CAP))
    }
    // Log-uniform in `[lo, hi]`.
    fn log_uniform(r: &mut SmallRng, lo: f64, hi: f64) -> f64 {
        lo * (hi / lo).powf(r.random::<f64>())
    }
    vec![
        // Within the crate's ceiling (doubling): other shapes of draw in [0, d].
        c("full_sqrt", |r, n, _| {
            ceiling_ms(n) * r.random::<f64>().sqrt()
        }),
        c("full_sq", |r, n, _| {
            ceiling_ms(n) * r.random::<f64>().powi(2)
        }),
        c("full_floor25", |r, n, _| {
            ceiling_ms(n) * (0.25 + 0.75 * r.random::<f64>())
        }),
        c("loguni", |r, n, _| log_uniform(r, ms(BASE), ceiling_ms(n))),
        c("loguni_d32", |r, n, _| {
            log_uniform(r, ceiling_ms(n) / 32.0, ceiling_ms(n))
        }),
        c("decorr_ceil", |r, n, p| {
            let hi = (3.0 * p).min(ceiling_ms(n)).max(ms(BASE));
            ms(BASE) + (hi - ms(BASE)) * r.random::<f64>()
        }),
        // Outside it: other growth factors.
        c("full_g1.5", |r, n, _| ceil_g(1.5, n) * r.random::<f64>()),
        c("full_g3", |r, n, _| ceil_g(3.0, n) * r.random::<f64>()),
        c("full_g4_sq", |r, n, _| {
            ceil_g(4.0, n) * r.random::<f64>().powi(2)
        }),
        c("loguni_g4", |r, n, _| {
            log_uniform(r, ms(BASE), ceil_g(4.0, n))
        }),
    ]
}

fn strategies() -> Vec<Strategy> {
    let exp = |jitter| Strategy {
        name: match jitter {
            Jitter::None => "none",
            Jitter::Equal => "equal",
            Jitter::Full => "full",
            _ => "decorrelated",
        },
        backoff: ExponentialBackoff::new(BASE, CAP).jitter(jitter),
        skip_first: jitter != Jitter::Decorrelated,
        candidate: None,
    };
    vec![
        Strategy {
            // A zero ceiling: every delay is zero.
            name: "no_backoff",
            backoff: ExponentialBackoff::new(Duration::ZERO, Duration::ZERO).jitter(Jitter::None),
            skip_first: false,
            candidate: None,
        },
        exp(Jitter::None),
        exp(Jitter::Equal),
        exp(Jitter::Full),
        exp(Jitter::Decorrelated),
    ]
}

/// One message in flight, delivered at `at` (virtual milliseconds).
#[derive(Clone, Copy)]
struct Event {
    at: f64,
    client: usize,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// A read request reaches the row.
    Read,
    /// The read's reply, carrying the version, reaches the client.
    ReadReply(u64),
    /// A write of the given version reaches the row.
    Write(u64),
    /// The write's reply reaches the client.
    WriteReply(bool),
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap and the earliest event goes first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then(other.client.cmp(&self.client))
    }
}

/// |Normal(mean, sd)| by Box-Muller.
fn hop(rng: &mut SmallRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (NET_MEAN_MS + NET_SD_MS * z).abs()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One trial: `(writes, completion_ms)`.
fn trial(strategy: &Strategy, clients: usize, seed: u64) -> (u64, f64) {
    let mut net = SmallRng::seed_from_u64(seed);
    let backoff = strategy.backoff.clone().seeded(seed.wrapping_mul(1 << 20));
    let mut schedules: Vec<Delays> = (0..clients)
        .map(|_| {
            let mut d = backoff.delays();
            if strategy.skip_first {
                d.next();
            }
            d
        })
        .collect();
    let mut attempts = vec![0u32; clients];
    let mut previous = vec![ms(BASE); clients];
    let mut queue = BinaryHeap::with_capacity(clients * 2);
    for client in 0..clients {
        let at = hop(&mut net);
        queue.push(Event {
            at,
            client,
            kind: Kind::Read,
        });
    }
    let mut version = 0u64;
    let mut writes = 0u64;
    let mut now = 0.0;
    while let Some(Event { at, client, kind }) = queue.pop() {
        debug_assert!(at >= now, "time must move forward");
        now = at;
        let next = match kind {
            Kind::Read => Kind::ReadReply(version),
            Kind::ReadReply(v) => Kind::Write(v),
            Kind::Write(v) => {
                writes += 1;
                let ok = v == version;
                if ok {
                    version += 1;
                }
                Kind::WriteReply(ok)
            }
            Kind::WriteReply(true) => continue,
            Kind::WriteReply(false) => {
                attempts[client] += 1;
                let delay = match strategy.candidate {
                    Some(f) => f(&mut net, attempts[client], previous[client]),
                    None => ms(schedules[client].next().unwrap_or_default()),
                };
                previous[client] = delay;
                queue.push(Event {
                    at: now + hop(&mut net) + delay,
                    client,
                    kind: Kind::Read,
                });
                continue;
            }
        };
        queue.push(Event {
            at: now + hop(&mut net),
            client,
            kind: next,
        });
    }
    assert_eq!(version, clients as u64, "every client updated the row once");
    (writes, now)
}

struct Point {
    clients: usize,
    writes: f64,
    completion_ms: f64,
    /// Standard errors of the two means.
    writes_se: f64,
    completion_se: f64,
}

/// Mean and standard error of the mean.
fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn run(strategy: &Strategy, clients: usize) -> Point {
    let (writes, times): (Vec<f64>, Vec<f64>) = (0..TRIALS)
        .map(|t| {
            let (w, c) = trial(strategy, clients, (clients as u64) << 32 | t);
            (w as f64, c)
        })
        .unzip();
    let (writes, writes_se) = mean_se(&writes);
    let (completion_ms, completion_se) = mean_se(&times);
    Point {
        clients,
        writes,
        completion_ms,
        writes_se,
        completion_se,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` has nothing to select here.
    let mut strategies = strategies();
    if std::env::var_os("CONTENTION_EXPLORE").is_some() {
        strategies.extend(candidates());
    }
    let table: Vec<(&str, Vec<Point>)> = strategies
        .iter()
        .map(|s| {
            let points = (10..=190).step_by(10).map(|n| run(s, n)).collect();
            (s.name, points)
        })
        .collect();

    for (name, points) in &table {
        let p = points
            .iter()
            .find(|p| p.clients == REPORT_CLIENTS)
            .expect("100 clients is in the sweep");
        println!(
            "contention: strategy={name} clients={} writes={:.1} completion_ms={:.1}",
            p.clients, p.writes, p.completion_ms
        );
    }

    let mut out = String::from("\nmean writes / mean completion (ms), 100 trials per point\n");
    write!(out, "{:>7}", "clients").expect("writing to a String");
    for (name, _) in &table {
        write!(out, " {name:>22}").expect("writing to a String");
    }
    out.push('\n');
    let mut csv =
        String::from("strategy,clients,writes,completion_ms,writes_se,completion_ms_se\n");
    for row in 0..table[0].1.len() {
        write!(out, "{:>7}", table[0].1[row].clients).expect("writing to a String");
        for (name, points) in &table {
            let p = &points[row];
            let cell = format!("{:.0} / {:.0}", p.writes, p.completion_ms);
            write!(out, " {cell:>22}").expect("writing to a String");
            writeln!(
                csv,
                "{name},{},{:.2},{:.2},{:.2},{:.2}",
                p.clients, p.writes, p.completion_ms, p.writes_se, p.completion_se
            )
            .expect("writing to a String");
        }
        out.push('\n');
    }
    print!("{out}");
    if let Ok(path) = std::env::var("CONTENTION_CSV") {
        std::fs::write(&path, csv).expect("CONTENTION_CSV names a writable file");
        println!("wrote {path}");
    }
}
