//! [`RedisStore`]: the reconciler's pending calls in Redis, shared by every process.

use crate::stripe::reconcile::{Pending, PendingStore, StoreError, StoreOp};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TARGET: &str = "resilient_http::fleet";

/// The hash the records are kept in by default.
const DEFAULT_KEY: &str = "resilient_http:pending";

/// How long one Redis operation may take by default, connecting included: far above a
/// round trip within a data centre, short enough not to hold up a webhook's settlement.
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
/// # Writes happen behind the call
///
/// [`insert`](PendingStore::insert), which the reconciler calls on the task of the call
/// that just ended indeterminate, never touches the network: it queues the record and
/// wakes the store's writer thread, which writes what is queued in one round trip (so a
/// burst of indeterminate calls is one write). A call's error therefore reaches its caller
/// without waiting on Redis, however slow Redis is. Until it is written, a queued record
/// is listed by this process, not yet by the others (within a round trip, normally).
///
/// [`remove`](PendingStore::remove), [`list`](PendingStore::list) and
/// [`get`](PendingStore::get), which settlement and replays call, ask Redis with a time
/// limit (100 ms by default, connecting included) and overlay what this process has
/// queued.
///
/// # When Redis is slow or down
///
/// When Redis fails or runs out of time, the store logs one `warn` event for the outage
/// (target `resilient_http::fleet`), and:
///
/// - queued records stay queued, and listed; a removal it could not make is queued too.
///   The writer tries Redis again every retry interval (half a second by default) and
///   writes them all once it answers, with an `info` event;
/// - [`list`](PendingStore::list) gives the records the process holds, and the rest
///   again once Redis answers;
/// - [`remove`](PendingStore::remove) and [`get`](PendingStore::get) of a key the process
///   does not hold fail, saying so (the reconciler settles the call all the same, and the
///   removal is made once Redis answers).
///
/// A record kept by one process while Redis is down is not seen by the others until
/// then: a webhook another process receives meanwhile settles the call there, and the
/// record, once written, is settled by a
/// [`replay`](crate::stripe::reconcile::Reconciler::replay).
///
/// # Shutting down
///
/// When the last clone of a store is dropped, it makes one last attempt to write what is
/// queued (within the time limit, after a write in progress, if any, ends), and logs an `error` event naming every key it could
/// not write: those records are lost with the process, and their calls must be looked
/// into by hand. [`flush`](RedisStore::flush) writes what is queued and says whether it
/// could, for a shutdown that wants to wait for Redis or report. A process that is killed,
/// or exits without dropping its store (`std::process::exit`, a `static`), cannot say
/// anything: what it had queued is lost silently, so shut down by dropping the reconciler
/// or calling `flush`.
///
/// # Example
///
/// Opening a store reaches no server (the URL is only read), so this runs without one:
/// the record is queued in the process, and would be written once Redis answers.
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
/// assert!(store.flush().is_err(), "nothing listens on port 1");
///
/// let reconciler = Reconciler::with_store(store);
/// assert_eq!(reconciler.pending()?, [call]);
/// # Ok(()) }
/// ```
///
/// Cheap to clone: clones share one connection, one queue and one writer.
#[derive(Clone)]
pub struct RedisStore {
    handle: Arc<Handle>,
}

/// The store's clones share one handle; when it drops, the writer stops and what is
/// queued is written one last time, or reported lost.
struct Handle {
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
        &self.handle.shared.key
    }

    /// How many changes (records and removals) are queued in this process, not yet taken
    /// by Redis.
    pub fn unwritten(&self) -> usize {
        self.handle.shared.queue().changes.len()
    }

    /// Writes every queued change now, on this thread, within the time limit (an outage's
    /// retry interval does not hold it back).
    ///
    /// # Errors
    ///
    /// [`StoreOp::Insert`]: Redis did not take them; they stay queued.
    pub fn flush(&self) -> Result<(), StoreError> {
        match self.handle.shared.write_now() {
            Written::All => Ok(()),
            Written::Failed => Err(StoreError::new(StoreOp::Insert, Unreachable)),
        }
    }
}

