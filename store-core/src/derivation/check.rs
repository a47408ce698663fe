//! Nix's derivation invariants: a `.drv` may only claim the output paths that follow from
//! its own contents (`checkDerivationOutputs` in Nix's local store).
//!
//! Without this check, anyone who can put a file in the store could write a derivation
//! that claims another derivation's output path and build it first, deciding what that
//! path contains for everybody who later depends on it (Nix's `secure-drv-outputs` test).

use super::hash_modulo::HashModuloError;
use super::{output_path_name, Derivation, DerivationOutput, ModuloHashCache, OutputName};
use crate::store_path::{StoreDir, StorePath};

/// Why a derivation may not be registered or built: it claims output paths (or output
/// environment variables) that do not follow from its contents, or they cannot be
/// computed. `E` is the error of the caller's loader of input derivations.
#[derive(Debug, thiserror::Error)]
pub enum DerivationCheckError<E> {
    #[error("derivation '{drv}' has incorrect output '{claimed}', should be '{expected}'")]
    IncorrectOutput {
        drv: String,
        output: OutputName,
        claimed: String,
        expected: String,
    },
    #[error(
        "derivation '{drv}' has incorrect environment variable '{variable}', should be '{expected}'"
    )]
    IncorrectEnvironment {
        drv: String,
        variable: String,
        expected: String,
    },
    #[error("derivation '{drv}' has output '{output}' without a store path (floating content-addressed outputs are not supported)")]
    OutputWithoutPath { drv: String, output: OutputName },
    #[error("the output paths of derivation '{drv}' cannot be computed")]
    HashModulo {
        drv: String,
        #[source]
        source: HashModuloError<E>,
    },
}

impl ModuloHashCache {
    /// Checks `drv`, read from the `.drv` file at `drv_path`, against Nix's invariants:
    /// every input-addressed output path equals the one computed from its hash modulo
    /// fixed outputs, every fixed output path follows from its hash and method (and the
    /// derivation's name), and each output's environment variable names its path.
    /// Input derivations are loaded with `load` and hashed through the cache, so checking
    /// many derivations of one closure hashes each input once.
    pub fn check_outputs<E>(
        &mut self,
        store_dir: &StoreDir,
        drv_path: &StorePath,
        drv: &Derivation,
        load: impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<(), DerivationCheckError<E>> {
        let display = || store_dir.display(drv_path);
        let mut expected = drv.clone();
        self.compute_output_paths(store_dir, &mut expected, load)
            .map_err(|source| DerivationCheckError::HashModulo {
                drv: display(),
                source,
            })?;
        for (name, output) in &drv.outputs {
            let Some(claimed) = output.path() else {
                return Err(DerivationCheckError::OutputWithoutPath {
                    drv: display(),
                    output: name.clone(),
                });
            };
            let Some(should) = expected.outputs.get(name).and_then(DerivationOutput::path) else {
                unreachable!("compute_output_paths gives every output a path");
            };
            if claimed != should {
                return Err(DerivationCheckError::IncorrectOutput {
                    drv: display(),
                    output: name.clone(),
                    claimed: store_dir.display(claimed),
                    expected: store_dir.display(should),
                });
            }
            let variable = drv.env.get(name.as_str());
            if variable
                .and_then(|value| store_dir.parse_path(value).ok())
                .as_ref()
                != Some(should)
            {
                return Err(DerivationCheckError::IncorrectEnvironment {
                    drv: display(),
                    variable: name.to_string(),
                    expected: store_dir.display(should),
                });
            }
            debug_assert!(should.name() == output_path_name(&drv.name, name.as_str()));
        }
        Ok(())
    }
}
