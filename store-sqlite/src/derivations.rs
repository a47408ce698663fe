//! Derivations in the local store: `.drv` files as text paths, their DerivationOutputs
//! rows, and output paths computed from the input derivations already in the store.

use std::collections::BTreeMap;

use arca_store_core::derivation::{derivation_path, Derivation, ModuloHashCache};
use arca_store_core::{Store, StorePath};

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

    /// Fills in the output paths (and the environment entries named after outputs) of a
    /// derivation whose paths were left empty, by hashDerivationModulo over its input
    /// derivations, which must be valid in this store — exactly as `nix-instantiate`.
    pub fn compute_output_paths(&self, drv: &mut Derivation) -> Result<(), StoreError> {
        let mut cache = ModuloHashCache::new();
        cache
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

/// The DerivationOutputs rows of a `.drv` (output name → path), for every output whose
/// path is known.
pub(crate) fn output_rows(drv: &Derivation) -> BTreeMap<String, StorePath> {
    drv.outputs
        .iter()
        .filter_map(|(name, output)| Some((name.as_str().to_owned(), output.path()?.clone())))
        .collect()
}
