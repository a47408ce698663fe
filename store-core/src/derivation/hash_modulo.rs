//! How Nix 2.8 names derivation outputs and `.drv` files.
//!
//! An input-addressed output path is derived from `hashDerivationModulo`: the SHA-256 of the
//! derivation's ATerm text in which every input derivation path is replaced by the base16
//! of *its* hash modulo. A fixed-output derivation's hash modulo depends only on its
//! declared content hash and output path, so changing how a source is fetched does not
//! change the paths of everything built from it ("modulo fixed outputs").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{
    fixed_output_path, method_algo, Derivation, DerivationKind, DerivationOutput,
    InvalidDerivation, OutputName,
};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Why a derivation's hash modulo or output paths could not be computed. `E` is the error
/// of the caller's function that resolves or loads input derivations.
#[derive(Debug, thiserror::Error)]
pub enum HashModuloError<E> {
    #[error(transparent)]
    Invalid(#[from] InvalidDerivation),
    #[error("could not load input derivation '{path}'")]
    Input {
        path: String,
        #[source]
        source: E,
    },
    #[error("input derivation '{path}' has no output '{output}'")]
    MissingInputOutput { path: String, output: String },
    #[error("derivation '{path}' depends on itself")]
    Cycle { path: String },
    #[error("derivation name '{name}' does not give valid store paths")]
    InvalidName {
        name: String,
        #[source]
        source: StorePathError,
    },
}

/// Nix's `hashDerivationModulo` (as used for input derivations, i.e. without masking
/// outputs). `resolve_input` gives the hash modulo of an input derivation (and whether
/// it is deferred); see [`ModuloHashCache`] for one that loads and hashes a whole
/// closure once.
pub fn hash_derivation_modulo<E>(
    drv: &Derivation,
    store_dir: &StoreDir,
    mut resolve_input: impl FnMut(&StorePath) -> Result<DrvHash, E>,
) -> Result<DrvHash, HashModuloError<E>> {
    hash_modulo(drv, store_dir, false, |path, _outputs| {
        resolve_input(path).map_err(|source| HashModuloError::Input {
            path: store_dir.display(path),
            source,
        })
    })
}

/// A derivation's hash modulo, and whether it is *deferred*: whether the derivation or
/// one of its inputs (transitively) is floating content-addressed or impure, so that its
/// outputs' paths are known only once those are built (Nix's `DrvHash` kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvHash {
    pub hash: Hash,
    pub deferred: bool,
}

/// What Nix 2.8 uses as the hash modulo of every output of an impure derivation: the
/// SHA-256 of `impure`.
pub fn impure_output_hash() -> Hash {
    Hash::digest(HashAlgo::Sha256, b"impure")
}

/// The body of [`hash_derivation_modulo`]: `mask` prints output paths and the env entries
/// named after outputs empty (Nix's `maskOutputs`, as `staticOutputHashes` does);
/// `resolve_input` also sees which outputs of the input are used, so that a resolver that
/// knows the input can check them.
fn hash_modulo<E>(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask: bool,
    mut resolve_input: impl FnMut(
        &StorePath,
        &BTreeSet<OutputName>,
    ) -> Result<DrvHash, HashModuloError<E>>,
) -> Result<DrvHash, HashModuloError<E>> {
    let mut deferred = match drv.kind()? {
        DerivationKind::Fixed => {
            let Some((name, DerivationOutput::Fixed { method, hash, .. })) =
                drv.outputs.iter().next()
            else {
                unreachable!("kind() said Fixed, which means a single fixed output");
            };
            // Like Nix, the path is recomputed from the hash rather than read from the output.
            let path = fixed_output_path(store_dir, &drv.name, name, *method, hash)
                .map_err(|source| invalid_name(drv, source))?;
            let text = format!(
                "fixed:out:{}:{}:{}",
                method_algo(*method, hash),
                hash.to_base16(),
                store_dir.display(&path)
            );
            return Ok(DrvHash {
                hash: Hash::digest(HashAlgo::Sha256, text.as_bytes()),
                deferred: false,
            });
        }
        DerivationKind::Impure => {
            return Ok(DrvHash {
                hash: impure_output_hash(),
                deferred: true,
            })
        }
        DerivationKind::Floating => true,
        DerivationKind::InputAddressed | DerivationKind::DeferredInputAddressed => false,
    };

    // Two inputs can share a hash modulo (two fixed-output derivations producing the
    // same path); Nix then merges their output sets under the one key.
    let mut inputs: BTreeMap<String, BTreeSet<OutputName>> = BTreeMap::new();
    for (path, outputs) in &drv.input_drvs {
        let input = resolve_input(path, outputs)?;
        deferred |= input.deferred;
        inputs
            .entry(input.hash.to_base16())
            .or_default()
            .extend(outputs.iter().cloned());
    }
    let mut text = String::new();
    drv.write_aterm(store_dir, &mut text, mask, Some(&inputs));
    Ok(DrvHash {
        hash: Hash::digest(HashAlgo::Sha256, text.as_bytes()),
        deferred,
    })
}

