//! The idempotency store: Stripe's rules for a reused `Idempotency-Key`.

use crate::params::Params;
use bytes::Bytes;
use std::collections::HashMap;
use tokio::time::Instant;

/// A result saved under a key, replayed byte for byte.
#[derive(Clone, Debug)]
pub(crate) struct Saved {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
    /// Extra headers of the first response (`Stripe-Should-Retry`, ...).
    pub(crate) headers: Vec<(&'static str, &'static str)>,
    /// The first response's `Request-Id`, sent back as `Original-Request` on a replay.
    pub(crate) request_id: String,
}

#[derive(Debug)]
enum Entry {
    /// A request with this key is running; its result is not known yet.
    Executing { fingerprint: (String, Params) },
    /// Its result is saved; until `ready_at` the first request is still answering (a
    /// delayed response), so the key still counts as executing.
    Done {
        fingerprint: (String, Params),
        saved: Saved,
        ready_at: Instant,
    },
}

/// What to do with a keyed request.
#[derive(Debug)]
pub(crate) enum Begin {
    /// The key is new (or its earlier requests saved nothing): run the request.
    Execute,
    /// Same key, same parameters, result saved: answer with it.
    Replay(Saved),
    /// Same key and parameters, still executing: 409.
    InUse,
    /// Same key, different endpoint or parameters: 400 `idempotency_error`.
    Mismatch,
}

/// Keys and their saved results.
#[derive(Debug, Default)]
pub(crate) struct Store {
    entries: HashMap<String, Entry>,
}

impl Store {
    /// Starts a keyed request to `path` with `params` at `now`.
    pub(crate) fn begin(&mut self, key: &str, path: &str, params: &Params, now: Instant) -> Begin {
        let same = |fp: &(String, Params)| fp.0 == path && fp.1 == *params;
        match self.entries.get(key) {
            None => {
                self.entries.insert(
                    key.to_owned(),
                    Entry::Executing {
                        fingerprint: (path.to_owned(), params.clone()),
                    },
                );
                Begin::Execute
            }
            Some(Entry::Executing { fingerprint }) | Some(Entry::Done { fingerprint, .. })
                if !same(fingerprint) =>
            {
                Begin::Mismatch
            }
            Some(Entry::Executing { .. }) => Begin::InUse,
            Some(Entry::Done {
                saved, ready_at, ..
            }) => {
                if now < *ready_at {
                    Begin::InUse
                } else {
                    Begin::Replay(saved.clone())
                }
            }
        }
    }

    /// Saves the result of the executing request with `key`, to be replayed from `ready_at`.
    pub(crate) fn save(&mut self, key: &str, saved: Saved, ready_at: Instant) {
        if let Some(entry) = self.entries.remove(key) {
            let fingerprint = match entry {
                Entry::Executing { fingerprint } | Entry::Done { fingerprint, .. } => fingerprint,
            };
            self.entries.insert(
                key.to_owned(),
                Entry::Done {
                    fingerprint,
                    saved,
                    ready_at,
                },
            );
        }
    }

    /// Forgets an executing key that saved nothing (validation failed, a lock timed out,
    /// the request was abandoned): a later request with it runs afresh.
    pub(crate) fn release(&mut self, key: &str) {
        if let Some(Entry::Executing { .. }) = self.entries.get(key) {
            self.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params(body: &str) -> Params {
        Params::parse(body.as_bytes(), false).unwrap()
    }

    fn saved(status: u16) -> Saved {
        Saved {
            status,
            body: Bytes::from_static(b"{}"),
            headers: Vec::new(),
            request_id: "req_1".to_owned(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_saved_result_is_replayed_for_the_same_params_only() {
        let mut store = Store::default();
        let now = Instant::now();
        let p = params("amount=1&currency=usd");
        assert!(matches!(
            store.begin("k", "/v1/charges", &p, now),
            Begin::Execute
        ));
        store.save("k", saved(200), now);
        match store.begin("k", "/v1/charges", &params("currency=usd&amount=1"), now) {
            Begin::Replay(s) => assert_eq!((s.status, s.request_id.as_str()), (200, "req_1")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.begin("k", "/v1/charges", &params("amount=2&currency=usd"), now),
            Begin::Mismatch
        ));
        assert!(matches!(
            store.begin("k", "/v1/refunds", &p, now),
            Begin::Mismatch
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_in_flight_is_in_use_until_its_delayed_answer_is_sent() {
        let mut store = Store::default();
        let now = Instant::now();
        let p = params("amount=1");
        assert!(matches!(
            store.begin("k", "/v1/charges", &p, now),
            Begin::Execute
        ));
        assert!(matches!(
            store.begin("k", "/v1/charges", &p, now),
            Begin::InUse
        ));
        assert!(matches!(
            store.begin("k", "/v1/charges", &params("amount=2"), now),
            Begin::Mismatch
        ));
        let ready = now + Duration::from_millis(100);
        store.save("k", saved(200), ready);
        assert!(matches!(
            store.begin("k", "/v1/charges", &p, now),
            Begin::InUse
        ));
        assert!(matches!(
            store.begin("k", "/v1/charges", &p, ready),
            Begin::Replay(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_key_runs_afresh_and_a_saved_one_is_never_released() {
        let mut store = Store::default();
        let now = Instant::now();
        let p = params("amount=1");
        store.begin("k", "/v1/charges", &p, now);
        store.release("k");
        // Validation failures save nothing: the caller may fix the params and reuse the key.
        assert!(matches!(
            store.begin("k", "/v1/charges", &params("amount=2"), now),
            Begin::Execute
        ));
        store.save("k", saved(500), now);
        store.release("k");
        assert!(matches!(
            store.begin("k", "/v1/charges", &params("amount=2"), now),
            Begin::Replay(s) if s.status == 500
        ));
    }
}
