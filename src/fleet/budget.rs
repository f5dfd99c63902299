//! [`FleetBudget`]: a retry budget whose bucket every process of a fleet shares in Redis.

use crate::budget::{RetryBudget, SharedBucket, Take, DEFAULT_RATIO, DEFAULT_RESERVE, TOKEN};
use crate::error::ConfigError;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const TARGET: &str = "resilient_http::fleet";

/// Tokens a process leases at a time by default: enough that a burst of retries does not
/// wait for a round trip each, few enough that leases hold little of a reserve of 10.
const DEFAULT_LEASE: u32 = 2;

/// The largest lease accepted: a lease is a share of a reserve, not a stock.
const MAX_LEASE: u32 = 1024;

/// How long one exchange with Redis may take by default, connecting included: far above a
/// round trip within a data centre (well under 1 ms), far below a retry's backoff.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(100);

/// How often, by default, deposits are sent and the lease topped up, and Redis tried
/// again during an outage.
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Where the balances live: `resilient_http:budget:<key>`.
const KEY_PREFIX: &str = "resilient_http:budget:";

/// One exchange, atomic on the server: adds the deposits and the tokens given back (up to
/// the reserve), then leases up to the tokens wanted. A missing key is a full bucket, as a
/// local budget starts full; one below zero (set by hand) an empty one, and one that is not
/// a number fails the exchange. Balances are in millionths of a token: at most `u32::MAX`
/// tokens, under 2^53, so Lua's numbers hold them exactly.
///
/// KEYS[1] the balance; ARGV: the reserve (millionths), deposits (millionths), tokens
/// given back, tokens wanted, one token (millionths). Returns the tokens leased.
const EXCHANGE: &str = r"
local max = tonumber(ARGV[1])
local token = tonumber(ARGV[5])
local balance = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
balance = math.max(0, math.min(max, balance + tonumber(ARGV[2]) + tonumber(ARGV[3]) * token))
local granted = math.min(tonumber(ARGV[4]), math.floor(balance / token))
balance = balance - granted * token
redis.call('SET', KEYS[1], string.format('%.0f', balance))
return granted
";

/// Builds a [`RetryBudget`] whose bucket every process of a fleet shares in Redis.
///
/// Each process of an application has its own [`RetryBudget`], so a fleet of eight may
/// retry eight times what one process may. A fleet budget keeps the bucket under one Redis
/// key that every process shares, with the local budget's rules: every call deposits
/// `ratio` of a token, every retry takes a whole one, and the bucket holds at most
/// `reserve` (and starts full). Over any stretch of calls, retries *fleet-wide* are at
/// most `ratio` of the calls plus the reserve. The engine sees a plain [`RetryBudget`]:
/// give it to [`Builder::retry_budget`](crate::retry::Builder::retry_budget) as any other.
///
/// The retry layer asks its budget on the call's task and never waits on the network, so
/// Redis is reached by a background task on the tokio runtime, one atomic Lua script per
/// exchange:
///
/// - deposits are added up in the process and sent together, every sync (100 ms);
/// - tokens are leased a few at a time (2 by default): a retry takes one from the lease
///   the process holds, and a token given back unspent returns to it. The task tops the
///   lease up when it runs low (woken at once by the retry that took the last token),
///   returns whatever is above the lease size, and returns the whole lease when the last
///   clone of the budget is dropped.
///
/// Leased tokens are moved, never made, so leasing does not loosen the bound. It tightens
/// it a little: a retry is refused while the tokens that would fund it sit in other
/// processes' leases (at most the lease size each), and a process that dies holding a
/// lease takes it along (deposits refill the bucket). A process that has not heard from
/// Redis yet has no lease: its first retries, in the first round trip after it starts,
/// are refused.
///
/// # When Redis is slow or down
///
/// Every exchange has a time limit (100 ms by default, connecting included). When one
/// fails or runs out, the budget logs one `warn` event for the outage (target
/// `resilient_http::fleet`) and falls back to this process's own bucket, of the same ratio
/// and reserve, which every call keeps filling all along: retries go on as a single
/// process's would, so a fleet of N may then retry up to N times as much. The task tries
/// Redis again at every sync, and the shared bucket decides again from the first exchange
/// that succeeds (an `info` event says so). The deposits and returned tokens of an
/// exchange that failed are dropped rather than risk being counted twice: an outage can
/// leave the shared bucket stricter, never looser.
///
/// If the budget's task ends before the budget (the runtime it was spawned on shut down),
/// a `warn` event says so and the process's own bucket decides from then on.
///
/// # Redis keys
///
/// One string under `resilient_http:budget:<key>`: the balance, in millionths of a token.
/// Give every process the same key, ratio and reserve. A Redis restarted without
/// persistence starts the bucket full again while processes still hold their leases, so
/// for that moment the fleet may retry up to one lease per process more than the bound.
///
/// # Example
///
/// Building one needs a tokio runtime (the task is spawned there), not a Redis server:
/// with none at the URL, as here, the first exchange fails and the budget works on its
/// local bucket.
///
/// ```
/// use resilient_http::fleet::FleetBudget;
/// use resilient_http::RetryLayer;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Retries of the whole fleet add at most 10% to its calls, plus 10.
/// let budget = FleetBudget::new("redis://127.0.0.1:1/", "acct_123")
///     .ratio(0.1)
///     .reserve(10)
///     .build()?;
/// let layer = RetryLayer::builder().retry_budget(budget.clone()).build()?;
/// # let _ = layer;
///
/// // Nothing listens on port 1: after the first exchange fails, the local bucket (full)
/// // decides.
/// tokio::time::sleep(Duration::from_millis(200)).await;
/// assert_eq!(budget.available(), 10.0);
/// assert_eq!(budget.ratio(), 0.1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a fleet budget does nothing until built"]
pub struct FleetBudget {
    url: String,
    key: String,
    ratio: f64,
    reserve: u32,
    lease: u32,
    op_timeout: Duration,
    sync_interval: Duration,
}

