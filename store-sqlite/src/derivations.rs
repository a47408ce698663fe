//! Derivations in the local store: `.drv` files as text paths, their DerivationOutputs
//! rows, and output paths computed from the input derivations already in the store.

use std::collections::{BTreeMap, BTreeSet};

use arca_store_core::derivation::{derivation_path, Derivation, DrvHash, ModuloHashCache};
use arca_store_core::{DrvOutput, OutputName, Realisation, Store, StorePath};

use crate::error::{IoContext, StoreError};
use crate::LocalStore;

impl LocalStore {
    /// Reads and parses the valid derivation `drv`.
    pub fn read_derivation(&self, drv: &StorePath) -> Result<Derivation, StoreError> {
        if !self.is_valid_path(drv)? {
            return Err(StoreError::InvalidPath(self.store_dir().display(drv)));
        }
        let file = self.physical_path(drv);
        let bytes = std::fs::read(&file).at(&file)?;
        Derivation::parse_drv_file(self.store_dir(), drv, &bytes).map_err(|error| {
            StoreError::CorruptRegistry {
                path: self.store_dir().display(drv),
                reason: error.to_string(),
            }
        })
    }

    /// Checks the valid derivation `drv` (read from `drv_path`) against Nix's derivation
    /// invariants before anything is built from it: its output paths and their
    /// environment variables must be the ones its contents give.
    pub fn check_derivation(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
    ) -> Result<(), StoreError> {
        self.check_derivation_in(drv_path, drv, &BTreeSet::new())
    }

    /// [`LocalStore::check_derivation`], with input derivations read from the valid
    /// paths and from `batch` (published, about to be registered together).
    pub(crate) fn check_derivation_in(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        batch: &BTreeSet<&StorePath>,
    ) -> Result<(), StoreError> {
        self.check_derivation_using(drv_path, drv, |input| self.read_derivation_in(input, batch))
    }

    /// [`LocalStore::check_derivation`] with input derivations from `load` (a caller
    /// that has parsed them already, such as a build's goal graph), which must give
    /// what the store holds at those paths.
    pub fn check_derivation_using(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        load: impl FnMut(&StorePath) -> Result<Derivation, StoreError>,
    ) -> Result<(), StoreError> {
        self.drv_hashes()
            .check_outputs(self.store_dir(), drv_path, drv, load)
            .map_err(|error| StoreError::IncorrectDerivation(Box::new(error)))
    }

    /// Reads the `.drv` at `drv`, which must be valid or in `batch`.
    pub(crate) fn read_derivation_in(
        &self,
        drv: &StorePath,
        batch: &BTreeSet<&StorePath>,
    ) -> Result<Derivation, StoreError> {
        if !batch.contains(drv) {
            return self.read_derivation(drv);
        }
        let file = self.physical_path(drv);
        let bytes = crate::local_store::read_derivation_file(&file)?;
        Derivation::parse_drv_file(self.store_dir(), drv, &bytes).map_err(|error| {
            StoreError::InvalidDerivation {
                path: self.store_dir().display(drv),
                source: Box::new(error),
            }
        })
    }

    /// Fills in the output paths (and the environment entries named after outputs) of a
    /// derivation whose paths were left empty, by hashDerivationModulo over its input
    /// derivations, which must be valid in this store — exactly as `nix-instantiate`.
    pub fn compute_output_paths(&self, drv: &mut Derivation) -> Result<(), StoreError> {
        self.drv_hashes()
            .compute_output_paths(self.store_dir(), drv, |path| self.read_derivation(path))
            .map_err(|error| StoreError::InvalidDerivation {
                path: drv.name.clone(),
                source: Box::new(error),
            })
    }

    /// Writes `drv` as a `.drv` text path (references: its input sources and input
    /// derivations, which must be valid) and registers its outputs in DerivationOutputs,
    /// in the same transaction. Returns the `.drv`'s path.
    pub fn add_derivation(&self, drv: &Derivation) -> Result<StorePath, StoreError> {
        let text = drv.to_aterm(self.store_dir());
        let path = self.add_text_path(
            &format!("{}.drv", drv.name),
            text.as_bytes(),
            &drv.drv_references(),
        )?;
        debug_assert_eq!(Ok(&path), derivation_path(self.store_dir(), drv).as_ref());
        Ok(path)
    }
}

