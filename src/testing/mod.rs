//! A Stripe-like test server (feature `testing`). Placeholder: filled in by issue 3.