impl FleetBudget {
    /// A budget shared under `key` (an account, say `"acct_123"`) by every process that
    /// uses the Redis at `redis_url` (`redis://host:6379/`, see the `redis` crate for the
    /// forms), with the local budget's defaults: 10% of the calls plus a reserve of 10.
    pub fn new(redis_url: impl Into<String>, key: impl Into<String>) -> Self {
        FleetBudget {
            url: redis_url.into(),
            key: key.into(),
            ratio: DEFAULT_RATIO,
            reserve: DEFAULT_RESERVE,
            lease: DEFAULT_LEASE,
            op_timeout: DEFAULT_OP_TIMEOUT,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        }
    }

    /// The share of offered calls, fleet-wide, that retries may add (0.1 is 10%).
    /// Defaults to `0.1`.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// The most retries the shared bucket holds, and starts with. Defaults to `10`.
    pub fn reserve(mut self, reserve: u32) -> Self {
        self.reserve = reserve;
        self
    }

    /// Leases up to `tokens` tokens at a time (1 to 1024). More saves round trips when
    /// retries come in bursts; fewer keeps fewer tokens from the rest of the fleet.
    /// Defaults to `2`.
    pub fn lease(mut self, tokens: u32) -> Self {
        self.lease = tokens;
        self
    }

    /// Gives every exchange with Redis (connecting included) `timeout` to answer before
    /// the process falls back to its own bucket. Defaults to 100 ms.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Sends deposits, tops the lease up, and tries Redis again during an outage, every
    /// `interval` (and sooner when a retry takes the last leased token). Defaults to
    /// 100 ms.
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }

    /// The budget, with its background task started on the current tokio runtime. Never
    /// connects: the task does, at once, and the local bucket decides until Redis answers
    /// if it does not.
    ///
    /// # Errors
    ///
    /// Settings that cannot work (a ratio that is not a share from 0 to 1, a lease out of
    /// range, a zero timeout or interval), a URL that does not parse, or a call from
    /// outside a tokio runtime.
    pub fn build(self) -> Result<RetryBudget, FleetBudgetError> {
        if self.lease == 0 || self.lease > MAX_LEASE {
            return Err(FleetBudgetError::Lease(self.lease));
        }
        if self.op_timeout.is_zero() {
            return Err(FleetBudgetError::OpTimeout(self.op_timeout));
        }
        if self.sync_interval.is_zero() {
            return Err(FleetBudgetError::SyncInterval(self.sync_interval));
        }
        let client = redis::Client::open(self.url.as_str()).map_err(FleetBudgetError::Url)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| FleetBudgetError::NoRuntime)?;
        let state = Arc::new(State {
            lease: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            up: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            target: u64::from(self.lease),
            wake: Notify::new(),
        });
        let lease = Lease {
            state: state.clone(),
            key: self.key.clone(),
        };
        let budget = RetryBudget::with_shared(self.ratio, self.reserve, Box::new(lease))
            .map_err(FleetBudgetError::Config)?;
        let task = Task {
            state,
            client,
            script: redis::Script::new(EXCHANGE),
            redis_key: format!("{KEY_PREFIX}{}", self.key),
            key: self.key,
            max: u64::from(self.reserve) * TOKEN,
            op_timeout: self.op_timeout,
            sync_interval: self.sync_interval,
            connection: None,
        };
        runtime.spawn(task.run());
        Ok(budget)
    }
}

