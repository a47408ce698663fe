//! Derivations: the build recipes Nix stores as `.drv` files.
//!
//! A [`Derivation`] is read from and written to Nix's ATerm text form ([`Derivation::parse`],
//! [`Derivation::to_aterm`]) byte for byte, and to and from the JSON of
//! `nix show-derivation` ([`show_derivations_json`], [`parse_show_derivation_json`]).
//! [`hash_derivation_modulo`] and [`compute_output_paths`] reproduce how Nix 2.8 names a
//! derivation's outputs, and [`derivation_path`] names the `.drv` file itself;
//! [`ModuloHashCache::check_outputs`] refuses a `.drv` that claims paths its contents do
//! not give (Nix's derivation invariants).
//!
//! Strings: Nix treats `.drv` strings as bytes, but every derivation Nix's evaluator writes
//! in practice is UTF-8 and `nix show-derivation` cannot represent anything else in JSON.
//! Arca therefore keeps strings as [`String`] and refuses a `.drv` holding invalid UTF-8
//! with [`ParseErrorKind::InvalidUtf8`] rather than guessing.
//!
//! Canonical form: Nix 2.8 accepts unsorted or duplicated entries and silently re-sorts or
//! drops them, so the printed text (and with it the `.drv` path) would not be the text it
//! read. Arca refuses those, fixed-output hashes not in lowercase base16, and fixed output
//! paths that do not follow from their hash. What stays many-to-one is string escaping,
//! which must read what Nix reads (`\x` is `x`, raw control characters stand for
//! themselves). So `to_aterm(parse(x)) == x` for every `x` Nix writes, and
//! `parse(to_aterm(d)) == d` for every derivation `d`.

mod aterm;
mod check;
mod hash_modulo;
mod json;
mod resolve;
#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::hash::{Hash, HashAlgo};
use crate::store_path::{validate_name, ContentAddressMethod, StoreDir, StorePath, StorePathError};

pub use aterm::{DerivationParseError, ParseErrorKind};
pub use check::DerivationCheckError;
pub use hash_modulo::{
    compute_output_paths, derivation_path, hash_derivation_modulo, impure_output_hash, DrvHash,
    HashModuloError, ModuloHashCache,
};
pub use json::{
    parse_show_derivation_json, show_derivations_json, DerivationJson, DerivationJsonError,
    DerivationOutputJson,
};
pub use resolve::{downstream_placeholder, rewrite_strings, ResolveError};

/// The name of a derivation output (`out`, `dev`, `lib`, …).
///
/// Valid names are non-empty and use only the characters allowed in store path names,
/// since a non-`out` output becomes part of its store path's name (`<drv name>-<output>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputName(String);

/// An output name that is empty or contains characters not allowed in a store path name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("output name '{0}' is not a valid derivation output name")]
pub struct InvalidOutputName(pub String);

impl OutputName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<OutputName, InvalidOutputName> {
        validate_name(name).map_err(|_| InvalidOutputName(name.to_owned()))?;
        Ok(OutputName(name.to_owned()))
    }

    /// The conventional default output, `out`.
    pub fn out() -> OutputName {
        OutputName("out".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What `builtins.placeholder` gives for this output: `/` and the nix-base32 SHA-256
    /// of `nix-output:NAME`. A builder sees it replaced by the output's path.
    pub fn placeholder(&self) -> String {
        let hash = Hash::digest(
            crate::hash::HashAlgo::Sha256,
            format!("nix-output:{}", self.0).as_bytes(),
        );
        format!("/{}", hash.to_base32())
    }
}

impl fmt::Display for OutputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for OutputName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for OutputName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// The output path follows from the derivation's hash modulo fixed outputs
    /// (an ordinary derivation).
    InputAddressed { path: StorePath },
    /// A fixed-output derivation: the content hash is known in advance, and the path
    /// follows from it alone (`fetchurl` and friends).
    ///
    /// `path` must be the path [`DerivationOutput::fixed`] computes; the parsers check this,
    /// and [`compute_output_paths`] recomputes it, like Nix (which never trusts the stored one).
    Fixed {
        method: ContentAddressMethod,
        hash: Hash,
        path: StorePath,
    },
    /// An input-addressed output whose path is not known yet: the state during
    /// [`compute_output_paths`], a derivation read from JSON without paths, or (Nix's
    /// `ca-derivations`) one that depends on a floating content-addressed output, whose
    /// path only its resolved derivation ([`Derivation::try_resolve`]) knows.
    /// Printed as an empty path.
    Deferred,
    /// A floating content-addressed output (`__contentAddressed = true`, Nix's
    /// experimental `ca-derivations`): its path follows from what the build produces,
    /// hashed with `method` and `algo`, and is known only after the build (Nix's
    /// realisations record it).
    Floating {
        method: ContentAddressMethod,
        algo: HashAlgo,
    },
    /// An output of an impure derivation (`__impure = true`, Nix's experimental
    /// `impure-derivations`): content-addressed like a floating output, but built anew
    /// every time it is wanted and never recorded as the derivation's result.
    Impure {
        method: ContentAddressMethod,
        algo: HashAlgo,
    },
}

