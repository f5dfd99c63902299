//! Settling what a call could not (feature `webhooks`): the [`Reconciler`].
//!
//! A call that ends indeterminate (Stripe's `api_error`, a connection lost after sending,
//! a timeout) may or may not have done its work, and the retry layer can only say so and
//! hand back the key. The reconciler finishes the job. Given to the retry layer with
//! [`Builder::on_indeterminate`](crate::retry::Builder::on_indeterminate), it records
//! every such call as [`Pending`] (its key, the request id of every attempt, method, URI,
//! when, and the headers and body a replay sends again), and settles it by whichever comes
//! first:
//!
//! - **its webhook event**: Stripe sends an event for what the request did, and the
//!   event's `request.idempotency_key` is the call's key. Hand each *verified* event to
//!   [`settle_with_event`](Reconciler::settle_with_event); a `*.failed` event settles the
//!   call as failed with the failure stored on its object, any other as succeeded;
//! - **a replay**: the same request with the same key, which Stripe answers with the
//!   result it saved (for at least 24 hours). [`replay`](Reconciler::replay) sends every
//!   pending call again through the stack; a success or a definite failure settles it, an
//!   answer that is still indeterminate leaves it pending.
//!
//! A settlement is final: the same event twice, or an event after a replay settled the
//! call, changes nothing. [`pending`](Reconciler::pending) lists what is still open, and
//! [`wait`](Reconciler::wait) awaits one key's [`Settlement`], with a timeout on tokio's
//! clock.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use resilient_http::stripe::reconcile::{Reconciler, Settlement};
//! use resilient_http::{ResilientLayer, RetryLayer};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A stand-in for Stripe: three `api_error`s (each may have charged), then the charge.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let count = calls.clone();
//! let stripe = service_fn(move |_req: Request<Full<Bytes>>| {
//!     let n = count.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let (status, body) = if n < 3 {
//!             (500, r#"{"error":{"type":"api_error"}}"#)
//!         } else {
//!             (200, r#"{"id":"ch_1","object":"charge","status":"succeeded"}"#)
//!         };
//!         Ok::<_, std::convert::Infallible>(
//!             Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap(),
//!         )
//!     }
//! });
//!
//! let reconciler = Reconciler::new();
//! let retry = RetryLayer::builder().on_indeterminate(reconciler.clone()).build().unwrap();
//! let stack = ResilientLayer::new(retry).layer(stripe);
//!
//! let charge = Request::post("https://api.stripe.com/v1/charges")
//!     .body(Full::new(Bytes::from("amount=2000&currency=usd")))
//!     .unwrap();
//! let err = stack.clone().oneshot(charge).await.unwrap_err();
//! assert!(err.is_indeterminate());
//! let key = err.idempotency_key().unwrap().as_str().to_owned();
//!
//! // Recorded, with what a replay needs.
//! let pending = reconciler.pending().unwrap();
//! assert_eq!(pending.len(), 1);
//! assert_eq!(pending[0].idempotency_key, key);
//! assert_eq!(pending[0].body, "amount=2000&currency=usd");
//!
//! // No webhook came: replay it with its key, and learn that the charge went through.
//! let report = reconciler.replay(stack, Duration::ZERO).await.unwrap();
//! assert_eq!(report.settled.len(), 1);
//! let settled = reconciler.wait(&key, Duration::from_secs(1)).await.unwrap();
//! assert!(settled.is_succeeded());
//! assert_eq!(settled.object().unwrap()["id"], "ch_1");
//! assert!(reconciler.pending().unwrap().is_empty());
//! # }
//! ```
//!
//! # Events
//!
//! An event settles a call only once its signature is verified (by
//! [`Verifier`](crate::stripe::webhook::Verifier) or the
//! [`Webhook`](crate::stripe::webhook::Webhook) endpoint): an unverified event could
//! settle a charge that never happened. Stripe sends events late, out of order and more
//! than once, sometimes before the retry loop has even given up on the call; the
//! reconciler remembers the last [10,000](SETTLEMENTS_REMEMBERED) settlements, so that an
//! event that comes first settles the call as soon as it is recorded.
//!
//! A call whose key causes several events (a PaymentIntent created and confirmed in one
//! call sends `payment_intent.created`, then `payment_intent.succeeded` or
//! `payment_intent.payment_failed`) is settled by the first that arrives. The rule reads
//! the failure stored on any event's object, so a `created` event whose PaymentIntent
//! already records a declined confirmation settles the call as failed; for calls of this
//! kind, check the object of a success against what you expect.
//!
//! # Stores
//!
//! Records live in a [`PendingStore`]: [`MemoryStore`] (the default) or, with feature
//! `sqlite`, `SqliteStore`, a file that survives a restart. A record the store fails to
//! save is kept in memory, logged with a warning, and still listed: a store failure never
//! loses a call silently. Settlements themselves are kept in memory only.
//!
//! # Credentials
//!
//! A record leaves out `Authorization`, `Proxy-Authorization`, `Cookie` and any header
//! marked sensitive, so that an API key is never written to a store. The service given to
//! [`replay`](Reconciler::replay) must add them again, as a client's own auth layer does
//! (tower-http's `SetRequestHeaderLayer`, for one).

