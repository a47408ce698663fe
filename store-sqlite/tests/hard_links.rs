//! Adding a tree refuses hard links to files the adding user does not own (the
//! "/etc/shadow" attack: a link to a secret file would be copied into the world-readable
//! store).

use std::fs;
use std::os::unix::fs::MetadataExt;

use arca_store_sqlite::{LocalStore, StoreError};

#[test]
fn add_path_refuses_a_hard_link_to_a_file_owned_by_someone_else() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&root.path().join("store")).unwrap();
    let secret = root.path().join("secret");
    fs::write(&secret, "root:$6$hash").unwrap();
    let me = fs::metadata(&secret).unwrap().uid();
    // Make the secret belong to another user; only root can.
    if std::os::unix::fs::chown(&secret, Some(me.wrapping_add(4242)), None).is_err() {
        eprintln!("SKIPPED add_path_refuses_a_hard_link…: changing a file's owner needs root");
        return;
    }
    let tree = root.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("innocent"), "hello").unwrap();
    fs::hard_link(&secret, tree.join("stolen")).unwrap();

    let error = store.add_path(&tree, "tree").unwrap_err();
    assert!(
        matches!(&error, StoreError::Dump { source: arca_nar::DumpError::ForeignHardLink { path }, .. }
            if path.ends_with("stolen")),
        "{error:?}"
    );
    let listing: Vec<_> = fs::read_dir(store.physical_store())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".links" && name != ".arca-staging")
        .collect();
    assert!(listing.is_empty(), "nothing was added: {listing:?}");

    // The user's own hard links are fine.
    fs::remove_file(tree.join("stolen")).unwrap();
    fs::hard_link(tree.join("innocent"), tree.join("again")).unwrap();
    store.add_path(&tree, "tree").unwrap();
}
