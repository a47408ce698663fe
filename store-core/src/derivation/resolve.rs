//! Resolving a derivation (Nix's `tryResolve`, `ca-derivations`): once the outputs of its
//! input derivations exist, a derivation that depends on floating content-addressed
//! outputs is rewritten into one that depends on those output paths directly.
//!
//! A floating output's path is unknown when a dependent derivation is written, so the
//! evaluator puts a *downstream placeholder* ([`downstream_placeholder`]) where the path
//! goes. Resolving replaces each placeholder by the real path, turns the input
//! derivations into input sources, and gives deferred outputs the paths that follow from
//! the result. The resolved derivation is what gets built.

use std::collections::{BTreeMap, BTreeSet};

use super::hash_modulo::{hash_modulo_masked_without_inputs, HashModuloError};
use super::{output_path_name, Derivation, DerivationOutput, OutputName};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

/// Why a derivation could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("output '{output}' of input derivation '{input}' is not built")]
    MissingInput { input: String, output: OutputName },
    #[error("the resolved derivation cannot be hashed")]
    Hash(#[from] HashModuloError<std::convert::Infallible>),
}

/// What a dependent derivation sees in place of output `output` of the input derivation
/// at `drv_path` while that output's path is unknown: `/` and the nix-base32 SHA-256 of
/// `nix-upstream-output:<drv hash part>:<output path name>`.
pub fn downstream_placeholder(drv_path: &StorePath, output: &OutputName) -> String {
    let drv_name = Derivation::name_from_drv_path(drv_path).unwrap_or(drv_path.name());
    let clear_text = format!(
        "nix-upstream-output:{}:{}",
        drv_path.hash_part(),
        output_path_name(drv_name, output.as_str())
    );
    format!(
        "/{}",
        Hash::digest(HashAlgo::Sha256, clear_text.as_bytes()).to_base32()
    )
}

/// Replaces every occurrence of each key of `rewrites` by its value, one rewrite after
/// the other in key order (Nix's `rewriteStrings`).
pub fn rewrite_strings(text: &str, rewrites: &BTreeMap<String, String>) -> String {
    let mut text = text.to_owned();
    for (from, to) in rewrites {
        if from != to && text.contains(from.as_str()) {
            text = text.replace(from.as_str(), to);
        }
    }
    text
}

impl Derivation {
    /// The resolved form of this derivation, given the paths of its inputs' outputs
    /// (`input_output` answers for one input derivation and output): no input
    /// derivations, their outputs among the input sources, every downstream placeholder
    /// replaced by the path it stands for (in the builder, arguments, and environment
    /// names and values), and deferred outputs input-addressed by the hash of the result.
    pub fn try_resolve(
        &self,
        store_dir: &StoreDir,
        mut input_output: impl FnMut(&StorePath, &OutputName) -> Option<StorePath>,
    ) -> Result<Derivation, ResolveError> {
        let mut resolved = self.clone();
        resolved.input_drvs = BTreeMap::new();
        let mut rewrites = BTreeMap::new();
        for (input, outputs) in &self.input_drvs {
            for output in outputs {
                let path =
                    input_output(input, output).ok_or_else(|| ResolveError::MissingInput {
                        input: store_dir.display(input),
                        output: output.clone(),
                    })?;
                rewrites.insert(
                    downstream_placeholder(input, output),
                    store_dir.display(&path),
                );
                resolved.input_srcs.insert(path);
            }
        }
        resolved.builder = rewrite_strings(&resolved.builder, &rewrites);
        for arg in &mut resolved.args {
            *arg = rewrite_strings(arg, &rewrites);
        }
        let mut env = BTreeMap::new();
        for (name, value) in &self.env {
            // The first of two names that rewrite to the same one wins, as in Nix.
            env.entry(rewrite_strings(name, &rewrites))
                .or_insert_with(|| rewrite_strings(value, &rewrites));
        }
        resolved.env = env;

        let deferred: BTreeSet<OutputName> = resolved
            .outputs
            .iter()
            .filter(|(_, output)| matches!(output, DerivationOutput::Deferred))
            .map(|(name, _)| name.clone())
            .collect();
        if !deferred.is_empty() {
            let hash = hash_modulo_masked_without_inputs(&resolved, store_dir)?;
            for name in deferred {
                let path = store_dir
                    .make_output_path(name.as_str(), &hash, &resolved.name)
                    .map_err(|source| {
                        ResolveError::Hash(HashModuloError::InvalidName {
                            name: resolved.name.clone(),
                            source,
                        })
                    })?;
                resolved
                    .env
                    .insert(name.to_string(), store_dir.display(&path));
                resolved
                    .outputs
                    .insert(name, DerivationOutput::InputAddressed { path });
            }
        }
        Ok(resolved)
    }
}
