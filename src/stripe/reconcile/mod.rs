//! Settling what a call could not (feature `webhooks`): the `Reconciler`.
