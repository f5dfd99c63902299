//! The fleet rate limit: GCRA in Redis, slots leased in batches and handed out locally.

use crate::body::BoxError;
use crate::retry::SendLimit;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Even pacing: a fleet-wide limit is most often a server's per-second limit, and a fleet
/// that never bursts never trips it.
const DEFAULT_BURST: u32 = 1;
/// Slots leased per round trip at most: at 100 requests a second a process pays about one
/// round trip per 4 to 8 calls, and holds no more than 8 slots it may not use.
const DEFAULT_LEASE: u32 = 8;
/// Far under a call's own time limits, far over a Redis round trip (well under 1 ms on a
/// local network).
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(50);
/// The longest a call waits for its slot, and how far ahead a process leases: the same
/// one second the adaptive throttle lets a call queue.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// A process leases about what it was asked for in this much time.
const DEMAND_WINDOW: Duration = Duration::from_millis(100);
/// A leased slot not handed out this long after its time is dropped: a process that went
/// quiet must not send a burst of old slots later.
const SLOT_LIFETIME: Duration = Duration::from_secs(1);
/// How often a process whose Redis is down tries it again, while it has calls to pace.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Rates are counted in whole microseconds between slots.
const MAX_RATE: u32 = 1_000_000;
/// Slots a round trip may lease at most (the script loops once per slot).
const MAX_LEASE: u32 = 1024;
/// Every fleet rate limit's Redis key starts with this.
const KEY_PREFIX: &str = "resilient_http:rate:";

/// GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp) on
/// Redis's clock: grants up to `ARGV[3]` slots whose times are at most `ARGV[4]` µs away,
/// as offsets from now, after the fleet's backlog (the offset of its next free slot).
///
/// KEYS[1]: the theoretical arrival time, µs of Redis's clock. ARGV: µs between slots,
/// burst tolerance in µs, slots wanted, horizon in µs.
const GCRA_LEASE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local reply = {0}
for _ = 1, wanted do
  local at = tat - tolerance
  if at < now then at = now end
  if at - now > horizon then break end
  reply[#reply + 1] = at - now
  tat = tat + interval
end
local backlog = tat - tolerance - now
if backlog < 0 then backlog = 0 end
reply[1] = backlog
if #reply > 1 then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
return reply
";

/// A rate limit shared by every process of a fleet through Redis: a
/// [`SendLimit`] for [`Builder::send_limit`](crate::retry::Builder::send_limit).
///
/// The limit is GCRA (a token bucket kept as one timestamp) at `per_second` with a burst
/// of `burst`, run in one Lua script on Redis's own clock, so that every process counts
/// against the same slots whatever its clock says. A process leases up to `lease` slots
/// per round trip, about as many as it was asked for in the last 100 ms, from a task of
/// its own that is woken when its lease runs low; [`reserve`](SendLimit::reserve) hands
/// them out without touching the network:
///
/// - a leased slot that is due now sends at once; one in the future is waited for;
/// - a call whose next slot comes at or after its deadline, or when every slot of the
///   next second is taken, ends at once as "gave up while retryable" with
///   [`StopReason::Throttled`](crate::StopReason::Throttled) and a [`FleetLimited`]
///   error;
/// - a call that finds the lease empty while the fleet had room (the first call after a
///   quiet spell, or a burst quicker than a round trip) goes at the fleet's next free
///   time, paced by the in-process limit, and the next lease takes its slot from Redis
///   after the fact, so that the fleet's count stays right. Up to `lease` calls are owed
///   to Redis at once; past that (Redis answers too slowly to keep up), calls are paced
///   by the process alone, as during an outage.
///
/// Every Redis operation has a time limit (50 ms by default). When Redis times out or
/// fails, the process goes on alone under an in-process GCRA at the same rate and burst,
/// logs one `warn` (target `resilient_http::fleet`) for the outage, tries Redis again
/// every 100 ms while it has calls to pace, and shares the limit again from the first
/// answer. A fleet of N processes may then send up to N times the rate.
///
/// Clones share one lease; the lease task ends when the last clone is dropped. If it ends
/// before (the runtime it was spawned on shut down), a `warn` says so and the process
/// paces itself alone from then on.
#[derive(Clone)]
pub struct FleetRateLimit {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.task.abort();
    }
}

