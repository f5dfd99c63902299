//! The account of a call: why its retry loop stopped ([`StopReason`]), each
//! [`Attempt`], and the [`CallReport`] that gathers them with the idempotency key.
//!
//! On success the report is carried by the response's body; on any other outcome it is in
//! the [`Error`](crate::Error).

use crate::headers::RequestId;
use crate::idempotency::IdempotencyKey;
use crate::outcome::{Class, Outcome};
use http::StatusCode;
use std::fmt;
use std::time::Duration;

/// Why the retry loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The last attempt's result was final: a success, or a failure no retry can fix.
    Final,
    /// The server said a retry cannot help (Stripe: `Stripe-Should-Retry: false`) about
    /// an answer that would otherwise have been retried.
    ServerRefusedRetry,
    /// Every allowed attempt was made.
    AttemptsExhausted,
    /// The next attempt could not start (or the current one could not finish) before the
    /// whole-call deadline.
    DeadlineExceeded,
    /// The server asked for a wait (`Retry-After`) longer than the configured cap.
    RetryAfterTooLong {
        /// The wait the server asked for.
        retry_after: Duration,
    },
    /// A retry might have helped, but the request is neither idempotent nor carries an
    /// idempotency key, so replaying it could repeat its effect.
    NotReplayable,
    /// The inner service failed while getting ready for an attempt.
    ServiceNotReady,
    /// The request was refused before anything was sent (invalid idempotency key, body
    /// over the limit or failing, invalid per-call options).
    Rejected,
    /// A retry might have helped, but the [retry budget](crate::budget) shared by the
    /// client's calls was empty.
    BudgetExhausted,
    /// [Adaptive throttling](crate::throttle) would have made the next attempt queue longer
    /// than its limit (1 s) or until past the deadline, so it was not sent.
    Throttled,
}

impl StopReason {
    pub(crate) fn describe(&self) -> Option<String> {
        Some(match self {
            StopReason::Final => return None,
            StopReason::ServerRefusedRetry => "server said a retry cannot help".to_owned(),
            StopReason::AttemptsExhausted => "attempts exhausted".to_owned(),
            StopReason::DeadlineExceeded => "deadline exceeded".to_owned(),
            StopReason::RetryAfterTooLong { retry_after } => {
                // Rounded up: a wait of 60.5 s against a 60 s cap is over it.
                let secs = retry_after
                    .as_secs()
                    .saturating_add(u64::from(retry_after.subsec_nanos() > 0));
                format!("server asked to retry after {secs}s, over the cap")
            }
            StopReason::NotReplayable => "request has no idempotency key, not replayed".to_owned(),
            StopReason::ServiceNotReady => "inner service failed".to_owned(),
            StopReason::Rejected => "rejected before sending".to_owned(),
            StopReason::BudgetExhausted => "retry budget exhausted".to_owned(),
            StopReason::Throttled => "throttled: no send slot in time".to_owned(),
        })
    }
}

/// A time limit that ran out: the cause inside an [`Error`](crate::Error) whose call timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Elapsed {
    /// One attempt ran past the per-attempt timeout.
    Attempt(Duration),
    /// The call ran past its whole-call deadline.
    Deadline(Duration),
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elapsed::Attempt(d) => write!(f, "attempt timed out after {d:?}"),
            Elapsed::Deadline(d) => write!(f, "call deadline of {d:?} exceeded"),
        }
    }
}

impl std::error::Error for Elapsed {}

/// One attempt of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// Which attempt, from 1.
    pub number: u32,
    /// What happened.
    pub class: Class,
    /// The response status, if a response came.
    pub status: Option<StatusCode>,
    /// The `Request-Id` of the response, if it had one.
    pub request_id: Option<RequestId>,
    /// The wait before the next attempt, if there was one: the backoff, or the server's
    /// `Retry-After` when that was longer.
    pub delay: Option<Duration>,
}

/// The attempts of a call. Most calls make one, kept inline: a list is allocated only for
/// a call that retries. `Debug` shows the list, whichever way it is kept.
#[derive(Clone, Default)]
pub(crate) enum Attempts {
    #[default]
    None,
    One(Attempt),
    Many(Vec<Attempt>),
}

impl Attempts {
    pub(crate) fn push(&mut self, attempt: Attempt) {
        match self {
            // Most calls make one attempt: written in place.
            Attempts::None => *self = Attempts::One(attempt),
            Attempts::Many(all) => all.push(attempt),
            Attempts::One(_) => {
                if let Attempts::One(first) = std::mem::take(self) {
                    *self = Attempts::Many(vec![first, attempt]);
                }
            }
        }
    }

    pub(crate) fn as_slice(&self) -> &[Attempt] {
        match self {
            Attempts::None => &[],
            Attempts::One(attempt) => std::slice::from_ref(attempt),
            Attempts::Many(all) => all,
        }
    }

    pub(crate) fn last_mut(&mut self) -> Option<&mut Attempt> {
        match self {
            Attempts::None => None,
            Attempts::One(attempt) => Some(attempt),
            Attempts::Many(all) => all.last_mut(),
        }
    }
}

