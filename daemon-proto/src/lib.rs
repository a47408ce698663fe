//! `arca-daemon-proto`: Nix's daemon worker protocol (wire primitives, handshake, worker
//! operations), as a server generic over the store and as a client.
//!
//! Not filled yet: this crate holds its place in the crate map (see ARCHITECTURE.md) and
//! exports nothing.
