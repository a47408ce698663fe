//! Outputs built in this run that are at their final names but not registered yet (see
//! `LocalStore::publish_built`): the group commit makes them valid a little later, and
//! builds that need them may start meanwhile. This overlay answers "is it there, and what
//! does it refer to" for them; the registry answers for everything else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex};

use arca_store_core::{PathInfo, Store, StorePath};
use arca_store_sqlite::{DerivationOutputs, LocalStore, StoreError};

/// Published outputs and what they will be registered with.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    paths: Mutex<BTreeMap<StorePath, PathInfo>>,
    /// Signalled when outputs leave the overlay.
    left: Condvar,
}

impl Pending {
    fn paths(&self) -> std::sync::MutexGuard<'_, BTreeMap<StorePath, PathInfo>> {
        self.paths
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Records published outputs (before anything that needs them is released).
    pub fn insert<'a>(&self, infos: impl Iterator<Item = &'a PathInfo>) {
        let mut paths = self.paths();
        for info in infos {
            paths.insert(info.path.clone(), info.clone());
        }
    }

    /// Forgets outputs once they are registered (or failed to be).
    pub fn remove<'a>(&self, done: impl Iterator<Item = &'a StorePath>) {
        let mut paths = self.paths();
        for path in done {
            paths.remove(path);
        }
        self.left.notify_all();
    }

    /// Waits until none of `paths` is in the overlay any more (registered, or failed to
    /// be): for what must refer to them in the registry, such as a resolved derivation.
    pub fn wait_until_registered(&self, paths: &BTreeSet<StorePath>) {
        let mut guard = self.paths();
        while paths.iter().any(|path| guard.contains_key(path)) {
            guard = self
                .left
                .wait(guard)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    /// Whether `path` is valid or published by this run.
    pub fn is_available(&self, store: &LocalStore, path: &StorePath) -> Result<bool, StoreError> {
        if self.paths().contains_key(path) {
            return Ok(true);
        }
        // Published outputs become valid before they leave the overlay, so a path that
        // just left it is found here.
        store.is_valid_path(path)
    }

    /// What a published or valid path is (`None`: neither).
    pub fn path_info(
        &self,
        store: &LocalStore,
        path: &StorePath,
    ) -> Result<Option<PathInfo>, StoreError> {
        if let Some(info) = self.paths().get(path) {
            return Ok(Some(info.clone()));
        }
        store.query_path_info(path)
    }

    /// The closure of `roots` under references: through published outputs first, then
    /// the registry.
    pub fn closure(
        &self,
        store: &LocalStore,
        roots: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut closure = roots.clone();
        let mut registered = BTreeSet::new();
        {
            let paths = self.paths();
            let mut walk: Vec<StorePath> = roots.iter().cloned().collect();
            while let Some(path) = walk.pop() {
                match paths.get(&path) {
                    Some(info) => {
                        for reference in &info.references {
                            if closure.insert(reference.clone()) {
                                walk.push(reference.clone());
                            }
                        }
                    }
                    None => {
                        registered.insert(path);
                    }
                }
            }
        }
        if !registered.is_empty() {
            closure.extend(store.requisites(&registered, DerivationOutputs::Excluded)?);
        }
        Ok(closure)
    }
}