impl fmt::Debug for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for Attempts {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Attempts {}

impl FromIterator<Attempt> for Attempts {
    fn from_iter<I: IntoIterator<Item = Attempt>>(iter: I) -> Self {
        let mut attempts = Attempts::None;
        for attempt in iter {
            attempts.push(attempt);
        }
        attempts
    }
}

/// The account of one call: its outcome, its idempotency key, and every attempt.
///
/// On success it is carried by the response's body ([`ResponseBody::report`](crate::ResponseBody::report)); otherwise it is in the [`Error`](crate::Error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallReport {
    pub(crate) outcome: Outcome,
    pub(crate) stop: StopReason,
    pub(crate) idempotency_key: Option<IdempotencyKey>,
    pub(crate) attempts: Attempts,
    pub(crate) replayed: bool,
}

impl CallReport {
    /// How the call ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Why the retry loop stopped.
    pub fn stop_reason(&self) -> StopReason {
        self.stop
    }

    /// The idempotency key every attempt carried, if the request had one.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.idempotency_key.as_ref()
    }

    /// Every attempt, in order. Empty if nothing was sent.
    pub fn attempts(&self) -> &[Attempt] {
        self.attempts.as_slice()
    }

    /// The request id of every attempt that got one, in order.
    pub fn request_ids(&self) -> impl Iterator<Item = &RequestId> + '_ {
        self.attempts().iter().filter_map(|a| a.request_id.as_ref())
    }

    /// Whether the final response said it was replayed from the server's saved result
    /// (`Idempotent-Replayed: true`).
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// The class of the last attempt, if there was one.
    pub fn last_class(&self) -> Option<Class> {
        self.attempts().last().map(|a| a.class)
    }
}

impl fmt::Display for CallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.attempts().len();
        write!(
            f,
            "{} after {} attempt{}",
            self.outcome,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        // Every attempt, so that the one that may have taken effect (a timeout before a
        // 429, say) shows in a log line, then why the loop stopped.
        let reason = self.stop.describe();
        if n > 0 || reason.is_some() {
            f.write_str(" (")?;
            for (i, attempt) in self.attempts().iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                match attempt.status {
                    Some(status) => write!(f, "{} {}", status.as_u16(), attempt.class)?,
                    None => write!(f, "{}", attempt.class)?,
                }
            }
            match reason {
                Some(reason) if n > 0 => write!(f, "; {reason})")?,
                Some(reason) => write!(f, "{reason})")?,
                None => f.write_str(")")?,
            }
        }
        if let Some(key) = &self.idempotency_key {
            write!(f, ", idempotency key {key}")?;
        }
        let mut ids = self.request_ids().peekable();
        if ids.peek().is_some() {
            f.write_str(", request ids ")?;
            for (i, id) in ids.enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{id}")?;
            }
        }
        if self.replayed {
            f.write_str(", replayed")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;

    /// A report with key `key-1` and one attempt per `(status, class, request id)`.
    pub(crate) fn report(
        outcome: Outcome,
        stop: StopReason,
        statuses: &[(u16, Class, &str)],
    ) -> CallReport {
        CallReport {
            outcome,
            stop,
            idempotency_key: Some(IdempotencyKey::new("key-1").unwrap()),
            attempts: statuses
                .iter()
                .enumerate()
                .map(|(i, (status, class, id))| Attempt {
                    number: i as u32 + 1,
                    class: *class,
                    status: Some(StatusCode::from_u16(*status).unwrap()),
                    request_id: Some(RequestId::new(HeaderValue::from_str(id).unwrap())),
                    delay: None,
                })
                .collect(),
            replayed: false,
        }
    }

    #[test]
    fn reports_read_as_one_line() {
        let r = report(
            Outcome::Indeterminate,
            StopReason::AttemptsExhausted,
            &[
                (503, Class::Unavailable, "req_1"),
                (503, Class::Unavailable, "req_2"),
            ],
        );
        assert_eq!(
            r.to_string(),
            "indeterminate after 2 attempts (503 unavailable, 503 unavailable; attempts \
             exhausted), idempotency key key-1, request ids req_1 req_2"
        );
    }

    #[test]
    fn debug_lists_the_attempts_however_they_are_kept() {
        let none = report(Outcome::DefiniteFailure, StopReason::Rejected, &[]);
        assert!(format!("{none:?}").contains("attempts: []"), "{none:?}");
        let one = report(
            Outcome::Success,
            StopReason::Final,
            &[(200, Class::Success, "r")],
        );
        assert!(
            format!("{one:?}").contains("attempts: [Attempt {"),
            "{one:?}"
        );
    }

    #[test]
    fn a_wait_over_the_cap_is_never_shown_at_the_cap() {
        // An HTTP-date `Retry-After` measured against the local clock has a fraction.
        let stop = StopReason::RetryAfterTooLong {
            retry_after: Duration::from_millis(60_500),
        };
        assert_eq!(
            stop.describe().as_deref(),
            Some("server asked to retry after 61s, over the cap")
        );
    }

    #[test]
    fn a_refused_retry_says_who_refused() {
        let r = report(
            Outcome::Indeterminate,
            StopReason::ServerRefusedRetry,
            &[(500, Class::ServerError, "req_9")],
        );
        assert!(
            r.to_string()
                .contains("(500 server_error; server said a retry cannot help)"),
            "{r}"
        );
    }
}
