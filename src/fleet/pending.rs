//! [`RedisStore`]: the reconciler's pending calls in Redis, shared by every process.

use crate::stripe::reconcile::{Pending, PendingStore, StoreError, StoreOp};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TARGET: &str = "resilient_http::fleet";

/// The hash the records are kept in by default.
const DEFAULT_KEY: &str = "resilient_http:pending";

/// How long one Redis operation may take by default, connecting included: far above a
/// round trip within a data centre, short enough not to hold up the call that records.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(100);

/// How often, by default, during an outage, Redis is tried again and what it missed
/// written.
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// The [`Reconciler`](crate::stripe::reconcile::Reconciler)'s pending calls in Redis
/// (features `redis` and `webhooks`), so that a webhook received by any process settles a
/// call made by any other.
///
/// Every process gives its reconciler a store over the same Redis hash: a call that ends
/// indeterminate in one is recorded there, the webhook endpoint of another settles it
/// (and removes it for all), and any of them lists and replays what is still pending.
///
/// Records are kept in one hash (`resilient_http:pending` by default), one field per
/// idempotency key, each a compact JSON object: the request ids, method, URI, headers
/// (the reconciler leaves credentials out), body, and when it was recorded. For records
/// to outlive a restart of Redis itself, run Redis with persistence (`appendonly yes`).
///
/// # When Redis is slow or down
///
/// The [`PendingStore`] methods are called on the call's task and answer at once, so
/// each talks to Redis over a plain connection with a time limit (100 ms by default,
/// connecting included), as the SQLite store writes its file. When Redis fails or runs
/// out of time, the store logs one `warn` event for the outage (target
/// `resilient_http::fleet`), and:
///
/// - a record it could not write is kept in the process, and still listed; so is a
///   removal it could not make. Both are written once Redis answers again: by the next
///   operation, or by a background thread that tries every half second. No record is
///   dropped;
/// - [`list`](PendingStore::list) gives the records the process holds, and the rest
///   again once Redis answers;
/// - [`remove`](PendingStore::remove) and [`get`](PendingStore::get) of a key the process
///   does not hold fail, saying so (the reconciler settles the call all the same, and the
///   removal is made once Redis answers).
///
/// During an outage Redis is tried at most once per retry interval, so a Redis that has
/// gone away costs calls nothing; an `info` event says when it answers again. A record
/// kept by one process while Redis is down is not seen by the others until then: a
/// webhook another process receives meanwhile settles the call there, and the record,
/// once written, is settled by a [`replay`](crate::stripe::reconcile::Reconciler::replay).
///
/// # Example
///
/// Opening a store reaches no server (the URL is only read), so this runs without one:
/// the record is kept in the process, and would be written once Redis answers.
///
/// ```
/// use resilient_http::fleet::RedisStore;
/// use resilient_http::stripe::reconcile::{Pending, PendingStore, Reconciler};
/// use std::time::{Duration, SystemTime};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://127.0.0.1:1/")
///     .key("acct_123:pending")
///     .op_timeout(Duration::from_millis(50))
///     .open()?;
/// let call = Pending::new("key_1", http::Method::POST, "/v1/charges".parse()?, SystemTime::now());
/// store.insert(&call)?;
/// assert_eq!(store.list()?, [call.clone()]);
/// assert_eq!(store.unwritten(), 1);
///
/// let reconciler = Reconciler::with_store(store);
/// assert_eq!(reconciler.pending()?, [call]);
/// # Ok(()) }
/// ```
///
/// Cheap to clone: clones share one connection and what waits for Redis.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

/// Settings of a [`RedisStore`], from [`RedisStore::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until opened"]
pub struct RedisStoreBuilder {
    url: String,
    key: String,
    op_timeout: Duration,
    retry_interval: Duration,
}

impl RedisStore {
    /// A store in the Redis at `redis_url` (`redis://host:6379/`, see the `redis` crate
    /// for the forms), with the default hash and time limits.
    ///
    /// # Errors
    ///
    /// The URL does not parse ([`StoreOp::Open`]).
    pub fn open(redis_url: &str) -> Result<Self, StoreError> {
        Self::builder(redis_url).open()
    }

