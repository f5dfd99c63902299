//! The reconciler's memory: the settlements it has learnt (bounded), the records a store
//! failed to save, and the callers waiting for a key.

use super::{Pending, Settlement};
use std::collections::{HashMap, VecDeque};
use tokio::sync::oneshot;

/// How many settlements are remembered: enough to answer a late duplicate event or a
/// waiter, and to hold the events that arrive before their call is recorded (a webhook can
/// beat the retry loop's last attempt), without growing with every call a process makes.
pub const SETTLEMENTS_REMEMBERED: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Book {
    settled: HashMap<String, Settlement>,
    /// Keys of `settled`, oldest first, to forget the oldest.
    order: VecDeque<String>,
    /// Records the store failed to save: kept here, and listed with the store's.
    pub(crate) unsaved: HashMap<String, Pending>,
    /// The records of the calls being replayed now: a replay that ends indeterminate
    /// again is the same call, recorded with these.
    pub(crate) replaying: HashMap<String, Pending>,
    waiters: HashMap<String, Vec<oneshot::Sender<Settlement>>>,
}

impl Book {
    pub(crate) fn settlement(&self, key: &str) -> Option<&Settlement> {
        self.settled.get(key)
    }

    /// Remembers the first settlement of `key` and wakes its waiters; `false` (and nothing
    /// changes) if `key` was settled already: a settlement never flips.
    pub(crate) fn settle(&mut self, key: &str, settlement: &Settlement) -> bool {
        if self.settled.contains_key(key) {
            return false;
        }
        if self.order.len() >= SETTLEMENTS_REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.settled.remove(&oldest);
            }
        }
        self.settled.insert(key.to_owned(), settlement.clone());
        self.order.push_back(key.to_owned());
        for waiter in self.waiters.remove(key).unwrap_or_default() {
            // A waiter that has given up is gone: nothing to tell it.
            let _ = waiter.send(settlement.clone());
        }
        true
    }

    /// A receiver told of `key`'s settlement.
    pub(crate) fn wait(&mut self, key: &str) -> oneshot::Receiver<Settlement> {
        let (tx, rx) = oneshot::channel();
        self.waiters.entry(key.to_owned()).or_default().push(tx);
        rx
    }

    /// Forgets the waiters of `key` that have stopped waiting.
    pub(crate) fn prune(&mut self, key: &str) {
        if let Some(waiters) = self.waiters.get_mut(key) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                self.waiters.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::reconcile::SettledBy;

    fn by_event(id: &str) -> Settlement {
        Settlement::Succeeded {
            by: SettledBy::Event { id: id.into() },
            object: None,
        }
    }

    #[test]
    fn the_first_settlement_stays() {
        let mut book = Book::default();
        assert!(book.settle("k", &by_event("evt_1")));
        assert!(!book.settle("k", &by_event("evt_2")));
        assert_eq!(book.settlement("k"), Some(&by_event("evt_1")));
    }

    #[test]
    fn the_oldest_settlements_are_forgotten_past_the_bound() {
        let mut book = Book::default();
        for i in 0..=SETTLEMENTS_REMEMBERED {
            book.settle(&format!("k{i}"), &by_event("evt"));
        }
        assert_eq!(book.settlement("k0"), None);
        assert!(book.settlement("k1").is_some());
        assert_eq!(book.settled.len(), SETTLEMENTS_REMEMBERED);
        assert_eq!(book.order.len(), SETTLEMENTS_REMEMBERED);
    }

    #[test]
    fn waiters_are_told_once_and_the_gone_are_pruned() {
        let mut book = Book::default();
        let mut told = book.wait("k");
        let gone = book.wait("k");
        drop(gone);
        book.prune("k");
        assert_eq!(book.waiting(), 1);
        book.settle("k", &by_event("evt_1"));
        assert_eq!(told.try_recv().ok(), Some(by_event("evt_1")));
        assert_eq!(book.waiting(), 0);
        drop(book.wait("other"));
        book.prune("other");
        assert_eq!(book.waiting(), 0);
        assert!(book.waiters.is_empty());
    }
}
