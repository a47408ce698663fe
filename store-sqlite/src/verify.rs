//! Checking the store against its registry (`nix-store --verify`) and deleting paths.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

use arca_nar::DumpOptions;
use arca_store_core::{Hash, HashAlgo, Hasher, Store, StorePath};

use crate::error::{IoContext, StoreError};
use crate::gc::{GcAction, GcOptions};
use crate::LocalStore;
pub use arca_store_core::ops::{VerifyOptions, VerifyProblem, VerifyReport};

impl LocalStore {
    /// Verifies every valid path (or only `paths`, when given).
    ///
    /// Like Nix, existence is checked against one listing of the store directory, not a
    /// `stat` per path; contents are re-hashed on all cores.
    pub fn verify(
        &self,
        paths: Option<&BTreeSet<StorePath>>,
        options: VerifyOptions,
    ) -> Result<VerifyReport, StoreError> {
        let mut entries = self.registry().all_nar_hashes()?;
        if let Some(wanted) = paths {
            for path in wanted {
                if !self.is_valid_path(path)? {
                    return Err(StoreError::InvalidPath(self.store_dir().display(path)));
                }
            }
            entries.retain(|(path, _, _)| wanted.contains(path));
        }
        let mut report = VerifyReport {
            checked: entries.len(),
            problems: Vec::new(),
        };
        tracing::info!(
            "checking {} paths{}",
            entries.len(),
            if options.check_contents {
                " and their contents"
            } else {
                ""
            }
        );
        for (path, missing_id) in self.registry().dangling_references()? {
            if entries.iter().any(|(p, _, _)| *p == path) {
                report
                    .problems
                    .push(VerifyProblem::DanglingReference { path, missing_id });
            }
        }
        let present = self.store_listing()?;
        let (existing, missing): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|(path, _, _)| present.contains(path.as_str()));
        for (path, _, _) in missing {
            let repaired = options.repair && self.forget_missing(&path)?;
            report
                .problems
                .push(VerifyProblem::Missing { path, repaired });
        }
        if options.check_contents {
            report.problems.extend(self.check_contents(&existing)?);
        }
        tracing::info!(
            "checked {} paths: {} problems",
            report.checked,
            report.problems.len()
        );
        Ok(report)
    }

    /// The names in the physical store directory.
    fn store_listing(&self) -> Result<HashSet<String>, StoreError> {
        let store = self.physical_store();
        let mut names = HashSet::new();
        for entry in fs::read_dir(store).at(store)? {
            let entry = entry.at(store)?;
            if let Ok(name) = entry.file_name().into_string() {
                names.insert(name);
            }
        }
        Ok(names)
    }

    /// Re-hashes `entries` on all cores, returning the modified ones in input order.
    fn check_contents(
        &self,
        entries: &[(StorePath, Hash, u64)],
    ) -> Result<Vec<VerifyProblem>, StoreError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let next = AtomicUsize::new(0);
        let results: Vec<Result<Vec<(usize, VerifyProblem)>, StoreError>> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| scope.spawn(|| self.hash_some(entries, &next)))
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            });
        let mut problems = Vec::new();
        for result in results {
            problems.extend(result?);
        }
        problems.sort_by_key(|(index, _)| *index);
        Ok(problems.into_iter().map(|(_, problem)| problem).collect())
    }

    /// One worker of `check_contents`: takes entries by index until none are left.
    fn hash_some(
        &self,
        entries: &[(StorePath, Hash, u64)],
        next: &AtomicUsize,
    ) -> Result<Vec<(usize, VerifyProblem)>, StoreError> {
        let mut problems = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some((path, expected, size)) = entries.get(index) else {
                return Ok(problems);
            };
            let mut hasher = Hasher::new(HashAlgo::Sha256);
            let actual_size = arca_nar::dump_path(
                &self.physical_path(path),
                &mut hasher,
                &DumpOptions::default(),
            )
            .map_err(|source| StoreError::Dump {
                path: self.store_dir().display(path),
                source,
            })?;
            let actual = hasher.finish();
            if actual != *expected || (*size != 0 && actual_size != *size) {
                problems.push((
                    index,
                    VerifyProblem::Modified {
                        path: path.clone(),
                        expected: expected.clone(),
                        actual,
                        // Repairing takes a rebuild: the layer with builds does it.
                        repaired: false,
                    },
                ));
            }
        }
    }

    /// Unregisters a valid path whose files are gone (the repair of `verify`), unless
    /// something still refers to it. Under the path's lock, so that a path re-added since
    /// the store was listed is left alone. Returns whether it was unregistered.
    fn forget_missing(&self, path: &StorePath) -> Result<bool, StoreError> {
        let _lock = self.lock_path(path)?;
        if self.physical_path(path).symlink_metadata().is_ok() || !self.is_valid_path(path)? {
            return Ok(false);
        }
        match self.registry().unregister(path) {
            Ok(()) => Ok(true),
            Err(StoreError::StillReferenced { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Deletes a valid path that no other valid path refers to, whatever roots it has
    /// (`nix-store --delete --ignore-liveness`), under the garbage collector's lock:
    /// unregisters it (the registry refuses while referrers exist), then removes its
    /// files. A crash in between leaves unregistered files, which are garbage, never a
    /// valid path without files.
    pub fn delete_path(&self, path: &StorePath) -> Result<(), StoreError> {
        let options = GcOptions {
            action: GcAction::DeleteSpecific(BTreeSet::from([path.clone()])),
            ignore_liveness: true,
            runtime_roots: false,
            ..GcOptions::default()
        };
        self.collect_garbage(&options, &|_| {}).map(drop)
    }
}
