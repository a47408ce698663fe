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
    /// derivation's name), and each such output's environment variable names its path.
    /// Deferred, floating and impure outputs claim no path, so there is nothing to check
    /// (their paths are computed when they are built). Input derivations are loaded with
    /// `load` and hashed through the cache, so checking many derivations of one closure
    /// hashes each input once.
    pub fn check_outputs<E>(
        &mut self,
        store_dir: &StoreDir,
        drv_path: &StorePath,
        drv: &Derivation,
        load: impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<(), DerivationCheckError<E>> {
        let display = || store_dir.display(drv_path);
        let hash_error = |source| DerivationCheckError::HashModulo {
            drv: display(),
            source,
        };
        drv.kind()
            .map_err(|error| hash_error(HashModuloError::Invalid(error)))?;
        let mut static_hash = None;
        let mut load = load;
        for (name, output) in &drv.outputs {
            let should = match output {
                DerivationOutput::InputAddressed { path: claimed } => {
                    let hash = match &static_hash {
                        Some(hash) => hash,
                        None => &*static_hash.insert(
                            self.static_output_hash(store_dir, drv, &mut load)
                                .map_err(hash_error)?
                                .hash,
                        ),
                    };
                    let should = store_dir
                        .make_output_path(name.as_str(), hash, &drv.name)
                        .map_err(|source| {
                            hash_error(HashModuloError::InvalidName {
                                name: drv.name.clone(),
                                source,
                            })
                        })?;
                    if *claimed != should {
                        return Err(DerivationCheckError::IncorrectOutput {
                            drv: display(),
                            output: name.clone(),
                            claimed: store_dir.display(claimed),
                            expected: store_dir.display(&should),
                        });
                    }
                    should
                }
                // The parsers only accept the path the hash gives.
                DerivationOutput::Fixed { path, .. } => path.clone(),
                DerivationOutput::Deferred
                | DerivationOutput::Floating { .. }
                | DerivationOutput::Impure { .. } => continue,
            };
            let variable = drv.env.get(name.as_str());
            if variable
                .and_then(|value| store_dir.parse_path(value).ok())
                .as_ref()
                != Some(&should)
            {
                return Err(DerivationCheckError::IncorrectEnvironment {
                    drv: display(),
                    variable: name.to_string(),
                    expected: store_dir.display(&should),
                });
            }
            debug_assert!(should.name() == output_path_name(&drv.name, name.as_str()));
        }
        Ok(())
    }
}
