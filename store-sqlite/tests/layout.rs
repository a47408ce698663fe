//! The store directory holds store paths and Nix's `.links`, nothing else of Arca's: a
//! store emptied by a full collection is empty but for `.links`, as Nix's is.

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
fn only_links_is_left_beside_the_store_paths() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let path = store.add_text("hello", b"hello", &BTreeSet::new()).unwrap();
    store.optimise(&Default::default(), &|_| {}).unwrap();
    assert_eq!(
        entries(store.physical_store()),
        BTreeSet::from([".links".to_string(), path.to_string()])
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

#[test]
fn directories_of_earlier_versions_move_into_links() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("nix/store");
    fs::create_dir_all(store_dir.join(".arca-links/ab")).unwrap();
    fs::write(store_dir.join(".arca-links/ab/cd"), "link").unwrap();
    fs::create_dir_all(store_dir.join(".arca-trash/old")).unwrap();
    fs::create_dir_all(store_dir.join(".arca-staging")).unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    assert_eq!(entries(&store_dir), BTreeSet::from([".links".to_string()]));
    assert_eq!(
        fs::read_to_string(store_dir.join(".links/.arca-links/ab/cd")).unwrap(),
        "link"
    );
    drop(store);
}