impl DerivationOutput {
    /// A fixed output with its path computed from the content hash, as Nix does.
    pub fn fixed(
        store_dir: &StoreDir,
        drv_name: &str,
        output_name: &OutputName,
        method: ContentAddressMethod,
        hash: Hash,
    ) -> Result<DerivationOutput, StorePathError> {
        let path = fixed_output_path(store_dir, drv_name, output_name, method, &hash)?;
        Ok(DerivationOutput::Fixed { method, hash, path })
    }

    /// The output's store path, if it is known.
    pub fn path(&self) -> Option<&StorePath> {
        match self {
            DerivationOutput::InputAddressed { path } | DerivationOutput::Fixed { path, .. } => {
                Some(path)
            }
            DerivationOutput::Deferred
            | DerivationOutput::Floating { .. }
            | DerivationOutput::Impure { .. } => None,
        }
    }

    /// How a content-addressed output's content is hashed (fixed, floating and impure
    /// outputs), or `None` for an input-addressed one.
    pub fn content_hashing(&self) -> Option<(ContentAddressMethod, HashAlgo)> {
        match self {
            DerivationOutput::Fixed { method, hash, .. } => Some((*method, hash.algo())),
            DerivationOutput::Floating { method, algo }
            | DerivationOutput::Impure { method, algo } => Some((*method, *algo)),
            DerivationOutput::InputAddressed { .. } | DerivationOutput::Deferred => None,
        }
    }

    /// The `hashAlgo` field of the ATerm and JSON forms: `r:sha256`, `sha1`, or empty.
    pub fn hash_algo_field(&self) -> String {
        match self.content_hashing() {
            Some((method, algo)) => format!("{}{}", method.prefix(), algo.name()),
            None => String::new(),
        }
    }

    /// The `hash` field of the ATerm form: base16 for a fixed output, `impure` for an
    /// impure one, else empty.
    pub fn hash_field(&self) -> String {
        match self {
            DerivationOutput::Fixed { hash, .. } => hash.to_base16(),
            DerivationOutput::Impure { .. } => "impure".to_owned(),
            _ => String::new(),
        }
    }
}

/// Nix's `printMethodAlgo`: `r:` for recursive (NAR) hashing, then the algorithm name.
pub(crate) fn method_algo(method: ContentAddressMethod, hash: &Hash) -> String {
    format!("{}{}", method.prefix(), hash.algo().name())
}

/// The name of an output's store path: the derivation's name, plus `-<output>` unless the
/// output is `out` (Nix's `outputPathName`).
pub fn output_path_name(drv_name: &str, output_name: &str) -> String {
    if output_name == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output_name}")
    }
}

pub(crate) fn fixed_output_path(
    store_dir: &StoreDir,
    drv_name: &str,
    output_name: &OutputName,
    method: ContentAddressMethod,
    hash: &Hash,
) -> Result<StorePath, StorePathError> {
    store_dir.make_fixed_output_path(
        &output_path_name(drv_name, output_name.as_str()),
        method,
        hash,
        &BTreeSet::new(),
        false,
    )
}

/// A derivation: what to run (`builder`, `args`, `env`, `system`), what it needs
/// (`input_drvs`, `input_srcs`) and what it produces (`outputs`).
///
/// All collections are ordered the way Nix orders them in a `.drv` file (byte order of
/// names and full paths), so printing never needs to sort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// The derivation's name: the `.drv` file name without `.drv`, or `env["name"]`.
    pub name: String,
    pub outputs: BTreeMap<OutputName, DerivationOutput>,
    /// Input derivations and which of their outputs this one needs.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<OutputName>>,
    /// Input sources: store paths that are not outputs of a derivation.
    pub input_srcs: BTreeSet<StorePath>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// What kind of derivation this is, judged by its outputs (Nix's `DerivationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivationKind {
    /// Every output is input-addressed with a known path.
    InputAddressed,
    /// Every output is deferred (paths not computed yet).
    DeferredInputAddressed,
    /// A single fixed output named `out`.
    Fixed,
    /// Every output is floating content-addressed, all hashed with one algorithm.
    Floating,
    /// Every output is impure.
    Impure,
}

