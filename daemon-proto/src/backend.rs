//! What the server needs from a store beyond the [`Store`] trait, and its implementation
//! for [`LocalStore`] (with builds through `arca-build`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use arca_build::{BuildEvent, BuildOptions, BuildResult, BuildTarget, Settings};
use arca_store_core::derivation::{Derivation, OutputName};
use arca_store_core::{
    AddressingMethod, ContentAddress, ContentAddressMethod, DrvOutput, HashAlgo, Hasher, PathInfo,
    Realisation, Signature, Store, StoreDir, StorePath,
};
use arca_store_sqlite::{GcAction, GcOptions, LocalStore, OptimiseOptions, VerifyOptions};

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
    fn of(event: arca_build::BuildEvent) -> Option<(StorePath, BuildTiming)> {
        match event {
            arca_build::BuildEvent::BuilderExited {
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

/// The builder's options for a client's settings and build mode, on `store`: a build
/// asking for recursive Nix gets a daemon of its own on the same store.
fn build_options(
    mode: BuildMode,
    settings: &Settings,
    store: &LocalStore,
) -> Result<BuildOptions, StoreOpError> {
    let (root, options) = store.opened_with();
    let recursive = crate::recursive::RecursiveDaemon {
        root: root.to_owned(),
        store: options.clone(),
        settings: settings.clone(),
        limits: crate::wire::Limits::default(),
    };
    Ok(BuildOptions {
        check: mode == BuildMode::Check,
        repair: mode == BuildMode::Repair,
        recursive_nix: Some(std::sync::Arc::new(recursive)),
        ..settings
            .build_options()
            .map_err(|error| refuse(error_chain(&error)))?
    })
}

/// An error and its causes, `: `-separated, as the client shows one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
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

/// A store the daemon can serve: the [`Store`] trait plus the operations Nix clients
/// send that the trait has no word for. The defaults refuse, so a store that cannot
/// build or collect garbage still serves queries and adds.
pub trait DaemonStore: Store + Sync
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

impl DaemonStore for LocalStore {
    fn apply_settings(&self, settings: &Settings) {
        self.set_auto_optimise(settings.auto_optimise_store);
    }

    fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreOpError> {
        self.all_valid_paths().map_err(refuse)
    }

    fn closure_graph(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, StoreOpError> {
        let mut valid = BTreeSet::new();
        for path in paths {
            if self.is_valid_path(path).map_err(refuse)? {
                valid.insert(path.clone());
            }
        }
        let outputs = if include_outputs {
            arca_store_sqlite::DerivationOutputs::Included
        } else {
            arca_store_sqlite::DerivationOutputs::Excluded
        };
        self.requisites_graph(&valid, outputs).map_err(refuse)
    }

    fn query_derivation_output_map(
        &self,
        drv: &StorePath,
        realisations: bool,
    ) -> Result<BTreeMap<String, Option<StorePath>>, StoreOpError> {
        Ok(self
            .derivation_output_map(drv, realisations)
            .map_err(refuse)?
            .into_iter()
            .map(|(name, path)| (name.to_string(), path))
            .collect())
    }

    fn query_realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>, StoreOpError> {
        LocalStore::query_realisation(self, id).map_err(refuse)
    }

    fn register_realisation(&self, realisation: &Realisation) -> Result<(), StoreOpError> {
        LocalStore::register_realisation(self, realisation).map_err(|e| refuse(error_chain(&e)))
    }

    fn add_dump(
        &self,
        name: &str,
        method: AddressingMethod,
        references: &BTreeSet<StorePath>,
        dump: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError> {
        match method {
            AddressingMethod::Text(algo) if algo != HashAlgo::Sha256 => Err(refuse(format!(
                "content address method '{method}' is not supported: text paths are hashed with sha256"
            ))),
            AddressingMethod::Text(_) => {
                // Held in memory whole (its hash names the path): bounded, and refused
                // rather than cut when longer (the server drains the rest of the frames).
                const MAX_TEXT: u64 = 64 << 20;
                let mut contents = Vec::new();
                dump.take(MAX_TEXT + 1)
                    .read_to_end(&mut contents)
                    .map_err(refuse)?;
                if contents.len() as u64 > MAX_TEXT {
                    return Err(refuse(format!(
                        "text '{name}' is larger than the limit of {} MiB",
                        MAX_TEXT >> 20
                    )));
                }
                self.add_text_path(name, &contents, references)
                    .map_err(refuse)
            }
            AddressingMethod::Fixed(..) if !references.is_empty() => {
                Err(refuse("a fixed-output path cannot have references"))
            }
            AddressingMethod::Fixed(ContentAddressMethod::Flat, algo) => {
                let spool = spool(self, dump)?;
                self.add_fixed_file(spool.file.path(), name, algo)
                    .map_err(refuse)
            }
            AddressingMethod::Fixed(ContentAddressMethod::Recursive, algo) => {
                // Spool the NAR, hashing it for its NAR hash (sha256) and for its
                // content address (`algo`) on the way; the path follows from the latter.
                // Small NARs (the common case: one source file) stay in memory.
                let mut spool = NarSpool::new(self);
                let mut nar_hasher = Hasher::new(HashAlgo::Sha256);
                let mut ca_hasher = Hasher::new(algo);
                let mut size = 0u64;
                let mut buffer = [0u8; 16 << 10];
                loop {
                    let read = dump.read(&mut buffer).map_err(refuse)?;
                    if read == 0 {
                        break;
                    }
                    let chunk = &buffer[..read];
                    nar_hasher.update(chunk);
                    ca_hasher.update(chunk);
                    spool.write_all(chunk).map_err(refuse)?;
                    size += read as u64;
                }
                let hash = ca_hasher.finish();
                let path = self
                    .store_dir()
                    .make_fixed_output_path(
                        name,
                        ContentAddressMethod::Recursive,
                        &hash,
                        &BTreeSet::new(),
                        false,
                    )
                    .map_err(refuse)?;
                let mut info = PathInfo::new(path.clone(), nar_hasher.finish(), size);
                info.ca = Some(ContentAddress::Fixed {
                    method: ContentAddressMethod::Recursive,
                    hash,
                });
                let mut nar = spool.into_reader().map_err(refuse)?;
                self.add_nar_embedded(&info, &mut nar).map_err(refuse)?;
                Ok(path)
            }
        }
    }

    fn add_nar_checked(
        &self,
        info: &PathInfo,
        nar: &mut dyn BufRead,
        trusted: bool,
    ) -> Result<(), StoreOpError> {
        if !trusted && !info.is_content_addressed_correctly(self.store_dir()) {
            return Err(refuse(format!(
                "cannot add path '{}' because it lacks a signature by a trusted key",
                self.store_dir().display(&info.path)
            )));
        }
        self.add_nar_embedded(info, &mut BufReadRef(nar))
            .map_err(refuse)
    }

    fn build_paths(
        &self,
        targets: &[DerivedPath],
        mode: BuildMode,
        settings: &Settings,
        events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<BuildOutcomes, StoreOpError> {
        let mut builds = Vec::new();
        let mut results = Vec::new();
        for target in targets {
            match &target.outputs {
                Some(outputs) => {
                    let outputs = if outputs.is_empty() {
                        None
                    } else {
                        Some(
                            outputs
                                .iter()
                                .map(|o| OutputName::new(o))
                                .collect::<Result<BTreeSet<_>, _>>()
                                .map_err(refuse)?,
                        )
                    };
                    builds.push(BuildTarget {
                        drv: target.path.clone(),
                        outputs,
                    });
                }
                None => {
                    // An opaque path must exist; a `.drv` stands for its outputs, as
                    // old clients send it.
                    if target.path.is_derivation() {
                        builds.push(BuildTarget::all(target.path.clone()));
                    } else {
                        self.ensure_path(&target.path)?;
                    }
                }
            }
        }
        let options = build_options(mode, settings, self)?;
        let mut timings = BTreeMap::new();
        let built = if builds.is_empty() {
            BTreeMap::new()
        } else {
            arca_build::build(self, &builds, &options, &mut |event| {
                events(&event);
                if let Some((drv, timing)) = BuildTiming::of(event) {
                    timings.insert(drv, timing);
                }
            })
            .map_err(refuse)?
        };
        for target in targets {
            let outcome = match built.get(&target.path) {
                Some(BuildResult::Built(outputs)) => Ok((true, outputs)),
                Some(BuildResult::AlreadyValid(outputs)) => Ok((false, outputs)),
                Some(BuildResult::Failed(error)) => Err(error.to_string()),
                Some(BuildResult::NotBuilt { because_of }) => Err(match because_of {
                    Some(drv) => format!(
                        "dependency '{}' failed to build",
                        self.store_dir().display(drv)
                    ),
                    None => "not built".to_owned(),
                }),
                None => {
                    results.push((target.clone(), Ok(Built::default())));
                    continue;
                }
            };
            let result = match outcome {
                Err(message) => Err(message),
                Ok((now, outputs)) => {
                    let derivation = self.read_derivation(&target.path).map_err(refuse)?;
                    let hash = self.static_output_hash(&derivation).map_err(refuse)?.hash;
                    let wanted = target.outputs.as_ref().filter(|o| !o.is_empty());
                    let mut outputs: Vec<Realisation> = outputs
                        .iter()
                        .filter(|(name, _)| wanted.is_none_or(|w| w.contains(name.as_str())))
                        .map(|(name, path)| {
                            let id = DrvOutput {
                                drv_hash: hash.clone(),
                                output: name.clone(),
                            };
                            Realisation::new(id, path.clone())
                        })
                        .collect();
                    if options.ca_derivations {
                        // As recorded, with signatures and dependent realisations.
                        for realisation in &mut outputs {
                            if let Ok(Some(recorded)) =
                                LocalStore::query_realisation(self, &realisation.id)
                            {
                                *realisation = recorded;
                            }
                        }
                    }
                    let timing = if now {
                        timings.get(&target.path).copied()
                    } else {
                        None
                    };
                    Ok(Built {
                        now,
                        outputs,
                        timing,
                    })
                }
            };
            results.push((target.clone(), result));
        }
        Ok(results)
    }

    fn ensure_path(&self, path: &StorePath) -> Result<(), StoreOpError> {
        self.add_temp_root(path).map_err(refuse)?;
        if self.is_valid_path(path).map_err(refuse)? {
            return Ok(());
        }
        Err(refuse(format!(
            "path '{}' is not valid",
            self.store_dir().display(path)
        )))
    }

    fn add_temp_root(&self, path: &StorePath) -> Result<(), StoreOpError> {
        LocalStore::add_temp_root(self, path).map_err(refuse)
    }

    fn add_indirect_root(&self, link: &Path) -> Result<(), StoreOpError> {
        LocalStore::add_indirect_root(self, link).map_err(refuse)
    }

    fn add_perm_root(&self, path: &StorePath, link: &Path) -> Result<PathBuf, StoreOpError> {
        LocalStore::add_perm_root(self, path, link).map_err(refuse)
    }

    fn find_roots(&self, censor: bool) -> Result<Vec<(String, StorePath)>, StoreOpError> {
        Ok(LocalStore::find_roots(self, true)
            .map_err(refuse)?
            .into_iter()
            .map(|root| {
                let link = if censor
                    && root.link.starts_with(['/', '{'])
                    && root.kind != arca_store_sqlite::GcRootKind::Link
                    && root.kind != arca_store_sqlite::GcRootKind::Indirect
                    && root.kind != arca_store_sqlite::GcRootKind::File
                {
                    "{censored}".to_owned()
                } else {
                    root.link
                };
                (link, root.path)
            })
            .collect())
    }

    fn collect_garbage(
        &self,
        request: GcRequest,
        max_freed: Option<u64>,
        settings: &Settings,
    ) -> Result<(Vec<String>, u64), StoreOpError> {
        let action = match request {
            GcRequest::ReturnLive => GcAction::ReturnLive,
            GcRequest::ReturnDead => GcAction::ReturnDead,
            GcRequest::DeleteDead => GcAction::DeleteDead,
            GcRequest::DeleteSpecific(paths) => GcAction::DeleteSpecific(paths),
        };
        let options = GcOptions {
            action,
            max_freed,
            keep_outputs: settings.keep_outputs,
            keep_derivations: settings.keep_derivations,
            ..GcOptions::default()
        };
        let report = LocalStore::collect_garbage(self, &options, &|_| {}).map_err(refuse)?;
        Ok((report.paths, report.bytes_freed))
    }

    fn optimise(&self) -> Result<(), StoreOpError> {
        LocalStore::optimise(self, &OptimiseOptions::default(), &|_| {})
            .map(drop)
            .map_err(refuse)
    }

    fn verify_store(&self, check_contents: bool, repair: bool) -> Result<bool, StoreOpError> {
        let report = self
            .verify(
                None,
                VerifyOptions {
                    check_contents,
                    repair,
                },
            )
            .map_err(refuse)?;
        Ok(!report.is_clean())
    }

    fn add_signatures(
        &self,
        path: &StorePath,
        signatures: &[Signature],
    ) -> Result<(), StoreOpError> {
        LocalStore::add_signatures(self, path, signatures).map_err(refuse)
    }

    fn import_export(&self, input: &mut dyn BufRead) -> Result<Vec<StorePath>, StoreOpError> {
        self.import_paths(&mut BufReadRef(input)).map_err(refuse)
    }

    fn read_build_log(&self, drv: &StorePath) -> Result<Option<Box<dyn Read>>, StoreOpError> {
        match arca_build::open_log(self.log_dir(), drv) {
            Ok(reader) => Ok(Some(reader)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(refuse(error)),
        }
    }

    fn add_build_log(&self, drv: &StorePath, text: &mut dyn Read) -> Result<(), StoreOpError> {
        arca_build::write_log(self.log_dir(), drv, text).map_err(refuse)
    }

    fn build_derivation(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        mode: BuildMode,
        settings: &Settings,
        events: &mut dyn FnMut(&BuildEvent),
    ) -> Result<Result<Built, String>, StoreOpError> {
        // Built as sent, without writing a `.drv`: its inputs are all sources now, so the
        // paths it claims cannot be recomputed here (the caller decided whether to trust
        // them: a trusted client, or fixed outputs only).
        self.add_temp_roots(&drv.input_srcs).map_err(refuse)?;
        let options = build_options(mode, settings, self)?;
        let mut timing = None;
        let result = arca_build::build_derivation(self, drv_path, drv, &options, &mut |event| {
            events(&event);
            if let Some((_, exited)) = BuildTiming::of(event) {
                timing = Some(exited);
            }
        })
        .map_err(refuse)?;
        Ok(match result {
            // No realisation ids, as the derivation is not in this store under the
            // client's path.
            BuildResult::Built(_) => Ok(Built {
                now: true,
                outputs: Vec::new(),
                timing,
            }),
            BuildResult::AlreadyValid(_) => Ok(Built::default()),
            BuildResult::Failed(error) => Err(error.to_string()),
            BuildResult::NotBuilt { .. } => Err("not built".to_owned()),
        })
    }

    fn query_missing(
        &self,
        targets: &[DerivedPath],
    ) -> Result<(BTreeSet<StorePath>, BTreeSet<StorePath>), StoreOpError> {
        // As Nix: a derivation with an output missing will be built, and so will every
        // input derivation of it that has an output missing, transitively.
        let mut will_build = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut pending: Vec<StorePath> = Vec::new();
        for target in targets {
            if target.outputs.is_some() || target.path.is_derivation() {
                pending.push(target.path.clone());
            } else if !self.is_valid_path(&target.path).map_err(refuse)? {
                unknown.insert(target.path.clone());
            }
        }
        while let Some(drv) = pending.pop() {
            if !seen.insert(drv.clone()) {
                continue;
            }
            self.add_temp_root(&drv).map_err(refuse)?;
            if !self.is_valid_path(&drv).map_err(refuse)? {
                unknown.insert(drv);
                continue;
            }
            let derivation = self.read_derivation(&drv).map_err(refuse)?;
            let mut missing = false;
            for path in self.query_derivation_output_map(&drv, true)?.values() {
                match path {
                    Some(path) if self.is_valid_path(path).map_err(refuse)? => {}
                    _ => missing = true,
                }
            }
            if missing {
                will_build.insert(drv);
                pending.extend(derivation.input_drvs.keys().cloned());
            }
        }
        Ok((will_build, unknown))
    }
}

/// A flat dump spooled to a file in a staging directory of the store (same file
/// system; removed when dropped, the file first).
struct FlatSpool {
    file: tempfile::NamedTempFile,
    _dir: arca_store_sqlite::StagingDir,
}

fn spool(store: &LocalStore, dump: &mut dyn Read) -> Result<FlatSpool, StoreOpError> {
    let dir = store.staging_dir().map_err(refuse)?;
    let mut file = tempfile::Builder::new()
        .prefix("flat-")
        .tempfile_in(dir.path())
        .map_err(refuse)?;
    std::io::copy(dump, &mut file).map_err(refuse)?;
    file.flush().map_err(refuse)?;
    Ok(FlatSpool { file, _dir: dir })
}

/// `&mut dyn BufRead` as a sized `BufRead`.
struct BufReadRef<'a>(&'a mut dyn BufRead);

impl Read for BufReadRef<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl BufRead for BufReadRef<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.0.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.0.consume(amount)
    }
}

/// A NAR received before it can be added (its path is known only at its end): in
/// memory up to [`NarSpool::IN_MEMORY`], then in a temporary file in the staging
/// directory.
struct NarSpool<'a> {
    store: &'a LocalStore,
    memory: Vec<u8>,
    /// The file and the staging directory holding it (removed in this order).
    file: Option<(tempfile::NamedTempFile, arca_store_sqlite::StagingDir)>,
}

impl NarSpool<'_> {
    const IN_MEMORY: usize = 1 << 20;

    fn new(store: &LocalStore) -> NarSpool<'_> {
        NarSpool {
            store,
            memory: Vec::new(),
            file: None,
        }
    }

    fn into_reader(self) -> std::io::Result<Box<dyn BufRead>> {
        match self.file {
            None => Ok(Box::new(std::io::Cursor::new(self.memory))),
            Some((mut file, _dir)) => {
                file.flush()?;
                // Still readable once the file and its directory are gone.
                Ok(Box::new(std::io::BufReader::new(file.reopen()?)))
            }
        }
    }
}

impl Write for NarSpool<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() && self.memory.len() + bytes.len() > NarSpool::IN_MEMORY {
            let dir = self.store.staging_dir().map_err(std::io::Error::other)?;
            let mut file = tempfile::Builder::new()
                .prefix("nar-")
                .tempfile_in(dir.path())?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some((file, dir));
        }
        match &mut self.file {
            Some((file, _)) => file.write(bytes),
            None => {
                self.memory.extend_from_slice(bytes);
                Ok(bytes.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some((file, _)) => file.flush(),
            None => Ok(()),
        }
    }
}
