//! `LocalStore::verify` finds what is wrong and `--repair` fixes what it can.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use arca_store_core::Store;
use arca_store_sqlite::{LocalStore, VerifyOptions, VerifyProblem};

fn store_with_two_paths() -> (
    tempfile::TempDir,
    LocalStore,
    Vec<arca_store_core::StorePath>,
) {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let mut paths = Vec::new();
    for (name, contents) in [("a.txt", "first\n"), ("b.txt", "second\n")] {
        let source = root.path().join(name);
        fs::write(&source, contents).unwrap();
        paths.push(store.add_path(&source, name).unwrap());
    }
    (root, store, paths)
}

#[test]
fn clean_store_verifies_clean_with_contents() {
    let (_root, store, _) = store_with_two_paths();
    let options = VerifyOptions {
        check_contents: true,
        repair: false,
    };
    let report = store.verify(None, options).unwrap();
    assert_eq!(report.checked, 2);
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn modified_contents_are_reported_only_with_check_contents() {
    let (_root, store, paths) = store_with_two_paths();
    let file = store.physical_path(&paths[0]);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&file, "tampered\n").unwrap();

    assert!(store
        .verify(None, VerifyOptions::default())
        .unwrap()
        .is_clean());
    let options = VerifyOptions {
        check_contents: true,
        repair: false,
    };
    let report = store.verify(None, options).unwrap();
    assert!(matches!(
        report.problems.as_slice(),
        [VerifyProblem::Modified { path, .. }] if *path == paths[0]
    ));
}

#[test]
fn missing_path_is_reported_and_repair_unregisters_it() {
    let (_root, store, paths) = store_with_two_paths();
    let file = store.physical_path(&paths[1]);
    fs::remove_file(&file).unwrap();

    let report = store.verify(None, VerifyOptions::default()).unwrap();
    assert_eq!(
        report.problems,
        [VerifyProblem::Missing {
            path: paths[1].clone(),
            repaired: false
        }]
    );
    assert!(store.is_valid_path(&paths[1]).unwrap());

    let repair = VerifyOptions {
        check_contents: false,
        repair: true,
    };
    let report = store.verify(None, repair).unwrap();
    assert_eq!(
        report.problems,
        [VerifyProblem::Missing {
            path: paths[1].clone(),
            repaired: true
        }]
    );
    assert!(!store.is_valid_path(&paths[1]).unwrap());
    assert!(store
        .verify(None, VerifyOptions::default())
        .unwrap()
        .is_clean());
}

#[test]
fn verifying_an_invalid_path_is_an_error() {
    let (_root, store, paths) = store_with_two_paths();
    store.delete_path(&paths[0]).unwrap();
    let only = BTreeSet::from([paths[0].clone()]);
    assert!(store.verify(Some(&only), VerifyOptions::default()).is_err());
}