/// What the limit and its lease task share.
struct Shared {
    settings: Settings,
    state: Mutex<State>,
    // Wakes the lease task: a lease runs low, or a call came while Redis is down.
    wake: Notify,
    // The limit was dropped: its lease task ends, as it should.
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock; a poisoned state is still consistent numbers.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Settings {
    key: Arc<str>,
    redis_key: String,
    per_second: u32,
    burst: u32,
    lease: u32,
    op_timeout: Duration,
    // The GCRA's emission interval and burst tolerance, in whole microseconds (rounded
    // up: never faster than the rate).
    interval_us: u64,
    tolerance_us: u64,
}

impl Settings {
    fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us)
    }
}

impl FleetRateLimit {
    /// A limit of `per_second` sends a second, shared under `key` (an account, say
    /// `"acct_123"`, or an account and an endpoint) by every process that uses the Redis
    /// at `redis_url` (`redis://host:6379/`, see the `redis` crate for the forms).
    pub fn builder(
        redis_url: impl Into<String>,
        key: impl Into<String>,
        per_second: u32,
    ) -> FleetRateLimitBuilder {
        FleetRateLimitBuilder::new(Redis::Url(redis_url.into()), key.into(), per_second)
    }

    /// The same over a connection manager the application has already (its own Redis
    /// settings, one connection for several uses). A manager cannot be rebuilt from here:
    /// it must reconnect by itself, as `ConnectionManager` does.
    pub fn builder_with_manager(
        manager: ConnectionManager,
        key: impl Into<String>,
        per_second: u32,
    ) -> FleetRateLimitBuilder {
        FleetRateLimitBuilder::new(Redis::Manager(manager), key.into(), per_second)
    }

    /// Whether the limit is shared through Redis now: false while Redis is down and the
    /// process paces itself alone.
    pub fn is_shared(&self) -> bool {
        self.inner.shared.lock().mode == Mode::Shared
    }

    /// The key the limit is shared under, as given to the builder.
    pub fn key(&self) -> &str {
        &self.inner.shared.settings.key
    }
}

impl SendLimit for FleetRateLimit {
    fn reserve(&self, now: Instant, latest: Instant) -> Result<Duration, BoxError> {
        let shared = &self.inner.shared;
        let settings = &shared.settings;
        let mut state = shared.lock();
        let answer = state.reserve(now, latest, settings);
        let wake = state.wants_lease(now, settings);
        let mode = state.mode;
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
        answer.map_err(|reason| {
            Box::new(FleetLimited {
                key: settings.key.clone(),
                reason,
                shared: mode == Mode::Shared,
            }) as BoxError
        })
    }
}

impl fmt::Debug for FleetRateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.shared.settings;
        f.debug_struct("FleetRateLimit")
            .field("key", &s.key)
            .field("per_second", &s.per_second)
            .field("burst", &s.burst)
            .field("lease", &s.lease)
            .field("op_timeout", &s.op_timeout)
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// Where the lease task finds Redis.
enum Redis {
    Url(String),
    Manager(ConnectionManager),
}

/// Settings of a [`FleetRateLimit`], from [`FleetRateLimit::builder`].
#[must_use = "a builder does nothing until built"]
pub struct FleetRateLimitBuilder {
    redis: Redis,
    key: String,
    per_second: u32,
    burst: u32,
    lease: u32,
    op_timeout: Duration,
}

impl FleetRateLimitBuilder {
    fn new(redis: Redis, key: String, per_second: u32) -> Self {
        FleetRateLimitBuilder {
            redis,
            key,
            per_second,
            burst: DEFAULT_BURST,
            lease: DEFAULT_LEASE,
            op_timeout: DEFAULT_OP_TIMEOUT,
        }
    }

    /// Lets the fleet send up to `burst` at once after a quiet spell (at most the rate's
    /// own count: a server's per-second bucket). Defaults to `1`: even pacing.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Leases up to `slots` slots per Redis round trip (1 to 1024). More saves round
    /// trips under load; fewer wastes fewer slots when a process goes quiet. Defaults to
    /// `8`.
    pub fn lease(mut self, slots: u32) -> Self {
        self.lease = slots;
        self
    }

