//! Webhook events: after every charge it makes, the server POSTs a signed Stripe event to
//! the endpoint a test names, late, sometimes twice, and again on a non-2xx answer.

use crate::sign::sign;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

/// The `api_version` every event carries.
pub const API_VERSION: &str = "2024-06-20";

/// How many times an event is sent by default before the server gives up on it.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// How long the server waits by default before sending an event again after a failed
/// attempt; the wait doubles after each one (Stripe's own redeliveries back off over
/// three days).
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long one delivery attempt may take before it counts as failed with no answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// `Stripe-Signature`, on every delivery.
const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

/// Where the server sends its events, signed with which secret, and how (late,
/// duplicated, redelivered). Given to [`Builder::webhooks`](crate::Builder::webhooks).
///
/// Every charge the server makes sends one event, `charge.succeeded`, or
/// `charge.failed` for a declined card: also a charge whose answer the client never saw
/// (a dropped connection, a delayed answer, a 500 after the effect). The event's
/// `data.object` is the charge, `request.id` the `Request-Id` of the request that made it
/// and `request.idempotency_key` its key (null without one). Replays make no charge and
/// send nothing.
///
/// ```
/// use resilient_http_testing::Webhooks;
/// use std::time::Duration;
///
/// // Each event arrives 5 to 50 ms after its charge, one in ten twice (so events cross
/// // each other), the same draws for the same seed; a non-2xx answer is retried up to 4
/// // times, 20 ms apart at first.
/// let hooks = Webhooks::new("http://127.0.0.1:4242/webhooks", "whsec_test_secret")
///     .delay(Duration::from_millis(5)..=Duration::from_millis(50))
///     .duplicates(0.1)
///     .seed(7)
///     .attempts(4)
///     .retry_delay(Duration::from_millis(20));
/// # let _ = hooks;
/// ```
#[derive(Clone)]
pub struct Webhooks {
    url: String,
    secret: String,
    delay: RangeInclusive<Duration>,
    duplicates: f64,
    seed: u64,
    attempts: u32,
    retry_delay: Duration,
}

impl Webhooks {
    /// Events for the endpoint at `url` (`http://` only), signed with `secret` (the whole
    /// `whsec_...` string is the HMAC key, as Stripe uses it): sent at once, each once,
    /// retried [`DEFAULT_ATTEMPTS`] times in all.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Webhooks {
            url: url.into(),
            secret: secret.into(),
            delay: Duration::ZERO..=Duration::ZERO,
            duplicates: 0.0,
            seed: 0,
            attempts: DEFAULT_ATTEMPTS,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }

    /// Sends each event (and each duplicate) after a delay drawn uniformly from `range`,
    /// on tokio's clock, so that events arrive late and out of order. An empty range
    /// (start past end) means its start. Defaults to no delay.
    pub fn delay(mut self, range: RangeInclusive<Duration>) -> Self {
        self.delay = range;
        self
    }

    /// Sends this share of events (clamped to 0..=1; NaN is 0) twice, with the same event
    /// id, each copy after its own delay, as Stripe may. Defaults to 0.
    pub fn duplicates(mut self, share: f64) -> Self {
        self.duplicates = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// Seeds the draws of delays and duplicates: the same draws, in the order charges are
    /// made, for the same seed. Defaults to 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sends an event at most this many times (at least once) while the endpoint answers
    /// other than 2xx, or not at all. Defaults to [`DEFAULT_ATTEMPTS`].
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Waits this long before the first redelivery, twice as long before the next, and
    /// so on. Defaults to [`DEFAULT_RETRY_DELAY`].
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("delay", &self.delay)
            .field("duplicates", &self.duplicates)
            .field("seed", &self.seed)
            .field("attempts", &self.attempts)
            .field("retry_delay", &self.retry_delay)
            .finish()
    }
}

/// Where one event delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Not sent yet, or sent and to be sent again.
    Waiting,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed.
    GaveUp,
}

/// One event sent (or to be sent) to the endpoint: a duplicate is a delivery of its own.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event id, `evt_` and a number; a duplicate has the same id.
    pub event_id: String,
    /// `charge.succeeded` or `charge.failed`.
    pub event_type: String,
    /// The id of the charge the event is about.
    pub charge_id: String,
    /// The `Request-Id` of the request that made the charge.
    pub request_id: String,
    /// That request's `Idempotency-Key`, if it had one.
    pub idempotency_key: Option<String>,
    /// Whether this is the second copy of the event.
    pub duplicate: bool,
    /// The event JSON, as sent (every attempt sends the same bytes, signed anew).
    pub body: Bytes,
    /// The status of each attempt so far, `None` where no answer came.
    pub answers: Vec<Option<u16>>,
    /// Where it stands.
    pub state: DeliveryState,
}

/// A snapshot of every event delivery, in the order they were scheduled (the order the
/// charges were made; a duplicate follows its original).
#[derive(Clone, Debug, Default)]
pub struct Deliveries {
    pub(crate) deliveries: Vec<Delivery>,
}

