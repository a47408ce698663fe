//! Helpers shared by the store's integration tests.

use std::collections::BTreeSet;
use std::fs;

use arca_store_sqlite::LocalStore;

/// Entries of the physical store directory, but for the staging and links directories.
#[allow(dead_code)]
pub fn store_entries(store: &LocalStore) -> BTreeSet<String> {
    fs::read_dir(store.physical_store())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".links" && name != ".arca-staging")
        .collect()
}

/// Entries of the staging directory (none when it does not exist).
#[allow(dead_code)]
pub fn staging_entries(store: &LocalStore) -> Vec<String> {
    match fs::read_dir(store.physical_store().join(".arca-staging")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}
