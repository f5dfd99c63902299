//! Placeholder: loopback benchmarks (issue 4).
fn main() {}
