//! Placeholder: backoff under contention (issue 4).
fn main() {}