    /// Settings for a store in the Redis at `redis_url`.
    pub fn builder(redis_url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: redis_url.into(),
            key: DEFAULT_KEY.to_owned(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// The hash the records are kept in.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// How many changes (records and removals) wait in this process for Redis to answer.
    pub fn unwritten(&self) -> usize {
        self.shared.state().unwritten.len()
    }
}

impl RedisStoreBuilder {
    /// Keeps the records in the hash `key`: processes share records by it. Defaults to
    /// `resilient_http:pending`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Gives every Redis operation (connecting included) `timeout` to answer before the
    /// change is kept in the process. Defaults to 100 ms.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Tries Redis again, during an outage, at most every `interval`, and writes what
    /// waits as soon as it answers. Defaults to 500 ms.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// The store, with its writer thread started. Never connects: the first operation
    /// does.
    ///
    /// # Errors
    ///
    /// [`StoreOp::Open`]: the URL does not parse, or a time limit or the retry interval
    /// is zero.
    pub fn open(self) -> Result<RedisStore, StoreError> {
        let open = |e: &'static str| StoreError::new(StoreOp::Open, e);
        if self.op_timeout.is_zero() {
            return Err(open("a redis operation timeout must be over zero"));
        }
        if self.retry_interval.is_zero() {
            return Err(open("a retry interval must be over zero"));
        }
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StoreError::new(StoreOp::Open, e))?;
        let shared = Arc::new(Shared {
            client,
            key: self.key,
            op_timeout: self.op_timeout,
            retry_interval: self.retry_interval,
            state: Mutex::new(State::default()),
        });
        spawn_writer(Arc::downgrade(&shared), self.retry_interval);
        Ok(RedisStore { shared })
    }
}

/// Starts the thread that writes what an outage kept in the process, and ends with the
/// store. A thread rather than a task: the store is synchronous, and may be used with no
/// runtime at hand. If it cannot be started, the next operation writes them instead.
fn spawn_writer(shared: Weak<Shared>, interval: Duration) {
    let started = std::thread::Builder::new()
        .name("resilient-http-redis-store".to_owned())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut state = shared.state();
            if !state.unwritten.is_empty() {
                // Writes what waits, if Redis answers; nothing else to do.
                let _ = shared.connection(&mut state);
            }
        });
    if let Err(error) = started {
        tracing::warn!(
            target: TARGET,
            %error,
            "no writer thread for the redis store: changes kept in the process wait for its next operation"
        );
    }
}

/// What the store's handle and its writer thread share.
struct Shared {
    client: redis::Client,
    key: String,
    op_timeout: Duration,
    retry_interval: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    connection: Option<redis::Connection>,
    /// Changes Redis has not taken yet, by idempotency key: the latest one of each key.
    unwritten: HashMap<String, Change>,
    /// Since when Redis has not answered (and the outage was logged).
    down_since: Option<Instant>,
    /// No attempt to reach Redis before this, during an outage.
    retry_at: Option<Instant>,
}