/// Realisations (Nix's `ca-derivations`).
impl LocalStore {
    /// Creates the realisation tables when missing, as Nix does when it opens a store
    /// with `ca-derivations` enabled.
    pub fn enable_realisations(&self) -> Result<(), StoreError> {
        self.registry().enable_realisations()
    }

    /// Records where an output of a derivation came to be (its path must be valid, and
    /// its dependent realisations known here); see [`Registry::register_realisation`].
    ///
    /// [`Registry::register_realisation`]: crate::registry::Registry::register_realisation
    pub fn register_realisation(&self, realisation: &Realisation) -> Result<(), StoreError> {
        self.registry().register_realisation(realisation)
    }

    /// The realisation of `id`, if one is recorded.
    pub fn query_realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>, StoreError> {
        self.registry().realisation(id)
    }

    /// The realisations of `roots` and, transitively, those they depend on (Nix's
    /// `Realisation::closure`).
    pub fn realisation_closure(
        &self,
        roots: impl IntoIterator<Item = Realisation>,
    ) -> Result<BTreeMap<DrvOutput, Realisation>, StoreError> {
        let mut closure = BTreeMap::new();
        let mut walk: Vec<Realisation> = roots.into_iter().collect();
        while let Some(realisation) = walk.pop() {
            if closure.contains_key(&realisation.id) {
                continue;
            }
            for dependency in realisation.dependent_realisations.keys() {
                if !closure.contains_key(dependency) {
                    let found = self.query_realisation(dependency)?.ok_or_else(|| {
                        StoreError::MissingRealisation {
                            id: realisation.id.to_string(),
                            dependency: dependency.to_string(),
                        }
                    })?;
                    walk.push(found);
                }
            }
            closure.insert(realisation.id.clone(), realisation);
        }
        Ok(closure)
    }

    /// The hash that names `drv`'s outputs in realisations (Nix's `staticOutputHashes`),
    /// with its input derivations read from the store, and whether it is deferred.
    pub fn static_output_hash(&self, drv: &Derivation) -> Result<DrvHash, StoreError> {
        self.drv_hashes()
            .static_output_hash(self.store_dir(), drv, |path| self.read_derivation(path))
            .map_err(|error| StoreError::InvalidDerivation {
                path: drv.name.clone(),
                source: Box::new(error),
            })
    }

    /// The outputs of the valid derivation `drv_path` and their paths where known (Nix's
    /// `queryPartialDerivationOutputMap`): the paths the derivation names, and with
    /// `realisations` those recorded for its outputs.
    pub fn derivation_output_map(
        &self,
        drv_path: &StorePath,
        realisations: bool,
    ) -> Result<BTreeMap<OutputName, Option<StorePath>>, StoreError> {
        let drv = self.read_derivation(drv_path)?;
        let mut outputs: BTreeMap<OutputName, Option<StorePath>> = drv
            .outputs
            .iter()
            .map(|(name, output)| (name.clone(), output.path().cloned()))
            .collect();
        // A realisation of an output whose path the derivation names can only record
        // that path: look them up only for the others.
        if realisations && outputs.values().any(Option::is_none) {
            let hash = self.static_output_hash(&drv)?.hash;
            for (name, path) in &mut outputs {
                let id = DrvOutput {
                    drv_hash: hash.clone(),
                    output: name.clone(),
                };
                if let Some(realisation) = self.query_realisation(&id)? {
                    *path = Some(realisation.out_path);
                }
            }
        }
        Ok(outputs)
    }
}

impl LocalStore {
    /// The handle's cache of hashes modulo, started afresh when it has grown too big.
    /// Hashes modulo are a function of the `.drv` path (its name is its content hash), so
    /// one cache serves every derivation this handle hashes.
    fn drv_hashes(&self) -> std::sync::MutexGuard<'_, ModuloHashCache> {
        let mut cache = self
            .drv_hashes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() > MAX_CACHED_DRV_HASHES {
            *cache = ModuloHashCache::new();
        }
        cache
    }
}

/// Past this many remembered hashes modulo, a handle's cache starts afresh (a long-lived
/// daemon connection must not grow without bound).
const MAX_CACHED_DRV_HASHES: usize = 100_000;

/// The DerivationOutputs rows of a `.drv` (output name → path), for every output whose
/// path is known.
pub(crate) fn output_rows(drv: &Derivation) -> BTreeMap<String, StorePath> {
    drv.outputs
        .iter()
        .filter_map(|(name, output)| Some((name.as_str().to_owned(), output.path()?.clone())))
        .collect()
}
