//! Placeholder; filled by the benchmark work.
fn main() {}
