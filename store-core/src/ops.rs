//! Every operation of a store beyond the queries and adds of [`Store`]: adds from dumps,
//! builds, roots, garbage collection, verification, logs — what Nix's worker protocol
//! carries. [`StoreOps`] is the one interface that the daemon's server serves, that the
//! daemon client implements, and that the `arca` command is written against; the local
//! store with builds (`arca-daemon`'s `LocalBackend`) is the other implementation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::derivation::{Derivation, OutputName};
use crate::settings::Settings;
use crate::store_path::ContentAddressMethod;
use crate::{
    AddressingMethod, DrvOutput, Hash, HashAlgo, PathInfo, Realisation, Signature, Store, StoreDir,
    StorePath,
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
    /// A derivation will be built (one per derivation, right after `Planned`).
    Queued {
        /// The derivation.
        drv: StorePath,
    },
    /// A path was copied to or from a remote machine (a step's inputs, its outputs).
    Copied {
        /// The path.
        path: StorePath,
        /// The machine's store URI.
        machine: String,
        /// Which way.
        direction: CopyDirection,
    },
    /// A builder started.
    Started {
        /// The derivation.
        drv: StorePath,
        /// The remote machine it runs on (its store URI), or `None`: here.
        machine: Option<String>,
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
    /// A message for the user from where the builds run (what a daemon printed), with
    /// its newline.
    Message {
        /// The text.
        text: String,
    },
    /// A derivation failed.
    Failed {
        /// The derivation.
        drv: StorePath,
        /// Why, in one message (with the last log lines).
        message: String,
    },
}

/// Which way a path travelled ([`BuildEvent::Copied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// From here to the machine.
    ToMachine,
    /// From the machine to here.
    FromMachine,
}

/// How far adding a path from the file system got (for a progress bar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddProgress {
    /// Hashing the source: NAR bytes so far (the total is not known yet).
    Hashing { bytes: u64 },
    /// Copying into the store: NAR bytes so far, of `total`.
    Copying { bytes: u64, total: u64 },
}

/// What a garbage collection does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GcAction {
    /// Delete every dead path (`nix-store --gc`).
    #[default]
    DeleteDead,
    /// Only list what would be deleted (`--print-dead`, `--dry-run`).
    ReturnDead,
    /// Only list the live paths (`--print-live`).
    ReturnLive,
    /// Delete exactly these paths, which must be dead (`nix-store --delete`).
    DeleteSpecific(BTreeSet<StorePath>),
}

/// How a garbage collection runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub action: GcAction,
    /// Stop once this many bytes are freed.
    pub max_freed: Option<u64>,
    /// Keep the outputs of live derivations (Nix's `keep-outputs`, default off).
    pub keep_outputs: bool,
    /// Keep the derivers of live outputs (Nix's `keep-derivations`, default on).
    pub keep_derivations: bool,
    /// Look for runtime roots in `/proc` (default on).
    pub runtime_roots: bool,
    /// With [`GcAction::DeleteSpecific`]: ignore roots, only refuse paths that other
    /// valid paths refer to (`--ignore-liveness`).
    pub ignore_liveness: bool,
}

impl Default for GcOptions {
    fn default() -> GcOptions {
        GcOptions {
            action: GcAction::DeleteDead,
            max_freed: None,
            keep_outputs: false,
            keep_derivations: true,
            runtime_roots: true,
            ignore_liveness: false,
        }
    }
}

/// What a garbage collection did or found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Full paths deleted (or dead, or live, by the action), sorted.
    pub paths: Vec<String>,
    /// Bytes freed by deleting files (0 when only listing).
    pub bytes_freed: u64,
    /// `.links` entries removed because nothing used them any more.
    pub links_removed: u64,
}

