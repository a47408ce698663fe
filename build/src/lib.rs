//! `arca-build`: building derivations — the goal graph, the scheduler, logs and output
//! registration, on top of the local store and the sandbox.
//!
//! Not filled yet: this crate holds its place in the crate map (see ARCHITECTURE.md) and
//! exports nothing.
