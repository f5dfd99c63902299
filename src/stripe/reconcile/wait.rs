//! Waiting for one key's settlement: [`WaitError`] and the guard that tidies up after a
//! waiter that stops.

use super::{Reconciler, Settlement};
use std::fmt;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why [`Reconciler::wait`] returned without a settlement.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitError {
    /// Nothing settled the call in time. It may still be settled later: wait again, or
    /// [`replay`](Reconciler::replay) it.
    Timeout {
        /// The call's idempotency key.
        key: String,
        /// How long the caller waited.
        waited: Duration,
    },
}

impl WaitError {
    /// Whether the wait ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WaitError::Timeout { .. })
    }
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Timeout { key, waited } => {
                write!(
                    f,
                    "call with idempotency key {key} not settled within {waited:?}"
                )
            }
        }
    }
}

impl std::error::Error for WaitError {}

/// A waiter's receiver; when it goes (told, timed out, or its future dropped), the
/// reconciler forgets the waiters of its key that are gone, so none is kept for ever.
pub(super) struct Waiting<'a> {
    pub(super) rx: oneshot::Receiver<Settlement>,
    pub(super) reconciler: &'a Reconciler,
    pub(super) key: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Closed first, so that the sender it pairs with reads as gone.
        self.rx.close();
        self.reconciler.book().prune(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_the_key_and_the_wait() {
        let err = WaitError::Timeout {
            key: "k_1".into(),
            waited: Duration::from_secs(5),
        };
        assert!(err.is_timeout());
        assert_eq!(
            err.to_string(),
            "call with idempotency key k_1 not settled within 5s"
        );
    }
}