    /// Gives every Redis operation (connecting included) `timeout` to answer before the
    /// process goes on alone. Defaults to 50 ms.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The limit, with its lease task started on the current tokio runtime. Refuses
    /// settings that cannot work, a URL that does not parse, and a call from outside a
    /// runtime; never connects (a Redis that is down is the fallback's business).
    pub fn build(self) -> Result<FleetRateLimit, FleetRateLimitError> {
        if self.per_second == 0 || self.per_second > MAX_RATE {
            return Err(FleetRateLimitError::Rate(self.per_second));
        }
        if self.burst == 0 {
            return Err(FleetRateLimitError::Burst(self.burst));
        }
        if self.lease == 0 || self.lease > MAX_LEASE {
            return Err(FleetRateLimitError::Lease(self.lease));
        }
        if self.op_timeout.is_zero() {
            return Err(FleetRateLimitError::OpTimeout(self.op_timeout));
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| FleetRateLimitError::NoRuntime)?;
        let connection = match self.redis {
            Redis::Url(url) => Connection::Url {
                client: redis::Client::open(url.as_str()).map_err(FleetRateLimitError::Url)?,
                manager: None,
            },
            Redis::Manager(manager) => Connection::Given(manager),
        };
        let interval_us = u64::from(MAX_RATE).div_ceil(u64::from(self.per_second));
        let settings = Settings {
            redis_key: format!("{KEY_PREFIX}{}", self.key),
            key: self.key.into(),
            per_second: self.per_second,
            burst: self.burst,
            lease: self.lease,
            op_timeout: self.op_timeout,
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(self.burst - 1)),
        };
        let state = State::new(&settings);
        let shared = Arc::new(Shared {
            settings,
            state: Mutex::new(state),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let task = runtime
            .spawn(lease_task(LeaseTaskEnd(shared.clone()), connection))
            .abort_handle();
        Ok(FleetRateLimit {
            inner: Arc::new(Inner { shared, task }),
        })
    }
}

impl fmt::Debug for FleetRateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        let redis = match self.redis {
            Redis::Url(_) => "url",
            Redis::Manager(_) => "connection manager",
        };
        f.debug_struct("FleetRateLimitBuilder")
            .field("redis", &redis)
            .field("key", &self.key)
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .field("lease", &self.lease)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// Why a [`FleetRateLimit`] could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum FleetRateLimitError {
    /// The rate is 0, or over a million a second.
    Rate(u32),
    /// The burst is 0.
    Burst(u32),
    /// The lease is 0, or over 1024 slots.
    Lease(u32),
    /// The Redis operation timeout is zero.
    OpTimeout(Duration),
    /// The Redis URL does not parse.
    Url(RedisError),
    /// `build` was called outside a tokio runtime, which the lease task needs.
    NoRuntime,
}

impl fmt::Display for FleetRateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetRateLimitError::Rate(rate) => {
                write!(
                    f,
                    "a rate of {rate} a second is out of range (1 to {MAX_RATE})"
                )
            }
            FleetRateLimitError::Burst(_) => f.write_str("a burst must allow at least one send"),
            FleetRateLimitError::Lease(n) => {
                write!(f, "a lease of {n} slots is out of range (1 to {MAX_LEASE})")
            }
            FleetRateLimitError::OpTimeout(_) => {
                f.write_str("a redis operation timeout must be over zero")
            }
            FleetRateLimitError::Url(_) => f.write_str("invalid redis url"),
            FleetRateLimitError::NoRuntime => {
                f.write_str("a fleet limit must be built inside a tokio runtime")
            }
        }
    }
}

impl std::error::Error for FleetRateLimitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FleetRateLimitError::Url(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a [`FleetRateLimit`] did not send an attempt: the cause of a call that ended with
/// [`StopReason::Throttled`](crate::StopReason::Throttled). Reach it through
/// [`Error::underlying_error`](crate::Error::underlying_error) and downcast.
#[derive(Clone, Debug)]
pub struct FleetLimited {
    key: Arc<str>,
    reason: Refusal,
    shared: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    // The next slot comes at or after the call's deadline.
    AfterDeadline,
    // Every slot of the next `MAX_WAIT` is taken.
    Full,
}

impl FleetLimited {
    /// The limit's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the next slot came after the call's deadline (else: no slot within the one
    /// second a call may wait).
    pub fn is_past_deadline(&self) -> bool {
        self.reason == Refusal::AfterDeadline
    }

    /// Whether the process was pacing itself alone (Redis down) when it refused.
    pub fn is_fallback(&self) -> bool {
        !self.shared
    }
}

impl fmt::Display for FleetLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fleet rate limit for `{}`: ", self.key)?;
        match self.reason {
            Refusal::AfterDeadline => f.write_str("the next slot comes after the call's deadline"),
            Refusal::Full => write!(
                f,
                "every slot of the next {} ms is taken",
                MAX_WAIT.as_millis()
            ),
        }?;
        if !self.shared {
            f.write_str(" (redis unreachable: this process's own limit)")?;
        }
        Ok(())
    }
}