/// How far a collection got (for a progress bar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcProgress {
    /// Reading roots and the registry.
    FindingRoots,
    /// Deleting: `deleted` of `dead` paths, `bytes_freed` so far.
    Deleting {
        deleted: u64,
        dead: u64,
        bytes_freed: u64,
    },
    /// Removing unused `.links` entries.
    PruningLinks,
}

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
    /// The path's NAR hash or size differs from the registry; `repaired` when its
    /// deriver was built again to restore it (`--repair`, as Nix does).
    Modified {
        path: StorePath,
        expected: Hash,
        actual: Hash,
        repaired: bool,
    },
    /// A registered reference points at a registry row that is gone (the registry's
    /// foreign keys make this impossible unless the database was edited without them).
    DanglingReference { path: StorePath, missing_id: i64 },
}

/// The outcome of `verify`: empty when the store is consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: usize,
    pub problems: Vec<VerifyProblem>,
}

impl VerifyProblem {
    /// The problem in one line, as Nix words it.
    pub fn describe(&self, store_dir: &StoreDir) -> String {
        match self {
            VerifyProblem::Missing {
                path,
                repaired: false,
            } => format!("path '{}' disappeared", store_dir.display(path)),
            VerifyProblem::Missing {
                path,
                repaired: true,
            } => format!(
                "path '{}' disappeared, removed from the registry",
                store_dir.display(path)
            ),
            VerifyProblem::Modified {
                path,
                expected,
                actual,
                repaired,
            } => format!(
                "path '{}' was modified! expected hash '{expected}', got '{actual}'{}",
                store_dir.display(path),
                if *repaired { "; repaired" } else { "" }
            ),
            VerifyProblem::DanglingReference { path, missing_id } => format!(
                "path '{}' refers to registry row {missing_id}, which does not exist",
                store_dir.display(path)
            ),
        }
    }
}

impl VerifyProblem {
    /// Whether `--repair` fixed it.
    pub fn repaired(&self) -> bool {
        match self {
            VerifyProblem::Missing { repaired, .. } | VerifyProblem::Modified { repaired, .. } => {
                *repaired
            }
            VerifyProblem::DanglingReference { .. } => false,
        }
    }
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether a problem is left (one that was not repaired): what makes a verification
    /// fail, as Nix's `errors`.
    pub fn errors_found(&self) -> bool {
        self.problems.iter().any(|problem| !problem.repaired())
    }
}

/// What an optimise run did. `files_linked` and `bytes_saved` are counted as Nix counts
/// them (`X MiB freed by hard-linking N files`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptimiseReport {
    /// Store paths optimised.
    pub paths: u64,
    /// Regular files looked at, including those found already linked.
    pub files_scanned: u64,
    /// Files read to compute their key (files already linked are not read).
    pub files_hashed: u64,
    /// Files replaced by a hard link.
    pub files_linked: u64,
    /// The sizes of the files replaced.
    pub bytes_saved: u64,
    /// Files left alone because their link file holds different bytes under the same
    /// key (a corrupt link file, or a collision).
    pub files_differing: u64,
}

impl OptimiseReport {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &OptimiseReport) {
        self.paths += other.paths;
        self.files_scanned += other.files_scanned;
        self.files_hashed += other.files_hashed;
        self.files_linked += other.files_linked;
        self.bytes_saved += other.bytes_saved;
        self.files_differing += other.files_differing;
    }
}

/// How far an optimise run got, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimiseProgress {
    /// `done` store paths of `total` are optimised.
    Path { done: u64, total: u64 },
}

/// Why a store operation failed: refused with a message, or a back end's own error
/// with its causes (an errno, a path) kept for callers to inspect.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpError {
    /// Refused, with the message a client sees.
    #[error("{0}")]
    Refused(String),
    /// The back end failed; the error says how and keeps its source chain.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreOpError {
    /// A refusal with `message`.
    pub fn new(message: impl Into<String>) -> StoreOpError {
        StoreOpError::Refused(message.into())
    }

    /// A back end's error, kept whole.
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreOpError {
        StoreOpError::Failed(Box::new(error))
    }

    /// The message and its causes, `: `-separated (what a daemon sends its client).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }
}