mod book;
mod pending;
mod replay;
mod settlement;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
mod wait;

pub use self::book::SETTLEMENTS_REMEMBERED;
pub use self::pending::Pending;
pub use self::replay::{ReplayReport, REPLAY_WINDOW};
pub use self::settlement::{SettledBy, Settlement};
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteStore;
pub use self::store::{MemoryStore, PendingStore, StoreError, StoreOp};
pub use self::wait::WaitError;

use self::book::Book;
use crate::retry::{IndeterminateCall, OnIndeterminate};
use crate::stripe::webhook::Event;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

const TARGET: &str = "resilient_http::reconcile";

/// Records the calls that end indeterminate, and settles them by their webhook events or
/// by replaying them. See the [module docs](self).
///
/// Cheap to clone: clones share one store and one memory, so the retry layer, the webhook
/// handler and a periodic replay task each hold one.
#[derive(Clone)]
pub struct Reconciler {
    shared: Arc<Shared>,
}

struct Shared {
    store: Box<dyn PendingStore>,
    store_type: &'static str,
    book: Mutex<Book>,
}

impl Reconciler {
    /// A reconciler whose records live in memory ([`MemoryStore`]).
    pub fn new() -> Self {
        Self::with_store(MemoryStore::new())
    }

    /// A reconciler whose records live in `store`; the records already there (from before
    /// a restart) are pending.
    pub fn with_store(store: impl PendingStore) -> Self {
        Reconciler {
            shared: Arc::new(Shared {
                store_type: std::any::type_name_of_val(&store),
                store: Box::new(store),
                book: Mutex::new(Book::default()),
            }),
        }
    }