impl fmt::Debug for FleetBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("FleetBudget")
            .field("key", &self.key)
            .field("ratio", &self.ratio)
            .field("reserve", &self.reserve)
            .field("lease", &self.lease)
            .field("op_timeout", &self.op_timeout)
            .field("sync_interval", &self.sync_interval)
            .finish_non_exhaustive()
    }
}

/// Why a [`FleetBudget`] could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum FleetBudgetError {
    /// The ratio is not a share from 0 to 1.
    Config(ConfigError),
    /// The lease is 0, or over 1024 tokens.
    Lease(u32),
    /// The Redis operation timeout is zero.
    OpTimeout(Duration),
    /// The sync interval is zero.
    SyncInterval(Duration),
    /// The Redis URL does not parse.
    Url(redis::RedisError),
    /// `build` was called outside a tokio runtime, which the background task needs.
    NoRuntime,
}

impl fmt::Display for FleetBudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetBudgetError::Config(e) => fmt::Display::fmt(e, f),
            FleetBudgetError::Lease(n) => {
                write!(
                    f,
                    "a lease of {n} tokens is out of range (1 to {MAX_LEASE})"
                )
            }
            FleetBudgetError::OpTimeout(_) => {
                f.write_str("a redis operation timeout must be over zero")
            }
            FleetBudgetError::SyncInterval(_) => f.write_str("a sync interval must be over zero"),
            FleetBudgetError::Url(_) => f.write_str("invalid redis url"),
            FleetBudgetError::NoRuntime => {
                f.write_str("a fleet budget must be built inside a tokio runtime")
            }
        }
    }
}

impl std::error::Error for FleetBudgetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FleetBudgetError::Config(e) => Some(e),
            FleetBudgetError::Url(e) => Some(e),
            _ => None,
        }
    }
}

/// What the budget's clones and the background task share.
struct State {
    /// Whole tokens leased from Redis and not handed out.
    lease: AtomicU64,
    /// Deposits not sent to Redis yet, in millionths of a token.
    unsent: AtomicU64,
    /// Whether Redis answered the last exchange (and, before the first, that it is
    /// expected to): the shared bucket decides only while it did.
    up: AtomicBool,
    /// The budget is dropped: the task returns the lease and ends.
    closed: AtomicBool,
    /// The lease size, in whole tokens.
    target: u64,
    /// Wakes the task before its next sync: the lease ran low, or the budget was dropped.
    wake: Notify,
}

impl State {
    /// Takes what the next exchange sends out of the shared state: the deposits, the
    /// tokens above the lease size (all of them once the budget is dropped), and the
    /// tokens wanted to fill the lease.
    fn take_exchange(&self, closed: bool) -> Exchange {
        let deposit = self.unsent.swap(0, Ordering::AcqRel);
        if !closed && !self.up.load(Ordering::Acquire) {
            // Only a probe while Redis is down: the lease is neither topped up (the local
            // bucket decides, and a token leased now would be withheld from the fleet) nor
            // returned (an exchange that fails would lose it).
            return Exchange::default();
        }
        let keep = if closed { 0 } else { self.target };
        let mut give = 0;
        // The closure always answers `Some`: the update cannot fail.
        let held = self
            .lease
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                give = l.saturating_sub(keep);
                Some(l - give)
            })
            .unwrap_or_else(|l| l)
            - give;
        Exchange {
            deposit,
            give,
            want: keep.saturating_sub(held),
        }
    }
}