impl std::error::Error for FleetLimited {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    // Slots come from Redis.
    Shared,
    // Redis is down: the in-process limit paces alone.
    Local,
}

/// The process's side of the limit, under the lock.
#[derive(Debug)]
struct State {
    mode: Mode,
    // Leased slots not handed out yet, earliest first.
    slots: VecDeque<Instant>,
    // Calls sent on credit whose slots the next lease takes.
    debt: u32,
    // When the fleet's next free slot is due, as of the last lease.
    fleet_free_at: Option<Instant>,
    // When a lease last came back short: every slot within `MAX_WAIT` was taken.
    full_since: Option<Instant>,
    // The lease task sleeps until then (a probe interval, or the fleet's next slot).
    not_before: Option<Instant>,
    demand: Demand,
    local: Gcra,
}

impl State {
    fn new(settings: &Settings) -> Self {
        State {
            mode: Mode::Shared,
            slots: VecDeque::new(),
            debt: 0,
            fleet_free_at: None,
            full_since: None,
            not_before: None,
            demand: Demand::default(),
            local: Gcra::new(settings),
        }
    }

    /// The wait before an attempt asked for at `now` may be sent, or why not.
    fn reserve(
        &mut self,
        now: Instant,
        latest: Instant,
        settings: &Settings,
    ) -> Result<Duration, Refusal> {
        self.demand.record(now);
        if self.mode == Mode::Local {
            return self.local.take(now, now, latest);
        }
        if let Some(too_old) = now.checked_sub(SLOT_LIFETIME) {
            while self.slots.front().is_some_and(|&slot| slot < too_old) {
                self.slots.pop_front();
            }
        }
        if let Some(&slot) = self.slots.front() {
            if slot >= latest {
                return Err(Refusal::AfterDeadline);
            }
            self.slots.pop_front();
            return Ok(slot.saturating_duration_since(now));
        }
        if self
            .full_since
            .is_some_and(|at| now.saturating_duration_since(at) < MAX_WAIT)
        {
            return Err(Refusal::Full);
        }
        let earliest = self.fleet_free_at.map_or(now, |at| at.max(now));
        let wait = self.local.take(earliest, now, latest)?;
        if self.debt < settings.lease {
            self.debt += 1;
        }
        Ok(wait)
    }

    /// Whether the lease task has work after a call at `now`.
    fn wants_lease(&self, now: Instant, settings: &Settings) -> bool {
        if self.not_before.is_some_and(|at| now < at) {
            return false;
        }
        match self.mode {
            Mode::Local => true,
            Mode::Shared => self.slots_wanted(now, settings) > 0,
        }
    }

    /// How many slots to ask Redis for at `now`: the debt, and enough to cover the
    /// demand of the next window once fewer than half of that are held. In a probe (Redis
    /// down), at least one while calls come.
    fn slots_wanted(&self, now: Instant, settings: &Settings) -> u32 {
        let expected = self.demand.count(now).min(settings.lease);
        let held = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        match self.mode {
            Mode::Local => expected,
            Mode::Shared if self.debt == 0 && held.saturating_mul(2) >= expected => 0,
            Mode::Shared => (self.debt + expected.saturating_sub(held)).clamp(1, settings.lease),
        }
    }

    /// What the lease task does next at `now`.
    fn plan(&self, now: Instant, settings: &Settings) -> Plan {
        if let Some(at) = self.not_before.filter(|&at| now < at) {
            return Plan::Sleep(at);
        }
        match self.slots_wanted(now, settings) {
            0 => Plan::Idle,
            n => Plan::Lease(n),
        }
    }

