//! `arca-store-core`: hashes, store paths, derivations.
