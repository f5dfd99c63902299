//! Where pending calls are kept: the [`PendingStore`] trait, the in-memory default, and
//! the store's error.

use super::Pending;
use crate::body::BoxError;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// Keeps the calls that ended indeterminate until they are settled.
///
/// The [`Reconciler`](super::Reconciler) inserts a record when a call ends indeterminate,
/// removes it when the call is settled, and lists them for [`pending`](super::Reconciler::pending)
/// and [`replay`](super::Reconciler::replay). [`MemoryStore`] is the default;
/// `SqliteStore` (feature `sqlite`) keeps them on disk across a restart; a store shared by
/// several processes (Redis, a database) is one more implementation.
///
/// [`insert`](Self::insert) is called on the task of the call that just ended, before its
/// caller sees the error, so it should be quick (a store on the network can queue the
/// record and write it in the background, as `RedisStore` does); the others are called by
/// settlement (a webhook's task), [`pending`](super::Reconciler::pending) and replays. A
/// store is free to fail: the reconciler keeps a record it could not insert in memory,
/// logs a warning, and still lists it.
///
/// ```
/// use resilient_http::stripe::reconcile::{MemoryStore, Pending, PendingStore};
/// use std::time::SystemTime;
///
/// let store = MemoryStore::new();
/// let call = Pending::new("key_1", http::Method::POST, "/v1/charges".parse().unwrap(), SystemTime::now());
/// store.insert(&call).unwrap();
/// assert_eq!(store.list().unwrap(), [call.clone()]);
/// assert_eq!(store.remove("key_1").unwrap(), Some(call));
/// assert_eq!(store.remove("key_1").unwrap(), None);
/// ```
pub trait PendingStore: Send + Sync + 'static {
    /// Saves a record, replacing any record with the same idempotency key.
    fn insert(&self, pending: &Pending) -> Result<(), StoreError>;

    /// Removes the record of `key`, returning it if there was one.
    fn remove(&self, key: &str) -> Result<Option<Pending>, StoreError>;

    /// Every record, in any order.
    fn list(&self) -> Result<Vec<Pending>, StoreError>;

    /// The record of `key`, if there is one. By default a search of [`list`](Self::list);
    /// a store that can look a key up directly should.
    fn get(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        Ok(self.list()?.into_iter().find(|p| p.idempotency_key == key))
    }
}

/// Pending calls in this process's memory: the default store. They are lost when the
/// process ends; use `SqliteStore` (feature `sqlite`) to keep them.
#[derive(Debug, Default)]
pub struct MemoryStore {
    calls: Mutex<HashMap<String, Pending>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic elsewhere while the lock was held leaves a map that is still whole.
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PendingStore for MemoryStore {
    fn insert(&self, pending: &Pending) -> Result<(), StoreError> {
        self.calls()
            .insert(pending.idempotency_key.clone(), pending.clone());
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        Ok(self.calls().remove(key))
    }

    fn get(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        Ok(self.calls().get(key).cloned())
    }

    fn list(&self) -> Result<Vec<Pending>, StoreError> {
        Ok(self.calls().values().cloned().collect())
    }
}

/// What a store was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// Opening the store (a file, a connection).
    Open,
    /// Saving a record.
    Insert,
    /// Removing a settled record.
    Remove,
    /// Listing the records.
    List,
    /// Looking one record up by its key.
    Get,
}

impl StoreOp {
    fn as_str(self) -> &'static str {
        match self {
            StoreOp::Open => "open its storage",
            StoreOp::Insert => "save a pending call",
            StoreOp::Remove => "remove a settled call",
            StoreOp::List => "list pending calls",
            StoreOp::Get => "look up a pending call",
        }
    }
}

/// A [`PendingStore`] failed; the underlying error is its [`source`](StdError::source).
#[derive(Debug)]
pub struct StoreError {
    op: StoreOp,
    source: BoxError,
}

impl StoreError {
    /// A failure of `op`, caused by `source`. For the implementations of [`PendingStore`].
    pub fn new(op: StoreOp, source: impl Into<BoxError>) -> Self {
        StoreError {
            op,
            source: source.into(),
        }
    }

    /// What the store was doing.
    pub fn op(&self) -> StoreOp {
        self.op
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pending-call store could not {}", self.op.as_str())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_say_what_failed_and_chain_the_cause() {
        let err = StoreError::new(StoreOp::Insert, "disk full");
        assert_eq!(
            err.to_string(),
            "pending-call store could not save a pending call"
        );
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("disk full")
        );
        assert_eq!(err.op(), StoreOp::Insert);
        assert_eq!(
            StoreError::new(StoreOp::Open, "no such file").to_string(),
            "pending-call store could not open its storage"
        );
    }
}