impl Deliveries {
    /// Every delivery, in order.
    pub fn all(&self) -> &[Delivery] {
        &self.deliveries
    }

    /// How many deliveries were scheduled.
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// The deliveries about the charge made under idempotency key `key`.
    pub fn by_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Delivery> + 'a {
        self.deliveries
            .iter()
            .filter(move |d| d.idempotency_key.as_deref() == Some(key))
    }

    /// How many deliveries are in `state`.
    pub fn count(&self, state: DeliveryState) -> usize {
        self.deliveries.iter().filter(|d| d.state == state).count()
    }
}

/// The charge an event is about.
pub(crate) struct Made<'a> {
    pub(crate) object: serde_json::Value,
    pub(crate) failed: bool,
    pub(crate) request_id: &'a str,
    pub(crate) idempotency_key: Option<&'a str>,
}

/// The server's side of webhooks: the settings, the draws, the log, and the queue to the
/// sender task.
pub(crate) struct Outbox {
    uri: Uri,
    secret: String,
    delay: RangeInclusive<Duration>,
    duplicates: f64,
    attempts: u32,
    retry_delay: Duration,
    state: Mutex<Drawn>,
    queue: mpsc::UnboundedSender<Job>,
    /// How many deliveries are waiting, for [`Outbox::finished`].
    waiting: watch::Sender<usize>,
}

struct Drawn {
    rng: SmallRng,
    events: u64,
    log: Deliveries,
}

/// One delivery for the sender task: its index in the log, and how long to wait first.
struct Job {
    index: usize,
    after: Duration,
}

impl Outbox {
    /// Checks the URL and starts the sender task on the current runtime; aborting it
    /// (through the returned handle) ends every delivery in flight.
    pub(crate) fn start(config: Webhooks) -> io::Result<(Arc<Outbox>, AbortHandle)> {
        let uri: Uri = config.url.parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("webhook url {:?}: {e}", config.url),
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("webhook url {:?}: an http:// URL is needed", config.url),
            ));
        }
        let (queue, jobs) = mpsc::unbounded_channel();
        let outbox = Arc::new(Outbox {
            uri,
            secret: config.secret,
            delay: config.delay,
            duplicates: config.duplicates,
            attempts: config.attempts,
            retry_delay: config.retry_delay,
            state: Mutex::new(Drawn {
                rng: SmallRng::seed_from_u64(config.seed),
                events: 0,
                log: Deliveries::default(),
            }),
            queue,
            waiting: watch::Sender::new(0),
        });
        let task = tokio::spawn(send_all(outbox.clone(), jobs)).abort_handle();
        Ok((outbox, task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Drawn> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schedules the event for a charge just made: once, or twice, each after its delay.
    pub(crate) fn charge_made(&self, made: Made<'_>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.events += 1;
        let event_id = format!("evt_{}", state.events);
        let event_type = if made.failed {
            "charge.failed"
        } else {
            "charge.succeeded"
        };
        let charge_id = made
            .object
            .get("id")
            .and_then(|id| id.as_str())
            .unwrap_or_default()
            .to_owned();
        let body = event_body(&event_id, event_type, &made);
        let copies = if state.rng.random_bool(self.duplicates) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let after = draw(&mut state.rng, &self.delay);
            let index = state.log.deliveries.len();
            state.log.deliveries.push(Delivery {
                event_id: event_id.clone(),
                event_type: event_type.to_owned(),
                charge_id: charge_id.clone(),
                request_id: made.request_id.to_owned(),
                idempotency_key: made.idempotency_key.map(str::to_owned),
                duplicate: copy == 1,
                body: body.clone(),
                answers: Vec::new(),
                state: DeliveryState::Waiting,
            });
            self.waiting.send_modify(|n| *n += 1);
            // The receiver lives as long as the server: a failed send means it is being
            // dropped, and the delivery would never happen anyway.
            if self.queue.send(Job { index, after }).is_err() {
                self.finish(state, index, DeliveryState::GaveUp);
            }
        }
    }

    /// A snapshot of the log.
    pub(crate) fn log(&self) -> Deliveries {
        self.lock().log.clone()
    }

    /// Waits until no delivery scheduled so far is waiting.
    pub(crate) async fn finished(&self) {
        let mut waiting = self.waiting.subscribe();
        // The sender lives in `self`: the channel cannot close while this borrow lasts.
        let _ = waiting.wait_for(|n| *n == 0).await;
    }

    fn finish(&self, state: &mut Drawn, index: usize, end: DeliveryState) {
        if let Some(d) = state.log.deliveries.get_mut(index) {
            if d.state == DeliveryState::Waiting {
                d.state = end;
                self.waiting.send_modify(|n| *n = n.saturating_sub(1));
            }
        }
    }
}

/// A delay drawn uniformly from `range` (its start when it is empty).
fn draw(rng: &mut SmallRng, range: &RangeInclusive<Duration>) -> Duration {
    if range.start() >= range.end() {
        return *range.start();
    }
    // Nanoseconds fit in a u64 for 584 years: a longer range is cut short there.
    let nanos = |d: &Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(nanos(range.start())..=nanos(range.end())))
}

