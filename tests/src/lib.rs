//! Shared helpers for Arca's integration tests (golden fixtures, random trees, finding
//! real Nix). The tests themselves are in `tests/tests/`.