/// Where a binary cache keeps a path's NAR, as its `.narinfo` says (what Nix's
/// `path-info --json` shows of a cache's path: `url`, `downloadHash`, `downloadSize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarDownload {
    /// Relative to the cache (`nar/….nar.xz`).
    pub url: String,
    /// The hash of the file as stored (compressed).
    pub file_hash: Option<Hash>,
    /// Its size.
    pub file_size: Option<u64>,
}

/// Which roots [`StoreOps::find_roots`] returns, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FindRoots {
    /// Show `{censored}` for the origins of runtime and temporary roots (what a daemon
    /// tells an untrusted client), as Nix does.
    pub censor: bool,
    /// Include runtime roots (processes' open files, maps and environments, from
    /// `/proc`).
    pub runtime_roots: bool,
}

impl Default for FindRoots {
    fn default() -> FindRoots {
        FindRoots {
            censor: false,
            runtime_roots: true,
        }
    }
}

/// What [`StoreOps::verify_store`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Every problem, from a store that reports them one by one.
    Report(VerifyReport),
    /// Only whether there were errors, from a store that says no more (a daemon: it sent
    /// its messages to the client's log).
    ErrorsFound(bool),
}

impl VerifyOutcome {
    /// Whether problems were found.
    pub fn errors_found(&self) -> bool {
        match self {
            VerifyOutcome::Report(report) => report.errors_found(),
            VerifyOutcome::ErrorsFound(found) => *found,
        }
    }
}

/// A file given to a store operation could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read '{}'", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn refuse(message: impl Into<String>) -> StoreOpError {
    StoreOpError::new(message)
}

/// A path to build or check: a derivation with the outputs wanted (`None`: an opaque
/// store path; an empty set: every output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedPath {
    pub path: StorePath,
    pub outputs: Option<BTreeSet<OutputName>>,
}

/// A derived path's text is malformed.
#[derive(Debug, thiserror::Error)]
pub enum DerivedPathError {
    #[error("'{text}' does not name a store path")]
    Path {
        text: String,
        #[source]
        source: crate::StorePathError,
    },
    #[error("'{text}' names a bad output")]
    Output {
        text: String,
        #[source]
        source: crate::derivation::InvalidOutputName,
    },
}

impl DerivedPath {
    /// Every output of `drv`.
    pub fn all_outputs(drv: StorePath) -> DerivedPath {
        DerivedPath {
            path: drv,
            outputs: Some(BTreeSet::new()),
        }
    }

    /// Nix's legacy text form: `PATH` or `DRV!out1,out2` (`DRV!*` for all); `^` also
    /// separates the outputs, as in Nix's newer form.
    pub fn parse(store_dir: &StoreDir, text: &str) -> Result<DerivedPath, DerivedPathError> {
        let (path, outputs) = match text.split_once(['!', '^']) {
            Some((path, outputs)) => (path, Some(outputs)),
            None => (text, None),
        };
        let path = store_dir
            .parse_path(path)
            .map_err(|source| DerivedPathError::Path {
                text: text.to_owned(),
                source,
            })?;
        let outputs = match outputs {
            None => None,
            Some("*") => Some(BTreeSet::new()),
            Some(names) => Some(
                names
                    .split(',')
                    .map(OutputName::new)
                    .collect::<Result<BTreeSet<_>, _>>()
                    .map_err(|source| DerivedPathError::Output {
                        text: text.to_owned(),
                        source,
                    })?,
            ),
        };
        Ok(DerivedPath { path, outputs })
    }

    /// Whether `output` is wanted (every output of an all-outputs target).
    pub fn wants(&self, output: &OutputName) -> bool {
        self.outputs
            .as_ref()
            .is_none_or(|wanted| wanted.is_empty() || wanted.contains(output))
    }