    /// Takes in a lease of `asked` slots answered at `received`: `reply` is the fleet's
    /// backlog then the granted slots, in microseconds from Redis's now. Whether the
    /// process was alone until now.
    fn on_lease(
        &mut self,
        received: Instant,
        asked: u32,
        reply: &[i64],
        settings: &Settings,
    ) -> bool {
        // Redis's now lies between the request and `received`: the slots are placed no
        // earlier than they are due. A reply out of range (not this script's) is clamped.
        let at = |micros: i64| {
            let offset =
                Duration::from_micros(u64::try_from(micros).unwrap_or(0)).min(2 * MAX_WAIT);
            received.checked_add(offset).unwrap_or(received)
        };
        let (backlog, granted) = reply.split_first().map_or((0, &[][..]), |(b, g)| (*b, g));
        let limit = usize::try_from(settings.lease).unwrap_or(usize::MAX);
        for &offset in granted.iter().take(limit) {
            if self.debt > 0 {
                // The slot of a call sent on credit.
                self.debt -= 1;
            } else {
                self.slots.push_back(at(offset));
            }
        }
        self.slots.make_contiguous().sort_unstable();
        let free_at = at(backlog);
        self.fleet_free_at = Some(free_at);
        let short = granted.len() < usize::try_from(asked).unwrap_or(usize::MAX);
        self.full_since = short.then_some(received);
        // Short: the next slot enters the horizon at `free_at - MAX_WAIT`; ask again then.
        self.not_before = short.then(|| {
            let next = free_at.checked_sub(MAX_WAIT).unwrap_or(received);
            next.max(
                received
                    .checked_add(settings.interval())
                    .unwrap_or(received),
            )
        });
        let was_alone = self.mode == Mode::Local;
        self.mode = Mode::Shared;
        was_alone
    }

    /// Redis failed or timed out at `now`: the process goes on alone. Whether this starts
    /// an outage (the limit was shared until now).
    fn on_failure(&mut self, now: Instant) -> bool {
        let started = self.mode == Mode::Shared;
        self.mode = Mode::Local;
        // Leased slots are the fleet's and stay valid, but the in-process limit now paces
        // every call; calls on credit were paced by it too.
        self.slots.clear();
        self.debt = 0;
        self.fleet_free_at = None;
        self.full_since = None;
        self.not_before = now.checked_add(PROBE_INTERVAL);
        started
    }
}

/// The lease task's next step.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Idle,
    Sleep(Instant),
    Lease(u32),
}

/// Calls counted in windows of [`DEMAND_WINDOW`]: the current one and the one before.
/// The windows' ends are kept rather than their start, so that a call only compares
/// instants (the hot path does no duration arithmetic here).
#[derive(Debug, Default)]
struct Demand {
    // The current window ends at the first; the count goes stale at the second.
    ends: Option<(Instant, Instant)>,
    this: u32,
    last: u32,
}

impl Demand {
    fn record(&mut self, now: Instant) {
        match self.ends {
            Some((end, _)) if now < end => {}
            Some((_, stale)) => {
                self.last = if now < stale { self.this } else { 0 };
                self.this = 0;
                self.ends = Self::windows_from(now);
            }
            None => self.ends = Self::windows_from(now),
        }
        self.this = self.this.saturating_add(1);
    }

    fn windows_from(now: Instant) -> Option<(Instant, Instant)> {
        let end = now.checked_add(DEMAND_WINDOW)?;
        Some((end, end.checked_add(DEMAND_WINDOW)?))
    }

    /// About how many calls came in the last window.
    fn count(&self, now: Instant) -> u32 {
        match self.ends {
            Some((end, _)) if now < end => self.this.max(self.last),
            Some((_, stale)) if now < stale => self.this,
            _ => 0,
        }
    }
}

/// The in-process limit: the same GCRA on tokio's clock.
#[derive(Debug)]
struct Gcra {
    interval: Duration,
    tolerance: Duration,
    // The theoretical arrival time of the next send.
    tat: Option<Instant>,
}

impl Gcra {
    fn new(settings: &Settings) -> Self {
        Gcra {
            interval: settings.interval(),
            tolerance: Duration::from_micros(settings.tolerance_us),
            tat: None,
        }
    }

    /// A slot no earlier than `earliest`, for a call asking at `now`: the wait, or why
    /// not (nothing taken).
    fn take(
        &mut self,
        earliest: Instant,
        now: Instant,
        latest: Instant,
    ) -> Result<Duration, Refusal> {
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        let conforming = tat.checked_sub(self.tolerance).unwrap_or(now);
        let at = conforming.max(earliest);
        let wait = at.saturating_duration_since(now);
        if wait > MAX_WAIT {
            return Err(Refusal::Full);
        }
        if at >= latest {
            return Err(Refusal::AfterDeadline);
        }
        // GCRA: the next arrival is due one interval after this one (or after the last,
        // if that is later).
        self.tat = Some(tat.max(at).checked_add(self.interval).unwrap_or(tat));
        Ok(wait)
    }
}

