//! Checking the store against its registry (`nix-store --verify`) and deleting paths.

use std::collections::BTreeSet;

use arca_nar::DumpOptions;
use arca_store_core::{Hash, HashAlgo, Hasher, Store, StorePath};

use crate::error::{IoContext, StoreError};
use crate::staging::remove_tree;
use crate::LocalStore;

/// What `verify` should do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Re-hash every path and compare with the registry (slow: reads the whole store).
    pub check_contents: bool,
    /// Fix what can be fixed without a substituter: unregister paths whose files are
    /// gone (when nothing valid refers to them). A modified path cannot be repaired
    /// without a copy of the original and is only reported.
    pub repair: bool,
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyProblem {
    /// The path is registered but its files are missing.
    Missing { path: StorePath, repaired: bool },
    /// The path's NAR hash or size differs from the registry.
    Modified {
        path: StorePath,
        expected: Hash,
        actual: Hash,
    },
    /// A registered reference is not valid (the registry's foreign keys make this
    /// impossible unless the database was edited behind our back).
    DanglingReference {
        path: StorePath,
        reference: StorePath,
    },
}

/// The outcome of `verify`: empty when the store is consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: usize,
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl LocalStore {
    /// Verifies every valid path (or only `paths`, when given).
    pub fn verify(
        &self,
        paths: Option<&BTreeSet<StorePath>>,
        options: VerifyOptions,
    ) -> Result<VerifyReport, StoreError> {
        let all = match paths {
            Some(paths) => paths.clone(),
            None => self.registry().all_valid_paths()?,
        };
        let mut report = VerifyReport::default();
        for path in &all {
            let Some(info) = self.query_path_info(path)? else {
                return Err(StoreError::InvalidPath(self.store_dir().display(path)));
            };
            report.checked += 1;
            for reference in &info.references {
                if !self.is_valid_path(reference)? {
                    report.problems.push(VerifyProblem::DanglingReference {
                        path: path.clone(),
                        reference: reference.clone(),
                    });
                }
            }
            let physical = self.physical_path(path);
            if physical.symlink_metadata().is_err() {
                let repaired = options.repair && self.delete_path(path).is_ok();
                report.problems.push(VerifyProblem::Missing {
                    path: path.clone(),
                    repaired,
                });
                continue;
            }
            if options.check_contents {
                let mut hasher = Hasher::new(HashAlgo::Sha256);
                let size = arca_nar::dump_path(&physical, &mut hasher, &DumpOptions::default())
                    .map_err(|source| StoreError::Dump {
                        path: self.store_dir().display(path),
                        source,
                    })?;
                let actual = hasher.finish();
                if actual != info.nar_hash || size != info.nar_size {
                    report.problems.push(VerifyProblem::Modified {
                        path: path.clone(),
                        expected: info.nar_hash.clone(),
                        actual,
                    });
                }
            }
        }
        Ok(report)
    }

    /// Deletes a valid path that no other valid path refers to: unregisters it (the
    /// registry refuses while referrers exist), then removes its files. A crash in
    /// between leaves unregistered files, which are garbage, never a valid path without
    /// files.
    pub fn delete_path(&self, path: &StorePath) -> Result<(), StoreError> {
        let _lock = self.lock_path(path)?;
        if !self.is_valid_path(path)? {
            return Err(StoreError::InvalidPath(self.store_dir().display(path)));
        }
        self.registry().unregister(path)?;
        let physical = self.physical_path(path);
        remove_tree(&physical).at(&physical)
    }
}
