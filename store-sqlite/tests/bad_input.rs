//! `LocalStore::add_nar` refuses NARs that do not match their claimed metadata with a
//! typed error, and leaves nothing behind: the path is not registered, its final name
//! does not exist, no staging tree, no lock file.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use arca_nar::DumpOptions;
use arca_store_core::{Hash, HashAlgo, PathInfo, Store, StorePath};
use arca_store_sqlite::{LocalStore, StoreError};
use common::{staging_entries, store_entries};

/// A small tree and its NAR.
fn sample_nar(dir: &Path) -> Vec<u8> {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("a"), b"some contents\n".repeat(50)).unwrap();
    fs::write(tree.join("sub/b"), b"more").unwrap();
    std::os::unix::fs::symlink("../a", tree.join("sub/link")).unwrap();
    let mut nar = Vec::new();
    arca_nar::dump_path(&tree, &mut nar, &DumpOptions::default()).unwrap();
    nar
}

fn store_path(hash_char: char, name: &str) -> StorePath {
    let hash: String = std::iter::repeat_n(hash_char, 32).collect();
    StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
}

fn good_info(path: StorePath, nar: &[u8]) -> PathInfo {
    PathInfo::new(path, Hash::digest(HashAlgo::Sha256, nar), nar.len() as u64)
}

/// Asserts that the failed add of `path` left no trace and that the store is as
/// `before` (its entries) and `valid_before` (its registry).
fn assert_untouched(
    store: &LocalStore,
    path: &StorePath,
    before: &BTreeSet<String>,
    valid_before: &BTreeSet<StorePath>,
) {
    assert!(
        !store.is_valid_path(path).unwrap(),
        "{path:?} not registered"
    );
    assert!(store.query_path_info(path).unwrap().is_none());
    assert!(
        store.physical_path(path).symlink_metadata().is_err(),
        "nothing at the final name of {path:?}"
    );
    assert_eq!(
        &store_entries(store),
        before,
        "no new files in the store dir"
    );
    assert!(
        staging_entries(store).is_empty(),
        "staging leftovers: {:?}",
        staging_entries(store)
    );
    assert_eq!(&store.all_valid_paths().unwrap(), valid_before);
    assert!(store.verify(None, Default::default()).unwrap().is_clean());
}

/// A store with one valid path already, so that "unchanged" means something.
fn store_with_one_path(dir: &Path, nar: &[u8]) -> (LocalStore, StorePath) {
    let store = LocalStore::open(&dir.join("root")).unwrap();
    let existing = store_path('1', "existing");
    store
        .add_nar(&good_info(existing.clone(), nar), &mut &nar[..])
        .unwrap();
    assert!(store.is_valid_path(&existing).unwrap());
    (store, existing)
}

#[test]
fn a_correct_nar_is_added() {
    // The control for the tests below: the same setup with correct metadata works.
    let dir = tempfile::tempdir().unwrap();
    let nar = sample_nar(dir.path());
    let (store, existing) = store_with_one_path(dir.path(), &nar);
    let path = store_path('2', "good");
    let mut info = good_info(path.clone(), &nar);
    info.references = BTreeSet::from([existing.clone()]);
    store.add_nar(&info, &mut &nar[..]).unwrap();
    let stored = store.query_path_info(&path).unwrap().unwrap();
    assert_eq!(stored.nar_hash, info.nar_hash);
    assert_eq!(stored.nar_size, nar.len() as u64);
    assert_eq!(stored.references, info.references);
    let mut again = Vec::new();
    store.nar_from_path(&path, &mut again).unwrap();
    assert!(
        again == nar,
        "the stored path dumps to the NAR it was added from"
    );
    assert!(staging_entries(&store).is_empty());
    assert!(!store
        .physical_store()
        .join(format!("{}.lock", path.as_str()))
        .exists());
}

#[test]
fn nar_hash_mismatch_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nar = sample_nar(dir.path());
    let (store, _) = store_with_one_path(dir.path(), &nar);
    let before = store_entries(&store);
    let valid_before = store.all_valid_paths().unwrap();
    let path = store_path('3', "wrong-hash");
    let mut info = good_info(path.clone(), &nar);
    info.nar_hash = Hash::digest(HashAlgo::Sha256, b"something else");
    let error = store.add_nar(&info, &mut &nar[..]).unwrap_err();
    assert!(
        matches!(&error, StoreError::NarHashMismatch { expected, actual, .. }
            if **expected == info.nar_hash && **actual == Hash::digest(HashAlgo::Sha256, &nar)),
        "expected NarHashMismatch, got {error:?}"
    );
    assert_untouched(&store, &path, &before, &valid_before);
}