/// The lease task's connection to Redis.
enum Connection {
    // Built from a URL: rebuilt after every failure, so that a connection stuck on an
    // error it will not retry (a server still loading, say) cannot keep the fleet apart.
    Url {
        client: redis::Client,
        manager: Option<ConnectionManager>,
    },
    Given(ConnectionManager),
}

impl Connection {
    fn manager(&mut self, timeout: Duration) -> Result<&mut ConnectionManager, RedisError> {
        match self {
            Connection::Url { client, manager } => {
                let built = match manager.take() {
                    Some(built) => built,
                    None => {
                        // One connection attempt, within the operation's own time limit;
                        // the task's probes are the retries.
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(timeout))
                            .set_response_timeout(Some(timeout))
                            .set_number_of_retries(0);
                        ConnectionManager::new_lazy_with_config(client.clone(), config)?
                    }
                };
                Ok(manager.insert(built))
            }
            Connection::Given(manager) => Ok(manager),
        }
    }

    fn reset(&mut self) {
        if let Connection::Url { manager, .. } = self {
            *manager = None;
        }
    }
}

/// Why a lease did not come back.
enum LeaseFailure {
    Redis(RedisError),
    Timeout(Duration),
}

impl fmt::Display for LeaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseFailure::Redis(e) => write!(f, "{e}"),
            LeaseFailure::Timeout(limit) => {
                write!(f, "no answer within {} ms", limit.as_millis())
            }
        }
    }
}

/// Says, as the lease task ends, whether it ended before the limit (its runtime shut down):
/// the process then paces itself alone for good.
struct LeaseTaskEnd(Arc<Shared>);

impl Drop for LeaseTaskEnd {
    fn drop(&mut self) {
        if !self.0.closed.load(Ordering::Acquire) {
            self.0.lock().mode = Mode::Local;
            tracing::warn!(
                target: "resilient_http::fleet",
                key = &*self.0.settings.key,
                "the fleet rate limit's lease task ended (its runtime shut down): this process paces itself alone from now on"
            );
        }
    }
}

