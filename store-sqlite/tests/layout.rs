//! A store emptied by a full collection holds nothing but Nix's `.links`, as Nix's does:
//! Arca's own directories (staging, trash, link shards) go once they are empty.

use std::collections::BTreeSet;
use std::fs;

use arca_store_core::Store;
use arca_store_sqlite::{GcOptions, LocalStore};

fn entries(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_full_collection_leaves_only_links() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let path = store.add_text("hello", b"hello", &BTreeSet::new()).unwrap();
    store.optimise(&Default::default(), &|_| {}).unwrap();
    assert_eq!(
        entries(store.physical_store()),
        BTreeSet::from([
            ".arca-links".to_string(),
            ".arca-staging".to_string(),
            ".links".to_string(),
            path.to_string()
        ])
    );
    // A new handle: the first one's temporary roots keep what it added alive.
    drop(store);
    let store = LocalStore::open(root.path()).unwrap();
    store
        .collect_garbage(&GcOptions::default(), &|_| {})
        .unwrap();
    assert_eq!(
        entries(store.physical_store()),
        BTreeSet::from([".links".to_string()])
    );
}