impl DerivationKind {
    /// Whether the output paths follow from the derivation alone (Nix's
    /// `hasKnownOutputPaths`).
    pub fn has_known_output_paths(self) -> bool {
        matches!(self, DerivationKind::InputAddressed | DerivationKind::Fixed)
    }

    /// Whether the outputs are content-addressed (fixed, floating or impure: Nix's
    /// `isCA`).
    pub fn is_content_addressed(self) -> bool {
        matches!(
            self,
            DerivationKind::Fixed | DerivationKind::Floating | DerivationKind::Impure
        )
    }
}

impl Derivation {
    /// Classifies the derivation by its outputs, refusing the combinations Nix 2.8 refuses:
    /// no outputs, mixed output kinds, and fixed outputs other than a single `out`.
    pub fn kind(&self) -> Result<DerivationKind, InvalidDerivation> {
        let (mut input_addressed, mut deferred, mut fixed, mut floating, mut impure) =
            (0, 0, 0, 0, 0);
        let mut floating_algo = None;
        let name = || self.name.clone();
        for output in self.outputs.values() {
            match output {
                DerivationOutput::InputAddressed { .. } => input_addressed += 1,
                DerivationOutput::Deferred => deferred += 1,
                DerivationOutput::Fixed { .. } => fixed += 1,
                DerivationOutput::Floating { algo, .. } => {
                    floating += 1;
                    if *floating_algo.get_or_insert(*algo) != *algo {
                        return Err(InvalidDerivation::FloatingAlgorithms { name: name() });
                    }
                }
                DerivationOutput::Impure { .. } => impure += 1,
            }
        }
        match (input_addressed, deferred, fixed, floating, impure) {
            (0, 0, 0, 0, 0) => Err(InvalidDerivation::NoOutputs { name: name() }),
            (_, 0, 0, 0, 0) => Ok(DerivationKind::InputAddressed),
            (0, _, 0, 0, 0) => Ok(DerivationKind::DeferredInputAddressed),
            (0, 0, 1, 0, 0) if self.outputs.contains_key("out") => Ok(DerivationKind::Fixed),
            (0, 0, _, 0, 0) => Err(InvalidDerivation::FixedOutputNotOut { name: name() }),
            (0, 0, 0, _, 0) => Ok(DerivationKind::Floating),
            (0, 0, 0, 0, _) => Ok(DerivationKind::Impure),
            _ => Err(InvalidDerivation::MixedOutputKinds { name: name() }),
        }
    }

    /// The references of this derivation's `.drv` file: its input sources and input
    /// derivations.
    pub fn drv_references(&self) -> BTreeSet<StorePath> {
        self.input_srcs
            .iter()
            .chain(self.input_drvs.keys())
            .cloned()
            .collect()
    }

    /// Whether this is a fixed-output derivation (its outputs' hashes are known in advance).
    pub fn is_fixed_output(&self) -> bool {
        matches!(self.kind(), Ok(DerivationKind::Fixed))
    }

    /// Whether its builder may reach the network and sees its `impureEnvVars` (Nix's
    /// `!isSandboxed()`): fixed-output and impure derivations, whose results are checked
    /// by their hash or never reused.
    pub fn has_network_access(&self) -> bool {
        matches!(
            self.kind(),
            Ok(DerivationKind::Fixed | DerivationKind::Impure)
        )
    }

    /// The derivation name for the `.drv` file at `drv_path`: its name without `.drv`.
    pub fn name_from_drv_path(drv_path: &StorePath) -> Option<&str> {
        drv_path
            .name()
            .strip_suffix(".drv")
            .filter(|name| !name.is_empty())
    }
}

/// A derivation whose outputs Nix would refuse to hash or build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDerivation {
    #[error("derivation '{name}' has no outputs")]
    NoOutputs { name: String },
    #[error("derivation '{name}' mixes output kinds (input-addressed, deferred, fixed, floating, impure)")]
    MixedOutputKinds { name: String },
    #[error("derivation '{name}': all floating outputs must use the same hash type")]
    FloatingAlgorithms { name: String },
    #[error("fixed-output derivation '{name}' must have exactly one output, named 'out'")]
    FixedOutputNotOut { name: String },
}
