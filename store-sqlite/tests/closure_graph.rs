//! `Registry::requisites_graph` returns the same closure as `requisites`, each path with
//! exactly its registered references.

use std::collections::BTreeSet;

use arca_store_core::{Store, StorePath};
use arca_store_sqlite::{DerivationOutputs, LocalStore};

#[test]
fn requisites_graph_is_the_closure_with_its_references() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::open(root.path()).unwrap();
    let mut paths: Vec<StorePath> = Vec::new();
    for i in 0..30usize {
        // Each refers to a few earlier ones: a DAG with shared parts.
        let references: BTreeSet<StorePath> = [1, 3, 7]
            .iter()
            .filter_map(|d| i.checked_sub(*d).map(|j| paths[j].clone()))
            .collect();
        let text = format!("node {i}\n");
        paths.push(
            store
                .add_text(&format!("node-{i}"), text.as_bytes(), &references)
                .unwrap(),
        );
    }
    let roots = BTreeSet::from([paths[20].clone(), paths[5].clone()]);
    let graph = store
        .requisites_graph(&roots, DerivationOutputs::Excluded)
        .unwrap();
    let closure = store
        .requisites(&roots, DerivationOutputs::Excluded)
        .unwrap();
    assert_eq!(graph.keys().cloned().collect::<BTreeSet<_>>(), closure);
    for (path, references) in &graph {
        assert_eq!(references, &store.query_references(path).unwrap(), "{path}");
    }
}