/// Leases slots while calls want them; probes Redis while it is down.
/// Takes its `shared` in a [`LeaseTaskEnd`], so that a task dropped before it first ran
/// says so too.
async fn lease_task(end: LeaseTaskEnd, mut connection: Connection) {
    let shared = &end.0;
    let settings = &shared.settings;
    let script = Script::new(GCRA_LEASE);
    let horizon_us = u64::try_from(MAX_WAIT.as_micros()).unwrap_or(u64::MAX);
    loop {
        let plan = shared.lock().plan(Instant::now(), settings);
        let asked = match plan {
            Plan::Idle => {
                shared.wake.notified().await;
                continue;
            }
            Plan::Sleep(until) => {
                tokio::time::sleep_until(until).await;
                continue;
            }
            Plan::Lease(n) => n,
        };
        let lease = async {
            let manager = connection.manager(settings.op_timeout)?;
            script
                .key(&settings.redis_key)
                .arg(settings.interval_us)
                .arg(settings.tolerance_us)
                .arg(asked)
                .arg(horizon_us)
                .invoke_async::<Vec<i64>>(manager)
                .await
        };
        let answer = match tokio::time::timeout(settings.op_timeout, lease).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(LeaseFailure::Redis(e)),
            Err(_) => Err(LeaseFailure::Timeout(settings.op_timeout)),
        };
        let received = Instant::now();
        match answer {
            Ok(reply) => {
                let was_alone = shared.lock().on_lease(received, asked, &reply, settings);
                if was_alone {
                    tracing::info!(
                        target: "resilient_http::fleet",
                        key = &*settings.key,
                        "redis answers again: the fleet rate limit is shared again"
                    );
                }
            }
            Err(failure) => {
                connection.reset();
                if shared.lock().on_failure(received) {
                    tracing::warn!(
                        target: "resilient_http::fleet",
                        key = &*settings.key,
                        "redis failed ({failure}): this process paces itself alone at {} a second until redis answers again",
                        settings.per_second
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings(per_second: u32, burst: u32, lease: u32) -> Settings {
        let interval_us = u64::from(MAX_RATE).div_ceil(u64::from(per_second));
        Settings {
            key: "acct_1".into(),
            redis_key: format!("{KEY_PREFIX}acct_1"),
            per_second,
            burst,
            lease,
            op_timeout: DEFAULT_OP_TIMEOUT,
            interval_us,
            tolerance_us: interval_us * u64::from(burst - 1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_gcra_paces_at_the_rate_after_its_burst() {
        let s = settings(10, 3, 8);
        let mut gcra = Gcra::new(&s);
        let now = Instant::now();
        let latest = now + 10 * MAX_WAIT;
        let waits: Vec<_> = (0..6)
            .map(|_| gcra.take(now, now, latest).unwrap())
            .collect();
        assert_eq!(
            waits,
            [0, 0, 0, 100, 200, 300].map(|ms| ms * MS),
            "a burst of 3, then one every 100 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_gcra_refuses_past_the_deadline_or_a_second_without_taking() {
        let s = settings(2, 1, 8);
        let mut gcra = Gcra::new(&s);
        let now = Instant::now();
        assert_eq!(gcra.take(now, now, now + MAX_WAIT), Ok(Duration::ZERO));
        assert_eq!(
            gcra.take(now, now, now + 400 * MS),
            Err(Refusal::AfterDeadline)
        );
        // Nothing was taken: the next slot is still 500 ms away.
        assert_eq!(gcra.take(now, now, now + MAX_WAIT), Ok(500 * MS));
        assert_eq!(gcra.take(now, now, now + 10 * MAX_WAIT), Ok(1000 * MS));
        assert_eq!(gcra.take(now, now, now + 10 * MAX_WAIT), Err(Refusal::Full));
    }

    #[tokio::test(start_paused = true)]
    async fn leased_slots_are_handed_out_in_order_and_old_ones_dropped() {
        let s = settings(100, 1, 8);
        let mut state = State::new(&s);
        let now = Instant::now();
        state.on_lease(now, 3, &[30_000, 0, 10_000, 20_000], &s);
        assert_eq!(state.slots.len(), 3);
        let latest = now + 10 * MAX_WAIT;
        assert_eq!(state.reserve(now, latest, &s), Ok(Duration::ZERO));
        assert_eq!(state.reserve(now, latest, &s), Ok(10 * MS));
        // A slot at or after the deadline is kept for a call that can wait for it.
        assert_eq!(
            state.reserve(now, now + 20 * MS, &s),
            Err(Refusal::AfterDeadline)
        );
        let later = now + SLOT_LIFETIME + 30 * MS;
        // The last slot is too old now: the call goes on credit.
        assert_eq!(
            state.reserve(later, later + MAX_WAIT, &s),
            Ok(Duration::ZERO)
        );
        assert!(state.slots.is_empty());
        assert_eq!(state.debt, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_on_credit_waits_for_the_fleets_next_free_slot_and_the_lease_repays_it() {
        let s = settings(100, 1, 8);
        let mut state = State::new(&s);
        let now = Instant::now();
        state.on_lease(now, 1, &[25_000, 15_000], &s);
        let latest = now + MAX_WAIT;
        assert_eq!(state.reserve(now, latest, &s), Ok(15 * MS));
        // The lease is empty: the next call goes when the fleet was last known free.
        assert_eq!(state.reserve(now, latest, &s), Ok(25 * MS));
        assert_eq!(state.debt, 1);
        assert_eq!(
            state.plan(now, &s),
            Plan::Lease(3),
            "the debt, and the window's two calls"
        );
        state.on_lease(now, 3, &[55_000, 30_000, 40_000, 50_000], &s);
        assert_eq!(state.debt, 0);
        assert_eq!(
            state.slots,
            [now + 40 * MS, now + 50 * MS],
            "the first slot paid the debt"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_one_lease_of_credit_calls_are_paced_by_the_process_alone() {
        let s = settings(100, 1, 2);
        let mut state = State::new(&s);
        let now = Instant::now();
        let latest = now + MAX_WAIT;
        let waits: Vec<_> = (0..4)
            .map(|_| state.reserve(now, latest, &s).unwrap())
            .collect();
        assert_eq!(waits, [0, 10, 20, 30].map(|ms| ms * MS));
        assert_eq!(state.debt, 2, "owed to Redis: one lease");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lease_means_the_fleet_is_full_and_the_task_waits_for_its_next_slot() {
        let s = settings(10, 1, 8);
        let mut state = State::new(&s);
        let now = Instant::now();
        // Asked for 4, got 1 at 950 ms; the fleet's next slot is at 1050 ms.
        state.on_lease(now, 4, &[1_050_000, 950_000], &s);
        let latest = now + 2 * MAX_WAIT;
        assert_eq!(state.reserve(now, latest, &s), Ok(950 * MS));
        assert_eq!(state.reserve(now, latest, &s), Err(Refusal::Full));
        assert_eq!(state.plan(now, &s), Plan::Sleep(now + 100 * MS));
        // A full lease clears it.
        let then = now + 100 * MS;
        state.on_lease(then, 1, &[1_000_000, 950_000], &s);
        assert_eq!(state.reserve(then, then + 2 * MAX_WAIT, &s), Ok(950 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_the_process_paces_alone_and_probes_every_interval() {
        let s = settings(10, 1, 8);
        let mut state = State::new(&s);
        let now = Instant::now();
        state.on_lease(now, 2, &[0, 0, 0], &s);
        assert!(state.on_failure(now), "an outage starts");
        assert!(!state.on_failure(now), "the same outage");
        let latest = now + 2 * MAX_WAIT;
        assert_eq!(state.reserve(now, latest, &s), Ok(Duration::ZERO));
        assert_eq!(state.reserve(now, latest, &s), Ok(100 * MS));
        assert!(!state.wants_lease(now, &s), "not before the probe interval");
        let probe = now + PROBE_INTERVAL;
        assert!(state.wants_lease(probe, &s));
        assert_eq!(state.plan(probe, &s), Plan::Lease(2));
        assert!(
            state.on_lease(probe, 2, &[0, 0, 100_000], &s),
            "shared again"
        );
        assert_eq!(state.mode, Mode::Shared);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_process_asks_for_nothing_and_a_busy_one_for_its_windows_demand() {
        let s = settings(1000, 1, 8);
        let mut state = State::new(&s);
        let now = Instant::now();
        assert_eq!(state.plan(now, &s), Plan::Idle);
        state.on_lease(now, 1, &[0, 0], &s);
        for _ in 0..20 {
            state.demand.record(now);
        }
        assert_eq!(state.plan(now, &s), Plan::Lease(7), "8 at most, 1 held");
        let quiet = now + 3 * DEMAND_WINDOW;
        assert_eq!(state.plan(quiet, &s), Plan::Idle);
    }

    #[test]
    fn a_refusal_says_which_limit_and_why_in_lower_case() {
        let refusal = FleetLimited {
            key: "acct_1".into(),
            reason: Refusal::Full,
            shared: false,
        };
        assert_eq!(
            refusal.to_string(),
            "fleet rate limit for `acct_1`: every slot of the next 1000 ms is taken \
             (redis unreachable: this process's own limit)"
        );
        assert!(refusal.is_fallback());
        assert!(!refusal.is_past_deadline());
    }

    #[tokio::test]
    async fn impossible_settings_are_refused_at_build_time() {
        let url = "redis://127.0.0.1:1/";
        let err = |b: FleetRateLimitBuilder| b.build().unwrap_err().to_string();
        assert_eq!(
            err(FleetRateLimit::builder(url, "k", 0)),
            "a rate of 0 a second is out of range (1 to 1000000)"
        );
        assert!(err(FleetRateLimit::builder(url, "k", 1).burst(0)).contains("burst"));
        assert!(err(FleetRateLimit::builder(url, "k", 1).lease(0)).contains("lease"));
        assert!(err(FleetRateLimit::builder(url, "k", 1).lease(2000)).contains("lease"));
        assert!(
            err(FleetRateLimit::builder(url, "k", 1).op_timeout(Duration::ZERO))
                .contains("timeout")
        );
        assert_eq!(
            err(FleetRateLimit::builder("http://nope", "k", 1)),
            "invalid redis url"
        );
    }

    #[test]
    fn a_builder_does_not_print_its_url_which_may_hold_a_password() {
        let builder = FleetRateLimit::builder("redis://:hunter2@127.0.0.1:1/", "k", 1);
        assert!(!format!("{builder:?}").contains("hunter2"));
    }

    #[test]
    fn a_limit_whose_lease_task_ended_with_its_runtime_paces_alone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let limit = runtime
            .block_on(async { FleetRateLimit::builder("redis://127.0.0.1:1/", "k", 10).build() })
            .unwrap();
        assert!(limit.is_shared(), "no lease was tried yet");
        drop(runtime);
        assert!(!limit.is_shared(), "the task is gone: it paces itself");
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(limit.reserve(now, later).unwrap(), Duration::ZERO);
        assert_eq!(
            limit.reserve(now, later).unwrap(),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let err = FleetRateLimit::builder("redis://127.0.0.1:1/", "k", 1)
            .build()
            .unwrap_err();
        assert!(matches!(err, FleetRateLimitError::NoRuntime));
    }
}