/// The shared bucket as the budget sees it: the lease held in this process.
struct Lease {
    state: Arc<State>,
    key: String,
}

impl SharedBucket for Lease {
    fn deposit(&self, amount: u64) {
        // During an outage the local bucket is funded instead (the budget deposits there
        // on every call); sending these too would count them twice.
        if self.state.up.load(Ordering::Acquire) {
            self.state.unsent.fetch_add(amount, Ordering::AcqRel);
        }
    }

    fn take(&self) -> Take {
        let state = &self.state;
        if !state.up.load(Ordering::Acquire) {
            return Take::Unavailable;
        }
        match state
            .lease
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(1))
        {
            Ok(before) => {
                if before <= state.target {
                    state.wake.notify_one();
                }
                Take::Taken
            }
            Err(_) => {
                state.wake.notify_one();
                Take::Empty
            }
        }
    }

    fn give_back(&self) {
        self.state.lease.fetch_add(1, Ordering::AcqRel);
    }

    fn available(&self) -> Option<f64> {
        let state = &self.state;
        state
            .up
            .load(Ordering::Acquire)
            .then(|| state.lease.load(Ordering::Acquire) as f64)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        self.state.wake.notify_one();
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetLease")
            .field("key", &self.key)
            .field("redis_up", &self.state.up.load(Ordering::Acquire))
            .field("leased", &self.state.lease.load(Ordering::Acquire))
            .finish()
    }
}

/// The background task: one exchange per sync, or sooner when woken.
struct Task {
    state: Arc<State>,
    client: redis::Client,
    script: redis::Script,
    /// The key as given, for the logs.
    key: String,
    redis_key: String,
    max: u64,
    op_timeout: Duration,
    sync_interval: Duration,
    connection: Option<redis::aio::MultiplexedConnection>,
}

/// What one exchange sends.
#[derive(Debug, Default, PartialEq, Eq)]
struct Exchange {
    /// Deposits, in millionths of a token.
    deposit: u64,
    /// Whole tokens returned from the lease.
    give: u64,
    /// Whole tokens wanted for the lease.
    want: u64,
}

impl Task {
    async fn run(mut self) {
        loop {
            let closed = self.state.closed.load(Ordering::Acquire);
            let exchange = self.state.take_exchange(closed);
            // An idle process whose Redis answers sends nothing; one whose Redis does not
            // tries it again at every sync.
            if exchange != Exchange::default() || !self.state.up.load(Ordering::Acquire) {
                let result = tokio::time::timeout(self.op_timeout, self.exchange(&exchange)).await;
                match result {
                    Ok(Ok(granted)) => self.answered(granted),
                    Ok(Err(error)) => self.failed(&error.to_string()),
                    Err(_) => self.failed(&format!("no answer within {:?}", self.op_timeout)),
                }
            }
            if closed {
                return;
            }
            // Woken early (the lease ran low, the budget was dropped) or at the next sync.
            let _ = tokio::time::timeout(self.sync_interval, self.state.wake.notified()).await;
        }
    }

    async fn exchange(&mut self, exchange: &Exchange) -> redis::RedisResult<u64> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self
                .connection
                .insert(self.client.get_multiplexed_async_connection().await?),
        };
        self.script
            .key(&self.redis_key)
            .arg(self.max)
            .arg(exchange.deposit)
            .arg(exchange.give)
            .arg(exchange.want)
            .arg(TOKEN)
            .invoke_async(connection)
            .await
    }

    fn answered(&self, granted: u64) {
        let state = &self.state;
        state.lease.fetch_add(granted, Ordering::AcqRel);
        if !state.up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                target: TARGET,
                key = %self.key,
                "redis answers again: the fleet retry budget is shared again"
            );
        }
    }

    fn failed(&mut self, error: &str) {
        // A connection that failed or timed out may be half-read: start afresh.
        self.connection = None;
        if self.state.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                target: TARGET,
                key = %self.key,
                "redis failed ({error}): retries go on under this process's own budget until redis answers again"
            );
        }
    }
}