impl RedisStoreBuilder {
    /// Keeps the records in the hash `key`: processes share records by it. Defaults to
    /// `resilient_http:pending`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Gives every Redis operation (connecting included) `timeout` to answer before it
    /// counts as failed. Defaults to 100 ms.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Tries Redis again, during an outage, at most every `interval` (at least 1 ms), and
    /// writes what is queued as soon as it answers. Defaults to 500 ms.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// The store, with its writer thread started. Never connects: the writer, or the
    /// first operation, does.
    ///
    /// # Errors
    ///
    /// [`StoreOp::Open`]: the URL does not parse, the time limit is zero, the retry interval
    /// is under 1 ms, or the writer thread could not be started.
    pub fn open(self) -> Result<RedisStore, StoreError> {
        let open = |e: &'static str| StoreError::new(StoreOp::Open, e);
        if self.op_timeout.is_zero() {
            return Err(open("a redis operation timeout must be over zero"));
        }
        if self.retry_interval < Duration::from_millis(1) {
            return Err(open("a retry interval must be at least 1 ms"));
        }
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StoreError::new(StoreOp::Open, e))?;
        let shared = Arc::new(Shared {
            client,
            key: self.key,
            op_timeout: self.op_timeout,
            retry_interval: self.retry_interval,
            link: Mutex::new(Link::default()),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("resilient-http-redis-store".to_owned())
            .spawn(move || writer.run_writer())
            .map_err(|e| StoreError::new(StoreOp::Open, e))?;
        Ok(RedisStore {
            handle: Arc::new(Handle { shared }),
        })
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            let mut queue = shared.queue();
            queue.closed = true;
            shared.wake.notify_all();
        }
        if let Written::Failed = shared.write_now() {
            let queue = shared.queue();
            let mut keys: Vec<&str> = queue.changes.keys().map(String::as_str).collect();
            keys.sort_unstable();
            tracing::error!(
                target: TARGET,
                key = %shared.key,
                lost = keys.len(),
                idempotency_keys = ?keys,
                "redis store dropped before redis took these changes: the records (or removals) are lost; look into these calls by hand"
            );
        }
    }
}

/// What the store's handle and its writer thread share.
///
/// Two locks, taken in this order when both are held: `link` (the connection; held across
/// a round trip) then `queue` (never held across one). `insert` takes the queue alone, so
/// it never waits on the network.
struct Shared {
    client: redis::Client,
    key: String,
    op_timeout: Duration,
    retry_interval: Duration,
    link: Mutex<Link>,
    queue: Mutex<Queue>,
    /// Wakes the writer: something was queued, or the store was dropped.
    wake: Condvar,
}

/// The connection to Redis, and the outage in progress.
#[derive(Default)]
struct Link {
    connection: Option<redis::Connection>,
    /// Since when Redis has not answered (and the outage was logged).
    down_since: Option<Instant>,
    /// No attempt to reach Redis before this, during an outage.
    retry_at: Option<Instant>,
}

/// The changes Redis has not taken yet.
#[derive(Default)]
struct Queue {
    /// By idempotency key: the latest change of each key, numbered so that a write can
    /// tell whether a key changed again while it was on the wire.
    changes: HashMap<String, (u64, Change)>,
    /// The number of the next change.
    next: u64,
    /// The store was dropped: the writer stops.
    closed: bool,
    /// Redis answered again after an outage: the writer need not wait out its pause.
    back: bool,
}

impl Queue {
    fn push(&mut self, key: &str, change: Change) {
        self.next += 1;
        self.changes.insert(key.to_owned(), (self.next, change));
    }
}

#[derive(Clone, Debug)]
enum Change {
    // Boxed: a removal, the other kind, is a few bytes.
    Write(Box<Pending>),
    Remove,
}

/// How an attempt to write the queue went.
enum Written {
    /// Redis took everything that was queued when the attempt began (or nothing was).
    All,
    /// Redis failed, ran out of time, or is not tried yet (an outage's retry interval):
    /// the queue is as it was.
    Failed,
}