    /// Nix's legacy text form: `PATH` or `DRV!out1,out2` (`DRV!*` for all).
    pub fn to_wire(&self, store_dir: &StoreDir) -> String {
        let path = store_dir.display(&self.path);
        match &self.outputs {
            None => path,
            Some(outputs) if outputs.is_empty() => format!("{path}!*"),
            Some(outputs) => {
                let names: Vec<&str> = outputs.iter().map(OutputName::as_str).collect();
                format!("{path}!{}", names.join(","))
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

/// Reads one path's metadata off a stream of several paths
/// ([`StoreOps::add_many_checked`]), and says whether the client may vouch for it.
pub type ReadPathInfo<'a, E> = dyn FnMut(&mut dyn BufRead) -> Result<(PathInfo, bool), E> + 'a;

/// A store with every operation: the [`Store`] trait plus the operations Nix clients
/// send that the trait has no word for. The defaults refuse, so a store that cannot
/// build or collect garbage still serves queries and adds.
pub trait StoreOps: Store + Sync {
    /// Every output of `drv` with its path where known (with `realisations`, Nix's
    /// `ca-derivations`: also where a realisation records it).
    fn query_derivation_output_map(
        &self,
        drv: &StorePath,
        _realisations: bool,
    ) -> Result<BTreeMap<String, Option<StorePath>>, StoreOpError> {
        Ok(self
            .query_derivation_outputs(drv)
            .map_err(StoreOpError::from_error)?
            .into_iter()
            .map(|(name, path)| (name, Some(path)))
            .collect())
    }

    /// Which of `paths` are valid: one request where the back end has one (a daemon's
    /// `QueryValidPaths`), a question per path otherwise.
    fn query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreOpError> {
        let mut valid = BTreeSet::new();
        for path in paths {
            if self.is_valid_path(path).map_err(StoreOpError::from_error)? {
                valid.insert(path.clone());
            }
        }
        Ok(valid)
    }

    /// Asks the store to substitute what of `paths` it lacks from its substituters
    /// (Nix's `substitutePaths`); what it cannot have stays invalid, which is no error.
    /// By default nothing is substituted.
    fn substitute_paths(&self, _paths: &BTreeSet<StorePath>) -> Result<(), StoreOpError> {
        Ok(())
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
        for path in self
            .query_closure(paths)
            .map_err(StoreOpError::from_error)?
        {
            let references = self
                .query_references(&path)
                .map_err(StoreOpError::from_error)?;
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

    /// Adds `count` paths that follow one another on `stream` (Nix's
    /// `AddMultipleToStore`): `read_info` reads each path's metadata off the stream and
    /// says whether the client may vouch for it, then its NAR follows. The default adds
    /// each through [`StoreOps::add_nar_checked`]; a store may add them together (the
    /// local store: one transaction per few hundred). At the first error nothing more is
    /// read; the paths complete before it stay.
    fn add_many_checked<E: From<StoreOpError>>(
        &self,
        stream: &mut dyn BufRead,
        count: u64,
        read_info: &mut ReadPathInfo<'_, E>,
    ) -> Result<(), E>
    where
        Self: Sized,
    {
        for _ in 0..count {
            let (info, trusted) = read_info(stream)?;
            self.add_nar_checked(&info, stream, trusted)?;
        }
        Ok(())
    }

    /// Takes up what of `settings` the store itself acts on (for the local store:
    /// `auto-optimise-store`, and the settings of builds it starts by itself; for a
    /// daemon's: those a client may send).
    fn apply_settings(&self, _settings: &Settings) -> Result<(), StoreOpError> {
        Ok(())
    }

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
        if self.is_valid_path(path).map_err(StoreOpError::from_error)? {
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

    /// Roots as (link, path), sorted; see [`FindRoots`].
    fn find_roots(&self, _options: FindRoots) -> Result<Vec<(String, StorePath)>, StoreOpError> {
        Ok(Vec::new())
    }

    /// The roots that keep any of `paths` alive (`nix-store -q --roots`): roots whose
    /// target refers to one of them, directly or not.
    fn roots_of(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<(String, StorePath)>, StoreOpError> {
        let referrers = self.referrers_closure(paths)?;
        let mut roots = self.find_roots(FindRoots::default())?;
        roots.retain(|(_, path)| referrers.contains(path));
        Ok(roots)
    }

    /// `paths` and every valid path that refers to them, directly or not.
    fn referrers_closure(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreOpError> {
        let mut closure = BTreeSet::new();
        let mut pending: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(path) = pending.pop() {
            if closure.insert(path.clone()) {
                pending.extend(
                    self.query_referrers(&path)
                        .map_err(StoreOpError::from_error)?,
                );
            }
        }
        Ok(closure)
    }

    /// Collects garbage as `options` say; `progress` hears how far it got (where the
    /// store can tell).
    fn collect_garbage(
        &self,
        _options: &GcOptions,
        _progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<GcReport, StoreOpError> {
        Err(refuse("garbage collection is not supported by this store"))
    }

    /// Hard-links identical files; the report, when the store gives one.
    fn optimise(
        &self,
        _progress: &(dyn Fn(OptimiseProgress) + Sync),
    ) -> Result<Option<OptimiseReport>, StoreOpError> {
        Err(refuse("optimisation is not supported by this store"))
    }

    /// Checks `paths` (all, when `None`) against the registry.
    fn verify_store(
        &self,
        _paths: Option<&BTreeSet<StorePath>>,
        _options: VerifyOptions,
    ) -> Result<VerifyOutcome, StoreOpError> {
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

    /// Writes `paths` in Nix's export format (`nix-store --export`).
    fn export_paths(
        &self,
        paths: &BTreeSet<StorePath>,
        out: &mut dyn Write,
    ) -> Result<(), StoreOpError> {
        crate::export::write_archive(self, paths, out).map_err(StoreOpError::from_error)
    }

    /// Imports an export archive (`nix-store --import`); the paths it held, in order.
    fn import_paths(&self, _input: &mut dyn BufRead) -> Result<Vec<StorePath>, StoreOpError> {
        Err(refuse(
            "importing export archives is not supported by this store",
        ))
    }

    /// Adds each (file or tree, name) of `sources` as `nix-store --add` does; `progress`
    /// hears, per source index, how far it got (where the store can tell).
    fn add_paths(
        &self,
        _sources: &[(PathBuf, String)],
        _progress: &(dyn Fn(usize, AddProgress) + Sync),
    ) -> Result<Vec<StorePath>, StoreOpError> {
        Err(refuse(
            "adding files from this machine is not supported by this store",
        ))
    }

    /// Adds the regular file `file` as a flat fixed-output path hashed with `algo`
    /// (`nix-store --add-fixed`).
    fn add_file(&self, file: &Path, name: &str, algo: HashAlgo) -> Result<StorePath, StoreOpError> {
        let mut opened = std::fs::File::open(file).map_err(|source| {
            StoreOpError::from_error(FileError {
                path: file.to_owned(),
                source,
            })
        })?;
        let method = AddressingMethod::Fixed(ContentAddressMethod::Flat, algo);
        self.add_dump(name, method, &BTreeSet::new(), &mut opened)
    }

    /// The derivation at `path`, parsed.
    fn read_derivation(&self, path: &StorePath) -> Result<Derivation, StoreOpError> {
        Err(refuse(format!(
            "reading derivation '{}' is not supported by this store",
            self.store_dir().display(path)
        )))
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

    /// Where a binary cache keeps the NAR of `path` (`None` for every other store, and
    /// for a path the cache lacks).
    fn query_nar_download(&self, _path: &StorePath) -> Result<Option<NarDownload>, StoreOpError> {
        Ok(None)
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
