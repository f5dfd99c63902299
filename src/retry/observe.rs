use crate::report::CallReport;
use bytes::Bytes;
use http::request;
use std::fmt;

/// Told of every call that ends indeterminate, with what a later replay needs: the request
/// head (its `Idempotency-Key` included), the body that was sent, and the call's report.
///
/// Give one to the retry layer with
/// [`Builder::on_indeterminate`](super::Builder::on_indeterminate). It runs on the call's
/// task as the call ends, before the caller sees the error, so it should be quick: record
/// the call and return. A reconciler that later learns what became of the call (from the
/// server's webhook, or by replaying it with the same key) is the usual recipient.
///
/// ```
/// use resilient_http::retry::{IndeterminateCall, OnIndeterminate};
/// use std::sync::Mutex;
///
/// /// Keeps the keys of the calls to look into.
/// #[derive(Default)]
/// struct ToReconcile(Mutex<Vec<String>>);
///
/// impl OnIndeterminate for ToReconcile {
///     fn indeterminate(&self, call: &IndeterminateCall<'_>) {
///         if let Some(key) = call.report().idempotency_key() {
///             self.0.lock().unwrap().push(key.as_str().to_owned());
///         }
///     }
/// }
/// ```
pub trait OnIndeterminate: Send + Sync + 'static {
    /// A call ended indeterminate.
    fn indeterminate(&self, call: &IndeterminateCall<'_>);
}

/// A call that ended indeterminate, as [`OnIndeterminate`] sees it.
#[derive(Debug)]
pub struct IndeterminateCall<'a> {
    pub(crate) request: &'a request::Parts,
    pub(crate) body: &'a Bytes,
    pub(crate) report: &'a CallReport,
}

impl IndeterminateCall<'_> {
    /// The request's head, as every attempt sent it (its idempotency key included).
    pub fn request(&self) -> &request::Parts {
        self.request
    }

    /// The request's body, the same bytes every attempt sent.
    pub fn body(&self) -> &Bytes {
        self.body
    }

    /// The call's report: its key and the request id of every attempt.
    pub fn report(&self) -> &CallReport {
        self.report
    }
}

/// The layer's observer, shared by every call.
#[derive(Clone)]
pub(crate) struct Observer(pub(crate) std::sync::Arc<dyn OnIndeterminate>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnIndeterminate")
    }
}
