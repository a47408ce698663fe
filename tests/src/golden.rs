//! Helpers for reading the golden fixtures' JSON manifests (`tests/fixtures/*.json`).

use arca_store_core::{StoreDir, StorePath};
use serde_json::Value;

use crate::fixture;

/// `tests/fixtures/<name>`, parsed as JSON (panics naming the file when it cannot be).
pub fn fixture_json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The string field `key` of `value` (panics when it is missing or not a string).
pub fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("field '{key}' is a string in {value}"))
}

/// Every tree of `trees.json` as (key, manifest entry); there are at least 30.
pub fn fixture_trees() -> Vec<(String, Value)> {
    let manifest = fixture_json("trees.json");
    let trees: Vec<(String, Value)> = manifest["trees"]
        .as_object()
        .expect("trees.json has a `trees` object")
        .iter()
        .map(|(key, tree)| (key.clone(), tree.clone()))
        .collect();
    assert!(trees.len() >= 30, "trees.json has lost trees");
    trees
}

/// The default store directory, `/nix/store`.
pub fn store() -> StoreDir {
    StoreDir::default()
}

/// `path` parsed as a store path of `/nix/store` (panics naming it when it does not parse).
pub fn parse_store_path(path: &str) -> StorePath {
    store()
        .parse_path(path)
        .unwrap_or_else(|e| panic!("'{path}' parses as a store path: {e}"))
}
