//! `arca-store-sqlite`: the local store — Nix's SQLite path registry (`db.sqlite` with
//! Nix's exact schema), `LocalStore` over a physical root, garbage collection and
//! store optimisation.
//!
//! Not filled yet: this crate holds its place in the crate map (see ARCHITECTURE.md) and
//! exports nothing. It will depend on `arca-store-core` and `arca-nar` only.
