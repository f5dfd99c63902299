//! Stripe webhooks (feature `webhooks`): verifying `Stripe-Signature`, the event envelope,
//! and an endpoint as a tower service.