    /// The calls not settled yet, oldest first: the store's records and those it failed
    /// to save.
    ///
    /// # Errors
    ///
    /// The store could not list its records.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let stored = self.shared.store.list()?;
        let book = self.book();
        let mut pending: Vec<Pending> = stored
            .into_iter()
            .filter(|p| !book.unsaved.contains_key(&p.idempotency_key))
            .chain(book.unsaved.values().cloned())
            // A settled call whose record the store failed to remove is not pending.
            .filter(|p| book.settlement(&p.idempotency_key).is_none())
            .collect();
        drop(book);
        pending.sort_by(|a, b| {
            (a.recorded_at, &a.idempotency_key).cmp(&(b.recorded_at, &b.idempotency_key))
        });
        Ok(pending)
    }

    /// How the call with key `key` was settled, if it was (and is among the last
    /// [`SETTLEMENTS_REMEMBERED`] settled).
    pub fn settled(&self, key: &str) -> Option<Settlement> {
        self.book().settlement(key).cloned()
    }

    /// Settles the pending call whose key is the event's `request.idempotency_key`.
    /// The event must be verified first (see the [module docs](self#events)).
    ///
    /// The event's type and object say how the call ended:
    ///
    /// | the event | the call is |
    /// |---|---|
    /// | its type's last part is `failed` or ends in `_failed` (`charge.failed`, `payment_intent.payment_failed`, `invoice.finalization_failed`) | failed, with the failure stored on its object |
    /// | its object stores a failure and its `status` is `failed` or `requires_payment_method` (a PaymentIntent created and confirmed in one call, declined) | failed, with that failure |
    /// | any other (`charge.succeeded`, `payment_intent.created`, `customer.updated`) | succeeded: the request ran; the object is `data.object` |
    ///
    /// The failure is [`Event::stored_failure`]; a Charge, which stores its failure as
    /// `failure_code` and `failure_message`, gives a `card_error` with that code and
    /// message (and `outcome.reason` as the decline code), as the API's answer did.
    ///
    /// Returns the settlement if this event settled a pending call; `None` if it has no
    /// key, or its call was settled already (a redelivery, or after a replay: the first
    /// settlement stays), or no call with its key is pending. An event whose call is not
    /// recorded yet is remembered, and settles the call when it is.
    ///
    /// ```
    /// use resilient_http::stripe::reconcile::{Pending, PendingStore, MemoryStore, Reconciler};
    /// use resilient_http::stripe::webhook::Event;
    /// use resilient_http::stripe::Category;
    /// use std::time::SystemTime;
    ///
    /// let store = MemoryStore::new();
    /// store.insert(&Pending::new("key_1", http::Method::POST, "/v1/payment_intents".parse().unwrap(), SystemTime::now())).unwrap();
    /// let reconciler = Reconciler::with_store(store);
    ///
    /// let event = Event::from_slice(br#"{
    ///     "id": "evt_1", "type": "payment_intent.payment_failed",
    ///     "data": {"object": {"id": "pi_1", "object": "payment_intent", "status": "requires_payment_method",
    ///         "last_payment_error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"}}},
    ///     "request": {"id": "req_1", "idempotency_key": "key_1"}
    /// }"#).unwrap();
    /// let settled = reconciler.settle_with_event(&event).unwrap();
    /// assert_eq!(settled.error().unwrap().category(), Category::CardDeclined);
    /// assert!(reconciler.pending().unwrap().is_empty());
    /// assert_eq!(reconciler.settle_with_event(&event), None, "the second time changes nothing");
    /// ```
    pub fn settle_with_event(&self, event: &Event) -> Option<Settlement> {
        let (key, settlement) = settlement::from_event(event)?;
        self.settle(key, settlement)
    }

    /// Waits until the call with key `key` is settled, for at most `timeout` on tokio's
    /// clock. Returns at once if it is settled already. A key that is not pending yet
    /// (its call is still retrying) can be waited for too.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] if nothing settled it in time.
    pub async fn wait(&self, key: &str, timeout: Duration) -> Result<Settlement, WaitError> {
        let rx = {
            let mut book = self.book();
            if let Some(settlement) = book.settlement(key) {
                return Ok(settlement.clone());
            }
            book.wait(key)
        };
        let mut waiting = wait::Waiting {
            rx,
            reconciler: self,
            key,
        };
        match tokio::time::timeout(timeout, &mut waiting.rx).await {
            Ok(Ok(settlement)) => Ok(settlement),
            // The sender lives in the book as long as the reconciler: it is never dropped
            // unsent while this borrow lasts. Read as a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(WaitError::Timeout {
                key: key.to_owned(),
                waited: timeout,
            }),
        }
    }

    /// Records a call, unless an earlier event settled it already.
    fn record(&self, mut pending: Pending) {
        let key = pending.idempotency_key.clone();
        // The book stays locked while the store writes, so that an event cannot settle
        // the key between the check and the write and leave the record behind.
        let mut book = self.book();
        if book.settlement(&key).is_some() {
            tracing::debug!(target: TARGET, idempotency_key = %key, "indeterminate call already settled by its event");
            return;
        }
        // A replay that ends indeterminate again is the same call: it keeps the time it
        // was first recorded (the replay window is measured from it) and every request id.
        // The replay holds that record, so the store is not read on the call's task.
        if let Some(earlier) = book.replaying.get(&key).cloned() {
            pending.recorded_at = pending.recorded_at.min(earlier.recorded_at);
            let mut ids = earlier.request_ids;
            for id in pending.request_ids.drain(..) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            pending.request_ids = ids;
        }
        match self.shared.store.insert(&pending) {
            Ok(()) => {
                book.unsaved.remove(&key);
                tracing::debug!(target: TARGET, idempotency_key = %key, "pending");
            }
            Err(error) => {
                tracing::warn!(
                    target: TARGET,
                    idempotency_key = %key,
                    error = %error,
                    cause = %Cause(&error),
                    "pending call kept in memory only: the store failed to save it"
                );
                book.unsaved.insert(key, pending);
            }
        }
    }

    /// Settles `key`; the settlement if a pending call was settled, `None` if the key was
    /// settled already (nothing changes) or is not pending (the settlement is remembered).
    fn settle(&self, key: &str, settlement: Settlement) -> Option<Settlement> {
        let mut book = self.book();
        if book.settlement(key).is_some() {
            return None;
        }
        let unsaved = book.unsaved.remove(key).is_some();
        // Settled in the book first, and the store asked after: a call that ends
        // indeterminate meanwhile finds the settlement and records nothing, and does not
        // wait for the store (which may be on the network) to get the book.
        book.settle(key, &settlement);
        drop(book);
        let stored = match self.shared.store.remove(key) {
            Ok(removed) => removed.is_some(),
            Err(error) => {
                // Settled all the same: the settlement is remembered, and `pending`
                // leaves the record out.
                tracing::warn!(
                    target: TARGET,
                    idempotency_key = %key,
                    error = %error,
                    cause = %Cause(&error),
                    "settled, but the store failed to remove the record"
                );
                true
            }
        };
        let was_pending = unsaved || stored;
        tracing::debug!(target: TARGET, idempotency_key = %key, was_pending, ?settlement, "settled");
        was_pending.then_some(settlement)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // A store that panicked while the lock was held leaves the book usable: at worst
        // it misses a record the store still has, which `pending` lists all the same.
        self.shared
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl OnIndeterminate for Reconciler {
    fn indeterminate(&self, call: &IndeterminateCall<'_>) {
        match Pending::from_call(call, SystemTime::now()) {
            Some(pending) => self.record(pending),
            None => tracing::debug!(
                target: TARGET,
                "indeterminate call without an idempotency key: nothing to reconcile"
            ),
        }
    }
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Reconciler");
        debug.field("store", &self.shared.store_type);
        // `try_lock`: printing must not wait for (or deadlock on) a store write.
        if let Ok(book) = self.shared.book.try_lock() {
            debug.field("unsaved", &book.unsaved.len());
        }
        debug.finish_non_exhaustive()
    }
}

/// Shows an error's source, or `-`.
struct Cause<'a>(&'a StoreError);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::error::Error::source(self.0) {
            Some(source) => fmt::Display::fmt(source, f),
            None => f.write_str("-"),
        }
    }
}