#[derive(Clone, Debug)]
enum Change {
    // Boxed: a removal, the other kind, is a few bytes.
    Write(Box<Pending>),
    Remove,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves the state whole: each change is one
        // map operation.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection that has written everything waiting; `None` during an outage (logged
    /// once), or while the retry interval has not passed since Redis last failed.
    fn connection<'a>(&self, state: &'a mut State) -> Option<&'a mut redis::Connection> {
        if state.connection.is_none() {
            if state.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            match self.connect() {
                Ok(connection) => state.connection = Some(connection),
                Err(error) => {
                    self.failed(state, &error);
                    return None;
                }
            }
        }
        if !state.unwritten.is_empty() {
            if let Err(error) = self.write_unwritten(state) {
                self.failed(state, &error);
                return None;
            }
        }
        if let Some(since) = state.down_since.take() {
            tracing::info!(target: TARGET, key = %self.key, down_for = ?since.elapsed(), "redis answers again: pending calls are shared again");
        }
        state.retry_at = None;
        state.connection.as_mut()
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(self.op_timeout)?;
        connection.set_read_timeout(Some(self.op_timeout))?;
        connection.set_write_timeout(Some(self.op_timeout))?;
        Ok(connection)
    }

    /// Writes every waiting change in one atomic round trip, and forgets them if it went.
    fn write_unwritten(&self, state: &mut State) -> redis::RedisResult<()> {
        let Some(connection) = state.connection.as_mut() else {
            return Err(not_connected());
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, change) in &state.unwritten {
            match change {
                Change::Write(pending) => pipe.hset(&self.key, key, encode(pending)).ignore(),
                Change::Remove => pipe.hdel(&self.key, key).ignore(),
            };
        }
        pipe.query::<()>(connection)?;
        let written = state.unwritten.len();
        state.unwritten.clear();
        tracing::debug!(target: TARGET, key = %self.key, written, "changes kept in the process written to redis");
        Ok(())
    }

    /// Drops the connection (it may be half-read) and starts or continues an outage.
    fn failed(&self, state: &mut State, error: &redis::RedisError) {
        state.connection = None;
        // `None` (try at every operation) only for an interval too long to add to a time.
        state.retry_at = Instant::now().checked_add(self.retry_interval);
        if state.down_since.is_none() {
            state.down_since = Some(Instant::now());
            tracing::warn!(
                target: TARGET,
                key = %self.key,
                "redis failed ({error}): pending calls are kept in this process until redis answers again"
            );
        }
    }

    /// Runs `op` on a connection; `None` if Redis could not be reached or failed.
    fn run<T>(
        &self,
        state: &mut State,
        op: impl FnOnce(&mut redis::Connection, &str) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let connection = self.connection(state)?;
        match op(connection, &self.key) {
            Ok(value) => Some(value),
            Err(error) => {
                self.failed(state, &error);
                None
            }
        }
    }
}

fn not_connected() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no connection to Redis",
    ))
}

impl PendingStore for RedisStore {
    fn insert(&self, pending: &Pending) -> Result<(), StoreError> {
        let key = pending.idempotency_key.as_str();
        let shared = &self.shared;
        let mut state = shared.state();
        // This record replaces whatever waited for its key.
        state.unwritten.remove(key);
        let record = encode(pending);
        let written = shared.run(&mut state, |connection, hash| {
            redis::cmd("HSET")
                .arg(hash)
                .arg(key)
                .arg(&record)
                .query::<()>(connection)
        });
        if written.is_none() {
            state
                .unwritten
                .insert(key.to_owned(), Change::Write(Box::new(pending.clone())));
        }
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        let shared = &self.shared;
        let mut state = shared.state();
        let held = state.unwritten.remove(key);
        let removed = shared.run(&mut state, |connection, hash| {
            let (record, _): (Option<Vec<u8>>, u64) = redis::pipe()
                .atomic()
                .hget(hash, key)
                .hdel(hash, key)
                .query(connection)?;
            Ok(record)
        });
        let held = match held {
            Some(Change::Write(pending)) => Some(*pending),
            Some(Change::Remove) | None => None,
        };
        match removed {
            Some(record) => Ok(record
                .and_then(|bytes| decode_logged(&shared.key, key, &bytes))
                .or(held)),
            None => {
                // Removed once Redis answers, wherever the record was written.
                state.unwritten.insert(key.to_owned(), Change::Remove);
                match held {
                    Some(pending) => Ok(Some(pending)),
                    None => Err(StoreError::new(StoreOp::Remove, Unreachable)),
                }
            }
        }
    }

