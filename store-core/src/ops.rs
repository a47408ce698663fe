//! Every operation of a store beyond the queries and adds of [`Store`]: adds from dumps,
//! builds, roots, garbage collection, verification, logs — what Nix's worker protocol
//! carries. [`StoreOps`] is the one interface that the daemon's server serves, that the
//! daemon client implements, and that the `arca` command is written against; the local
//! store with builds (`arca-daemon`'s `LocalBackend`) is the other implementation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::derivation::{Derivation, OutputName};
use crate::settings::Settings;
use crate::{
    AddressingMethod, DrvOutput, PathInfo, Realisation, Signature, Store, StoreDir, StorePath,
};

/// What happens during a build (`arca_build::build`), in order per derivation; what a
/// server streams to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// The work is known: how many derivations will be built.
    Planned {
        /// Derivations to build.
        to_build: usize,
    },
    /// A builder started.
    Started {
        /// The derivation.
        drv: StorePath,
    },
    /// One line of a builder's output (escape sequences filtered).
    Log {
        /// The derivation.
        drv: StorePath,
        /// The line, without its newline.
        line: String,
    },
    /// A derivation was built (or checked) and its outputs registered.
    Built {
        /// The derivation.
        drv: StorePath,
        /// Its outputs.
        outputs: BTreeMap<OutputName, StorePath>,
    },
    /// A builder ended, whatever its outcome: when it ran and the CPU time it used
    /// (what Nix reports in a build result's `startTime`, `stopTime`, `cpuUser` and
    /// `cpuSystem`).
    BuilderExited {
        /// The derivation.
        drv: StorePath,
        /// When the builder started.
        start: std::time::SystemTime,
        /// When it ended.
        stop: std::time::SystemTime,
        /// CPU time of the builder and every process it waited for, in user mode.
        user_time: Duration,
        /// Likewise, in kernel mode.
        system_time: Duration,
    },
    /// A failed build's directory was kept (`--keep-failed`).
    KeptBuildDir {
        /// The derivation.
        drv: StorePath,
        /// The directory on the host.
        path: PathBuf,
    },
    /// A derivation failed.
    Failed {
        /// The derivation.
        drv: StorePath,
        /// Why, in one message (with the last log lines).
        message: String,
    },
}

/// An operation the store refused, with the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreOpError(String);

impl StoreOpError {
    pub fn new(message: impl Into<String>) -> StoreOpError {
        StoreOpError(message.into())
    }
}

fn refuse(error: impl std::fmt::Display) -> StoreOpError {
    StoreOpError(error.to_string())
}

/// A path to build or check: a derivation with the outputs wanted (`None`: an opaque
/// store path; an empty set: every output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedPath {
    pub path: StorePath,
    pub outputs: Option<BTreeSet<String>>,
}

impl DerivedPath {
    /// Nix's legacy text form: `PATH` or `DRV!out1,out2` (`DRV!*` for all).
    pub fn to_wire(&self, store_dir: &StoreDir) -> String {
        let path = store_dir.display(&self.path);
        match &self.outputs {
            None => path,
            Some(outputs) if outputs.is_empty() => format!("{path}!*"),
            Some(outputs) => {
                format!(
                    "{path}!{}",
                    outputs.iter().cloned().collect::<Vec<_>>().join(",")
                )
            }
        }
    }
}

/// Per target: what was built (or found valid), or why it failed.
pub type BuildOutcomes = Vec<(DerivedPath, Result<Built, String>)>;

/// A target that is there now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Built {
    /// Built now, rather than found valid.
    pub now: bool,
    /// Its wanted outputs as realisations (id: the derivation's static output hash and
    /// the output's name). Clients such as `nix build` take the output paths from these.
    pub outputs: Vec<Realisation>,
    /// When its builder ran and the CPU time it used, when it was built now.
    pub timing: Option<BuildTiming>,
}

