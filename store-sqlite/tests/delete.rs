//! `LocalStore::delete_path`: only paths nothing refers to, files and registration both.

use std::collections::BTreeSet;

use arca_store_core::Store;
use arca_store_sqlite::{LocalStore, StoreError};

#[test]
fn delete_refuses_a_referenced_path_then_deletes_in_order() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let base = store.add_text("base", b"base\n", &BTreeSet::new()).unwrap();
    let top_text = format!("uses {}\n", store.store_dir().display(&base));
    let top = store
        .add_text("top", top_text.as_bytes(), &BTreeSet::from([base.clone()]))
        .unwrap();

    let error = store.delete_path(&base).unwrap_err();
    assert!(
        matches!(&error, StoreError::StillReferenced { path, referrer }
            if path.ends_with("-base") && referrer.ends_with("-top")),
        "{error:?}"
    );
    assert!(store.is_valid_path(&base).unwrap());
    assert!(store.physical_path(&base).exists());

    store.delete_path(&top).unwrap();
    assert!(!store.is_valid_path(&top).unwrap());
    assert!(!store.physical_path(&top).exists());
    store.delete_path(&base).unwrap();
    assert!(!store.physical_path(&base).exists());
    assert!(matches!(
        store.delete_path(&base),
        Err(StoreError::InvalidPath(_))
    ));
}