impl Drop for Task {
    /// The task ends: the budget was dropped, or the runtime it was spawned on shut down
    /// (or it panicked). In the latter case no exchange comes any more, so the lease would
    /// run dry and refuse every retry: the process's own bucket decides from now on.
    fn drop(&mut self) {
        let state = &self.state;
        if !state.closed.load(Ordering::Acquire) {
            state.up.store(false, Ordering::Release);
            tracing::warn!(
                target: TARGET,
                key = %self.key,
                "the fleet retry budget's task ended (its runtime shut down): retries go on under this process's own budget, not shared again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(target: u64, lease: u64, unsent: u64, up: bool) -> State {
        State {
            lease: AtomicU64::new(lease),
            unsent: AtomicU64::new(unsent),
            up: AtomicBool::new(up),
            closed: AtomicBool::new(false),
            target,
            wake: Notify::new(),
        }
    }

    fn exchange(deposit: u64, give: u64, want: u64) -> Exchange {
        Exchange {
            deposit,
            give,
            want,
        }
    }

    #[test]
    fn an_exchange_sends_the_deposits_and_fills_the_lease() {
        let state = state(3, 1, 250_000, true);
        assert_eq!(state.take_exchange(false), exchange(250_000, 0, 2));
        assert_eq!(state.unsent.load(Ordering::Acquire), 0, "sent once");
        assert_eq!(state.take_exchange(false), exchange(0, 0, 2));
    }

    #[test]
    fn tokens_above_the_lease_size_go_back() {
        let state = state(2, 5, 0, true);
        assert_eq!(state.take_exchange(false), exchange(0, 3, 0));
        assert_eq!(state.lease.load(Ordering::Acquire), 2);
    }

    #[test]
    fn a_dropped_budget_returns_its_whole_lease() {
        let state = state(2, 2, 100, true);
        assert_eq!(state.take_exchange(true), exchange(100, 2, 0));
        assert_eq!(state.lease.load(Ordering::Acquire), 0);
    }

    #[test]
    fn while_redis_is_down_an_exchange_is_only_a_probe() {
        let state = state(2, 5, 100, false);
        assert_eq!(state.take_exchange(false), Exchange::default());
        assert_eq!(state.lease.load(Ordering::Acquire), 5, "the lease stays");
    }

    #[test]
    fn the_lease_serves_retries_while_redis_answers_and_stands_aside_when_not() {
        let state = Arc::new(state(1, 1, 0, true));
        let lease = Lease {
            state: state.clone(),
            key: "k".into(),
        };
        lease.deposit(100_000);
        assert_eq!(lease.take(), Take::Taken);
        assert_eq!(lease.take(), Take::Empty);
        lease.give_back();
        assert_eq!(lease.available(), Some(1.0));
        state.up.store(false, Ordering::Release);
        assert_eq!(lease.take(), Take::Unavailable);
        assert_eq!(lease.available(), None);
        lease.deposit(100_000);
        assert_eq!(
            state.unsent.load(Ordering::Acquire),
            100_000,
            "deposits during an outage fund the local bucket only"
        );
        drop(lease);
        assert!(state.closed.load(Ordering::Acquire));
    }

    #[test]
    fn impossible_settings_are_refused() {
        let fleet = || FleetBudget::new("redis://127.0.0.1/", "k");
        let refused = |b: FleetBudget| b.build().map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            refused(fleet().lease(0)),
            "a lease of 0 tokens is out of range (1 to 1024)"
        );
        assert!(refused(fleet().lease(1025)).contains("out of range"));
        assert!(refused(fleet().op_timeout(Duration::ZERO)).contains("over zero"));
        assert!(refused(fleet().sync_interval(Duration::ZERO)).contains("over zero"));
        assert!(refused(FleetBudget::new("http://x", "k")).contains("invalid redis url"));
        assert!(refused(fleet()).contains("inside a tokio runtime"));
    }

    #[test]
    fn a_budget_whose_task_ended_with_its_runtime_decides_alone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Nothing listens on port 1, but the task never ran an exchange: Redis counts as
        // up, and the lease is empty.
        let budget = runtime
            .block_on(async {
                FleetBudget::new("redis://127.0.0.1:1/", "k")
                    .reserve(1)
                    .build()
            })
            .unwrap();
        drop(runtime);
        let permit = budget.try_withdraw();
        assert!(
            permit.is_some(),
            "the local bucket's reserve, not an empty lease that never fills"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_ratio_that_is_not_a_share_is_refused() {
        let err = FleetBudget::new("redis://127.0.0.1/", "k")
            .ratio(2.0)
            .build()
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("not a share from 0 to 1"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
}
