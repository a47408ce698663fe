//! Bodies of Arca's fuzz targets. Each `fuzz_targets/*.rs` is a one-line wrapper around a
//! function here, so that `cargo test` can run the same body over the committed corpus
//! without nightly or libFuzzer.
pub mod daemon;
pub mod drv;
pub mod nar;
pub mod narinfo;