#[test]
fn nar_size_mismatch_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nar = sample_nar(dir.path());
    let (store, _) = store_with_one_path(dir.path(), &nar);
    let before = store_entries(&store);
    let valid_before = store.all_valid_paths().unwrap();
    for (char, claimed) in [('4', nar.len() as u64 + 8), ('5', nar.len() as u64 - 8)] {
        let path = store_path(char, "wrong-size");
        let mut info = good_info(path.clone(), &nar);
        info.nar_size = claimed;
        let error = store.add_nar(&info, &mut &nar[..]).unwrap_err();
        assert!(
            matches!(&error, StoreError::NarSizeMismatch { expected, actual, .. }
                if *expected == claimed && *actual == nar.len() as u64),
            "claimed size {claimed}: expected NarSizeMismatch, got {error:?}"
        );
        assert_untouched(&store, &path, &before, &valid_before);
    }
}

#[test]
fn missing_reference_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nar = sample_nar(dir.path());
    let (store, existing) = store_with_one_path(dir.path(), &nar);
    let before = store_entries(&store);
    let valid_before = store.all_valid_paths().unwrap();
    let path = store_path('6', "dangling");
    let missing = store_path('7', "not-there");
    let mut info = good_info(path.clone(), &nar);
    info.references = BTreeSet::from([existing, missing.clone()]);
    let error = store.add_nar(&info, &mut &nar[..]).unwrap_err();
    match &error {
        StoreError::MissingReference { path: p, reference } => {
            assert!(p.ends_with(path.as_str()), "{error}");
            assert!(reference.ends_with(missing.as_str()), "{error}");
        }
        other => panic!("expected MissingReference, got {other:?}"),
    }
    assert_untouched(&store, &path, &before, &valid_before);
    // A self-reference is not a missing one.
    let mut info = good_info(store_path('8', "self"), &nar);
    info.references = BTreeSet::from([info.path.clone()]);
    store.add_nar(&info, &mut &nar[..]).unwrap();
    assert_eq!(store.query_references(&info.path).unwrap(), info.references);
}

#[test]
fn truncated_and_corrupt_nars_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nar = sample_nar(dir.path());
    let (store, _) = store_with_one_path(dir.path(), &nar);
    let before = store_entries(&store);
    let valid_before = store.all_valid_paths().unwrap();
    let mut corrupt = nar.clone();
    let tag = corrupt
        .windows(8)
        .position(|w| w == b"contents")
        .expect("the NAR has a regular file");
    corrupt[tag] ^= 0x20; // "Contents": not a NAR keyword
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated in the middle", nar[..nar.len() / 2].to_vec()),
        (
            "truncated before the last byte",
            nar[..nar.len() - 1].to_vec(),
        ),
        ("empty", Vec::new()),
        ("a corrupt tag", corrupt),
    ];
    for (index, (what, bytes)) in cases.into_iter().enumerate() {
        let path = store_path(['a', 'b', 'c', 'd'][index], &format!("bad-nar-{index}"));
        // Claim the metadata of the good NAR: only the stream is wrong.
        let info = good_info(path.clone(), &nar);
        let result = store.add_nar(&info, &mut &bytes[..]);
        assert!(result.is_err(), "{what}: accepted");
        assert_untouched(&store, &path, &before, &valid_before);
    }
}

/// An import claiming a content address must hash to it: otherwise anyone allowed to
/// import content-addressed paths (trusted without a signature) could register any
/// contents under them.
#[test]
fn imports_whose_contents_do_not_match_their_content_address_are_refused() {
    use arca_store_core::{ContentAddress, Hash, HashAlgo, PathInfo};
    let root = tempfile::tempdir().unwrap();
    let store = arca_store_sqlite::LocalStore::open(root.path()).unwrap();
    let nar_of = |contents: &[u8]| {
        let mut nar = Vec::new();
        let mut encoder = arca_nar::NarEncoder::new(&mut nar);
        encoder
            .regular(false, contents.len() as u64, &mut &contents[..])
            .unwrap();
        encoder.finish().unwrap();
        nar
    };
    let good = Hash::digest(HashAlgo::Sha256, b"good");
    let path = store
        .store_dir()
        .make_text_path("claimed", &good, &Default::default())
        .unwrap();
    let evil = nar_of(b"evil");
    let mut info = PathInfo::new(
        path.clone(),
        Hash::digest(HashAlgo::Sha256, &evil),
        evil.len() as u64,
    );
    info.ca = Some(ContentAddress::Text(good));
    let error = store.add_nar_embedded(&info, &mut &evil[..]).unwrap_err();
    assert!(
        matches!(
            error,
            arca_store_sqlite::StoreError::ContentAddressMismatch { .. }
        ),
        "{error:?}"
    );
    assert!(!arca_store_core::Store::is_valid_path(&store, &path).unwrap());
    // The honest import of the same path goes through.
    let honest = nar_of(b"good");
    info.nar_hash = Hash::digest(HashAlgo::Sha256, &honest);
    info.nar_size = honest.len() as u64;
    store.add_nar_embedded(&info, &mut &honest[..]).unwrap();
}
