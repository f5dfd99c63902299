//! What the server did (the ledger of charges) and what it was asked (the request log).

use crate::faults::Fault;
use crate::params::Params;
use http::Method;

/// One charge the server made: an effect a test can count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The charge id, `ch_` and a number.
    pub id: String,
    /// The amount, in the currency's smallest unit.
    pub amount: u64,
    /// The three-letter currency code, lower case.
    pub currency: String,
    /// The `Idempotency-Key` of the request that made it, if it had one.
    pub idempotency_key: Option<String>,
    /// The `Request-Id` of the request that made it.
    pub request_id: String,
}

/// A snapshot of every charge made, in order, and apart from them the declined ones.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub(crate) charges: Vec<Charge>,
    pub(crate) failed: Vec<Charge>,
}

impl Ledger {
    /// Every charge, in the order made.
    pub fn charges(&self) -> &[Charge] {
        &self.charges
    }

    /// How many charges were made.
    pub fn len(&self) -> usize {
        self.charges.len()
    }

    /// Whether no charge was made.
    pub fn is_empty(&self) -> bool {
        self.charges.is_empty()
    }

    /// The charges made by requests with idempotency key `key`: more than one is a
    /// double charge.
    pub fn by_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Charge> + 'a {
        self.charges
            .iter()
            .filter(move |c| c.idempotency_key.as_deref() == Some(key))
    }

    /// The declined charges (ids `ch_failed_` and a number), in order: Stripe keeps a
    /// charge with `status: failed` for a declined card, though no money moved. Not
    /// counted by [`Ledger::len`] nor listed by [`Ledger::charges`].
    pub fn failed(&self) -> &[Charge] {
        &self.failed
    }

    /// The declined charges of requests with idempotency key `key`.
    pub fn failed_by_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Charge> + 'a {
        self.failed
            .iter()
            .filter(move |c| c.idempotency_key.as_deref() == Some(key))
    }
}

/// How the server answered one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// A response with this status.
    Status(u16),
    /// The connection was closed without a response ([`Fault::DropAfterEffect`]).
    Dropped,
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// The `Request-Id` the server gave it (also for a dropped one, which never sent it).
    pub request_id: String,
    /// Its method.
    pub method: Method,
    /// Its path.
    pub path: String,
    /// Its `Idempotency-Key` header, if any (lossy UTF-8).
    pub idempotency_key: Option<String>,
    /// Its body's parameters (empty when the body was malformed or not read).
    pub params: Params,
    /// How it was answered.
    pub answer: Answer,
    /// The fault injected into it, if any.
    pub fault: Option<Fault>,
    /// Whether it was answered from the idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// A snapshot of every request the server received, in the order their answers were
/// decided.
#[derive(Clone, Debug, Default)]
pub struct RequestLog {
    pub(crate) requests: Vec<LoggedRequest>,
}

impl RequestLog {
    /// Every request, in order.
    pub fn requests(&self) -> &[LoggedRequest] {
        &self.requests
    }

    /// How many requests arrived.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether none did.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// The requests that carried idempotency key `key`.
    pub fn by_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a LoggedRequest> + 'a {
        self.requests
            .iter()
            .filter(move |r| r.idempotency_key.as_deref() == Some(key))
    }

    /// How many requests had a fault injected.
    pub fn faults(&self) -> usize {
        self.requests.iter().filter(|r| r.fault.is_some()).count()
    }
}
