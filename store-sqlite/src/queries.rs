//! Read-only queries beyond the [`arca_store_core::Store`] trait, for embedders and the
//! commands: every valid path, closures (with their edges), referrer closures, and the
//! registry's own consistency check. The registry itself stays inside the crate, so
//! nothing outside can register or unregister a path around staging, locks and
//! temporary roots.

use std::collections::{BTreeMap, BTreeSet};

use arca_store_core::StorePath;

use crate::error::StoreError;
use crate::local_store::LocalStore;

/// Whether a closure also takes in the outputs of the derivations in it, and their
/// closures (`nix-store -qR --include-outputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DerivationOutputs {
    /// Only references.
    #[default]
    Excluded,
    /// References, and the valid outputs of every `.drv` met.
    Included,
}

impl DerivationOutputs {
    fn included(self) -> bool {
        self == DerivationOutputs::Included
    }
}

impl LocalStore {
    /// Every valid path.
    pub fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreError> {
        self.registry().all_valid_paths()
    }

    /// The closure of `roots` under references, read in one transaction.
    pub fn requisites(
        &self,
        roots: &BTreeSet<StorePath>,
        outputs: DerivationOutputs,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.registry().requisites(roots, outputs.included())
    }

    /// [`LocalStore::requisites`] with each path's references (the edges of the closure
    /// graph), so that ordering it needs no further query.
    pub fn requisites_graph(
        &self,
        roots: &BTreeSet<StorePath>,
        outputs: DerivationOutputs,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, StoreError> {
        self.registry().requisites_graph(roots, outputs.included())
    }

    /// The closure of `roots` under referrers (`nix-store -q --referrers-closure`).
    pub fn referrers_closure(
        &self,
        roots: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.registry().referrers_closure(roots)
    }

    /// Valid paths with a reference that is not valid (never any, unless the registry
    /// was changed behind the store's back).
    pub fn paths_with_dangling_references(&self) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self
            .registry()
            .dangling_references()?
            .into_iter()
            .map(|(path, _)| path)
            .collect())
    }

    /// Adds `signatures` to the valid `path`'s, keeping those it has (Nix's
    /// `addSignatures`).
    pub fn add_signatures(
        &self,
        path: &StorePath,
        signatures: &[arca_store_core::Signature],
    ) -> Result<(), StoreError> {
        self.registry().add_signatures(path, signatures)
    }
}