/// The masked hash modulo of a derivation without input derivations (a resolved one).
pub(crate) fn hash_modulo_masked_without_inputs(
    drv: &Derivation,
    store_dir: &StoreDir,
) -> Result<Hash, HashModuloError<std::convert::Infallible>> {
    let no_inputs = |_: &StorePath, _: &BTreeSet<OutputName>| -> Result<DrvHash, _> {
        unreachable!("a resolved derivation has no input derivations")
    };
    Ok(hash_modulo(drv, store_dir, true, no_inputs)?.hash)
}

fn invalid_name<E>(drv: &Derivation, source: StorePathError) -> HashModuloError<E> {
    HashModuloError::InvalidName {
        name: drv.name.clone(),
        source,
    }
}

/// Fills in the output paths of `drv` and the env entries named after its outputs, exactly
/// as `nix-instantiate` does: fixed outputs get their content-addressed path; floating
/// and impure outputs have none, and their env entries are their placeholders
/// ([`OutputName::placeholder`]); otherwise every output is
/// first made deferred with an empty env entry, the hash modulo of that masked derivation
/// is taken, and each output path is made from it — unless an input is floating or
/// impure (the hash is deferred), when the outputs stay deferred.
///
/// Any output paths already present are recomputed, so this also serves to check them.
pub fn compute_output_paths<E>(
    drv: &mut Derivation,
    store_dir: &StoreDir,
    mut resolve_input: impl FnMut(&StorePath) -> Result<DrvHash, E>,
) -> Result<(), HashModuloError<E>> {
    compute_paths(drv, store_dir, |path, _outputs| {
        resolve_input(path).map_err(|source| HashModuloError::Input {
            path: store_dir.display(path),
            source,
        })
    })
}

fn compute_paths<E>(
    drv: &mut Derivation,
    store_dir: &StoreDir,
    resolve_input: impl FnMut(&StorePath, &BTreeSet<OutputName>) -> Result<DrvHash, HashModuloError<E>>,
) -> Result<(), HashModuloError<E>> {
    let content_addressed = drv
        .outputs
        .values()
        .any(|output| output.content_hashing().is_some());
    if drv.outputs.is_empty() {
        return Err(InvalidDerivation::NoOutputs {
            name: drv.name.clone(),
        }
        .into());
    }
    if content_addressed {
        drv.kind()?;
        let name = drv.name.clone();
        for (output_name, output) in &mut drv.outputs {
            match output {
                DerivationOutput::Fixed { method, hash, path } => {
                    *path = fixed_output_path(store_dir, &name, output_name, *method, hash)
                        .map_err(|source| HashModuloError::InvalidName {
                            name: name.clone(),
                            source,
                        })?;
                    drv.env
                        .insert(output_name.to_string(), store_dir.display(path));
                }
                _ => {
                    drv.env
                        .insert(output_name.to_string(), output_name.placeholder());
                }
            }
        }
        return Ok(());
    }

    for (output_name, output) in &mut drv.outputs {
        *output = DerivationOutput::Deferred;
        drv.env.insert(output_name.to_string(), String::new());
    }
    let hashed = hash_modulo(drv, store_dir, false, resolve_input)?;
    if hashed.deferred {
        return Ok(());
    }
    let name = drv.name.clone();
    for (output_name, output) in &mut drv.outputs {
        let path = output_path(store_dir, &name, output_name, &hashed.hash)?;
        drv.env
            .insert(output_name.to_string(), store_dir.display(&path));
        *output = DerivationOutput::InputAddressed { path };
    }
    Ok(())
}

fn output_path<E>(
    store_dir: &StoreDir,
    drv_name: &str,
    output_name: &OutputName,
    hash: &Hash,
) -> Result<StorePath, HashModuloError<E>> {
    store_dir
        .make_output_path(output_name.as_str(), hash, drv_name)
        .map_err(|source| HashModuloError::InvalidName {
            name: drv_name.to_owned(),
            source,
        })
}

/// The store path of the `.drv` file for `drv`: a text path named `<name>.drv`, whose
/// references are its input sources and input derivations, and whose content hash is the
/// SHA-256 of its ATerm text.
pub fn derivation_path(
    store_dir: &StoreDir,
    drv: &Derivation,
) -> Result<StorePath, StorePathError> {
    let text = drv.to_aterm(store_dir);
    store_dir.make_text_path(
        &format!("{}.drv", drv.name),
        &Hash::digest(HashAlgo::Sha256, text.as_bytes()),
        &drv.drv_references(),
    )
}

/// Hashes modulo of `.drv` files, remembered by path, so that hashing many derivations of
/// one closure loads and hashes each input derivation once (Nix's `drvHashes` cache).
///
/// Walking the input graph uses an explicit stack, so deep dependency chains cannot
/// overflow the call stack; a cycle (impossible among real `.drv` files, whose paths are
/// content hashes, but possible with a faulty loader) is reported as an error.
#[derive(Debug, Default, Clone)]
pub struct ModuloHashCache {
    known: HashMap<StorePath, Known>,
}

#[derive(Debug, Clone)]
struct Known {
    hash: DrvHash,
    outputs: BTreeSet<OutputName>,
}

impl ModuloHashCache {
    pub fn new() -> ModuloHashCache {
        ModuloHashCache::default()
    }