impl Shared {
    fn link(&self) -> MutexGuard<'_, Link> {
        // A panic while a lock was held leaves the state whole: each change is one map
        // operation, and a half-used connection is dropped at the next failure.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer thread: writes what is queued as soon as it is, and during an outage
    /// every retry interval; ends when the store is dropped.
    fn run_writer(&self) {
        loop {
            {
                let mut queue = self.queue();
                while queue.changes.is_empty() && !queue.closed {
                    queue = self
                        .wake
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if queue.closed {
                    // The dropping thread writes what is left.
                    return;
                }
            }
            let pause = {
                let mut link = self.link();
                if self.queue().closed {
                    // Dropped while this thread waited for the link: the dropping thread
                    // writes what is left, and reports what it cannot.
                    return;
                }
                match self.write_queued(&mut link) {
                    Written::All => None,
                    // Not before the outage's next try (`None` only for an interval too
                    // long to add to a time: then the retry interval).
                    Written::Failed => Some(link.retry_at.map_or(self.retry_interval, |at| {
                        at.saturating_duration_since(Instant::now())
                    })),
                }
            };
            if let Some(pause) = pause {
                self.pause(pause);
            }
        }
    }

    /// Waits `pause`, or less if Redis answers another operation or the store is dropped
    /// meanwhile.
    fn pause(&self, pause: Duration) {
        // `None`: a pause too long to add to a time, as good as for ever.
        let until = Instant::now().checked_add(pause);
        let mut queue = self.queue();
        while !queue.closed && !queue.back {
            queue = match until {
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    self.wake
                        .wait_timeout(queue, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// A connection, or `None` during an outage (logged once), or while the retry interval
    /// has not passed since Redis last failed.
    fn connection<'a>(&self, link: &'a mut Link) -> Option<&'a mut redis::Connection> {
        if link.connection.is_none() {
            if link.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            match self.connect() {
                Ok(connection) => link.connection = Some(connection),
                Err(error) => {
                    self.failed(link, &error);
                    return None;
                }
            }
        }
        link.connection.as_mut()
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(self.op_timeout)?;
        connection.set_read_timeout(Some(self.op_timeout))?;
        connection.set_write_timeout(Some(self.op_timeout))?;
        Ok(connection)
    }

    /// Redis answered: ends an outage, if there was one, and wakes the writer for what it
    /// held.
    fn answered(&self, link: &mut Link) {
        link.retry_at = None;
        if let Some(since) = link.down_since.take() {
            tracing::info!(target: TARGET, key = %self.key, down_for = ?since.elapsed(), "redis answers again: pending calls are shared again");
            self.queue().back = true;
            self.wake.notify_all();
        }
    }

    /// Drops the connection (it may be half-read) and starts or continues an outage.
    fn failed(&self, link: &mut Link, error: &redis::RedisError) {
        link.connection = None;
        // Not back: the writer waits out the interval (cleared under the link, so that an
        // answer that comes after this failure is never missed).
        self.queue().back = false;
        // `None` (try at every operation) only for an interval too long to add to a time.
        link.retry_at = Instant::now().checked_add(self.retry_interval);
        if link.down_since.is_none() {
            link.down_since = Some(Instant::now());
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
        link: &mut Link,
        op: impl FnOnce(&mut redis::Connection, &str) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let connection = self.connection(link)?;
        match op(connection, &self.key) {
            Ok(value) => {
                self.answered(link);
                Some(value)
            }
            Err(error) => {
                self.failed(link, &error);
                None
            }
        }
    }

    /// Writes what is queued now, on this thread: an outage's retry interval does not hold
    /// it back (a write in progress on the writer thread ends first).
    fn write_now(&self) -> Written {
        let mut link = self.link();
        link.retry_at = None;
        self.write_queued(&mut link)
    }

    /// Writes every queued change in one atomic round trip, and takes off the queue those
    /// that did not change again meanwhile. The caller holds the link, so no other
    /// operation reaches Redis between the write and the queue's update.
    fn write_queued(&self, link: &mut Link) -> Written {
        let batch: Vec<(String, u64, Change)> = self
            .queue()
            .changes
            .iter()
            .map(|(key, (n, change))| (key.clone(), *n, change.clone()))
            .collect();
        if batch.is_empty() {
            return Written::All;
        }
        let written = self.run(link, |connection, hash| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (key, _, change) in &batch {
                match change {
                    Change::Write(pending) => pipe.hset(hash, key, encode(pending)).ignore(),
                    Change::Remove => pipe.hdel(hash, key).ignore(),
                };
            }
            pipe.query::<()>(connection)
        });
        if written.is_none() {
            return Written::Failed;
        }
        let mut queue = self.queue();
        for (key, n, _) in &batch {
            if queue.changes.get(key).is_some_and(|(now, _)| now == n) {
                queue.changes.remove(key);
            }
        }
        tracing::debug!(target: TARGET, key = %self.key, written = batch.len(), "queued changes written to redis");
        Written::All
    }
}

impl PendingStore for RedisStore {
    /// Queues the record for the writer thread: never waits on Redis.
    fn insert(&self, pending: &Pending) -> Result<(), StoreError> {
        let shared = &self.handle.shared;
        // This record replaces whatever was queued for its key.
        shared.queue().push(
            &pending.idempotency_key,
            Change::Write(Box::new(pending.clone())),
        );
        shared.wake.notify_all();
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        let shared = &self.handle.shared;
        // The link first: the writer cannot write this key's queued record after the
        // removal below.
        let mut link = shared.link();
        let held = match shared.queue().changes.remove(key) {
            Some((_, Change::Write(pending))) => Some(*pending),
            Some((_, Change::Remove)) | None => None,
        };
        let removed = shared.run(&mut link, |connection, hash| {
            let (record, _): (Option<Vec<u8>>, u64) = redis::pipe()
                .atomic()
                .hget(hash, key)
                .hdel(hash, key)
                .query(connection)?;
            Ok(record)
        });
        match removed {
            Some(record) => Ok(record
                .and_then(|bytes| decode_logged(&shared.key, key, &bytes))
                .or(held)),
            None => {
                // Removed once Redis answers, wherever the record was written; unless the
                // key was recorded again meanwhile: that record's write replaces the old.
                let mut queue = shared.queue();
                if !queue.changes.contains_key(key) {
                    queue.push(key, Change::Remove);
                }
                drop(queue);
                shared.wake.notify_all();
                match held {
                    Some(pending) => Ok(Some(pending)),
                    None => Err(StoreError::new(StoreOp::Remove, Unreachable)),
                }
            }
        }
    }

    fn list(&self) -> Result<Vec<Pending>, StoreError> {
        let shared = &self.handle.shared;
        let mut link = shared.link();
        let stored = shared.run(&mut link, |connection, hash| {
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
        // Under the link still: nothing queued was written and dequeued since the read.
        for (key, (_, change)) in &shared.queue().changes {
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
        let shared = &self.handle.shared;
        let mut link = shared.link();
        match shared.queue().changes.get(key) {
            Some((_, Change::Write(pending))) => return Ok(Some((**pending).clone())),
            Some((_, Change::Remove)) => return Ok(None),
            None => {}
        }
        let record = shared.run(&mut link, |connection, hash| {
            redis::cmd("HGET")
                .arg(hash)
                .arg(key)
                .query::<Option<Vec<u8>>>(connection)
        });
        match record {
            Some(record) => Ok(record.and_then(|bytes| decode_logged(&shared.key, key, &bytes))),
            None => Err(StoreError::new(StoreOp::Get, Unreachable)),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        let mut debug = f.debug_struct("RedisStore");
        debug.field("key", &shared.key);
        // `try_lock`: printing must not wait for an operation on the network.
        if let Ok(queue) = shared.queue.try_lock() {
            debug.field("unwritten", &queue.changes.len());
        }
        if let Ok(link) = shared.link.try_lock() {
            debug.field("redis_up", &link.down_since.is_none());
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