/// The event JSON: Stripe's envelope around the charge.
fn event_body(event_id: &str, event_type: &str, made: &Made<'_>) -> Bytes {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let event = serde_json::json!({
        "id": event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "type": event_type,
        "data": { "object": made.object },
        "request": {
            "id": made.request_id,
            "idempotency_key": made.idempotency_key,
        },
    });
    Bytes::from(event.to_string())
}

type Sender = Client<HttpConnector, Full<Bytes>>;

/// The sender task: each job runs as a task of its own, so that a slow endpoint delays
/// only its own events; all of them end when the server is dropped.
async fn send_all(outbox: Arc<Outbox>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let client: Sender = Client::builder(TokioExecutor::new()).build_http();
    let mut deliveries = JoinSet::new();
    while let Some(job) = jobs.recv().await {
        while deliveries.try_join_next().is_some() {}
        deliveries.spawn(deliver(outbox.clone(), client.clone(), job));
    }
}

async fn deliver(outbox: Arc<Outbox>, client: Sender, job: Job) {
    tokio::time::sleep(job.after).await;
    let Some(body) = outbox
        .lock()
        .log
        .deliveries
        .get(job.index)
        .map(|d| d.body.clone())
    else {
        return;
    };
    let mut pause = outbox.retry_delay;
    for attempt in 1..=outbox.attempts {
        let answer = attempt_once(&outbox, &client, &body).await;
        let delivered = answer.is_some_and(|status| (200..300).contains(&status));
        let end = if delivered {
            Some(DeliveryState::Delivered)
        } else if attempt == outbox.attempts {
            Some(DeliveryState::GaveUp)
        } else {
            None
        };
        {
            let mut state = outbox.lock();
            if let Some(d) = state.log.deliveries.get_mut(job.index) {
                d.answers.push(answer);
            }
            if let Some(end) = end {
                outbox.finish(&mut state, job.index, end);
                return;
            }
        }
        tokio::time::sleep(pause).await;
        pause = pause.saturating_mul(2);
    }
}

/// One POST of the event, signed now; its status, or `None` if no answer came in time.
async fn attempt_once(outbox: &Outbox, client: &Sender, body: &Bytes) -> Option<u16> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let signature = HeaderValue::from_str(&sign(&outbox.secret, now, body)).ok()?;
    let req = Request::post(outbox.uri.clone())
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(
            header::USER_AGENT,
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .header(STRIPE_SIGNATURE, signature)
        .body(Full::new(body.clone()))
        .ok()?;
    let exchange = async {
        let res = client.request(req).await.ok()?;
        let status = res.status().as_u16();
        // Read the answer whole so that the connection can be used again.
        let _ = res.into_body().collect().await;
        Some(status)
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_drawn_within_the_range_and_the_same_for_the_same_seed() {
        let range = Duration::from_millis(5)..=Duration::from_millis(50);
        let draws = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..1_000)
                .map(|_| draw(&mut rng, &range))
                .collect::<Vec<_>>()
        };
        let a = draws(3);
        assert_eq!(a, draws(3));
        assert!(a.iter().all(|d| range.contains(d)));
        assert!(a.iter().any(|d| *d < Duration::from_millis(10)));
        assert!(a.iter().any(|d| *d > Duration::from_millis(45)));
    }

    #[test]
    fn an_empty_or_single_range_gives_its_start() {
        let mut rng = SmallRng::seed_from_u64(1);
        let ms = Duration::from_millis;
        assert_eq!(draw(&mut rng, &(ms(7)..=ms(7))), ms(7));
        #[allow(clippy::reversed_empty_ranges)]
        let empty = ms(9)..=ms(2);
        assert_eq!(draw(&mut rng, &empty), ms(9));
        assert_eq!(
            draw(&mut rng, &(Duration::MAX..=Duration::MAX)),
            Duration::MAX
        );
    }

    #[test]
    fn the_event_is_stripes_envelope_around_the_charge() {
        let made = Made {
            object: serde_json::json!({"id": "ch_1", "object": "charge"}),
            failed: false,
            request_id: "req_1",
            idempotency_key: None,
        };
        let body = event_body("evt_1", "charge.succeeded", &made);
        let event: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(event["id"], "evt_1");
        assert_eq!(event["object"], "event");
        assert_eq!(event["type"], "charge.succeeded");
        assert_eq!(event["data"]["object"]["id"], "ch_1");
        assert_eq!(event["request"]["id"], "req_1");
        assert!(event["request"]["idempotency_key"].is_null());
        assert_eq!(event["api_version"], API_VERSION);
        assert!(event["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
    }

    #[test]
    fn shares_are_clamped_and_attempts_are_at_least_one() {
        let w = Webhooks::new("http://x", "s")
            .duplicates(f64::NAN)
            .attempts(0);
        assert_eq!((w.duplicates, w.attempts), (0.0, 1));
        assert_eq!(
            Webhooks::new("http://x", "s").duplicates(3.0).duplicates,
            1.0
        );
        assert!(
            !format!("{w:?}").contains("\"s\""),
            "the secret is not printed"
        );
    }
}
