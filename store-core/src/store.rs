//! The `Store` trait: what every store offers, local or behind a daemon socket.
//!
//! The local SQLite store (`arca-store-sqlite`), the daemon client and binary caches
//! (`arca-cache`) implement it; the daemon server and the builder are written against
//! it, so they work with any.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use crate::add_batch::AddBatch;
use crate::path_info::PathInfo;
use crate::store_path::{StoreDir, StorePath};

/// A Nix store. Methods take `&self`: implementations synchronise internally, so one
/// store value can serve many threads.
pub trait Store {
    /// The store's error type; it names the path or input at fault.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The logical store directory (`/nix/store`).
    fn store_dir(&self) -> &StoreDir;

    /// Whether `path` is registered as valid.
    fn is_valid_path(&self, path: &StorePath) -> Result<bool, Self::Error>;

    /// Everything registered about `path`, or `None` if it is not valid.
    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, Self::Error>;

    /// Valid paths that refer to `path`.
    fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// Valid derivations that have `path` among their outputs.
    fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// The outputs of the valid derivation `drv`, by output name.
    fn query_derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, Self::Error>;

    /// The valid path whose hash part is `hash_part`, if any.
    fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, Self::Error>;

    /// Adds a path from its NAR serialisation and the metadata that goes with it (the
    /// import path of `nix-store --import`, substitution and the daemon). The NAR is
    /// checked against `info.nar_hash` and `info.nar_size` before the path becomes valid.
    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), Self::Error>;

    /// How this store adds many paths at once ([`Store::add_batch`]): a store that adds
    /// each path by itself uses [`crate::add_batch::OneByOne`].
    type Batch<'a>: AddBatch<Error = Self::Error>
    where
        Self: 'a;

    /// Starts adding many paths from their NARs, from any number of threads (see
    /// [`AddBatch`]).
    fn add_batch(&self) -> Self::Batch<'_>;

    /// Adds a text file (`builtins.toFile`, `.drv` files) with the given references.
    fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, Self::Error>;

    /// Writes the NAR serialisation of the valid path `path` to `out`.
    fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<(), Self::Error>;

    /// The references of `path` (empty if it is not valid).
    fn query_references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, Self::Error> {
        Ok(self
            .query_path_info(path)?
            .map(|info| info.references)
            .unwrap_or_default())
    }

    /// The closure of `paths` under references (`nix-store -q --requisites`), computed
    /// iteratively so that deep graphs cannot overflow the stack. Invalid starting paths
    /// are skipped.
    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, Self::Error> {
        let mut closure = BTreeSet::new();
        let mut pending: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(path) = pending.pop() {
            if closure.contains(&path) {
                continue;
            }
            let Some(info) = self.query_path_info(&path)? else {
                continue;
            };
            pending.extend(info.references.into_iter().filter(|r| !closure.contains(r)));
            closure.insert(path);
        }
        Ok(closure)
    }
}

/// Orders `paths` so that every path comes after the paths it refers to (among `paths`),
/// exactly as Nix prints closures (`nix-store -q --requisites`) and writes exports: a
/// post-order depth-first walk that starts from each path in sorted order and visits
/// references in sorted order. Iterative, so deep graphs cannot overflow the stack.
/// Self-references are ignored; `references_of` returns an empty set for unknown paths.
pub fn dependency_order<E>(
    paths: &BTreeSet<StorePath>,
    mut references_of: impl FnMut(&StorePath) -> Result<BTreeSet<StorePath>, E>,
) -> Result<Vec<StorePath>, E> {
    let mut order = Vec::with_capacity(paths.len());
    let mut visited = BTreeSet::new();
    for start in paths {
        if visited.contains(start) {
            continue;
        }
        visited.insert(start.clone());
        // Each frame: a path and its remaining references to visit, in sorted order.
        let mut stack = vec![(
            start.clone(),
            pending_references(start, paths, &mut references_of)?,
        )];
        while let Some((path, remaining)) = stack.last_mut() {
            match remaining.pop() {
                Some(next) => {
                    if visited.insert(next.clone()) {
                        let next_remaining = pending_references(&next, paths, &mut references_of)?;
                        stack.push((next, next_remaining));
                    }
                }
                None => {
                    order.push(path.clone());
                    stack.pop();
                }
            }
        }
    }
    Ok(order)
}

/// References of `path` within `paths`, reversed so that popping yields sorted order.
fn pending_references<E>(
    path: &StorePath,
    paths: &BTreeSet<StorePath>,
    references_of: &mut impl FnMut(&StorePath) -> Result<BTreeSet<StorePath>, E>,
) -> Result<Vec<StorePath>, E> {
    Ok(references_of(path)?
        .into_iter()
        .filter(|reference| reference != path && paths.contains(reference))
        .rev()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> StorePath {
        StorePath::from_base_name(&format!("{}-{name}", "0".repeat(32))).unwrap()
    }

    #[test]
    fn dependencies_come_first_in_nix_order() {
        // a -> b -> d, a -> c -> d, e alone; sorted names give Nix's visiting order.
        let graph: BTreeMap<StorePath, BTreeSet<StorePath>> = [
            (p("a"), [p("b"), p("c")].into()),
            (p("b"), [p("d")].into()),
            (p("c"), [p("d"), p("c")].into()),
            (p("d"), BTreeSet::new()),
            (p("e"), BTreeSet::new()),
        ]
        .into();
        let paths: BTreeSet<StorePath> = graph.keys().cloned().collect();
        let order = dependency_order(&paths, |path| {
            Ok::<_, ()>(graph.get(path).cloned().unwrap_or_default())
        })
        .unwrap();
        let names: Vec<&str> = order.iter().map(StorePath::name).collect();
        assert_eq!(names, ["d", "b", "c", "a", "e"]);
    }
}
