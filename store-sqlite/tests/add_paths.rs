//! `LocalStore::add_paths`: many trees added with one registry transaction per batch give
//! exactly what adding them one by one gives, duplicates included.

use std::fs;
use std::path::PathBuf;

use arca_store_core::Store;
use arca_store_sqlite::{LocalStore, ADD_BATCH};

fn trees(dir: &std::path::Path, count: usize) -> Vec<(PathBuf, String)> {
    (0..count)
        .map(|i| {
            let tree = dir.join(format!("t{i}"));
            fs::create_dir_all(tree.join("sub")).unwrap();
            // Every third tree repeats an earlier content: the same store path.
            fs::write(
                tree.join("sub/file"),
                format!("content {}", i % (count / 3 + 1)),
            )
            .unwrap();
            (tree, "same-name".to_owned())
        })
        .collect()
}

#[test]
fn batched_adds_equal_single_adds_and_handle_duplicates() {
    let inputs = tempfile::tempdir().unwrap();
    let sources = trees(inputs.path(), ADD_BATCH + 40);
    let batched = tempfile::tempdir().unwrap();
    let store = LocalStore::open(batched.path()).unwrap();
    let paths = store.add_paths(&sources, &|_, _| {}).unwrap();
    assert_eq!(paths.len(), sources.len());
    let single = tempfile::tempdir().unwrap();
    let one_by_one = LocalStore::open(single.path()).unwrap();
    for ((source, name), path) in sources.iter().zip(&paths) {
        assert_eq!(&one_by_one.add_path(source, name).unwrap(), path);
        assert!(store.is_valid_path(path).unwrap());
        let info = store.query_path_info(path).unwrap().unwrap();
        assert_eq!(
            Some(info),
            one_by_one.query_path_info(path).unwrap().map(|mut i| {
                // Registration times may differ by a second.
                i.registration_time = store
                    .query_path_info(path)
                    .unwrap()
                    .unwrap()
                    .registration_time;
                i
            })
        );
    }
    // Adding them all again writes nothing and gives the same paths.
    assert_eq!(store.add_paths(&sources, &|_, _| {}).unwrap(), paths);
}