/// When a builder ran and the CPU time it used (a build result's `startTime`,
/// `stopTime`, `cpuUser`, `cpuSystem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildTiming {
    pub start: std::time::SystemTime,
    pub stop: std::time::SystemTime,
    pub cpu_user: std::time::Duration,
    pub cpu_system: std::time::Duration,
}

impl BuildTiming {
    /// The derivation and timing a `BuilderExited` event reports.
    pub fn of(event: BuildEvent) -> Option<(StorePath, BuildTiming)> {
        match event {
            BuildEvent::BuilderExited {
                drv,
                start,
                stop,
                user_time,
                system_time,
            } => Some((
                drv,
                BuildTiming {
                    start,
                    stop,
                    cpu_user: user_time,
                    cpu_system: system_time,
                },
            )),
            _ => None,
        }
    }
}

/// How to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    Normal,
    Repair,
    Check,
}

/// What a garbage collection request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcRequest {
    ReturnLive,
    ReturnDead,
    DeleteDead,
    DeleteSpecific(BTreeSet<StorePath>),
}

/// A store with every operation: the [`Store`] trait plus the operations Nix clients
/// send that the trait has no word for. The defaults refuse, so a store that cannot
/// build or collect garbage still serves queries and adds.
pub trait StoreOps: Store + Sync
where
    Self::Error: std::fmt::Display,
{
    /// Every output of `drv` with its path where known (with `realisations`, Nix's
    /// `ca-derivations`: also where a realisation records it).
    fn query_derivation_output_map(
        &self,
        drv: &StorePath,
        _realisations: bool,
    ) -> Result<BTreeMap<String, Option<StorePath>>, StoreOpError> {
        Ok(self
            .query_derivation_outputs(drv)
            .map_err(refuse)?
            .into_iter()
            .map(|(name, path)| (name, Some(path)))
            .collect())
    }

    fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreOpError> {
        Err(refuse(
            "listing all valid paths is not supported by this store",
        ))
    }

    /// The realisation of a derivation output, if one is recorded.
    fn query_realisation(&self, _id: &DrvOutput) -> Result<Option<Realisation>, StoreOpError> {
        Ok(None)
    }

    /// Records a realisation (its path must be valid).
    fn register_realisation(&self, _realisation: &Realisation) -> Result<(), StoreOpError> {
        Err(refuse(
            "registering realisations is not supported by this store",
        ))
    }

    /// The closure of `paths` (with the valid outputs of derivations in it when
    /// `include_outputs`), each member with its references: what `query --requisites`
    /// needs, in one request (Arca's extension of the protocol).
    fn closure_graph(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, StoreOpError> {
        if include_outputs {
            return Err(refuse(
                "closures with outputs are not supported by this store",
            ));
        }
        let mut graph = BTreeMap::new();
        for path in self.query_closure(paths).map_err(refuse)? {
            let references = self.query_references(&path).map_err(refuse)?;
            graph.insert(path, references);
        }
        Ok(graph)
    }

    /// Adds a content-addressed path from a dump, addressed by `method`; the dump is the
    /// file's bytes for flat and text methods, a NAR for recursive ones.
    fn add_dump(
        &self,
        name: &str,
        method: AddressingMethod,
        references: &BTreeSet<StorePath>,
        dump: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError>;

    /// Adds a path from its NAR and metadata. `trusted` says the client may vouch for
    /// it; otherwise only a correctly content-addressed path is accepted (there are no
    /// signatures to check yet).
    fn add_nar_checked(
        &self,
        info: &PathInfo,
        nar: &mut dyn BufRead,
        trusted: bool,
    ) -> Result<(), StoreOpError>;

    /// Takes up what of a connection's `settings` the store itself acts on (for the
    /// local store: `auto-optimise-store`).
    fn apply_settings(&self, _settings: &Settings) {}

    /// Builds `targets`; per target, what is there now or why it failed. `events` hears
    /// the builds' progress as it happens (the server streams it to the client).
    fn build_paths(
        &self,
        _targets: &[DerivedPath],
        _mode: BuildMode,
        _settings: &Settings,
        _events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<BuildOutcomes, StoreOpError> {
        Err(refuse("building is not supported by this store"))
    }

    fn ensure_path(&self, path: &StorePath) -> Result<(), StoreOpError> {
        if self.is_valid_path(path).map_err(refuse)? {
            Ok(())
        } else {
            Err(refuse(format!(
                "path '{}' is not valid",
                self.store_dir().display(path)
            )))
        }
    }

    fn add_temp_root(&self, _path: &StorePath) -> Result<(), StoreOpError> {
        Ok(())
    }

    fn add_indirect_root(&self, _link: &Path) -> Result<(), StoreOpError> {
        Err(refuse(
            "garbage collector roots are not supported by this store",
        ))
    }

    fn add_perm_root(&self, _path: &StorePath, _link: &Path) -> Result<PathBuf, StoreOpError> {
        Err(refuse(
            "garbage collector roots are not supported by this store",
        ))
    }

    /// Roots as (link, path); `censor` hides runtime and temporary roots' origins.
    fn find_roots(&self, _censor: bool) -> Result<Vec<(String, StorePath)>, StoreOpError> {
        Ok(Vec::new())
    }

    /// The paths deleted (or listed) and the bytes freed.
    fn collect_garbage(
        &self,
        _request: GcRequest,
        _max_freed: Option<u64>,
        _settings: &Settings,
    ) -> Result<(Vec<String>, u64), StoreOpError> {
        Err(refuse("garbage collection is not supported by this store"))
    }

    fn optimise(&self) -> Result<(), StoreOpError> {
        Err(refuse("optimisation is not supported by this store"))
    }

    /// Whether verification found errors.
    fn verify_store(&self, _check_contents: bool, _repair: bool) -> Result<bool, StoreOpError> {
        Err(refuse("verification is not supported by this store"))
    }

    /// Builds a derivation sent whole by a trusted client (`BuildDerivation`, what
    /// remote builders receive), its inputs already in the store.
    fn build_derivation(
        &self,
        _drv_path: &StorePath,
        _drv: &Derivation,
        _mode: BuildMode,
        _settings: &Settings,
        _events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<Result<Built, String>, StoreOpError> {
        Err(refuse(
            "building sent derivations is not supported by this store",
        ))
    }

    /// Imports an export archive (`ImportPaths`, Nix 2.3's `nix-store --import`).
    fn import_export(&self, _input: &mut dyn BufRead) -> Result<Vec<StorePath>, StoreOpError> {
        Err(refuse(
            "importing export archives is not supported by this store",
        ))
    }

    /// Adds `signatures` to the valid `path`'s (`AddSignatures`, from trusted clients).
    fn add_signatures(
        &self,
        _path: &StorePath,
        _signatures: &[Signature],
    ) -> Result<(), StoreOpError> {
        Err(refuse("signatures are not supported by this store yet"))
    }

    /// What building `targets` would build, and the targets it knows nothing about.
    fn query_missing(
        &self,
        _targets: &[DerivedPath],
    ) -> Result<(BTreeSet<StorePath>, BTreeSet<StorePath>), StoreOpError> {
        Ok((BTreeSet::new(), BTreeSet::new()))
    }

    /// The stored build log of `drv`, opened for reading (decompressed), if there is one.
    fn read_build_log(&self, _drv: &StorePath) -> Result<Option<Box<dyn Read>>, StoreOpError> {
        Ok(None)
    }

    /// Stores `text` as the build log of `drv` (`nix store copy-log`), streamed.
    fn add_build_log(&self, _drv: &StorePath, _text: &mut dyn Read) -> Result<(), StoreOpError> {
        Err(refuse("build logs are not supported by this store"))
    }
}