    /// The remembered hash modulo of the `.drv` at `drv_path`, if it was computed.
    pub fn get(&self, drv_path: &StorePath) -> Option<&DrvHash> {
        self.known.get(drv_path).map(|known| &known.hash)
    }

    /// Number of derivations hashed so far.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The hash modulo of the `.drv` at `drv_path`, loading it and (for non-fixed-output
    /// derivations) its input closure with `load` as needed.
    pub fn hash_of_path<E>(
        &mut self,
        store_dir: &StoreDir,
        drv_path: &StorePath,
        mut load: impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<DrvHash, HashModuloError<E>> {
        if let Some(known) = self.known.get(drv_path) {
            return Ok(known.hash.clone());
        }
        let mut load_at = |path: &StorePath| {
            load(path).map_err(|source| HashModuloError::Input {
                path: store_dir.display(path),
                source,
            })
        };
        let mut stack = vec![(drv_path.clone(), load_at(drv_path)?)];
        let mut on_stack = HashSet::from([drv_path.clone()]);
        loop {
            let Some((_, drv)) = stack.last() else {
                unreachable!("the walk returns when it pops the starting derivation");
            };
            // A fixed-output or impure derivation's hash ignores its inputs: do not
            // load them.
            let pending = if ignores_inputs(drv) {
                None
            } else {
                drv.input_drvs
                    .keys()
                    .find(|input| !self.known.contains_key(*input))
                    .cloned()
            };
            if let Some(input) = pending {
                if !on_stack.insert(input.clone()) {
                    return Err(HashModuloError::Cycle {
                        path: store_dir.display(&input),
                    });
                }
                let input_drv = load_at(&input)?;
                stack.push((input, input_drv));
                continue;
            }
            let Some((path, drv)) = stack.pop() else {
                unreachable!("the stack was not empty just above");
            };
            let hash = hash_modulo(&drv, store_dir, false, |input, outputs| {
                self.known_input(store_dir, input, outputs)
            })?;
            on_stack.remove(&path);
            let known = Known {
                hash: hash.clone(),
                outputs: drv.outputs.into_keys().collect(),
            };
            self.known.insert(path, known);
            if stack.is_empty() {
                return Ok(hash);
            }
        }
    }

    /// The hash modulo of `drv` (not itself remembered, since it has no path yet), hashing
    /// its inputs through the cache.
    pub fn hash_derivation<E>(
        &mut self,
        store_dir: &StoreDir,
        drv: &Derivation,
        mut load: impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<Hash, HashModuloError<E>> {
        self.hash_inputs(store_dir, drv, &mut load)?;
        let hashed = hash_modulo(drv, store_dir, false, |input, outputs| {
            self.known_input(store_dir, input, outputs)
        })?;
        Ok(hashed.hash)
    }

    /// The hash that names `drv`'s outputs in Nix's realisations (`staticOutputHashes`:
    /// the hash modulo with outputs masked; the same for every output), and whether it
    /// is deferred. Inputs are hashed through the cache.
    pub fn static_output_hash<E>(
        &mut self,
        store_dir: &StoreDir,
        drv: &Derivation,
        mut load: impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<DrvHash, HashModuloError<E>> {
        if !ignores_inputs(drv) {
            self.hash_inputs(store_dir, drv, &mut load)?;
        }
        hash_modulo(drv, store_dir, true, |input, outputs| {
            self.known_input(store_dir, input, outputs)
        })
    }

    /// [`compute_output_paths`] with the input derivations hashed through the cache.
    pub fn compute_output_paths<E>(
        &mut self,
        store_dir: &StoreDir,
        drv: &mut Derivation,
        mut load: impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<(), HashModuloError<E>> {
        if !ignores_inputs(drv) {
            self.hash_inputs(store_dir, drv, &mut load)?;
        }
        compute_paths(drv, store_dir, |input, outputs| {
            self.known_input(store_dir, input, outputs)
        })
    }

    fn hash_inputs<E>(
        &mut self,
        store_dir: &StoreDir,
        drv: &Derivation,
        load: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<(), HashModuloError<E>> {
        for input in drv.input_drvs.keys() {
            self.hash_of_path(store_dir, input, &mut *load)?;
        }
        Ok(())
    }

    fn known_input<E>(
        &self,
        store_dir: &StoreDir,
        input: &StorePath,
        outputs: &BTreeSet<OutputName>,
    ) -> Result<DrvHash, HashModuloError<E>> {
        let Some(known) = self.known.get(input) else {
            unreachable!("inputs are hashed before the derivations that use them");
        };
        if let Some(missing) = outputs.difference(&known.outputs).next() {
            return Err(HashModuloError::MissingInputOutput {
                path: store_dir.display(input),
                output: missing.to_string(),
            });
        }
        Ok(known.hash.clone())
    }
}

/// Whether a derivation's hash modulo ignores its input derivations (fixed-output and
/// impure derivations).
fn ignores_inputs(drv: &Derivation) -> bool {
    matches!(
        drv.kind(),
        Ok(DerivationKind::Fixed | DerivationKind::Impure)
    )
}