    fn list(&self) -> Result<Vec<Pending>, StoreError> {
        let shared = &self.shared;
        let mut state = shared.state();
        let stored = shared.run(&mut state, |connection, hash| {
            redis::cmd("HGETALL")
                .arg(hash)
                .query::<Vec<(String, Vec<u8>)>>(connection)
        });
        let mut records: HashMap<String, Pending> = stored
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, bytes)| {
                let pending = decode_logged(&shared.key, &key, &bytes)?;
                Some((key, pending))
            })
            .collect();
        for (key, change) in &state.unwritten {
            match change {
                Change::Write(pending) => {
                    records.insert(key.clone(), (**pending).clone());
                }
                Change::Remove => {
                    records.remove(key);
                }
            }
        }
        Ok(records.into_values().collect())
    }

    fn get(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        let shared = &self.shared;
        let mut state = shared.state();
        match state.unwritten.get(key) {
            Some(Change::Write(pending)) => return Ok(Some((**pending).clone())),
            Some(Change::Remove) => return Ok(None),
            None => {}
        }
        let record = shared.run(&mut state, |connection, hash| {
            redis::cmd("HGET")
                .arg(hash)
                .arg(key)
                .query::<Option<Vec<u8>>>(connection)
        });
        match record {
            Some(record) => Ok(record.and_then(|bytes| decode_logged(&shared.key, key, &bytes))),
            None => Err(StoreError::new(StoreOp::List, Unreachable)),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        let mut debug = f.debug_struct("RedisStore");
        debug.field("key", &shared.key);
        // `try_lock`: printing must not wait for an operation on the network.
        if let Ok(state) = shared.state.try_lock() {
            debug
                .field("unwritten", &state.unwritten.len())
                .field("redis_up", &state.down_since.is_none());
        }
        debug.finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisStoreBuilder")
            .field("key", &self.key)
            .field("op_timeout", &self.op_timeout)
            .field("retry_interval", &self.retry_interval)
            .finish_non_exhaustive()
    }
}

/// Redis could not be reached: what a failed [`RedisStore`] operation gives as its cause.
#[derive(Debug)]
struct Unreachable;

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis did not answer; the change is kept and made once it does")
    }
}

impl std::error::Error for Unreachable {}

/// A record as stored: short field names, text where the bytes are text (a form body, a
/// header value), and the key in the hash's field rather than here.
#[derive(Serialize, Deserialize)]
struct Record {
    /// Request ids.
    i: Vec<String>,
    /// Method.
    m: String,
    /// URI.
    u: String,
    /// Headers, in order, as name and value.
    h: Vec<(String, Blob)>,
    /// Body.
    b: Blob,
    /// Recorded at: nanoseconds since the Unix epoch (negative: before it).
    t: i128,
}

/// Bytes as a JSON string when they are UTF-8, else as an array of numbers.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Blob {
    Text(String),
    Bytes(Vec<u8>),
}

impl Blob {
    fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Blob::Text(text.to_owned()),
            Err(_) => Blob::Bytes(bytes.to_vec()),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            Blob::Text(text) => text.into_bytes(),
            Blob::Bytes(bytes) => bytes,
        }
    }
}

fn encode(pending: &Pending) -> Vec<u8> {
    let record = Record {
        i: pending.request_ids.clone(),
        m: pending.method.as_str().to_owned(),
        u: pending.uri.to_string(),
        h: pending
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), Blob::new(value.as_bytes())))
            .collect(),
        b: Blob::new(&pending.body),
        t: to_nanos(pending.recorded_at),
    };
    // Strings, byte arrays and integers only: serializing cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// A record that does not decode to what was written.
#[derive(Debug)]
struct Corrupt(&'static str);

fn decode(key: &str, bytes: &[u8]) -> Result<Pending, Corrupt> {
    let record: Record = serde_json::from_slice(bytes).map_err(|_| Corrupt("json"))?;
    let mut headers = HeaderMap::with_capacity(record.h.len());
    for (name, value) in record.h {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Corrupt("header name"))?;
        let value =
            HeaderValue::from_bytes(&value.into_bytes()).map_err(|_| Corrupt("header value"))?;
        headers.append(name, value);
    }
    Ok(Pending {
        idempotency_key: key.to_owned(),
        request_ids: record.i,
        method: Method::from_bytes(record.m.as_bytes()).map_err(|_| Corrupt("method"))?,
        uri: record.u.parse::<Uri>().map_err(|_| Corrupt("uri"))?,
        headers,
        body: Bytes::from(record.b.into_bytes()),
        recorded_at: from_nanos(record.t).ok_or(Corrupt("recorded at"))?,
    })
}

/// The record, or `None` and a warning: one bad record must not hide the others, and it
/// stays in Redis for a person to look at.
fn decode_logged(hash: &str, key: &str, bytes: &[u8]) -> Option<Pending> {
    match decode(key, bytes) {
        Ok(pending) => Some(pending),
        Err(Corrupt(part)) => {
            tracing::warn!(
                target: TARGET,
                key = %hash,
                idempotency_key = %key,
                part,
                "pending call not listed: its record in redis does not decode"
            );
            None
        }
    }
}

fn to_nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

fn from_nanos(nanos: i128) -> Option<SystemTime> {
    let duration = |n: u128| {
        let secs = u64::try_from(n / 1_000_000_000).ok()?;
        // Under 10^9: fits.
        let sub = u32::try_from(n % 1_000_000_000).ok()?;
        Some(Duration::new(secs, sub))
    };
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(duration(nanos.unsigned_abs())?)
    } else {
        UNIX_EPOCH.checked_sub(duration(nanos.unsigned_abs())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    fn call() -> Pending {
        let mut pending = Pending::new(
            "key_1",
            Method::POST,
            "https://api.stripe.com/v1/charges?expand[]=customer"
                .parse()
                .unwrap(),
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        );
        pending.request_ids = vec!["req_1".into(), "req_2".into()];
        pending.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        pending
            .headers
            .append("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        pending.body = Bytes::from_static(b"amount=2000&currency=usd");
        pending
    }

    #[test]
    fn records_round_trip_with_text_as_text() {
        let pending = call();
        let bytes = encode(&pending);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(r#""b":"amount=2000&currency=usd""#), "{text}");
        assert!(text.contains(r#"["x-raw",[99,97,102,233]]"#), "{text}");
        assert!(
            !text.contains("key_1\",\"i"),
            "the key is the hash field: {text}"
        );
        assert_eq!(decode("key_1", &bytes).unwrap(), pending);
    }

    #[test]
    fn binary_bodies_and_times_before_the_epoch_round_trip() {
        let mut pending = call();
        pending.body = Bytes::from_static(&[0, 159, 146, 150]);
        pending.recorded_at = UNIX_EPOCH - Duration::new(5, 7);
        assert_eq!(decode("key_1", &encode(&pending)).unwrap(), pending);
        pending.recorded_at = UNIX_EPOCH;
        assert_eq!(decode("key_1", &encode(&pending)).unwrap(), pending);
    }

    #[test]
    fn garbage_does_not_decode_and_does_not_panic() {
        for bad in [
            &b""[..],
            b"null",
            b"{}",
            br#"{"i":[],"m":"PO ST","u":"/","h":[],"b":"","t":0}"#,
            br#"{"i":[],"m":"POST","u":"not a uri","h":[],"b":"","t":0}"#,
            br#"{"i":[],"m":"POST","u":"/","h":[["bad name","x"]],"b":"","t":0}"#,
            br#"{"i":[],"m":"POST","u":"/","h":[["x","a\nb"]],"b":"","t":0}"#,
            br#"{"i":[],"m":"POST","u":"/","h":[],"b":[256],"t":0}"#,
            br#"{"i":[],"m":"POST","u":"/","h":[],"b":"","t":1e400}"#,
            br#"{"i":[],"m":"POST","u":"/","h":[],"b":"","t":170141183460469231731687303715884105727}"#,
        ] {
            assert!(
                decode("k", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(from_nanos(i128::MIN).is_none());
    }
}
